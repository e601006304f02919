"""Stage 'evaluate': rank val tracklets by embedding distance and write the benchmark metrics.

Four sources of embeddings, one metric code (stages.evaluation.ranking):
- a trained checkpoint, or the same network with seeded random weights (`untrained`);
- a pretrained off-the-shelf embedder: dlib's face descriptor or the default speaker embedder, CAM++ (`pretrained`);
- anyone's embeddings Parquet (video_id, entity_id, identity, embedding; docs/evaluation.md);
- none: the exact expected metrics of a uniformly random ranking of the val tracklets.
One function per source (`run`, `run_pretrained`, `run_embeddings_file`, `run_random`); each returns the
metrics, which the command writes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from stages.core.atomic import write_parquet
from stages.core.config import EvaluateParams, PretrainedBaselineParams
from stages.core.errors import DataError
from stages.core.progress import Progress
from stages.core.runs import Run
from stages.core.schemas import EMBEDDINGS
from stages.evaluation.ranking import random_metrics, ranking_metrics
from stages.footage.pretrained_embeddings import PRETRAINED_MODELS, face_embeddings, voice_embeddings
from stages.learning.embed import embed_tracklets
from stages.learning.models import Embedder, build_model, load_checkpoint
from stages.learning.tracklets import load_tracklets
from stages.media.video_jobs import resolve_workers

STRING_COLUMNS = ("video_id", "entity_id", "identity")


@dataclass(frozen=True)
class Embeddings:
    """Tracklet embeddings with the labels ranking needs."""

    video_ids: list[str]
    entity_ids: list[str]
    identities: list[str]
    vectors: np.ndarray


def _first_row(mask: pa.Array | np.ndarray) -> int:
    """1-based row of the first true entry."""
    return int(np.flatnonzero(np.asarray(mask))[0]) + 1


def _check_strings(table: pa.Table, path: Path) -> None:
    for name in STRING_COLUMNS:
        column = table[name]
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            raise DataError(path, f"expected a string column, found {column.type}", field=name)
        nulls = column.is_null().to_numpy(zero_copy_only=False)
        if nulls.any():
            raise DataError(path, "missing value", _first_row(nulls), name)
        empty = pc.equal(pc.utf8_length(column), 0).to_numpy(zero_copy_only=False)
        if empty.any():
            raise DataError(path, "empty string", _first_row(empty), name)


def _embedding_matrix(column: pa.ChunkedArray, path: Path) -> np.ndarray:
    """The embedding column as an (n, dim) float32 matrix: equal lengths, no null, finite values."""
    kind = column.type
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)) \
            or not pa.types.is_floating(kind.value_type):
        raise DataError(path, f"expected a list of floats, found {kind}", field="embedding")
    array = column.combine_chunks()
    nulls = array.is_null().to_numpy(zero_copy_only=False)
    if nulls.any():
        raise DataError(path, "missing embedding", _first_row(nulls), "embedding")
    lengths = pc.list_value_length(array).to_numpy(zero_copy_only=False)
    dim = int(lengths[0])
    if dim == 0:
        raise DataError(path, "empty embedding", 1, "embedding")
    ragged = lengths != dim
    if ragged.any():
        row = _first_row(ragged)
        raise DataError(path, f"embedding of length {lengths[row - 1]}, expected {dim} like row 1", row, "embedding")
    values = pc.list_flatten(array)
    if values.null_count:
        inner_nulls = values.is_null().to_numpy(zero_copy_only=False).reshape(len(array), dim).any(axis=1)
        raise DataError(path, "null value inside an embedding", _first_row(inner_nulls), "embedding")
    matrix = values.to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(array), dim)
    finite = np.isfinite(matrix).all(axis=1)
    if not finite.all():
        raise DataError(path, "NaN or infinite value in the embedding", _first_row(~finite), "embedding")
    return matrix


def embeddings_from_table(table: pa.Table, source: str | Path) -> Embeddings:
    """Validate an EMBEDDINGS-like table; every problem names `source`, the 1-based row and the column."""
    source = Path(source)
    missing = [name for name in EMBEDDINGS.names if name not in table.column_names]
    if missing:
        raise DataError(source, f"missing column (expected columns {', '.join(EMBEDDINGS.names)})",
                        field=missing[0])
    if table.num_rows == 0:
        raise DataError(source, "no rows")
    _check_strings(table, source)
    vectors = _embedding_matrix(table["embedding"], source)
    entity_ids = table["entity_id"].to_pylist()
    first_seen: dict[str, int] = {}
    for row, entity in enumerate(entity_ids, start=1):
        if entity in first_seen:
            raise DataError(source, f"entity {entity!r} appears again (first at row {first_seen[entity]})",
                            row, "entity_id")
        first_seen[entity] = row
    return Embeddings(table["video_id"].to_pylist(), entity_ids, table["identity"].to_pylist(), vectors)


def read_embeddings(path: str | Path) -> Embeddings:
    """Read and validate an embeddings Parquet (format in docs/evaluation.md)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "no such file")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as error:
        raise DataError(path, f"not a readable Parquet file: {error}") from None
    return embeddings_from_table(table, path)


def score(embeddings: Embeddings, source: Path | str) -> dict:
    """Ranking metrics of `embeddings`; having no query with a positive is a DataError on `source`."""
    try:
        return ranking_metrics(embeddings.video_ids, embeddings.identities, embeddings.vectors,
                               embeddings.entity_ids)
    except ValueError as error:
        raise DataError(source, str(error)) from None


def run_embeddings_file(path: str | Path) -> dict:
    """Mode (b): metrics of anyone's embeddings file."""
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
    metrics.update(method="random", task=task, tracklets=tracklets.num_rows,
                   seconds=round(time.perf_counter() - started, 3))
    return metrics


def run_pretrained(settings: PretrainedBaselineParams, modality: str, task: str, crops_dir: str | Path,
                   mels_dir: str | Path, decoded_dir: str | Path, out_dir: str | Path, workers: int = 0,
                   progress: Progress | None = None) -> dict:
    """The Pretrained rows: embed the task's val tracklets with dlib (face) or CAM++ (voice), write
    <out_dir>/pretrained_<modality>_<task>.parquet and rank them like any method; returns the metrics.
    `modality` is a key of PRETRAINED_MODELS; voice needs the seen_heard task; face runs dlib on `workers`
    processes (0: one per core)."""
    started = time.perf_counter()
    if modality == "face":
        table = face_embeddings(crops_dir, mels_dir, "val", task, settings.crops_per_track,
                                resolve_workers(workers), progress)
    else:
        table = voice_embeddings(crops_dir, mels_dir, decoded_dir, "val", task, settings.snippets_per_track,
                                 progress)
    embeddings_path = Path(out_dir) / f"pretrained_{modality}_{task}.parquet"
    metrics = score(embeddings_from_table(table, embeddings_path), embeddings_path)
    write_parquet(embeddings_path, table)
    seconds = time.perf_counter() - started
    metrics.update(method="pretrained", modality=modality, task=task, model=PRETRAINED_MODELS[modality],
                   embeddings=str(embeddings_path), tracklets=table.num_rows, seconds=round(seconds, 3),
                   tracklets_per_s=round(table.num_rows / max(seconds, 1e-9), 1))
    return metrics


def _model_for(spec: Run, models_dir: Path, untrained_normalize: bool) -> tuple[Embedder, str, int]:
    """The run's trained checkpoint (with the seed it was trained with), or the network with seeded random weights."""
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
    """Mode (a): embed the task's val tracklets with the run's network (trained, or seeded random weights when
    `spec.sampling` is None), rank them, write <out_dir>/<run>.parquet; returns the metrics."""
    started = time.perf_counter()
    model, origin, seed = _model_for(spec, Path(models_dir), untrained_normalize)
    if torch.cuda.is_available():
        model = model.cuda()
    table = embed_tracklets(model, spec.modality, crops_dir, mels_dir, "val", spec.task, settings, precision)
    embeddings_path = Path(out_dir) / f"{spec.name}.parquet"
    metrics = score(embeddings_from_table(table, embeddings_path), embeddings_path)
    write_parquet(embeddings_path, table)
    seconds = time.perf_counter() - started
    metrics.update(method="untrained" if spec.sampling is None else "trained", run=spec.name,
                   modality=spec.modality, sampling=spec.sampling, task=spec.task, seed=seed, model=origin,
                   embeddings=str(embeddings_path), tracklets=table.num_rows, seconds=round(seconds, 3),
                   tracklets_per_s=round(table.num_rows / max(seconds, 1e-9), 1))
    return metrics
