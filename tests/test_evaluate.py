"""`apes-cli evaluate --embeddings`: the documented file format, its errors, and the metrics it gives."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import average_precision_score
from typer.testing import CliRunner

from apes_cli.main import app
from stages.evaluate import read_embeddings
from stages.errors import DataError

runner = CliRunner()

VIDEOS = ["v1"] * 5 + ["v2"] * 4
ENTITIES = [f"{v}_e{i}" for i, v in enumerate(VIDEOS)]
IDENTITIES = ["a", "a", "b", "b", "c", "x", "x", "y", "x"]
VECTORS = [[0.0, 0.0], [0.2, 0.1], [1.0, 1.0], [0.3, 0.0], [2.0, 2.0],
           [0.0, 1.0], [0.0, 3.0], [0.0, 2.0], [0.0, 2.5]]


def _write(path: Path, **overrides) -> Path:
    columns = {
        "video_id": pa.array(VIDEOS, pa.string()),
        "entity_id": pa.array(ENTITIES, pa.string()),
        "identity": pa.array(IDENTITIES, pa.string()),
        "embedding": pa.array(VECTORS, pa.list_(pa.float32())),
    }
    columns.update(overrides)
    pq.write_table(pa.table({k: v for k, v in columns.items() if v is not None}), path)
    return path


def _by_hand() -> dict[str, float]:
    """Per query: scikit-learn AP and a sorted list; mean per video, then over videos."""
    per_video = []
    for video in ("v1", "v2"):
        rows = [i for i, v in enumerate(VIDEOS) if v == video]
        aps, p1s = [], []
        for q in rows:
            gallery = [i for i in rows if i != q]
            rel = np.array([IDENTITIES[i] == IDENTITIES[q] for i in gallery], dtype=int)
            if not rel.any():
                continue
            dist = np.array([np.sum((np.array(VECTORS[i]) - VECTORS[q]) ** 2) for i in gallery])
            aps.append(average_precision_score(rel, -dist))
            p1s.append(rel[np.argsort(dist, kind="stable")[0]])
        per_video.append((np.mean(aps), np.mean(p1s)))
    return {"mAP": 100 * np.mean([v[0] for v in per_video]), "P@1": 100 * np.mean([v[1] for v in per_video])}


def test_embeddings_file_gives_the_hand_computed_metrics(tmp_path):
    source = _write(tmp_path / "mine.parquet")
    out = tmp_path / "mine.json"
    result = runner.invoke(app, ["evaluate", "--embeddings", str(source), "--out", str(out)])
    assert result.exit_code == 0, result.output
    metrics = json.loads(out.read_text())
    want = _by_hand()
    assert metrics["mAP"] == pytest.approx(want["mAP"])
    assert metrics["P@1"] == pytest.approx(want["P@1"])
    assert (metrics["videos"], metrics["queries"], metrics["skipped_queries"]) == (2, 7, 2)
    assert set(metrics) >= {"mAP", "P@1", "P@5", "P@10", "R@10", "R@50", "R@100"}


@pytest.mark.parametrize(("overrides", "row", "column", "message"), [
    ({"identity": None}, None, "identity", "missing column"),
    ({"video_id": pa.array(range(9), pa.int64())}, None, "video_id", "expected a string column"),
    ({"embedding": pa.array([str(v) for v in VECTORS])}, None, "embedding", "expected a list of floats"),
    ({"embedding": pa.array(VECTORS[:3] + [[1.0, 2.0, 3.0]] + VECTORS[4:], pa.list_(pa.float64()))},
     4, "embedding", "length 3, expected 2"),
    ({"embedding": pa.array(VECTORS[:6] + [[0.0, float("nan")]] + VECTORS[7:], pa.list_(pa.float32()))},
     7, "embedding", "NaN"),
    ({"embedding": pa.array(VECTORS[:1] + [None] + VECTORS[2:], pa.list_(pa.float32()))},
     2, "embedding", "missing embedding"),
    ({"embedding": pa.array(VECTORS[:2] + [[1.0, None]] + VECTORS[3:], pa.list_(pa.float32()))},
     3, "embedding", "null value"),
    ({"entity_id": pa.array(ENTITIES[:5] + [ENTITIES[2]] + ENTITIES[6:])}, 6, "entity_id", "appears again"),
    ({"identity": pa.array(IDENTITIES[:8] + [None])}, 9, "identity", "missing value"),
])
def test_malformed_file_names_file_row_and_column(tmp_path, overrides, row, column, message):
    source = _write(tmp_path / "bad.parquet", **overrides)
    with pytest.raises(DataError) as caught:
        read_embeddings(source)
    assert (caught.value.file, caught.value.line, caught.value.field) == (str(source), row, column)
    assert message in str(caught.value)


def test_malformed_file_exits_2_without_output(tmp_path):
    source = _write(tmp_path / "bad.parquet",
                    embedding=pa.array(VECTORS[:6] + [[0.0, float("nan")]] + VECTORS[7:], pa.list_(pa.float32())))
    out = tmp_path / "out.json"
    result = runner.invoke(app, ["evaluate", "--embeddings", str(source), "--out", str(out)])
    assert result.exit_code == 2
    assert "line 7, field 'embedding'" in result.output and "bad.parquet" in result.output
    assert not out.exists()


def test_not_a_parquet_file(tmp_path):
    source = tmp_path / "text.parquet"
    source.write_text("video_id,entity_id\n")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        read_embeddings(source)


def test_file_without_any_positive_pair_is_an_error(tmp_path):
    source = _write(tmp_path / "lonely.parquet", identity=pa.array([f"p{i}" for i in range(9)]))
    result = runner.invoke(app, ["evaluate", "--embeddings", str(source), "--out", str(tmp_path / "o.json")])
    assert result.exit_code == 2
    assert "no query tracklet has a positive" in result.output
