"""Per-video Parquet shards of crops and mels: paths, the shared write/resume rules, and binary columns to arrays.

Layout: <dir>/<split>/<video_id>.parquet, one shard per video, written atomically. Shape metadata lives
in each shard's schema metadata (docs/media.md):
  crops: crop_size, crop_margin, image_format   -> `image` is one crop, raw or JPEG (stages.media.crop_codec)
  mels:  n_mels, frames, sample_rate, ...        -> `mel` is float32 n_mels x frames
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from stages.core.atomic import atomic_path
from stages.core.errors import DataError

FINGERPRINT_KEY = "fingerprint"
STATS_KEY = "stats"
PLAN_DIR = "plan"
AUDIO_DIR = "audio"


def shard_path(directory: str | Path, split: str, video_id: str) -> Path:
    """<directory>/<split>/<video_id>.parquet: one video's crops, mels or frame plan."""
    return Path(directory) / split / f"{video_id}.parquet"


def plan_path(decoded_dir: str | Path, split: str, video_id: str) -> Path:
    """The frame plan `decode` writes for one video (schema FRAME_PLAN)."""
    return shard_path(Path(decoded_dir) / PLAN_DIR, split, video_id)


def audio_path(decoded_dir: str | Path, split: str, video_id: str) -> Path:
    """The 16 kHz mono WAV `decode` writes for one video (the annotated window; start in the plan metadata)."""
    return Path(decoded_dir) / AUDIO_DIR / split / f"{video_id}.wav"


def plan_paths(decoded_dir: str | Path, split: str) -> list[Path]:
    """Every frame plan of a split, sorted by video id; an error when `decode` has not run."""
    folder = Path(decoded_dir) / PLAN_DIR / split
    plans = sorted(folder.glob("*.parquet"))
    if not plans:
        raise DataError(folder, f"no frame plans for split '{split}': run `apes-cli decode` first")
    return plans


def shard_paths(directory: str | Path, split: str) -> list[Path]:
    """The shards of one split, sorted by video id."""
    folder = Path(directory) / split
    if not folder.is_dir():
        raise DataError(folder, f"no shards for split '{split}' (run the stage that writes them first)")
    return sorted(folder.glob("*.parquet"))


def metadata(schema: pa.Schema) -> dict[str, str]:
    """A shard's schema metadata as text."""
    return {key.decode(): value.decode() for key, value in (schema.metadata or {}).items()}


def with_metadata(schema: pa.Schema, values: dict[str, Any]) -> pa.Schema:
    """`schema` carrying `values` (non-strings as JSON) as its metadata."""
    return schema.with_metadata({k: v if isinstance(v, str) else json.dumps(v, sort_keys=True)
                                 for k, v in values.items()})


def is_complete(path: Path, fingerprint: str) -> bool:
    """A shard is complete when it exists (writes are atomic) and was made from the same inputs and params."""
    if not path.is_file():
        return False
    try:
        return metadata(pq.read_schema(path)).get(FINGERPRINT_KEY) == fingerprint
    except (OSError, pa.ArrowInvalid):
        return False


def shard_stats(path: Path) -> dict[str, Any]:
    """The per-video counts a stage stored in a shard (so a resumed run reports the same metrics)."""
    stored = pq.read_metadata(path).metadata or {}
    return json.loads(stored.get(STATS_KEY.encode(), b"{}"))


class ShardWriter:
    """Write one shard in row groups to a temporary file; it appears under its final name only on close()."""

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        self._context = atomic_path(path)
        self._tmp = self._context.__enter__()
        self._schema = schema
        self._writer = pq.ParquetWriter(self._tmp, schema, compression="zstd")

    def write(self, table: pa.Table) -> None:
        """Append one row group (columns in schema order)."""
        self._writer.write_table(table.cast(self._schema))

    def close(self, stats: dict[str, Any]) -> None:
        """Finish the file (stats go into the footer metadata) and move it into place."""
        self._writer.add_key_value_metadata({STATS_KEY: json.dumps(stats, sort_keys=True)})
        self._writer.close()
        self._context.__exit__(None, None, None)

    def abort(self, error: BaseException) -> None:
        """Drop the temporary file."""
        self._writer.close()
        self._context.__exit__(type(error), error, error.__traceback__)


def binary_to_array(column: pa.ChunkedArray | pa.Array, shape: tuple[int, ...], dtype: Any,
                    file: str | Path = "") -> np.ndarray:
    """Turn a binary column of equal-sized items into one (rows, *shape) array without a Python loop."""
    dtype = np.dtype(dtype)
    item = int(np.prod(shape)) * dtype.itemsize
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    parts = []
    for chunk in chunks:
        if len(chunk) == 0:
            continue
        if chunk.null_count:
            raise DataError(file, "null item in a binary column")
        offsets = np.frombuffer(chunk.buffers()[1], np.int32)[chunk.offset: chunk.offset + len(chunk) + 1]
        if np.any(np.diff(offsets) != item):
            raise DataError(file, f"items of {np.diff(offsets)[0]} bytes, expected {item} for shape {shape}")
        data = np.frombuffer(chunk.buffers()[2], np.uint8)[offsets[0]: offsets[-1]]
        parts.append(data.view(dtype).reshape((len(chunk), *shape)))
    if not parts:
        return np.empty((0, *shape), dtype)
    return parts[0].copy() if len(parts) == 1 else np.concatenate(parts)
