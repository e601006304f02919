"""Search real footage for a person: face detection and tracking, pretrained face and speaker embeddings,
voice activity, speech-to-face association, the Parquet index and the results page (docs/search.md)."""
