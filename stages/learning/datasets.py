"""Crops and mel snippets of one split and task, decoded once into RAM (stages.learning.feed makes the batches).

The embedded data fits in memory (tens of thousands of 64 px crops, a few hundred MB). Real APES at
124 px (3.1 M boxes) would not: there the store would read row groups lazily per batch instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from stages.core.errors import DataError
from stages.learning.pool import Tracks
from stages.learning.tracklets import codes, load_tracklets, split_shards, track_keys
from stages.media.crop_codec import decode_crops
from stages.media.face_crop import FILL
from stages.media.shards import binary_to_array, metadata, shard_paths


@dataclass(frozen=True)
class Store:
    """A task's tracklets with their items: crops (N, S, S, 3) uint8 and mels (M, n_mels, frames) float32.

    Items of one tracklet are contiguous; `tracks` says where (see stages.learning.pool.Tracks).
    """

    tracklets: pa.Table
    tracks: Tracks
    crops: np.ndarray
    mels: np.ndarray


def _evenly_spaced(count: int, limit: int) -> np.ndarray:
    """Up to `limit` evenly spaced positions of range(count) (all when limit is 0)."""
    if limit <= 0 or count <= limit:
        return np.arange(count)
    return np.unique(np.round(np.linspace(0, count - 1, limit)).astype(np.int64))


def _read_items(directory: Path, split: str, field: str, wanted: dict[str, int], limit: int,
                to_array: Callable[[pa.ChunkedArray, dict[str, str], Path], np.ndarray],
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Items of the wanted tracklets, grouped per tracklet and evenly subsampled: (values, start, count).

    Rows are picked per shard before decoding, so only the kept items are ever copied out of Arrow.
    """
    parts: list[np.ndarray] = []
    start = np.zeros(len(wanted), np.int64)
    count = np.zeros(len(wanted), np.int64)
    offset = 0
    videos = {key.partition("/")[0] for key in wanted}
    for path in split_shards(directory, split):
        if path.stem not in videos:
            continue  # one shard per video: those without a wanted tracklet are never read
        table = pq.read_table(path, columns=["video_id", "entity_id", field])
        owner = np.array([wanted.get(k, -1) for k in track_keys(table)], np.int64)
        rows = np.flatnonzero(owner >= 0)
        if len(rows) == 0:
            continue
        rows = rows[np.argsort(owner[rows], kind="stable")]
        tracks, first, sizes = np.unique(owner[rows], return_index=True, return_counts=True)
        keep = np.concatenate([rows[f + _evenly_spaced(int(n), limit)] for f, n in zip(first, sizes)])
        kept = np.minimum(sizes, limit) if limit > 0 else sizes
        start[tracks] = offset + np.concatenate([[0], np.cumsum(kept)[:-1]])
        count[tracks] = kept
        offset += len(keep)
        parts.append(to_array(table[field].take(pa.array(keep)), metadata(table.schema), path))
    if not parts:
        raise DataError(Path(directory) / split, f"no {field} rows for the task's tracklets")
    return (np.concatenate(parts) if len(parts) > 1 else parts[0]), start, count


def _mels(column: pa.ChunkedArray, meta: dict[str, str], path: Path) -> np.ndarray:
    """A mel shard's mel column (or rows of it) -> (N, n_mels, frames) float32."""
    if "n_mels" not in meta or "frames" not in meta:
        raise DataError(path, "missing n_mels/frames in the schema metadata (not written by `apes-cli mel`?)")
    return binary_to_array(column, (int(meta["n_mels"]), int(meta["frames"])), np.float32, path)


def load_store(crops_dir: str | Path, mels_dir: str | Path | None, split: str, task: str,
               streams: tuple[str, ...], max_crops: int = 0, max_snippets: int = 0,
               tracklets: pa.Table | None = None) -> Store:
    """Decode the crops and/or snippets (evenly subsampled) of a task's tracklets of a split; the tracklet
    table is built from the shards unless given (train reads the triplets stage's table)."""
    if tracklets is None:
        tracklets = load_tracklets(crops_dir, mels_dir, split, task)
    if tracklets.num_rows == 0:
        raise DataError(Path(crops_dir) / split, f"no tracklets for task '{task}' in split '{split}'")
    keys = [f"{v}/{e}" for v, e in zip(tracklets["video_id"].to_pylist(), tracklets["entity_id"].to_pylist())]
    wanted = {key: i for i, key in enumerate(keys)}
    n = len(keys)
    crops = np.zeros((0, 1, 1, 3), np.uint8)
    crop_start, crop_count = np.zeros(n, np.int64), tracklets["n_crops"].to_numpy().astype(np.int64)
    mels = np.zeros((0, 1, 1), np.float32)
    mel_start, mel_count = np.zeros(n, np.int64), tracklets["n_snippets"].to_numpy().astype(np.int64)
    if "crops" in streams:
        crops, crop_start, crop_count = _read_items(Path(crops_dir), split, "image", wanted, max_crops, decode_crops)
    if "mels" in streams:
        if mels_dir is None:
            raise DataError("data/mels", "the voice stream needs mel shards")
        mels, mel_start, mel_count = _read_items(Path(mels_dir), split, "mel", wanted, max_snippets, _mels)
    tracks = Tracks(codes(tracklets["video_id"].to_pylist()), codes(tracklets["identity"].to_pylist()),
                    crop_start, crop_count, mel_start, mel_count)
    return Store(tracklets, tracks, crops, mels)


def crop_geometry(crops_dir: str | Path, split: str) -> dict[str, int | float | str]:
    """How the crop stage cut a split's crops (size, margin, fill), as its shards record it: what a checkpoint
    carries so that `apes-cli search --model` cuts its crops the same way."""
    shards = shard_paths(crops_dir, split)
    if not shards:
        raise DataError(Path(crops_dir) / split, "no crop shards")
    meta = metadata(pq.read_schema(shards[0]))
    for key in ("crop_size", "crop_margin"):
        if key not in meta:
            raise DataError(shards[0], "missing in the schema metadata (not written by `apes-cli crop`?)", field=key)
    return {"crop_size": int(meta["crop_size"]), "crop_margin": float(meta["crop_margin"]), "crop_fill": FILL}


def crops_to_tensor(crops: np.ndarray) -> torch.Tensor:
    """uint8 (N, S, S, 3) -> float (N, 3, S, S) in [0, 1], channels_last in memory."""
    tensor = torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2)
    return tensor.float().div_(255.0).contiguous(memory_format=torch.channels_last)


def mels_to_tensor(mels: np.ndarray) -> torch.Tensor:
    """float32 (N, n_mels, frames) -> (N, 1, n_mels, frames)."""
    return torch.from_numpy(np.ascontiguousarray(mels)).unsqueeze(1)
