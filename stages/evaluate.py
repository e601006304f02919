"""Stage 'evaluate': rank val tracklets by embedding distance and write the benchmark metrics.

Three sources of embeddings here, one metric code (stages.evaluation):
- a trained checkpoint, or the same network with seeded random weights (`run`; untrained when the run has no
  sampling);
- anyone's embeddings Parquet (video_id, entity_id, identity, embedding; docs/evaluation.md: `run_embeddings_file`);
- none: the exact expected metrics of a uniformly random ranking of the val tracklets (`run_random`).
The fourth, the pretrained off-the-shelf embedders, is its own stage (stages/evaluate_pretrained.py), so that only
its DVC stages depend on the search code that holds them. Each function returns the metrics; the command writes them.
torch and the networks load only where a network runs: the Random row and an embeddings file start without them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from stages.core.atomic import write_parquet
from stages.core.choices import Method
from stages.core.config import EvaluateParams
from stages.core.errors import DataError
from stages.core.runs import Run
from stages.evaluation.embeddings import embeddings_from_table, read_embeddings, score
from stages.evaluation.ranking import random_metrics
from stages.learning.tracklets import load_tracklets

if TYPE_CHECKING:
    from stages.learning.models import Embedder


def run_embeddings_file(path: str | Path) -> dict:
    """The metrics of anyone's embeddings file (`apes-cli evaluate --embeddings`)."""
    started = time.perf_counter()
    embeddings = read_embeddings(path)
    metrics = score(embeddings, path)
    metrics.update(source=str(path), tracklets=len(embeddings.video_ids),
                   dim=int(embeddings.vectors.shape[1]), seconds=round(time.perf_counter() - started, 3))
    return metrics


def run_random(crops_dir: str | Path, mels_dir: str | Path, task: str) -> dict:
    """The Random row: exact expected metrics of a uniformly random ranking of the task's val tracklets."""
    started = time.perf_counter()
    tracklets = load_tracklets(crops_dir, mels_dir, "val", task)
    try:
        metrics = random_metrics(tracklets["video_id"].to_pylist(), tracklets["identity"].to_pylist())
    except ValueError as error:
        raise DataError(Path(crops_dir) / "val", f"task {task}: {error}") from None
    metrics.update(method=Method.random, task=task, tracklets=tracklets.num_rows,
                   seconds=round(time.perf_counter() - started, 3))
    return metrics


def _model_for(spec: Run, models_dir: Path, untrained_normalize: bool) -> tuple[Embedder, str, int]:
    """The run's trained checkpoint (with the seed it was trained with), or the network with seeded random weights."""
    import torch

    from stages.learning.models import build_model, load_checkpoint
    if spec.sampling is None:
        torch.manual_seed(spec.seed)
        return build_model(spec.modality, normalize=untrained_normalize), "random weights", spec.seed
    checkpoint = models_dir / spec.name / "model.pt"
    model = load_checkpoint(checkpoint)
    expected = {"modality": spec.modality, "sampling": spec.sampling, "task": spec.task}
    found = {"modality": model.modality, **{k: model.meta[k] for k in ("sampling", "task") if k in model.meta}}
    for key, value in found.items():
        if value != expected[key]:
            raise DataError(checkpoint, f"holds a run with {key} {value!r}, expected {expected[key]!r}", field=key)
    return model, str(checkpoint), int(model.meta.get("seed", spec.seed))


def run(settings: EvaluateParams, spec: Run, crops_dir: str | Path, mels_dir: str | Path, models_dir: str | Path,
        out_dir: str | Path, *, precision: str, untrained_normalize: bool) -> dict:
    """Embed the task's val tracklets with the run's network (trained, or seeded random weights when
    `spec.sampling` is None), rank them, write <out_dir>/<run>.parquet; returns the metrics."""
    import torch

    from stages.learning.embed import embed_tracklets
    started = time.perf_counter()
    model, origin, seed = _model_for(spec, Path(models_dir), untrained_normalize)
    if torch.cuda.is_available():
        model = model.cuda()
    table = embed_tracklets(model, spec.modality, crops_dir, mels_dir, "val", spec.task, settings, precision)
    embeddings_path = Path(out_dir) / f"{spec.name}.parquet"
    metrics = score(embeddings_from_table(table, embeddings_path), embeddings_path)
    write_parquet(embeddings_path, table)
    seconds = time.perf_counter() - started
    metrics.update(method=Method.untrained if spec.sampling is None else Method.trained, run=spec.name,
                   modality=spec.modality, sampling=spec.sampling, task=spec.task, seed=seed, model=origin,
                   embeddings=str(embeddings_path), tracklets=table.num_rows, seconds=round(seconds, 3),
                   tracklets_per_s=round(table.num_rows / max(seconds, 1e-9), 1))
    return metrics
