"""Which tracklets each task holds (Seen, Seen & Heard), read from the crop/mel shard metadata.

Shared by the triplets, train and evaluate stages, so that every stage agrees on the task definitions:
- Seen: every labelled face track (identity present and not EXTRA_OR_AMBIGUOUS) with at least one crop.
- Seen & Heard: the Seen tracks with at least one SPEAKING_AUDIBLE box and at least one mel snippet.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from stages.core.errors import DataError
from stages.core.schemas import TRACKLETS
from stages.learning.pool import STREAMS, Pool, Tracks
from stages.learning.strategies import STRATEGY_RULES
from stages.media.shards import shard_paths
from stages.rawdata.layout import AMBIGUOUS

CROP_META = ("video_id", "entity_id", "identity", "label")
MEL_META = ("video_id", "entity_id", "identity")
AUDIBLE = "SPEAKING_AUDIBLE"


def split_shards(directory: str | Path, split: str) -> list[Path]:
    """The Parquet shards <directory>/<split>/*.parquet in name order; none is an error."""
    paths = shard_paths(directory, split)
    if not paths:
        raise DataError(Path(directory) / split, f"no Parquet shards for split '{split}': "
                        "run the stage that writes them first")
    return paths


def read_meta(directory: str | Path, split: str, columns: tuple[str, ...]) -> pa.Table:
    """The distinct metadata rows of every shard of a split, each with `rows`, how many items carry it.

    Shards are reduced one at a time (no image/mel bytes are read), so memory follows the number of
    tracks, not of boxes: 3.1 M APES boxes become about 60 K rows (docs/scale.md)."""
    tables = []
    for path in split_shards(directory, split):
        try:
            table = pq.read_table(path, columns=list(columns))
        except (pa.ArrowInvalid, KeyError, OSError) as error:
            raise DataError(path, f"unreadable shard or missing column (expected {list(columns)}): {error}") from None
        counted = table.group_by(list(columns), use_threads=False).aggregate([([], "count_all")])
        tables.append(counted.rename_columns([*columns, "rows"]).select([*columns, "rows"]))
    return pa.concat_tables(tables).combine_chunks()


def track_keys(table: pa.Table) -> np.ndarray:
    """One string key per row: '<video_id>/<entity_id>'."""
    return np.asarray(pc.binary_join_element_wise(table["video_id"], table["entity_id"], "/").to_pylist(),
                      dtype=object)


def build_tracklets(crop_meta: pa.Table, mel_meta: pa.Table | None, task: str) -> pa.Table:
    """The task's tracklet table (schema TRACKLETS), sorted by video then entity id, from `read_meta` tables."""
    identities = crop_meta["identity"].to_pylist()
    labels = crop_meta["label"].to_pylist()
    keys = track_keys(crop_meta)
    tracks: dict[str, dict] = {}
    for key, identity, label, video, rows in zip(keys, identities, labels, crop_meta["video_id"].to_pylist(),
                                                 crop_meta["rows"].to_pylist()):
        if identity is None or identity == AMBIGUOUS:
            continue
        entry = tracks.setdefault(key, {"video_id": video, "identity": identity, "n_crops": 0, "audible": False})
        entry["n_crops"] += rows
        entry["audible"] |= label == AUDIBLE
    snippets: dict[str, int] = {}
    if mel_meta is not None and mel_meta.num_rows:
        for key, rows in zip(track_keys(mel_meta), mel_meta["rows"].to_pylist()):
            snippets[key] = snippets.get(key, 0) + rows
    rows = []
    for key in sorted(tracks):
        entry = tracks[key]
        n_snippets = snippets.get(key, 0)
        if task == "seen_heard" and not (entry["audible"] and n_snippets > 0):
            continue
        rows.append((entry["video_id"], key.split("/", 1)[1], entry["identity"], entry["n_crops"], n_snippets))
    return pa.table({
        "task": pa.array([task] * len(rows), pa.string()),
        "track": pa.array(range(len(rows)), pa.int32()),
        "video_id": pa.array([r[0] for r in rows], pa.string()),
        "entity_id": pa.array([r[1] for r in rows], pa.string()),
        "identity": pa.array([r[2] for r in rows], pa.string()),
        "n_crops": pa.array([r[3] for r in rows], pa.int32()),
        "n_snippets": pa.array([r[4] for r in rows], pa.int32()),
    }, schema=TRACKLETS)


def load_tracklets(crops_dir: str | Path, mels_dir: str | Path | None, split: str, task: str) -> pa.Table:
    """Read the shard metadata of a split and build the task's tracklet table."""
    crop_meta = read_meta(crops_dir, split, CROP_META)
    mel_meta = None
    if mels_dir is not None and (Path(mels_dir) / split).exists():
        mel_meta = read_meta(mels_dir, split, MEL_META)
    elif task == "seen_heard":
        raise DataError(Path(mels_dir or "data/mels") / split, "no mel shards: the seen_heard task needs them")
    return build_tracklets(crop_meta, mel_meta, task)


def tracklet_path(directory: str | Path, task: str) -> Path:
    """data/triplets/<task>.parquet."""
    return Path(directory) / f"{task}.parquet"


def read_tracklet_table(directory: str | Path, task: str) -> pa.Table:
    """Read a task's train tracklet table back, checking its schema and task."""
    path = tracklet_path(directory, task)
    if not path.is_file():
        raise DataError(path, f"no tracklet table for task '{task}': run `apes-cli triplets` first")
    table = pq.read_table(path)
    if not table.schema.equals(TRACKLETS, check_metadata=False):
        raise DataError(path, f"unexpected schema {table.schema.names}, expected {TRACKLETS.names}")
    if table.num_rows and set(table["task"].to_pylist()) != {task}:
        raise DataError(path, f"holds tracklets of another task, expected '{task}'", field="task")
    return table


def codes(values: list[str]) -> np.ndarray:
    """Integer codes of string values (equal strings, equal codes)."""
    _, inverse = np.unique(np.asarray(values, dtype=object).astype(str), return_inverse=True)
    return inverse.astype(np.int64)


def tracks_of(tracklets: pa.Table) -> Tracks:
    """Video and identity codes and item counts of a tracklet table (item rows numbered as if stored in order)."""
    crop_count = tracklets["n_crops"].to_numpy().astype(np.int64)
    mel_count = tracklets["n_snippets"].to_numpy().astype(np.int64)
    return Tracks(codes(tracklets["video_id"].to_pylist()), codes(tracklets["identity"].to_pylist()),
                  np.cumsum(crop_count) - crop_count, crop_count, np.cumsum(mel_count) - mel_count, mel_count)


def sampling_statistics(tracklets: pa.Table) -> dict[str, dict[str, float | int | bool]]:
    """Table 2: per strategy, the average positive and negative tracklets of an eligible face anchor.

    An anchor is eligible when the strategy gives it at least one positive and one negative (the rule the
    samplers train with); the others are counted as `skipped_anchors` (e.g. an identity seen in a single
    tracklet).
    """
    pool = Pool(tracks_of(tracklets), STREAMS["face"])
    stats: dict[str, dict[str, float | int | bool]] = {}
    for name, strategy in STRATEGY_RULES.items():
        anchors = strategy.anchors(pool)
        positives, negatives = strategy.bag_sizes(pool)
        count = len(anchors)
        stats[name] = {
            "anchors": count,
            "skipped_anchors": int(tracklets.num_rows - count),
            "avg_positive_tracklets": round(float(positives[anchors].mean()), 3) if count else 0.0,
            "avg_negative_tracklets": round(float(negatives[anchors].mean()), 3) if count else 0.0,
            "clean": strategy.clean,
        }
    return stats
