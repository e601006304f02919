"""Stage 'triplets': each task's train tracklet table (the sample sets of every strategy) and Table 2.

data/triplets/<task>.parquet holds one row per train tracklet of the task (schema TRACKLETS). Positive and
negative bags follow from the strategy objects (stages.learning.strategies), so the Across bag (every other
identity's tracklet) is never materialised. The metrics hold, per task and strategy, the average positive
and negative tracklets per anchor (the paper's Table 2) and the counted skips.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from stages.core.atomic import write_parquet
from stages.core.config import TripletParams
from stages.core.errors import DataError
from stages.core.progress import Progress, Silent
from stages.learning.tracklets import (
    CROP_META,
    MEL_META,
    build_tracklets,
    read_meta,
    sampling_statistics,
    track_keys,
    tracklet_path,
)
from stages.rawdata.layout import AMBIGUOUS


def _track_counts(crop_meta: pa.Table) -> dict[str, int]:
    """How many face tracks the crops hold, and why some are kept out of every task."""
    keys = track_keys(crop_meta)
    identity = crop_meta["identity"]
    unlabelled = set(keys[pc.is_null(identity).to_numpy(zero_copy_only=False)])
    ambiguous = set(keys[pc.fill_null(pc.equal(identity, AMBIGUOUS), False).to_numpy(zero_copy_only=False)])
    return {"face_tracks": len(set(keys)), "skipped_unlabelled": len(unlabelled),
            "skipped_ambiguous": len(ambiguous)}


def _check_disjoint(train: pa.Table, val: pa.Table, where: Path) -> None:
    """A val identity in training would leak the evaluation: refuse it."""
    shared = set(train["identity"].to_pylist()) & set(val["identity"].to_pylist())
    if shared:
        raise DataError(where, f"{len(shared)} identities appear in both train and val "
                        f"(e.g. {sorted(shared)[:3]}): expected disjoint splits", field="identity")


def run(settings: TripletParams, crops_dir: str | Path, mels_dir: str | Path, out_dir: str | Path,
        progress: Progress | None = None) -> dict[str, Any]:
    """Write each task's train tracklet table; returns the Table 2 statistics as the metrics."""
    started = time.perf_counter()
    progress = progress or Silent()
    tasks = settings.tasks
    progress.start(len(tasks) + 1, "triplets")
    crop_meta = read_meta(crops_dir, "train", CROP_META)
    mels_split = Path(mels_dir) / "train"
    mel_meta = read_meta(mels_dir, "train", MEL_META) if mels_split.is_dir() else None
    val_crops = read_meta(crops_dir, "val", CROP_META) if (Path(crops_dir) / "val").is_dir() else None
    progress.advance()
    metrics: dict[str, Any] = {"split": "train", **_track_counts(crop_meta), "tasks": {}}
    for task in tasks:
        if task == "seen_heard" and mel_meta is None:
            raise DataError(mels_split, "no mel shards: the seen_heard task needs them (run `apes-cli mel`)")
        table = build_tracklets(crop_meta, mel_meta, task)
        if table.num_rows == 0:
            raise DataError(Path(crops_dir) / "train", f"no tracklets for task '{task}'")
        if val_crops is not None:
            _check_disjoint(table, build_tracklets(val_crops, None, "seen"), Path(crops_dir) / "val")
        stats = sampling_statistics(table)
        metrics["tasks"][task] = {
            "tracklets": table.num_rows,
            "identities": len(set(table["identity"].to_pylist())),
            "videos": len(set(table["video_id"].to_pylist())),
            "strategies": {s: stats[s] for s in settings.strategies},
        }
        write_parquet(tracklet_path(out_dir, task), table)
        progress.advance()
    if "seen" in metrics["tasks"] and "seen_heard" in metrics["tasks"]:
        tasks_done = metrics["tasks"]
        metrics["skipped_not_heard"] = tasks_done["seen"]["tracklets"] - tasks_done["seen_heard"]["tracklets"]
    metrics["seconds"] = round(time.perf_counter() - started, 3)
    metrics["crop_rows_per_s"] = round(pc.sum(crop_meta["rows"]).as_py() / max(metrics["seconds"], 1e-9), 1)
    return metrics
