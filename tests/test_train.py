"""Training on a tiny shard set: it learns, resumes to the same result, rejects bad runs, and embeds tracklets."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from torchvision.models import resnet18
from train_data import PRECISION, TinySpec, reference_batch, write_tiny_shards
from typer.testing import CliRunner

from apes_cli.main import app
from stages import train as stage
from stages.core.choices import Modality
from stages.core.config import (
    EvaluateParams,
    OptimParams,
    TrainParams,
    TripletParams,
    load_params,
)
from stages.core.errors import ConfigError, DataError
from stages.core.runs import Run
from stages.core.schemas import EMBEDDINGS
from stages.evaluation.ranking import random_metrics
from stages.learning.datasets import crops_to_tensor, load_store, mels_to_tensor
from stages.learning.embed import autocast, embed_store, embed_tracklets, use_bf16
from stages.learning.feed import Feed, fits_on
from stages.learning.losses import TripletLoss
from stages.learning.models import build_model, load_checkpoint, one_column_at_last_stage
from stages.learning.pool import STREAMS
from stages.learning.resnet import ResNet18
from stages.learning.tracklets import read_tracklet_table
from stages.learning.trainer import Schedule, Trainer, TrainingError
from stages.learning.world import World
from stages.train import make_sampler, resolve_schedule, validation_due
from stages.train import run as train
from stages.triplets import run as triplets

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("train")
    crops, mels = write_tiny_shards(root, TinySpec(train_videos=3, val_videos=2, tracklets=4, crops=4, noise=0.35))
    triplets(TripletParams(), crops, mels, root / "triplets")
    return {"root": root, "crops": crops, "mels": mels, "triplets": root / "triplets"}


def _settings(epochs: int = 2, steps: int = 3, batch: int = 24, lr: float = 1e-3, **train: object) -> TrainParams:
    schedule = OptimParams(lr=lr, epochs=epochs, step_epochs=epochs)
    train = {"precision": PRECISION, **train}
    return dataclasses.replace(TrainParams(), threads=1, batch_size=batch, steps_per_epoch=steps, face=schedule,
                               voice=schedule, crossmodal=schedule, **train)


def _run(data: dict[str, Path], settings: TrainParams, spec: Run, out: Path, **kwargs: object) -> dict:
    return train(settings, spec, data["crops"], data["mels"], data["triplets"], out / "models",
                 out / "metrics" / f"train_{spec.name}.tsv", eval_batch_size=EvaluateParams().batch_size, **kwargs)


def test_cli_trained_face_model_beats_random_and_its_loss_falls(data: dict[str, Path], tmp_path: Path) -> None:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["train"].update(threads=1, batch_size=36, steps_per_epoch=4, face={"lr": 1e-3, "epochs": 3, "step_epochs": 3},
                        precision=PRECISION)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(app, [
        "train", "--modality", "face", "--sampling", "within", "--task", "seen",
        "--params", str(tmp_path / "params.yaml"),
        "--crops-dir", str(data["crops"]), "--mels-dir", str(data["mels"]), "--triplets-dir", str(data["triplets"]),
        "--out", str(tmp_path / "models"), "--metrics", str(tmp_path / "metrics" / "train_face_within_seen.json")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "metrics" / "train_face_within_seen.json").read_text())
    rows = (tmp_path / "metrics" / "train_face_within_seen.tsv").read_text().splitlines()
    assert rows[0].split("\t") == ["epoch", "loss", "val_mAP", "seconds"] and len(rows) == 4
    losses = [float(r.split("\t")[1]) for r in rows[1:]]
    assert losses[-1] < 0.6 * losses[0], losses
    # the project's train.val_every (0) validates the last epoch only
    assert [r.split("\t")[2] for r in rows[1:3]] == ["nan", "nan"]
    assert float(rows[-1].split("\t")[2]) == pytest.approx(metrics["val_mAP"], abs=1e-4)
    val = load_store(data["crops"], data["mels"], "val", "seen", ("crops",))
    chance = random_metrics(val.tracklets["video_id"].to_pylist(), val.tracklets["identity"].to_pylist())["mAP"]
    assert metrics["val_mAP"] > chance + 25, (metrics["val_mAP"], chance)
    model = load_checkpoint(tmp_path / "models" / "face_within_seen" / "model.pt")
    assert model.modality == "face" and model.meta["epochs"] == 3


@pytest.mark.parametrize("every, validated", [(0, [5]), (1, [1, 2, 3, 4, 5]), (2, [2, 4, 5]), (7, [5])])
def test_validation_runs_every_n_epochs_and_always_at_the_end(every: int, validated: list[int]) -> None:
    assert [epoch + 1 for epoch in range(5) if validation_due(epoch, 5, every)] == validated


class _Interrupt(Exception):
    pass


class _StopAfter:
    """A progress sink that kills the run after `steps` steps, like a Ctrl-C mid-epoch."""

    def __init__(self, steps: int) -> None:
        self.left = steps

    def start(self, total: int, description: str) -> None:
        pass

    def advance(self, amount: int = 1) -> None:
        self.left -= amount
        if self.left <= 0:
            raise _Interrupt


def test_resume_after_an_interruption_gives_the_uninterrupted_result(data: dict[str, Path], tmp_path: Path) -> None:
    settings, spec = _settings(epochs=3, steps=2), Run("face", "across", "seen", seed=3)
    started = time.perf_counter()
    whole = _run(data, settings, spec, tmp_path / "a")
    # seconds are the run's wall time, counted once (the metric is rounded to 0.01 s: it may pass the wall by 0.005)
    assert whole["seconds"] <= time.perf_counter() - started + 0.005
    with pytest.raises(_Interrupt):
        _run(data, settings, spec, tmp_path / "b", progress=_StopAfter(3))  # dies in epoch 2, after last.pt of epoch 1
    assert not (tmp_path / "b" / "models" / spec.name / "model.pt").exists()
    with pytest.raises(TrainingError, match="other settings"):
        _run(data, _settings(epochs=2, steps=4), spec, tmp_path / "b", resume=True)
    resumed = _run(data, settings, spec, tmp_path / "b", resume=True)
    assert resumed["resumed_at_epoch"] == 1
    assert (resumed["loss"], resumed["val_mAP"]) == (whole["loss"], whole["val_mAP"])
    history = (tmp_path / "a" / "metrics" / f"train_{spec.name}.tsv").read_text()
    assert [r.split("\t")[:3] for r in history.splitlines()] == \
        [r.split("\t")[:3] for r in (tmp_path / "b" / "metrics" / f"train_{spec.name}.tsv").read_text().splitlines()]
    a = torch.load(tmp_path / "a" / "models" / spec.name / "model.pt")["state_dict"]
    b = torch.load(tmp_path / "b" / "models" / spec.name / "model.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert sorted(p.name for p in (tmp_path / "b" / "models" / spec.name).iterdir()) == ["model.pt"]  # no last.pt


def test_voice_and_crossmodal_need_seen_heard(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["train", "--modality", "voice", "--task", "seen", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "needs task 'seen_heard'" in result.output
    with pytest.raises(ConfigError, match="modality 'crossmodal' needs task 'seen_heard'"):
        Run("crossmodal", "within", "seen", 0)
    assert Run("face", None, "seen", 4, seed_in_name=True).name == "face_untrained_seen_seed4"


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_crossmodal_mined_run_and_its_tracklet_embeddings(data: dict[str, Path], tmp_path: Path,
                                                          precision: str) -> None:
    settings = _settings(epochs=1, steps=2, batch=16, mining="batch_hard", normalize=True, margin=0.3, pk_k=2,
                         precision=precision)
    metrics = _run(data, settings, Run("crossmodal", "weak", "seen_heard", 0), tmp_path)
    assert np.isfinite(metrics["loss"]) and (metrics["mining"], metrics["precision"]) == ("batch_hard", precision)
    model = load_checkpoint(tmp_path / "models" / "crossmodal_weak_seen_heard" / "model.pt")
    table = embed_tracklets(model, "crossmodal", data["crops"], data["mels"], "val", "seen_heard",
                            EvaluateParams(crops_per_track=4), precision)
    assert table.schema.equals(EMBEDDINGS) and table.num_rows == 2 * 10
    vectors = np.array(table["embedding"].to_pylist())
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    store = load_store(data["crops"], data["mels"], "val", "seen_heard", ("crops", "mels"), 4, 8)
    t = store.tracks
    crops, mels = crops_to_tensor(store.crops), mels_to_tensor(store.mels)
    # under the run's precision: the joint projection of the tracklet's mean face and mean voice features
    with torch.no_grad(), autocast(torch.device("cpu"), precision == "bf16"):
        face = model.face(crops).float()[t.crop_start[0]:t.crop_start[0] + t.crop_count[0]].mean(0, keepdim=True)
        voice = model.voice(mels).float()[t.mel_start[0]:t.mel_start[0] + t.mel_count[0]].mean(0, keepdim=True)
        joint = model.joint(face, voice).float()
    assert np.allclose(model.finish(joint).numpy()[0], vectors[0], atol=1e-5)
    # in fp32: joint of the means == mean of the joints of every (crop, snippet) pair (the projection is linear)
    exact = embed_store(model, store)
    with torch.no_grad():
        face = model.face(crops[t.crop_start[0]:t.crop_start[0] + t.crop_count[0]])
        voice = model.voice(mels[t.mel_start[0]:t.mel_start[0] + t.mel_count[0]])
        pairs = model.joint(face.repeat_interleave(len(voice), 0), voice.repeat(len(face), 1)).mean(0, keepdim=True)
    assert np.allclose(model.finish(pairs).numpy()[0], exact[0], atol=1e-4)
    if precision == "fp32":
        assert np.allclose(exact, vectors, atol=1e-5)
    else:  # bf16 keeps about 3 significant digits: the same embeddings up to its rounding
        assert np.allclose(exact, vectors, atol=1e-2) and not np.array_equal(exact, vectors)


def test_the_designs_crossmodal_command_trains_the_single_runs_first_on_a_fresh_clone(data: dict[str, Path],
                                                                                       tmp_path: Path) -> None:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    one_step = {"lr": 1e-3, "epochs": 1, "step_epochs": 1}
    raw["train"].update(threads=1, batch_size=12, steps_per_epoch=1, precision=PRECISION, face=one_step,
                        voice=one_step, crossmodal={"lr": 1e-7, "epochs": 1, "step_epochs": 1},
                        crossmodal_init="single_runs")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    models, metrics_dir = tmp_path / "models", tmp_path / "metrics"
    command = ["train", "--modality", "crossmodal", "--sampling", "within", "--params", str(tmp_path / "params.yaml"),
               "--crops-dir", str(data["crops"]), "--mels-dir", str(data["mels"]),
               "--triplets-dir", str(data["triplets"]), "--out", str(models),
               "--metrics", str(metrics_dir / "train_crossmodal_within_seen_heard.json")]
    result = CliRunner().invoke(app, command)  # no face or voice run yet, as on a fresh clone
    assert result.exit_code == 0, result.output
    metrics = json.loads((metrics_dir / "train_crossmodal_within_seen_heard.json").read_text())
    assert metrics["started_from"]["voice"].endswith("voice_within_seen_heard/model.pt")
    for stream in ("face", "voice"):  # trained first, each with its own metrics and history; one tiny step after
        assert json.loads((metrics_dir / f"train_{stream}_within_seen_heard.json").read_text())["modality"] == stream
        assert (metrics_dir / f"train_{stream}_within_seen_heard.tsv").read_text().startswith("epoch\tloss")
        single = getattr(load_checkpoint(models / f"{stream}_within_seen_heard" / "model.pt"), stream)
        joint = getattr(load_checkpoint(models / "crossmodal_within_seen_heard" / "model.pt"), stream)
        for (name, got), want in zip(joint.named_parameters(), single.parameters()):
            assert torch.allclose(got, want, atol=1e-5), name
    face_bytes = (models / "face_within_seen_heard" / "model.pt").read_bytes()
    assert CliRunner().invoke(app, command).exit_code == 0  # the single runs exist now: started from, not retrained
    assert (models / "face_within_seen_heard" / "model.pt").read_bytes() == face_bytes
    assert "trained_first" not in json.loads((metrics_dir / "train_crossmodal_within_seen_heard.json").read_text())


def test_crossmodal_from_scratch_does_not_start_from_the_single_runs(data: dict[str, Path], tmp_path: Path) -> None:
    settings = _settings(epochs=1, steps=1, batch=12, crossmodal_init="scratch")
    metrics = _run(data, settings, Run("crossmodal", "within", "seen_heard", 4, True), tmp_path)
    assert metrics["started_from"] == {} and sorted(p.name for p in (tmp_path / "models").iterdir()) == \
        ["crossmodal_within_seen_heard_seed4"]


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (bench/gpu_check.sh)")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_a_nan_loss_stops_with_a_clear_message(data: dict[str, Path], tmp_path: Path, device: str) -> None:
    crops, mels = write_tiny_shards(tmp_path, TinySpec(train_videos=2, val_videos=1, crops=2, snippets=2))
    for shard in (mels / "train").glob("*.parquet"):
        table = pq.read_table(shard)
        poisoned = [np.full(len(v) // 4, np.nan, np.float32).tobytes() for v in table["mel"].to_pylist()]
        table = table.set_column(table.schema.get_field_index("mel"), "mel", pa.array(poisoned, pa.binary()))
        pq.write_table(table, shard)
    triplets(TripletParams(), crops, mels, tmp_path / "triplets")
    with pytest.raises(TrainingError, match="loss became nan at epoch 1, step 1"):
        _run({"crops": crops, "mels": mels, "triplets": tmp_path / "triplets"}, _settings(),
             Run("voice", "within", "seen_heard", 0), tmp_path, device=device)  # CUDA: checked at the epoch's end
    assert not (tmp_path / "models" / "voice_within_seen_heard" / "model.pt").exists()


def test_imagenet_weights_map_into_both_streams(tmp_path: Path) -> None:
    torch.manual_seed(0)
    reference = resnet18(weights=None).state_dict()
    torch.save(reference, tmp_path / "resnet18.pth")
    model = build_model("crossmodal", pretrained=str(tmp_path / "resnet18.pth"))
    assert torch.equal(model.face.net.conv1.weight, reference["conv1.weight"])
    assert torch.allclose(model.voice.net.conv1.weight, reference["conv1.weight"].mean(1, keepdim=True))
    assert torch.equal(model.voice.net.layer4[1].conv2.weight, reference["layer4.1.conv2.weight"])
    with pytest.raises(ConfigError, match="no ResNet-18 weights"):
        build_model("face", pretrained=str(tmp_path / "missing.pth"))
    torch.save({"something": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(DataError, match="not a torchvision ResNet-18"):
        build_model("voice", pretrained=str(tmp_path / "other.pth"))


@pytest.mark.parametrize("seed", [0, 7])
def test_the_local_resnet18_is_torchvisions_weight_for_weight(seed: int) -> None:
    torch.manual_seed(seed)
    theirs = resnet18(weights=None)
    after_theirs = torch.rand(4)  # the same random draws were taken: what follows stays seeded alike
    torch.manual_seed(seed)
    ours = ResNet18()
    assert torch.equal(torch.rand(4), after_theirs)
    mine, reference = ours.state_dict(), theirs.state_dict()
    assert list(mine) == list(reference) and all(torch.equal(mine[k], reference[k]) for k in reference)
    images = torch.randn(2, 3, 64, 64)
    assert torch.equal(ours.eval()(images), theirs.eval()(images))


def test_checkpoint_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_checkpoint(tmp_path / "none.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="junk.pt"):
        load_checkpoint(tmp_path / "junk.pt")


def test_project_params_name_a_valid_embedded_profile() -> None:
    params = load_params(ROOT / "params.yaml")
    assert params.train.profile in ("embedded", "paper") and params.train.mining in ("none", "batch_hard", "semi_hard")


@pytest.mark.slow
def test_torchrun_two_cpu_processes_train_with_ddp(data: dict[str, Path], tmp_path: Path) -> None:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["train"].update(threads=2, batch_size=12, steps_per_epoch=2, face={"lr": 1e-3, "epochs": 1, "step_epochs": 1})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "apes_cli", "train",
         "--modality", "face", "--sampling", "within", "--task", "seen", "--params", str(tmp_path / "params.yaml"),
         "--crops-dir", str(data["crops"]), "--mels-dir", str(data["mels"]), "--triplets-dir", str(data["triplets"]),
         "--out", str(tmp_path / "models"), "--metrics", str(tmp_path / "metrics" / "train_face_within_seen.json")],
        capture_output=True, text=True, timeout=300, cwd=ROOT, check=False,
        env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((tmp_path / "metrics" / "train_face_within_seen.json").read_text())
    assert metrics["world_size"] == 2 and np.isfinite(metrics["loss"])
    assert done.stdout.count('"world_size": 2') == 1  # only rank 0 reports
    assert load_checkpoint(tmp_path / "models" / "face_within_seen" / "model.pt").meta["epochs"] == 1


def test_paper_profile_is_the_papers_text_and_authors_the_released_code() -> None:
    paper = dataclasses.replace(TrainParams(), profile="paper")
    for modality in Modality:  # voice: "the same hyper-parameters"; cross-modal combines the two (equal) ones
        assert resolve_schedule(paper, modality, anchors=1000) == Schedule(3e-4, 70, 30, 384, 8)
    authors = dataclasses.replace(TrainParams(), profile="authors")
    assert resolve_schedule(authors, "face", anchors=1000) == Schedule(3e-4, 70, 30, 384, 8)
    assert resolve_schedule(authors, "voice", anchors=128) == Schedule(5e-4, 120, 50, 384, 1)
    assert resolve_schedule(authors, "crossmodal", anchors=129) == Schedule(5e-5, 120, 45, 384, 2)
    embedded = TrainParams()
    assert resolve_schedule(embedded, "face", 1000).lr == embedded.face.lr


def test_a_paper_run_without_imagenet_weights_or_124_px_crops_says_so(data: dict[str, Path], tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(stage.SCHEDULES, "paper", dict.fromkeys(Modality, (3e-4, 1, 1)))  # one epoch, one step
    settings = _settings(profile="paper")
    with caplog.at_level(logging.WARNING, logger="stages.train"):
        face = _run(data, settings, Run("face", "within", "seen_heard", 0), tmp_path / "a")
    lines = [r.getMessage() for r in caplog.records if r.name == "stages.train"]
    assert len(lines) == 1 and "departs from profile paper" in lines[0], lines
    assert [d.split(" ")[:2] for d in face["deviations"]] == [["no", "ImageNet"], ["face", "crops"]]
    assert "are 32 px, not 124" in lines[0] and (face["profile"], face["batch_size"]) == ("paper", 384)
    torch.manual_seed(0)
    torch.save(resnet18(weights=None).state_dict(), tmp_path / "resnet18.pth")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="stages.train"):
        voice = _run(data, dataclasses.replace(settings, pretrained=str(tmp_path / "resnet18.pth")),
                     Run("voice", "within", "seen_heard", 0), tmp_path / "b")
    assert voice["deviations"] == [] and not caplog.records  # weights given, and a voice run has no crops
    embedded = _run(data, _settings(epochs=1, steps=1), Run("voice", "weak", "seen_heard", 0), tmp_path / "c")
    assert embedded["deviations"] == []


def test_metrics_name_the_machine_and_auto_precision_is_fp32_on_every_cpu(data: dict[str, Path],
                                                                         tmp_path: Path) -> None:
    assert not use_bf16(torch.device("cpu"), "auto") and use_bf16(torch.device("cpu"), "bf16")
    metrics = _run(data, _settings(epochs=1, steps=1, precision="auto"), Run("voice", "within", "seen_heard", 0),
                   tmp_path)
    facts = metrics["machine"]
    assert (metrics["precision"], facts["precision"], facts["device"]) == ("fp32", "fp32", "cpu")
    assert facts["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and facts["cpu"]
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        flags = {w for line in cpuinfo.read_text().splitlines() if line.startswith("flags") for w in line.split()}
        assert set(facts["cpu_flags"]) == flags & {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}
    assert "gpu" not in facts and metrics["feed"] == "resident" and metrics["compile"] is False


def test_bf16_on_a_cpu_refuses_inputs_its_conv_backward_gets_wrong(data: dict[str, Path]) -> None:
    # torch 2.14.1's oneDNN bf16 backward fills the weight gradient of a strided 3x3 conv on one-column inputs
    # with uninitialised memory; these inputs reach ResNet-18's last stage one column wide
    assert [one_column_at_last_stage(w) for w in (1, 12, 16, 17, 20, 64)] == [True, True, True, False, False, False]
    store = load_store(data["crops"], data["mels"], "train", "seen_heard", ("crops", "mels"))
    narrow = dataclasses.replace(store, mels=store.mels[:, :, :12])
    spec = Run("crossmodal", "within", "seen_heard", 0)
    with pytest.raises(ConfigError, match=r"train.precision: run crossmodal_within_seen_heard: the voice snippets are "
                                          r"12 frames wide.*mel.snippet_seconds"):
        stage.check_bf16_widths(narrow, spec, torch.device("cpu"), bf16=True)
    stage.check_bf16_widths(narrow, spec, torch.device("cpu"), bf16=False)
    stage.check_bf16_widths(narrow, Run("face", "within", "seen_heard", 0), torch.device("cpu"), bf16=True)
    stage.check_bf16_widths(store, spec, torch.device("cpu"), bf16=True)
    with pytest.raises(ConfigError, match="the face crops are 16 px wide.*crop.size"):
        stage.check_bf16_widths(dataclasses.replace(store, crops=store.crops[:, :16, :16]), spec,
                                torch.device("cpu"), bf16=True)


@pytest.mark.parametrize("modality, mining", [("face", "none"), ("crossmodal", "batch_hard")])
def test_feed_batches_are_the_cpu_paths_bits_and_a_function_of_the_key(data: dict[str, Path], modality: str,
                                                                       mining: str) -> None:
    store = load_store(data["crops"], data["mels"], "train", "seen_heard", STREAMS[modality],
                       tracklets=read_tracklet_table(data["triplets"], "seen_heard"))
    sampler = make_sampler(store, Run(modality, "within", "seen_heard", 5), TripletLoss(mining), 24, pk_k=2)
    keys = [(0, 0), (0, 1), (3, 2)]
    cpu = torch.device("cpu")
    for rank, world in ((0, 1), (1, 2)):
        resident = Feed(store, sampler, 5, cpu, rank, world)
        staged = Feed(store, sampler, 5, cpu, rank, world, resident=False)
        streamed = dict(resident.batches(keys))
        assert list(streamed) == keys and resident.resident and not staged.resident
        for key in reversed(keys):  # any order: a batch depends on its key alone
            expected = reference_batch(store, sampler, 5, *key, rank, world)
            for batch in (resident[key], staged[key], streamed[key], dict(staged.batches([key]))[key]):
                assert batch.keys() == expected.keys()
                assert all(torch.equal(batch[name], expected[name]) for name in expected), key
                assert all(batch[name].dtype == expected[name].dtype for name in expected)
        if "crops" in expected:
            assert batch["crops"].is_contiguous(memory_format=torch.channels_last)
            assert not torch.equal(expected["crops"], reference_batch(store, sampler, 6, 3, 2, rank, world)["crops"])


def test_feed_in_dataloader_workers_gives_the_same_batches(data: dict[str, Path]) -> None:
    tracklets = read_tracklet_table(data["triplets"], "seen")
    store = load_store(data["crops"], None, "train", "seen", ("crops",), tracklets=tracklets)
    feed = Feed(store, make_sampler(store, Run("face", "across", "seen", 2), TripletLoss(), 24, pk_k=2), 2,
                torch.device("cpu"))
    keys = [(1, 0), (1, 1)]
    loader = torch.utils.data.DataLoader(feed, batch_size=None, sampler=keys, num_workers=1)
    assert all(torch.equal(batch["crops"], feed[key]["crops"]) for key, batch in zip(keys, loader))


def test_items_stay_on_the_gpu_only_when_they_leave_headroom(monkeypatch: pytest.MonkeyPatch) -> None:
    gib = 1 << 30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (76 * gib, 80 * gib))
    assert fits_on(torch.device("cuda", 0), 17 * gib)  # the real train split at 124 px on an 80 GB card
    assert not fits_on(torch.device("cuda", 0), 60 * gib)
    assert fits_on(torch.device("cpu"), 1 << 50)  # on the CPU the items already sit in RAM


def test_compile_wraps_the_model_step_and_is_off_by_default() -> None:
    spec, schedule = Run("face", "within", "seen", 0), Schedule(1e-3, 1, 1, 24, 1)
    world = World(0, 1, torch.device("cpu"))
    plain = Trainer(_settings(), spec, schedule, world, {}, TripletLoss())
    assert plain.net is plain.model and not TrainParams().compile
    compiled = Trainer(_settings(compile=True), spec, schedule, world, {}, TripletLoss())
    assert isinstance(compiled.net, torch._dynamo.eval_frame.OptimizedModule)
    assert compiled.net._orig_mod is compiled.model


@CUDA
def test_cuda_feed_matches_the_cpu_batches_and_trains(data: dict[str, Path], tmp_path: Path) -> None:
    store = load_store(data["crops"], data["mels"], "train", "seen_heard", ("crops", "mels"),
                       tracklets=read_tracklet_table(data["triplets"], "seen_heard"))
    sampler = make_sampler(store, Run("crossmodal", "within", "seen_heard", 5), TripletLoss("batch_hard"), 24,
                           pk_k=2)
    cuda = torch.device("cuda")
    resident, staged = Feed(store, sampler, 5, cuda), Feed(store, sampler, 5, cuda, resident=False)
    assert resident.resident and not staged.resident
    keys = [(0, s) for s in range(4)]
    for key, batch in staged.batches(keys):
        expected, same = reference_batch(store, sampler, 5, *key), resident[key]
        assert batch.keys() == same.keys() == expected.keys()
        for name in expected:
            assert batch[name].device.type == "cuda" and torch.equal(batch[name], same[name])
            assert torch.allclose(batch[name].cpu().float(), expected[name].float(), atol=1e-5), name
    metrics = _run(data, _settings(epochs=2, steps=3, precision="auto"), Run("face", "within", "seen", 0), tmp_path,
                   device="cuda")
    assert (metrics["device"], metrics["precision"], metrics["feed"]) == ("cuda", "bf16", "resident")
    assert metrics["machine"]["gpu"] == torch.cuda.get_device_name(0) and np.isfinite(metrics["loss"])
