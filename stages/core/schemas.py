"""Explicit Arrow schemas of every table the stages exchange (documented in docs/data.md)."""

from __future__ import annotations

import pyarrow as pa

# One row per annotated face box, joined to its APES identity (the loader's output).
BOXES = pa.schema([
    ("video_id", pa.string()),
    ("split", pa.string()),
    ("frame_timestamp", pa.float64()),
    ("x1", pa.float32()),
    ("y1", pa.float32()),
    ("x2", pa.float32()),
    ("y2", pa.float32()),
    ("label", pa.string()),
    ("entity_id", pa.string()),
    ("identity", pa.string()),        # null when the APES file has no row for the track
    ("ambiguous", pa.bool_()),        # APES identity is EXTRA_OR_AMBIGUOUS
    ("source_line", pa.int32()),      # 1-based line in the AVA CSV, for error messages
])

# decode: the validated boxes of one video plus the frame each timestamp maps to (the nearest frame,
# round(t * fps)). Schema metadata: fps, width, height, duration, video, audio, audio_start,
# audio_samples, sample_rate, fingerprint (docs/media.md).
FRAME_PLAN = pa.schema(list(BOXES) + [pa.field("frame_index", pa.int32())])

# crop: one row per kept face box, in frame order; `image` is one size x size RGB crop, raw uint8 row-major or
# JPEG (metadata: crop_size, crop_margin, image_format, jpeg_quality). To arrays: stages.media.crop_codec.decode_crops.
CROPS = pa.schema([
    ("video_id", pa.string()),
    ("split", pa.string()),
    ("entity_id", pa.string()),
    ("identity", pa.string()),
    ("frame_timestamp", pa.float64()),
    ("label", pa.string()),
    ("x1", pa.float32()),
    ("y1", pa.float32()),
    ("x2", pa.float32()),
    ("y2", pa.float32()),
    ("image", pa.binary()),
])

# mel: one row per voice snippet under a track's audible speech; `start` is seconds from the start of
# the video file; `mel` is float32 log-mel n_mels x frames, row-major (metadata: n_mels, frames,
# sample_rate, snippet_seconds, hop_length). To arrays: stages.media.shards.binary_to_array.
MELS = pa.schema([
    ("video_id", pa.string()),
    ("split", pa.string()),
    ("entity_id", pa.string()),
    ("identity", pa.string()),
    ("start", pa.float64()),
    ("label", pa.string()),
    ("mel", pa.binary()),
])

# triplets: one row per tracklet of a task's train split (bags follow from the strategy rules).
TRACKLETS = pa.schema([
    ("task", pa.string()),
    ("track", pa.int32()),            # index into this table (per task)
    ("video_id", pa.string()),
    ("entity_id", pa.string()),
    ("identity", pa.string()),
    ("n_crops", pa.int32()),
    ("n_snippets", pa.int32()),
])

# evaluate --embeddings: anyone's tracklet embeddings.
EMBEDDINGS = pa.schema([
    ("video_id", pa.string()),
    ("entity_id", pa.string()),
    ("identity", pa.string()),
    ("embedding", pa.list_(pa.float32())),
])
