"""Video and audio I/O with ffmpeg, per-video jobs, Parquet shards and audio features."""
