"""Stage 'train': triplet training of one (modality, sampling, task) run, with per-epoch validation mAP.

Outputs (rank 0 only): models/<run>/last.pt after each epoch but the last (resume), then model.pt, and the
per-epoch history TSV (epoch, loss, val_mAP, seconds) for dvc plots; `run` returns the metrics.
A batch is a pure function of (seed, epoch, step), so `resume` replays an interrupted epoch exactly.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from stages.core.atomic import atomic_path
from stages.core.choices import CrossmodalInit, Device, Modality, Profile
from stages.core.config import TrainParams
from stages.core.errors import ApesError, ConfigError, DataError
from stages.core.progress import Progress, Silent
from stages.core.runs import Run
from stages.evaluation.ranking import ranking_metrics
from stages.learning.datasets import Store, crop_geometry, load_store
from stages.learning.embed import embed_store, use_bf16
from stages.learning.feed import Feed
from stages.learning.losses import TripletLoss
from stages.learning.models import (
    Embedder,
    build_model,
    checkpoint_payload,
    LAST_STAGE_STRIDE,
    one_column_at_last_stage,
    start_stream_from,
)
from stages.learning.pool import STREAMS
from stages.learning.samplers import PKSampler, TripletSampler
from stages.learning.strategies import strategy_named
from stages.learning.tracklets import read_tracklet_table

# lr, epochs, StepLR step (x0.1) per modality; sources in docs/training.md
SCHEDULES = {
    Profile.paper: dict.fromkeys(Modality, (3e-4, 70, 30)),  # section 4.1: voice and cross-modal share the face's
    Profile.authors: {Modality.face: (3e-4, 70, 30), Modality.voice: (5e-4, 120, 50),
                      Modality.crossmodal: (5e-5, 120, 45)},  # released code
}
PAPER_BATCH = 3 * 128  # 128 triplets a step: the authors' code (the paper gives no batch size)
PAPER_CROP = 124  # face crop side of section 4.1
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")  # the ones that change CPU kernels (and so results)
log = logging.getLogger(__name__)


class TrainingError(ApesError):
    """A run that cannot start or cannot go on (no anchors, NaN loss, mismatched resume)."""


@dataclass(frozen=True)
class Schedule:
    """What the profile resolves to for one run."""

    lr: float
    epochs: int
    step_epochs: int
    batch_size: int
    steps_per_epoch: int


@dataclass(frozen=True)
class World:
    """This process's place under torchrun (rank 0 of 1 when launched plainly) and its device."""

    rank: int
    size: int
    device: torch.device

    @property
    def leader(self) -> bool:
        """Rank 0 validates and writes."""
        return self.rank == 0

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of a scalar over the ranks."""
        if self.size > 1:
            dist.all_reduce(value)
            value /= self.size
        return value

    def barrier(self) -> None:
        """Wait for every rank."""
        if self.size > 1:
            dist.barrier()

    def close(self) -> None:
        """Wait for every rank, then leave the process group (DDP teardown)."""
        if self.size > 1:
            dist.barrier()
            dist.destroy_process_group()


@dataclass
class Progression:
    """Where a run stands: the next epoch, the epochs done so far and the seconds they took."""

    first_epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def seconds_before(self) -> float:
        """Wall seconds of the epochs done before this process started."""
        return self.history[-1]["seconds"] if self.history else 0.0


def resolve_schedule(train: TrainParams, modality: str, anchors: int) -> Schedule:
    """The embedded profile reads params.yaml; paper and authors use their schedules and one pass over the anchors."""
    if train.profile in SCHEDULES:
        lr, epochs, step = SCHEDULES[train.profile][modality]
        return Schedule(lr, epochs, step, PAPER_BATCH, max(1, math.ceil(anchors / (PAPER_BATCH // 3))))
    optim = train.optim(modality)
    return Schedule(optim.lr, optim.epochs, optim.step_epochs, train.batch_size, train.steps_per_epoch)


def select_device(setting: Device | str, local_rank: int = 0) -> torch.device:
    """auto: CUDA when available, else CPU; asking for CUDA without one is an error."""
    setting = Device(setting)
    if setting is Device.cuda and not torch.cuda.is_available():
        raise TrainingError("--device cuda asked for, but no CUDA device is visible")
    if setting is Device.cpu or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


def join_world(device: Device | str, threads: int) -> World:
    """Read torchrun's environment, pick the device, join the process group, and share the threads."""
    rank, size = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    dev = select_device(device, int(os.environ.get("LOCAL_RANK", "0")))
    if size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    torch.set_num_threads(max(1, threads // int(os.environ.get("LOCAL_WORLD_SIZE", size))))
    return World(rank, size, dev)


def machine(device: torch.device, bf16: bool) -> dict[str, Any]:
    """Where the numbers came from: device, precision, CPU model, torch's CPU kernel level and flags, GPU."""
    cpu, flags = platform.processor() or platform.machine(), set()
    info = Path("/proc/cpuinfo")
    for line in info.read_text().splitlines() if info.is_file() else []:
        name, _, value = line.partition(":")
        if name.strip() == "model name":
            cpu = value.strip()
        elif name.strip() == "flags":
            flags = set(value.split())
    facts = {"device": device.type, "precision": "bf16" if bf16 else "fp32", "cpu": cpu,
             "cpu_capability": torch.backends.cpu.get_cpu_capability(),
             "cpu_flags": [flag for flag in CPU_FLAGS if flag in flags], "torch": torch.__version__}
    if device.type == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(device)
    return facts


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def _rng_states() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def _restore_rng(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])


def make_sampler(store: Store, spec: Run, loss: TripletLoss, batch_size: int,
                 pk_k: int) -> TripletSampler | PKSampler:
    """Plain triplets (the paper), or P x K batches of `pk_k` items a label when the loss mines."""
    strategy = strategy_named(spec.sampling)
    if not loss.mines:
        return TripletSampler(store.tracks, strategy, spec.modality, batch_size, spec.seed)
    return PKSampler(store.tracks, strategy, spec.modality, batch_size, spec.seed, pk_k)


def run_loss(train: TrainParams, spec: Run) -> TripletLoss:
    """The run's loss, built once: mining, margin and normalisation from params, the positive rule from the
    sampling strategy."""
    return TripletLoss(train.mining, train.margin, train.normalize, strategy_named(spec.sampling).distinct_tracks)


def validation_map(model: Embedder, store: Store, device: torch.device, batch_size: int, bf16: bool,
                   where: str | Path = "val") -> float:
    """Validation mAP: the paper's per-video ranking mAP of the val tracklets."""
    embeddings = embed_store(model, store, device, batch_size, bf16)
    try:
        return ranking_metrics(store.tracklets["video_id"].to_pylist(), store.tracklets["identity"].to_pylist(),
                               embeddings, store.tracklets["entity_id"].to_pylist())["mAP"]
    except ValueError as error:
        raise DataError(where, f"cannot validate: {error}") from None


def validation_due(epoch: int, epochs: int, every: int) -> bool:
    """Whether 0-based `epoch` validates: every `every` epochs (0: none but the last), and always the last."""
    return epoch + 1 == epochs or (every > 0 and (epoch + 1) % every == 0)


def _write_history(path: Path, history: list[dict[str, float]]) -> None:
    """The dvc-plots TSV, rewritten whole (atomically) after each epoch."""
    lines = ["epoch\tloss\tval_mAP\tseconds"]
    lines += [f"{r['epoch']}\t{r['loss']:.6f}\t{r['val_mAP']:.4f}\t{r['seconds']:.2f}" for r in history]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def _save(path: Path, payload: dict[str, Any]) -> None:
    # through a file object: given a path, torch.save names the archive's folder after the (random) temp
    # name, and the same weights would give other bytes, and another DVC hash, on every run
    with atomic_path(path) as tmp, tmp.open("wb") as file:
        torch.save(payload, file)


class Trainer:
    """The model, its loss, optimiser and scheduler, and one epoch of triplet training (voxceleb_trainer style)."""

    def __init__(self, train: TrainParams, spec: Run, schedule: Schedule, world: World, start_from: dict[str, Path],
                 loss: TripletLoss) -> None:
        self.spec, self.world, self.loss = spec, world, loss
        self.bf16 = use_bf16(world.device, train.precision)
        self.model = build_model(spec.modality, train.normalize, train.pretrained)
        for stream, checkpoint in start_from.items():
            start_stream_from(self.model, stream, checkpoint)
        self.model = self.model.to(world.device)
        self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=schedule.lr)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=schedule.step_epochs, gamma=0.1)
        self.net: torch.nn.Module = self.model
        if world.size > 1:
            ids = [world.device.index] if world.device.type == "cuda" else None
            self.net = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if train.compile:
            self.net = torch.compile(self.net)

    def train_epoch(self, batches: Iterator[tuple[tuple[int, int], dict[str, torch.Tensor]]],
                    progress: Progress) -> tuple[float, int]:
        """One epoch of steps; returns the mean loss and the samples seen (all ranks).

        On CUDA the losses are read back once, at the end of the epoch: a read per step would make the CPU wait
        for the GPU and leave it idle while the next batch is planned.
        """
        self.model.train()
        step_losses: list[torch.Tensor] = []
        samples, first = 0, (0, 0)
        for (epoch, step), inputs in batches:
            first = first if step_losses else (epoch, step)
            inputs = {k: v.to(self.world.device, non_blocking=True) for k, v in inputs.items()}
            with torch.autocast(self.world.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                loss = self.loss(self.net(crops=inputs.get("crops"), mels=inputs.get("mels")), inputs)
            step_losses.append(self.world.mean(loss.detach().float()))
            if self.world.device.type != "cuda":
                self._check_finite(step_losses[-1].view(1), (epoch, step))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            samples += len(next(iter(inputs.values()))) * self.world.size
            progress.advance()
        values = torch.stack(step_losses).cpu()
        self._check_finite(values, first)
        self.scheduler.step()
        return float(np.mean(values.double().numpy())), samples

    def _check_finite(self, values: torch.Tensor, first: tuple[int, int]) -> None:
        """Stop at the first NaN or infinite loss of consecutive steps from `first`, naming its epoch and step."""
        bad = torch.nonzero(~torch.isfinite(values)).flatten()
        if len(bad):
            epoch, step = first[0], first[1] + int(bad[0])
            raise TrainingError(f"run {self.spec.name}: the loss became {values[bad[0]].item()} at epoch {epoch + 1}, "
                                f"step {step + 1}; lower train.{self.spec.modality}.lr, set train.precision: fp32, "
                                "or look for NaN/inf in the inputs")

    def state(self, epoch: int, history: list[dict[str, float]], signature: dict[str, Any],
              meta: dict[str, Any]) -> dict[str, Any]:
        """What last.pt holds: everything `resume` needs to continue to the same result."""
        return {"model": checkpoint_payload(self.model, meta), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "epoch": epoch, "history": history,
                "rng": _rng_states(), "signature": signature}

    def resume(self, last: Path, signature: dict[str, Any]) -> Progression:
        """Continue from last.pt when it exists and was written with the same settings."""
        if not last.is_file():
            return Progression()
        state = torch.load(last, map_location="cpu", weights_only=False)
        if state["signature"] != signature:
            raise TrainingError(f"{last} was written by a run with other settings; drop --resume to start over "
                                f"(saved {state['signature']}, now {signature})")
        self.model.load_state_dict(state["model"]["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        _restore_rng(state["rng"])
        return Progression(state["epoch"], state["history"])


@dataclass(frozen=True)
class Data:
    """A run's train and val items in RAM, its sampler, the schedule the profile resolves to and the geometry of
    its face crops."""

    store: Store
    val_store: Store
    sampler: TripletSampler | PKSampler
    schedule: Schedule
    crop: dict[str, Any]

    def deviations(self, profile: Profile, pretrained: str) -> list[str]:
        """How a paper or authors run departs from that setup: no ImageNet weights, crops other than 124 px."""
        if profile not in SCHEDULES:
            return []
        found = []
        if not pretrained:
            found.append("no ImageNet weights (train.pretrained is empty): the streams start from scratch")
        if self.crop and self.crop["crop_size"] != PAPER_CROP:
            found.append(f"face crops are {self.crop['crop_size']} px, not {PAPER_CROP} (run `apes-cli crop` with "
                         "size 124)")
        return found


def signature(settings: TrainParams, spec: Run, data: Data, loss: TripletLoss, world: World,
              start_from: dict[str, Path]) -> dict[str, Any]:
    """The settings a resumed run must share with the one that wrote last.pt."""
    return {"run": spec.name, "seed": spec.seed, "schedule": data.schedule.__dict__, **loss.settings(),
            "pk_k": settings.pk_k, "precision": settings.precision, "pretrained": settings.pretrained,
            "max_crops_per_track": settings.max_crops_per_track, "world": world.size,
            "tracklets": data.store.tracklets.num_rows, "start_from": sorted(str(p) for p in start_from.values())}


def single_run_checkpoints(init: CrossmodalInit, spec: Run, models_dir: str | Path) -> dict[str, Path]:
    """Where a cross-modal run's streams start (train.crossmodal_init: single_runs): model.pt of the face and voice
    runs of its sampling, task and seed; nothing for other runs or crossmodal_init: scratch."""
    if spec.modality != Modality.crossmodal or init == CrossmodalInit.scratch:
        return {}
    return {stream: Path(models_dir) / single.name / "model.pt" for stream, single in single_runs(spec).items()}


def single_runs(spec: Run) -> dict[str, Run]:
    """The face and voice runs a cross-modal run starts from."""
    return {stream: Run(stream, spec.sampling, spec.task, spec.seed, spec.seed_in_name)
            for stream in (Modality.face, Modality.voice)}


def load_data(settings: TrainParams, spec: Run, loss: TripletLoss, crops_dir: str | Path, mels_dir: str | Path,
              triplets_dir: str | Path) -> Data:
    """Decode the task's train items (tracklets of the triplets stage) and val items; size the schedule."""
    streams = STREAMS[spec.modality]
    store = load_store(crops_dir, mels_dir, "train", spec.task, streams, max_crops=settings.max_crops_per_track,
                       tracklets=read_tracklet_table(triplets_dir, spec.task))
    val_store = load_store(crops_dir, mels_dir, "val", spec.task, streams,
                           max_crops=settings.val_items_per_track, max_snippets=settings.val_items_per_track)
    crop = crop_geometry(crops_dir, "train") if "crops" in streams else {}
    try:
        sampler = make_sampler(store, spec, loss, batch_size(settings), settings.pk_k)
        return Data(store, val_store, sampler, resolve_schedule(settings, spec.modality, len(sampler.anchors)), crop)
    except ValueError as error:
        raise TrainingError(f"run {spec.name}: {error}") from None


def check_bf16_widths(store: Store, spec: Run, device: torch.device, bf16: bool) -> None:
    """Refuse bf16 training on a CPU for inputs too narrow for PyTorch's bf16 conv backward there
    (`one_column_at_last_stage`): its gradients would be garbage, not just rounded."""
    if not bf16 or device.type != "cpu":
        return
    widths = {"crops": ("face crops", store.crops.shape[2], "px", "crop.size"),
              "mels": ("voice snippets", store.mels.shape[2], "frames", "mel.snippet_seconds")}
    for stream in STREAMS[spec.modality]:
        what, width, unit, setting = widths[stream]
        if one_column_at_last_stage(width):
            raise ConfigError("train.precision", f"run {spec.name}: the {what} are {width} {unit} wide, and bf16 on "
                              f"a CPU computes wrong gradients (sometimes NaN) for inputs of {LAST_STAGE_STRIDE} "
                              f"{unit} or fewer; set train.precision to fp32 or auto, or widen {setting}")


def batch_size(train: TrainParams) -> int:
    """Images (or face+voice pairs) a step: the paper's batch for its profiles, params.yaml's otherwise."""
    return PAPER_BATCH if train.profile in SCHEDULES else train.batch_size


def run_facts(spec: Run, epochs: int, crop: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's record of its run: identity, epochs done, and the crop geometry its face stream saw."""
    return {"run": spec.name, "sampling": spec.sampling, "task": spec.task, "seed": spec.seed, "epochs": epochs,
            **crop}


def fit(trainer: Trainer, data: Data, feed: Feed, done: Progression, *, spec: Run, val_every: int, workers: int,
        signature: dict[str, Any], run_dir: Path, history_path: Path, eval_batch_size: int, where: Path,
        started: float, progress: Progress) -> tuple[list[dict[str, float]], int, float]:
    """The epoch loop from where `done` left off: train, validate when due, write last.pt and the history.
    Returns the history, the samples seen and the seconds spent training."""
    schedule, world, history = data.schedule, trainer.world, list(done.history)
    progress.start((schedule.epochs - done.first_epoch) * schedule.steps_per_epoch, f"train {spec.name}")
    samples, train_seconds = 0, 0.0
    for epoch in range(done.first_epoch, schedule.epochs):
        epoch_started = time.perf_counter()
        keys = [(epoch, step) for step in range(schedule.steps_per_epoch)]
        batches = feed.batches(keys)
        if workers and world.device.type == "cpu":
            batches = zip(keys, torch.utils.data.DataLoader(feed, batch_size=None, sampler=keys, num_workers=workers))
        loss, seen = trainer.train_epoch(batches, progress)
        samples, train_seconds = samples + seen, train_seconds + time.perf_counter() - epoch_started
        val_map = float("nan")
        if world.leader and validation_due(epoch, schedule.epochs, val_every):
            val_map = validation_map(trainer.model, data.val_store, world.device, eval_batch_size, trainer.bf16, where)
        history.append({"epoch": epoch + 1, "loss": loss, "val_mAP": val_map,
                        "seconds": round(done.seconds_before + time.perf_counter() - started, 2)})
        if world.leader:
            if epoch + 1 < schedule.epochs:  # after the last epoch model.pt is written instead
                _save(run_dir / "last.pt", trainer.state(epoch + 1, history, signature,
                                                         run_facts(spec, epoch + 1, data.crop)))
            _write_history(history_path, history)
        world.barrier()
    return history, samples, train_seconds


def train_single_runs_first(settings: TrainParams, spec: Run, dirs: tuple[Path, Path, Path, Path],
                            history_path: Path, eval_batch_size: int, device: Device | str,
                            progress: Progress) -> dict[str, dict[str, Any]]:
    """Train the face and voice runs a cross-modal run starts from whose model.pt is missing (the design's
    `apes-cli train --modality crossmodal` on a fresh clone); returns their metrics by run name."""
    crops_dir, mels_dir, triplets_dir, models_dir = dirs
    trained: dict[str, dict[str, Any]] = {}
    for single in single_runs(spec).values():
        if not (models_dir / single.name / "model.pt").is_file():
            log.warning("run %s starts from %s, which is not trained yet: training %s first "
                        "(train.crossmodal_init: single_runs)", spec.name, single.name, single.name)
            trained[single.name] = run(settings, single, crops_dir, mels_dir, triplets_dir, models_dir,
                                       history_path.with_name(f"train_{single.name}.tsv"),
                                       eval_batch_size=eval_batch_size, device=device, progress=progress)
    return trained


def run(settings: TrainParams, spec: Run, crops_dir: str | Path, mels_dir: str | Path, triplets_dir: str | Path,
        models_dir: str | Path, history_path: str | Path, *, eval_batch_size: int, device: Device | str = Device.auto,
        resume: bool = False, progress: Progress | None = None) -> dict[str, Any]:
    """Train one run end to end (or continue it with `resume`); returns the final metrics. A cross-modal run that
    starts from the single runs trains those first when their model.pt is missing."""
    progress = progress or Silent()
    models_dir = Path(models_dir)
    start_from = single_run_checkpoints(settings.crossmodal_init, spec, models_dir)
    trained_first = {}
    if start_from:
        trained_first = train_single_runs_first(settings, spec, (Path(crops_dir), Path(mels_dir), Path(triplets_dir),
                                                models_dir), Path(history_path), eval_batch_size, device, progress)
    started = time.perf_counter()
    world = join_world(device, settings.threads)
    _seed_everything(spec.seed)
    loss = run_loss(settings, spec)
    data = load_data(settings, spec, loss, crops_dir, mels_dir, triplets_dir)
    deviations = data.deviations(settings.profile, settings.pretrained)
    if start_from and settings.profile in SCHEDULES:
        deviations.append("the cross-modal streams start from the face and voice runs (train.crossmodal_init)")
    if deviations and world.leader:
        log.warning("warning: run %s departs from profile %s: %s", spec.name, settings.profile, "; ".join(deviations))
    check_bf16_widths(data.store, spec, world.device, use_bf16(world.device, settings.precision))
    trainer = Trainer(settings, spec, data.schedule, world, start_from, loss)
    signed = signature(settings, spec, data, loss, world, start_from)
    run_dir = models_dir / spec.name
    done = trainer.resume(run_dir / "last.pt", signed) if resume else Progression()
    feed = Feed(data.store, data.sampler, spec.seed, world.device, world.rank, world.size)
    history, samples, train_seconds = fit(
        trainer, data, feed, done, spec=spec, val_every=settings.val_every, workers=settings.workers,
        signature=signed, run_dir=run_dir, history_path=Path(history_path), eval_batch_size=eval_batch_size,
        where=Path(crops_dir) / "val", started=started, progress=progress)
    if world.leader:
        _save(run_dir / "model.pt", checkpoint_payload(trainer.model, run_facts(spec, history[-1]["epoch"], data.crop)))
        # last.pt (weights + Adam moments: 3x model.pt) only serves an unfinished run; DVC would cache it too
        (run_dir / "last.pt").unlink(missing_ok=True)
    world.close()
    metrics = final_metrics(settings, spec, data, trainer, feed, history, done, samples=samples,
                            train_seconds=train_seconds, seconds=done.seconds_before + time.perf_counter() - started,
                            deviations=deviations, start_from=start_from)
    return metrics | ({"trained_first": trained_first} if trained_first else {})


def final_metrics(settings: TrainParams, spec: Run, data: Data, trainer: Trainer, feed: Feed,
                  history: list[dict[str, float]], done: Progression, *, samples: int, train_seconds: float,
                  seconds: float, deviations: list[str], start_from: dict[str, Path]) -> dict[str, Any]:
    """The run's metrics JSON: what ran where, with which settings, and the last epoch's loss and val mAP."""
    world, schedule, final = trainer.world, data.schedule, history[-1]
    return {
        "run": spec.name, "modality": spec.modality, "sampling": spec.sampling, "task": spec.task,
        "seed": spec.seed, "profile": settings.profile, "deviations": deviations, "device": world.device.type,
        "precision": "bf16" if trainer.bf16 else "fp32", "machine": machine(world.device, trainer.bf16),
        "feed": "resident" if feed.resident else "staged", "compile": settings.compile, "world_size": world.size,
        "threads": torch.get_num_threads(), "epochs": final["epoch"], "steps_per_epoch": schedule.steps_per_epoch,
        "batch_size": schedule.batch_size, "lr": schedule.lr, **trainer.loss.settings(),
        "loss": round(final["loss"], 6), "first_loss": round(history[0]["loss"], 6),
        "val_mAP": round(final["val_mAP"], 4), "train_tracklets": data.store.tracklets.num_rows,
        "anchors": len(data.sampler.anchors), "val_tracklets": data.val_store.tracklets.num_rows,
        "images_per_s": round(samples / train_seconds, 1) if train_seconds else None,
        "seconds": round(seconds, 2), "resumed_at_epoch": done.first_epoch,
        "started_from": {k: str(v) for k, v in start_from.items()},
    }
