"""The search index: one folder per (video content, settings) with Parquet tables any Arrow reader can read.

<index-dir>/<sha256[:16]>-<settings key>/
    faces.parquet    one row per face track: times, boxes, chip embeddings, pooled embedding, thumbnail
    speech.parquet   one row per speech segment: times, embedding, visible tracks, speaker track and score
    meta.json        video facts (path when indexed, fps, size, duration, cuts), settings, models, timings
A whole collection reads as one table: pyarrow.dataset.dataset(glob.glob(".apes-index/*/faces.parquet")).to_table().
Each folder is written under a temporary name and renamed into place: never half-written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from stages.core.atomic import atomic_dir, disk_errors
from stages.core.errors import DataError
from stages.footage.settings import INDEX_FORMAT

FACES = pa.schema([
    ("video_sha256", pa.string()),
    ("track", pa.int32()),
    ("shot", pa.int32()),
    ("start", pa.float64()),
    ("end", pa.float64()),
    ("detections", pa.int32()),
    ("times", pa.list_(pa.float32())),
    ("boxes", pa.list_(pa.float32())),        # x1, y1, x2, y2 per detection, normalised to the frame
    ("embeddings", pa.list_(pa.float32())),   # chips x dim, row-major
    ("embedding", pa.list_(pa.float32())),    # pooled track embedding
    ("detector_score", pa.float32()),
    ("thumbnail", pa.binary()),               # JPEG of the best detection
])

SPEECH = pa.schema([
    ("video_sha256", pa.string()),
    ("segment", pa.int32()),
    ("start", pa.float64()),
    ("end", pa.float64()),
    ("embedding", pa.list_(pa.float32())),
    ("visible_tracks", pa.list_(pa.int32())),
    ("speaker_track", pa.int32()),            # -1: nobody on screen is speaking it (stages/footage/speakers.py)
    ("speaker_score", pa.float32()),          # the speaker's synchrony (the best face's when no speaker)
])


def entry_dir(index_dir: str | Path, digest: str, key: str) -> Path:
    """Where the index of one video (by content) and settings lives."""
    return Path(index_dir) / f"{digest[:16]}-{key}"


@dataclass
class VideoIndex:
    """A loaded index entry."""

    path: Path
    meta: dict[str, Any]
    faces: pa.Table
    speech: pa.Table

    def face_matrix(self) -> np.ndarray:
        """Pooled track embeddings (n x dim)."""
        return _matrix(self.faces.column("embedding"), self.path / "faces.parquet")

    def chip_embeddings(self, row: int) -> np.ndarray:
        """The chip embeddings of one track (k x dim)."""
        flat = np.asarray(self.faces.column("embeddings")[row].values, np.float32)
        dim = int(self.meta["face_dim"])
        return flat.reshape(-1, dim)

    def voice_matrix(self) -> np.ndarray:
        """Speech segment embeddings (n x dim: 192 with CAM++, 256 with Resemblyzer)."""
        return _matrix(self.speech.column("embedding"), self.path / "speech.parquet")


def _matrix(column: pa.ChunkedArray, path: Path) -> np.ndarray:
    if len(column) == 0:
        return np.zeros((0, 1), np.float32)
    flat = pa.concat_arrays([chunk for chunk in column.chunks]) if column.num_chunks != 1 else column.chunk(0)
    values = np.asarray(flat.values, np.float32)
    lengths = np.diff(np.asarray(flat.offsets))
    if lengths.min() != lengths.max():
        raise DataError(path, "embeddings of different lengths: the index is damaged; delete it to rebuild")
    return values.reshape(len(flat), int(lengths[0]))


def write_entry(final: Path, meta: dict[str, Any], faces: pa.Table, speech: pa.Table) -> None:
    """Write the three files of one entry atomically (the folder appears whole or not at all)."""
    with disk_errors(final.parent), atomic_dir(final) as tmp:
        pq.write_table(faces, tmp / "faces.parquet", compression="zstd")
        pq.write_table(speech, tmp / "speech.parquet", compression="zstd")
        (tmp / "meta.json").write_text(json.dumps({"format": INDEX_FORMAT, **meta}, indent=2, sort_keys=True) + "\n")


def read_entry(path: Path) -> VideoIndex:
    """Load one entry; an unreadable or foreign one is a DataError naming the file."""
    meta_file = path / "meta.json"
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, ValueError) as error:
        raise DataError(meta_file, f"unreadable index ({error}); expected an index written by `apes-cli index` "
                                   "(delete the folder to rebuild it)") from None
    if not isinstance(meta, dict) or meta.get("format") != INDEX_FORMAT:
        raise DataError(meta_file, f"not an index of format {INDEX_FORMAT} (delete the folder to rebuild it)")
    tables = {}
    for name, schema in (("faces", FACES), ("speech", SPEECH)):
        file = path / f"{name}.parquet"
        try:
            table = pq.read_table(file)
        except Exception as error:  # noqa: BLE001 - any Arrow/OS failure means the same to the user
            raise DataError(file, f"unreadable index table ({str(error).splitlines()[0]}); delete the folder "
                                  "to rebuild it") from None
        if not table.schema.equals(schema, check_metadata=False):
            raise DataError(file, "index table has unexpected columns; delete the folder to rebuild it")
        tables[name] = table
    return VideoIndex(path, meta, tables["faces"], tables["speech"])


def list_column(rows: list[np.ndarray], dtype=pa.float32()) -> pa.Array:
    """A list<float32> (or list<int32>) column from a list of 1-d arrays."""
    return pa.array([np.asarray(r).reshape(-1).tolist() for r in rows], pa.list_(dtype))
