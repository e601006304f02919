"""Tracklet embeddings as a method's answer: read and validate an EMBEDDINGS-like table, and score it.

Every problem names the file, the 1-based row and the column (docs/evaluation.md: the embeddings format).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from stages.core.errors import DataError
from stages.core.schemas import EMBEDDINGS
from stages.evaluation.ranking import ranking_metrics

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
