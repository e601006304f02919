"""Stage 'evaluate_pretrained': the report's Pretrained rows, off-the-shelf embedders with fixed weights.

dlib's face descriptor or Resemblyzer's speaker encoder embeds the task's val tracklets
(stages.footage.pretrained_embeddings); they are ranked like any method. Apart from stages/evaluate.py so that
only these DVC stages depend on the search code (stages/footage).
"""

from __future__ import annotations

import time
from pathlib import Path

from stages.core.atomic import write_parquet
from stages.core.choices import Method, Modality, Task, check_task_fits
from stages.core.config import PretrainedBaselineParams
from stages.core.progress import Progress
from stages.evaluation.embeddings import embeddings_from_table, score
from stages.footage.pretrained_embeddings import PRETRAINED_MODELS, face_embeddings, voice_embeddings
from stages.media.video_jobs import resolve_workers


def run(settings: PretrainedBaselineParams, modality: Modality, task: Task, crops_dir: str | Path,
        mels_dir: str | Path, decoded_dir: str | Path, out_dir: str | Path, workers: int = 0,
        progress: Progress | None = None) -> dict:
    """Embed the task's val tracklets with dlib (face) or Resemblyzer (voice), write
    <out_dir>/pretrained_<modality>_<task>.parquet and rank them like any method; returns the metrics.
    `modality` is a key of PRETRAINED_MODELS; face runs dlib on `workers` processes (0: one per core)."""
    started = time.perf_counter()
    check_task_fits(modality, task)
    if modality is Modality.face:
        table = face_embeddings(crops_dir, mels_dir, "val", task, settings.crops_per_track,
                                resolve_workers(workers), progress)
    else:
        table = voice_embeddings(crops_dir, mels_dir, decoded_dir, "val", task, settings.snippets_per_track,
                                 progress)
    embeddings_path = Path(out_dir) / f"pretrained_{modality}_{task}.parquet"
    metrics = score(embeddings_from_table(table, embeddings_path), embeddings_path)
    write_parquet(embeddings_path, table)
    seconds = time.perf_counter() - started
    metrics.update(method=Method.pretrained, modality=modality, task=task, model=PRETRAINED_MODELS[modality],
                   embeddings=str(embeddings_path), tracklets=table.num_rows, seconds=round(seconds, 3),
                   tracklets_per_s=round(table.num_rows / max(seconds, 1e-9), 1))
    return metrics
