"""The README's workflow, for real, on a tiny dataset: dvc repro, a no-op second repro, an experiment, metrics diff.

Runs in a throwaway Git copy of the project with tiny params, so it exercises the true dvc.yaml,
every `apes-cli` stage and the report, end to end.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

TINY = {
    "synth": {"train_videos": 2, "val_videos": 1, "shots_per_video": 12, "shot_seconds": [1.0, 1.5],
              "intro_seconds": 0.5, "identities_per_video": [4, 5], "width": 256, "height": 144, "fps": 10},
    "crop": {"size": 32},
    "train": {"batch_size": 8, "steps_per_epoch": 2, "threads": 1,
              "face": {"epochs": 1}, "voice": {"epochs": 1}, "crossmodal": {"epochs": 1}},
    "evaluate": {"crops_per_track": 2, "snippets_per_track": 2},
}


def _merge(base: dict, update: dict) -> dict:
    for key, value in update.items():
        base[key] = _merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return base


def _run(args: list[str], cwd: Path) -> str:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", DVC_NO_ANALYTICS="1")
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Git copy of the tracked project with tiny params, after one full `dvc repro`."""
    copy = tmp_path_factory.mktemp("pipeline") / "apes"
    tracked = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
    for name in tracked:
        if name.startswith(("metrics/", "dvc.lock")) or not (ROOT / name).is_file():
            continue
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, copy / name)
    params = _merge(yaml.safe_load((ROOT / "params.yaml").read_text()), TINY)
    (copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for args in (["git", "init", "-q"], ["git", "add", "-A"],
                 ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny"]):
        _run(args, copy)
    _run(["dvc", "repro"], copy)
    return copy


@pytest.mark.slow
def test_repro_builds_the_full_benchmark_grid(project: Path) -> None:
    report = json.loads((project / "metrics" / "report.json").read_text())
    benchmark = json.loads((project / "metrics" / "benchmark.json").read_text())
    assert report["rows_filled"] == report["rows_total"]
    seen_heard = {row["key"] for row in benchmark["tasks"]["seen_heard"]}
    for modality in ("face", "voice", "crossmodal"):
        for sampling in ("weak", "within", "across"):
            assert f"{modality}/{sampling}" in seen_heard
    markdown = (project / "metrics" / "benchmark.md").read_text()
    rows = [line for line in markdown.splitlines() if line.startswith("| ") and "---" not in line]
    assert any(row.startswith("| Random") for row in rows) and any(row.startswith("| Untrained") for row in rows)
    assert {"Pretrained face", "Pretrained voice"} <= {row.split("|")[1].strip() for row in rows}
    assert not [row for row in rows if "—" in row]
    synth = json.loads((project / "metrics" / "synth.json").read_text())
    crop = json.loads((project / "metrics" / "crop.json").read_text())
    assert crop["crops"] + sum(crop["skips"].values()) == synth["boxes"]


@pytest.mark.slow
def test_second_repro_does_nothing(project: Path) -> None:
    status = _run(["dvc", "status"], project)
    assert "up to date" in status, status
    output = _run(["dvc", "repro"], project)
    assert "Running stage" not in output, output


def _results(path: Path) -> dict:
    """A metrics file without its timings, which no seed can fix."""
    return {k: v for k, v in json.loads(path.read_text()).items() if "second" not in k and "per_s" not in k}


@pytest.mark.slow
def test_forced_rerun_with_the_same_seed_gives_identical_metrics(project: Path) -> None:
    files = [project / "metrics" / "train" / "train_face_within_seen_seed0.json",
             project / "metrics" / "eval" / "eval_face_within_seen_seed0.json",
             project / "metrics" / "crop.json"]
    before = [_results(path) for path in files]
    model = project / "models" / "face_within_seen_seed0" / "model.pt"
    weights = model.read_bytes()
    _run(["dvc", "repro", "--force", "--single-item", "crop", "train_seen@within-0", "evaluate_seen@within-0"],
         project)
    assert [_results(path) for path in files] == before
    assert model.read_bytes() == weights  # the same bytes, so DVC sees the same model
    # identical crop shards leave triplets (which hashes them) up to date; only timings changed elsewhere
    assert "up to date" in _run(["dvc", "status", "triplets"], project)


@pytest.mark.slow
def test_experiment_changes_only_training_onward_and_metrics_diff_shows_it(project: Path) -> None:
    _run(["git", "add", "-A"], project)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "baseline results"], project)
    output = _run(["dvc", "exp", "run", "-S", "train.margin=0.5", "train_seen@within-0"], project)
    assert "Running stage 'train_seen@within-0'" in output
    assert "Running stage 'crop'" not in output and "Running stage 'raw'" not in output
    diff = _run(["dvc", "metrics", "diff", "--json"], project)
    changed = json.loads(diff)
    assert any("train_face_within_seen_seed0" in path for path in changed), changed
    params_diff = json.loads(_run(["dvc", "params", "diff", "--json"], project))
    assert params_diff["params.yaml"]["train.margin"]["new"] == 0.5


@pytest.mark.slow
def test_an_evaluation_param_reaches_only_the_evaluations(project: Path) -> None:
    """The issue 9 case: `-S evaluate.crops_per_track=...` re-ran every training, which never reads it."""
    params = project / "params.yaml"
    original = params.read_text()
    before = set(json.loads(_run(["dvc", "status", "--json"], project)))
    changed = yaml.safe_load(original)
    changed["evaluate"]["crops_per_track"] += 1
    params.write_text(yaml.safe_dump(changed, sort_keys=False))
    try:
        stale = set(json.loads(_run(["dvc", "status", "--json"], project))) - before
    finally:
        params.write_text(original)
    assert stale and all(name.startswith(("evaluate_seen", "evaluate_untrained")) for name in stale), stale
    assert "evaluate_untrained@0" in stale and "evaluate_seen_heard@face-weak-0" in stale
