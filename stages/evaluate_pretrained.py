"""Stage 'evaluate_pretrained': the report's Pretrained rows, off-the-shelf embedders with fixed weights.

dlib's face descriptor or the default speaker embedder of search (CAM++) embeds the task's val tracklets
(stages.footage.pretrained_embeddings); they are ranked like any method. Apart from stages/evaluate.py so that
only these DVC stages depend on the search code (stages/footage).
"""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from stages.core.atomic import write_parquet
from stages.core.choices import Method, Modality, Task, check_task_fits
from stages.core.config import PretrainedBaselineParams
from stages.core.errors import DataError
from stages.core.progress import Progress
from stages.evaluation.embeddings import embeddings_from_table, score
from stages.footage.pretrained_embeddings import PRETRAINED_MODELS, face_embeddings, voice_embeddings
from stages.learning.tracklets import load_tracklets
from stages.media.shards import metadata, with_metadata
from stages.media.video_jobs import resolve_workers


def _how(settings: PretrainedBaselineParams, modality: Modality) -> dict[str, str]:
    """What a pretrained embeddings file records of how it was made: the embedder and the items per tracklet."""
    items = settings.crops_per_track if modality == Modality.face else settings.snippets_per_track
    return {"pretrained_model": PRETRAINED_MODELS[modality], "items_per_track": str(items)}


def reused(path: str | Path, how: dict[str, str], tracklets: pa.Table) -> pa.Table:
    """The rows of `tracklets` taken from an earlier pretrained embeddings file made the same way (`how`)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "no such file (run the stage that writes it first)")
    earlier = pq.read_table(path)
    found = metadata(earlier.schema)
    for key, value in how.items():
        if found.get(key) != value:
            raise DataError(path, f"made with {found.get(key)!r}, expected {value!r}", field=key)
    row_of = {key: row for row, key in enumerate(zip(earlier["video_id"].to_pylist(),
                                                     earlier["entity_id"].to_pylist()))}
    wanted = list(zip(tracklets["video_id"].to_pylist(), tracklets["entity_id"].to_pylist()))
    missing = [key for key in wanted if key not in row_of]
    if missing:
        raise DataError(path, f"holds no row for tracklet {missing[0][1]!r} of video {missing[0][0]!r}")
    return earlier.take(pa.array([row_of[key] for key in wanted], pa.int64())).replace_schema_metadata(None)


def run(settings: PretrainedBaselineParams, modality: Modality, task: Task, crops_dir: str | Path,
        mels_dir: str | Path, decoded_dir: str | Path, out_dir: str | Path, workers: int = 0,
        reuse: str | Path | None = None, progress: Progress | None = None) -> dict:
    """Embed the task's val tracklets with dlib (face) or CAM++ (voice), write
    <out_dir>/pretrained_<modality>_<task>.parquet and rank them like any method; returns the metrics.
    `modality` is a key of PRETRAINED_MODELS; face runs dlib's network on `workers` threads, voice CAM++ on `workers`
    threads (0: one per core).
    `reuse` names an earlier file of the same embedder and settings that holds every tracklet of the task (the
    Seen file for Seen & Heard: the same tracks, cut the same): its rows are taken instead of embedding again,
    the same numbers (a descriptor depends on its crop alone)."""
    started = time.perf_counter()
    check_task_fits(modality, task)
    how = _how(settings, modality)
    if reuse is not None:
        table = reused(reuse, how, load_tracklets(crops_dir, mels_dir, "val", task))
    elif modality == Modality.face:
        table = face_embeddings(crops_dir, mels_dir, "val", task, settings.crops_per_track,
                                resolve_workers(workers), progress)
    else:
        table = voice_embeddings(crops_dir, mels_dir, decoded_dir, "val", task, settings.snippets_per_track,
                                 resolve_workers(workers), progress)
    embeddings_path = Path(out_dir) / f"pretrained_{modality}_{task}.parquet"
    metrics = score(embeddings_from_table(table, embeddings_path), embeddings_path)
    write_parquet(embeddings_path, table.replace_schema_metadata(with_metadata(table.schema, how).metadata))
    seconds = time.perf_counter() - started
    metrics.update(method=Method.pretrained, modality=modality, task=task, model=PRETRAINED_MODELS[modality],
                   embeddings=str(embeddings_path), reused=None if reuse is None else str(reuse),
                   tracklets=table.num_rows, seconds=round(seconds, 3),
                   tracklets_per_s=round(table.num_rows / max(seconds, 1e-9), 1))
    return metrics
