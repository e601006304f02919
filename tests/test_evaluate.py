"""`apes-cli evaluate --embeddings`: the documented file format, its errors, and the metrics it gives."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from sklearn.metrics import average_precision_score
from typer.testing import CliRunner

from apes_cli.main import app
from stages.core.config import load_params
from stages.core.errors import DataError
from stages.evaluate import read_embeddings
from stages.evaluation.ranking import random_metrics, ranking_metrics
from stages.learning.embed import embed_tracklets
from stages.learning.models import build_model, checkpoint_payload

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
    result = runner.invoke(app, ["evaluate", "--embeddings", str(source), "--metrics", str(out)])
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
    result = runner.invoke(app, ["evaluate", "--embeddings", str(source), "--metrics", str(out)])
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
    result = runner.invoke(app, ["evaluate", "--embeddings", str(source), "--metrics", str(tmp_path / "o.json")])
    assert result.exit_code == 2
    assert "no query tracklet has a positive" in result.output


# --- trained, untrained and random runs on hand-made val shards ---------------------------------

CROP_SIZE, N_MELS, FRAMES = 32, 16, 12
PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def _val_shards(root: Path) -> tuple[Path, Path]:
    """Two val videos, 3 identities x 2 tracklets each (+ one silent tracklet), 2 crops and 2 snippets each."""
    rng = np.random.default_rng(0)
    crops, mels = root / "crops", root / "mels"
    for video in ("vidA", "vidB"):
        crop_rows, mel_rows = [], []
        for person in range(3):
            colour = rng.integers(0, 255, 3)
            for track in range(2):
                entity = f"{video}_0900_0960:{person * 2 + track}"
                for frame in range(2):
                    image = np.clip(colour + rng.normal(0, 20, (CROP_SIZE, CROP_SIZE, 3)), 0, 255).astype(np.uint8)
                    crop_rows.append((video, entity, f"{video}-p{person}", "SPEAKING_AUDIBLE", image.tobytes()))
                    mel = (person + rng.normal(0, 1, (N_MELS, FRAMES))).astype(np.float32)
                    mel_rows.append((video, entity, f"{video}-p{person}", mel.tobytes()))
        silent = np.zeros((CROP_SIZE, CROP_SIZE, 3), np.uint8).tobytes()
        crop_rows.append((video, f"{video}_0900_0960:9", f"{video}-p0", "NOT_SPEAKING", silent))
        for folder, names, rows, meta in (
            (crops, ("video_id", "entity_id", "identity", "label", "image"), crop_rows, {"crop_size": CROP_SIZE}),
            (mels, ("video_id", "entity_id", "identity", "mel"), mel_rows, {"n_mels": N_MELS, "frames": FRAMES}),
        ):
            table = pa.table({name: pa.array([r[i] for r in rows], pa.binary() if name in ("image", "mel")
                                             else pa.string()) for i, name in enumerate(names)})
            table = table.replace_schema_metadata({k: str(v) for k, v in meta.items()})
            (folder / "val").mkdir(parents=True, exist_ok=True)
            pq.write_table(table, folder / "val" / f"{video}.parquet")
    return crops, mels


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> tuple[Path, Path]:
    return _val_shards(tmp_path_factory.mktemp("val"))


def _run(tmp_path: Path, shards, *args: str, params: Path = PARAMS):
    """The evaluate command on the hand-made shards; its metrics go to <tmp_path>/metrics.json."""
    crops, mels = shards
    return runner.invoke(app, ["evaluate", *args, "--crops-dir", str(crops), "--mels-dir", str(mels),
                               "--models-dir", str(tmp_path / "models"), "--metrics", str(tmp_path / "metrics.json"),
                               "--out", str(tmp_path / "emb"), "--params", str(params)])


def test_untrained_run_is_seeded_and_scores_its_own_embeddings(tmp_path, shards):
    result = _run(tmp_path, shards, "--modality", "face", "--task", "seen", "--untrained", "--seed", "3")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["run"] == "face_untrained_seen_seed3"
    assert (metrics["method"], metrics["modality"], metrics["sampling"], metrics["seed"]) == ("untrained", "face",
                                                                                              None, 3)
    written = read_embeddings(tmp_path / "emb" / "face_untrained_seen_seed3.parquet")
    assert len(written.video_ids) == 14  # the silent tracklets belong to Seen
    again = ranking_metrics(written.video_ids, written.identities, written.vectors, written.entity_ids)
    assert metrics["mAP"] == pytest.approx(again["mAP"])
    assert _run(tmp_path, shards, "--modality", "face", "--task", "seen", "--untrained", "--seed", "3").exit_code == 0
    assert np.array_equal(read_embeddings(tmp_path / "emb" / "face_untrained_seen_seed3.parquet").vectors,
                          written.vectors)
    assert _run(tmp_path, shards, "--modality", "face", "--task", "seen", "--untrained", "--seed", "4").exit_code == 0
    assert not np.allclose(read_embeddings(tmp_path / "emb" / "face_untrained_seen_seed4.parquet").vectors,
                           written.vectors)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_trained_run_uses_its_checkpoint(tmp_path, shards, precision):
    raw = yaml.safe_load(PARAMS.read_text())
    raw["train"]["precision"] = precision
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    params = load_params(tmp_path / "params.yaml")
    torch.manual_seed(11)
    model = build_model("crossmodal").eval()
    meta = {"sampling": "within", "task": "seen_heard", "seed": 5}
    (tmp_path / "models" / "crossmodal_within_seen_heard").mkdir(parents=True)
    torch.save(checkpoint_payload(model, meta), tmp_path / "models" / "crossmodal_within_seen_heard" / "model.pt")
    result = _run(tmp_path, shards, "--modality", "crossmodal", "--sampling", "within", "--task", "seen_heard",
                  params=tmp_path / "params.yaml")
    assert result.exit_code == 0, result.output
    written = read_embeddings(tmp_path / "emb" / "crossmodal_within_seen_heard.parquet")
    assert len(written.video_ids) == 12  # silent tracklets are not Seen & Heard
    direct = embed_tracklets(model, "crossmodal", shards[0], shards[1], "val", "seen_heard", params.evaluate,
                             precision)
    assert np.allclose(written.vectors, np.stack(direct["embedding"].to_pylist()), atol=1e-5)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert (metrics["method"], metrics["sampling"], metrics["tracklets"], metrics["seed"]) == ("trained", "within",
                                                                                              12, 5)


def test_checkpoint_of_another_run_is_refused(tmp_path, shards):
    model = build_model("face")
    meta = {"sampling": "across", "task": "seen"}
    (tmp_path / "models" / "face_within_seen").mkdir(parents=True)
    torch.save(checkpoint_payload(model, meta), tmp_path / "models" / "face_within_seen" / "model.pt")
    result = _run(tmp_path, shards, "--modality", "face", "--sampling", "within", "--task", "seen")
    assert result.exit_code == 2
    assert "field 'sampling'" in result.output and "'across'" in result.output


def test_voice_needs_the_seen_heard_task(tmp_path, shards):
    result = _run(tmp_path, shards, "--modality", "voice", "--task", "seen", "--untrained")
    assert result.exit_code == 2
    assert "seen_heard" in result.output


def test_missing_checkpoint_exits_2_naming_it(tmp_path, shards):
    result = _run(tmp_path, shards, "--modality", "voice", "--sampling", "weak", "--task", "seen_heard")
    assert result.exit_code == 2
    assert "voice_weak_seen_heard" in result.output and "model.pt" in result.output


def test_random_row_is_the_exact_expectation_over_the_task_tracklets(tmp_path, shards):
    for task, per_video in (("seen", 7), ("seen_heard", 6)):
        result = _run(tmp_path, shards, "--random", "--task", task)
        assert result.exit_code == 0, result.output
        metrics = json.loads((tmp_path / "metrics.json").read_text())
        videos = ["vidA"] * per_video + ["vidB"] * per_video
        identities = [f"{v}-p{i // 2}" for v in ("vidA", "vidB") for i in range(6)]
        if task == "seen":
            identities = identities[:6] + ["vidA-p0"] + identities[6:] + ["vidB-p0"]
        want = random_metrics(videos, identities)
        assert metrics["mAP"] == pytest.approx(want["mAP"]) and metrics["tracklets"] == 2 * per_video


def test_stages_that_run_no_network_start_without_torch() -> None:
    """torch's import is 1.5-2 s of every stage process that loads it: the ones that need no network must not."""
    code = ("import sys; import stages.crop, stages.report, stages.evaluate, stages.triplets, stages.decode, "
            "stages.download, stages.asd, stages.evaluate_pretrained; print('torch' in sys.modules)")
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           cwd=Path(__file__).resolve().parents[1])
    assert found.stdout.strip() == "False"
