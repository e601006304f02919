"""`apes-cli report`: a partial grid renders, its numbers are the metrics files' numbers, the figure marks errors."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from apes_cli.main import app
from stages.evaluation.figures import pick_queries
from stages.evaluation.tables import COLUMNS, PAPER
from stages.media.shards import with_metadata
from stages.report import MISSING

runner = CliRunner()


def _metrics(seed_offset: float, **fields) -> dict:
    values = {column: 10.0 + i + seed_offset for i, column in enumerate(COLUMNS)}
    values.update(videos=2, queries=10, skipped_queries=0, **fields)
    return values


def _write(directory: Path, name: str, payload: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text(json.dumps(payload))


def _invoke(metrics_dir: Path, tmp_path: Path, *extra: str):
    result = runner.invoke(app, ["report", "--eval-dir", str(metrics_dir), "--out", str(metrics_dir),
                                 "--metrics", str(metrics_dir / "report.json"),
                                 "--crops-dir", str(tmp_path / "crops"), *extra])
    assert result.exit_code == 0, result.output
    return (json.loads((metrics_dir / "benchmark.json").read_text()),
            (metrics_dir / "benchmark.md").read_text(), json.loads((metrics_dir / "report.json").read_text()))


def _row(report: dict, task: str, key: str) -> dict:
    return next(row for row in report["tasks"][task] if row["key"] == key)


def test_partial_grid_with_seeds_matches_the_files(tmp_path):
    metrics = tmp_path / "metrics"
    _write(metrics, "eval_random_seen_heard.json", _metrics(0.25, method="random", task="seen_heard"))
    for seed, offset in ((0, 0.0), (1, 2.0), (7, 50.0)):
        _write(metrics, f"eval_face_within_seen_heard_seed{seed}.json",
               _metrics(offset, method="trained", modality="face", sampling="within", task="seen_heard", seed=seed))
    _write(metrics, "eval_voice_untrained_seen_heard.json",
           _metrics(1.0, method="untrained", modality="voice", sampling=None, task="seen_heard", seed=0))
    _write(metrics, "eval_file_mine.json", _metrics(0.0))
    report, markdown, stage = _invoke(metrics, tmp_path, "--seeds", "0,1")

    face = _row(report, "seen_heard", "face/within")
    assert face["seeds"] == [0, 1]
    assert face["cells"]["mAP"]["mean"] == pytest.approx((16.0 + 18.0) / 2)
    assert face["cells"]["mAP"]["std"] == pytest.approx(np.std([16.0, 18.0], ddof=1))
    assert face["cells"]["mAP"]["paper"] == PAPER["seen_heard"]["face/within"][-1]
    assert "| Facial Matching: Within | 11.0 ± 1.4 (48.1) |" in markdown
    assert _row(report, "seen_heard", "random")["cells"]["R@10"]["mean"] == 10.25
    assert "| Random | 10.2 (12.0) |" in markdown or "| Random | 10.3 (12.0) |" in markdown
    assert _row(report, "seen_heard", "untrained/voice")["cells"]["P@1"]["mean"] == 14.0
    assert not _row(report, "seen", "face/weak")["cells"]["mAP"]["values"]
    assert f"| Facial Matching: Weak | {MISSING} (26.9) |" in markdown
    assert any("seed 7" in note for note in report["notes"])
    assert stage["files_read"] == 5 and len(stage["files_ignored"]) == 1
    assert stage["rows_filled"] == 3


def test_single_seed_prints_no_spread_and_warns(tmp_path):
    metrics = tmp_path / "metrics"
    _write(metrics, "eval_face_across_seen.json",
           _metrics(0.0, method="trained", modality="face", sampling="across", task="seen", seed=0))
    report, markdown, _ = _invoke(metrics, tmp_path)
    assert "| Facial Matching: Across | 10.0 (33.8) | 11.0 (70.4) |" in markdown
    assert not [line for line in markdown.splitlines() if line.startswith("|") and "±" in line]
    assert "single seed" in markdown


def test_corrupt_metrics_file_is_an_error_naming_the_field(tmp_path):
    metrics = tmp_path / "metrics"
    bad = _metrics(0.0, method="trained", modality="face", sampling="weak", task="seen", seed=0)
    bad["mAP"] = "NaN"
    _write(metrics, "eval_face_weak_seen.json", bad)
    result = runner.invoke(app, ["report", "--eval-dir", str(metrics), "--out", str(metrics),
                                 "--metrics", str(metrics / "report.json")])
    assert result.exit_code == 2
    assert "eval_face_weak_seen.json" in result.output and "'mAP'" in result.output
    assert not (metrics / "benchmark.md").exists()


def _crop_shard(crops: Path, video: str, entities: list[str], colours: list[tuple[int, int, int]]) -> None:
    size = 16
    images = [np.full((size, size, 3), colour, np.uint8).tobytes() for colour in colours]
    table = pa.table({"video_id": [video] * len(entities), "entity_id": entities,
                      "frame_timestamp": [1.0] * len(entities), "image": pa.array(images, pa.binary())})
    table = table.replace_schema_metadata(with_metadata(table.schema, {"crop_size": size}).metadata)
    (crops / "val").mkdir(parents=True, exist_ok=True)
    pq.write_table(table, crops / "val" / f"{video}.parquet")


def test_figure_of_the_best_run_frames_wrong_retrievals_in_red(tmp_path):
    metrics, crops = tmp_path / "metrics", tmp_path / "crops"
    entities = [f"v_e{i}" for i in range(8)]
    identities = ["a", "a", "a", "b", "b", "c", "c", "d"]
    vectors = [[0.0], [0.1], [3.0], [0.2], [3.1], [5.0], [9.0], [5.1]]
    embeddings = tmp_path / "best.parquet"
    pq.write_table(pa.table({"video_id": ["v"] * 8, "entity_id": entities, "identity": identities,
                             "embedding": pa.array(vectors, pa.list_(pa.float32()))}), embeddings)
    _crop_shard(crops, "v", entities, [(200, 200, 200)] * 8)
    for sampling, m_ap in (("within", 40.0), ("across", 60.0)):
        payload = _metrics(0.0, method="trained", modality="face", sampling=sampling, task="seen", seed=0,
                           run=f"face_{sampling}_seen", embeddings=str(embeddings))
        payload["mAP"] = m_ap
        _write(metrics, f"eval_face_{sampling}_seen.json", payload)
    report, markdown, stage = _invoke(metrics, tmp_path)
    assert stage["best_run"] == "eval_face_across_seen.json"
    assert "benchmark_examples.png" in markdown
    image = matplotlib.image.imread(metrics / "benchmark_examples.png")[..., :3]
    red = (image[..., 0] > 0.75) & (image[..., 1] < 0.25) & (image[..., 2] < 0.25)
    assert red.sum() > 100


def test_pick_queries_orders_easy_before_hard():
    video_ids = np.array(["v"] * 6)
    identities = np.array(["a", "a", "b", "b", "c", "c"])
    vectors = np.array([[0.0], [0.1], [1.0], [3.0], [2.0], [9.0]])
    chosen = pick_queries(video_ids, identities, vectors, np.array([f"e{i}" for i in range(6)]), easy=1, hard=1)
    (easy_query, easy_top, easy_ap), (hard_query, _, hard_ap) = chosen
    assert easy_ap == 1.0 and identities[easy_query] == "a" and easy_top[0] in (0, 1)
    assert hard_ap < 1.0 and identities[hard_query] != "a"
    assert len(easy_top) == 5


def _trained(task: str, modality: str, sampling: str, seed: int, mAP: float) -> dict:
    return _metrics(0.0, method="trained", modality=modality, sampling=sampling, task=task, seed=seed) | {"mAP": mAP}


def _claim(report: dict, claim: str) -> dict:
    return next(c for c in report["claims"] if c["claim"] == claim)


def test_claims_judge_gaps_against_twice_the_pooled_seed_std(tmp_path):
    metrics = tmp_path / "metrics"
    _write(metrics, "eval_random_seen_heard.json", _metrics(0.0, method="random", task="seen_heard") | {"mAP": 20.0})
    cells = {("face", "within"): (60.0, 64.0, 62.0),    # mean 62, std 2
             ("face", "weak"): (58.0, 62.0, 60.0),      # mean 60: gap 2 < 2 * pooled std 2 -> noise
             ("face", "across"): (30.0, 31.0, 32.0),    # mean 31: far below weak -> claim fails
             ("crossmodal", "within"): (61.0, 63.0, 65.0)}
    for (modality, sampling), values in cells.items():
        for seed, value in enumerate(values):
            _write(metrics, f"eval_{modality}_{sampling}_seen_heard_seed{seed}.json",
                   _trained("seen_heard", modality, sampling, seed, value))
    report, markdown, stage = _invoke(metrics, tmp_path, "--seeds", "0,1,2")

    beats_random = _claim(report, "Face beats Random")
    assert beats_random["gap"] == pytest.approx(42.0)
    assert beats_random["noise"] == pytest.approx(2 * np.sqrt(4.0 / 2))  # Random is exact: std 0
    assert beats_random["verdict"] == "holds"
    within = _claim(report, "Facial: Weak below Within")
    assert within["noise"] == pytest.approx(4.0) and within["verdict"] == "within noise"
    assert _claim(report, "Facial: Weak below Across")["verdict"] == "does not hold"
    assert _claim(report, "Cross-modal at least Face: Within")["verdict"] == "holds (within noise)"
    assert _claim(report, "Voice beats Random")["verdict"] == "not evaluated"
    assert "| Facial: Weak below Across | 31.0 | 60.0 | -29.0 |" in markdown
    assert stage["claims_holding"] == 2


def test_one_seed_is_not_judged_and_the_header_names_the_machine(tmp_path):
    metrics = tmp_path / "metrics"
    _write(metrics, "eval_random_seen.json", _metrics(0.0, method="random", task="seen"))
    _write(metrics, "eval_face_within_seen_seed0.json", _trained("seen", "face", "within", 0, 50.0))
    _write(metrics, "eval_face_within_seen_heard_seed0.json", _trained("seen_heard", "face", "within", 0, 55.0))
    machine = {"cpu": "Test CPU 9000", "cpu_capability": "AVX512", "cpu_flags": ["avx2", "amx_bf16"]}
    train = tmp_path / "train"
    for name in ("train_face_within_seen_seed0.json", "train_face_within_seen_heard_seed0.json"):
        _write(train, name, {"device": "cpu", "precision": "fp32", "machine": machine})
    report, markdown, _ = _invoke(metrics, tmp_path, "--seeds", "0", "--train-dir", str(train))
    assert _claim(report, "Seen harder than Seen & Heard: Face Within")["verdict"] == "one seed: not judged"
    assert _claim(report, "Seen harder than Seen & Heard: Face Within")["gap"] == pytest.approx(5.0)
    assert _claim(report, "Seen harder than Seen & Heard: Face Within")["noise"] is None
    assert "| Seen harder than Seen & Heard: Face Within | 55.0 | 50.0 | +5.0 | n/a | one seed: not judged |" in markdown
    assert report["trained_on"] == ["cpu, fp32: Test CPU 9000 (AVX512, avx2 amx_bf16) — 2 runs"]
    assert "Trained on: cpu, fp32: Test CPU 9000 (AVX512, avx2 amx_bf16) — 2 runs." in markdown
