"""Stage 'train': triplet training of one (modality, sampling, task) run, with per-epoch validation mAP.

Outputs (rank 0 only): models/<run>/last.pt after each epoch but the last (resume), then model.pt, and the
per-epoch history TSV (epoch, loss, val_mAP, seconds) for dvc plots; `run` returns the metrics.
A batch is a pure function of (seed, epoch, step), so `resume` replays an interrupted epoch exactly.
The step itself is `stages/learning/trainer.py`; the process's rank and device `stages/learning/world.py`.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from stages.core.atomic import atomic_path
from stages.core.choices import CrossmodalInit, Device, Modality, Profile
from stages.core.config import TrainParams
from stages.core.errors import ConfigError, DataError
from stages.core.progress import Progress, Silent
from stages.core.runs import Run
from stages.evaluation.ranking import ranking_metrics
from stages.learning.datasets import Store, crop_geometry, load_store
from stages.learning.embed import embed_store, use_bf16
from stages.learning.feed import Feed
from stages.learning.losses import TripletLoss
from stages.learning.models import LAST_STAGE_STRIDE, Embedder, checkpoint_payload, one_column_at_last_stage
from stages.learning.pool import STREAMS
from stages.learning.samplers import PKSampler, TripletSampler
from stages.learning.strategies import strategy_named
from stages.learning.tracklets import read_tracklet_table
from stages.learning.trainer import Progression, Schedule, Trainer, TrainingError, seed_everything
from stages.learning.world import World, join_world, machine

# lr, epochs, StepLR step (x0.1) per modality; sources in docs/training.md
SCHEDULES = {
    Profile.paper: dict.fromkeys(Modality, (3e-4, 70, 30)),  # section 4.1: voice and cross-modal share the face's
    Profile.authors: {Modality.face: (3e-4, 70, 30), Modality.voice: (5e-4, 120, 50),
                      Modality.crossmodal: (5e-5, 120, 45)},  # released code
}
PAPER_BATCH = 3 * 128  # 128 triplets a step: the authors' code (the paper gives no batch size)
PAPER_CROP = 124  # face crop side of section 4.1
log = logging.getLogger(__name__)


def resolve_schedule(train: TrainParams, modality: str, anchors: int) -> Schedule:
    """The embedded profile reads params.yaml; paper and authors use their schedules and one pass over the anchors."""
    if train.profile in SCHEDULES:
        lr, epochs, step = SCHEDULES[train.profile][modality]
        return Schedule(lr, epochs, step, PAPER_BATCH, max(1, math.ceil(anchors / (PAPER_BATCH // 3))))
    optim = train.optim(modality)
    return Schedule(optim.lr, optim.epochs, optim.step_epochs, train.batch_size, train.steps_per_epoch)


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


def _save(path: Path, payload: dict[str, Any]) -> None:
    # through a file object: given a path, torch.save names the archive's folder after the (random) temp
    # name, and the same weights would give other bytes, and another DVC hash, on every run
    with atomic_path(path) as tmp, tmp.open("wb") as file:
        torch.save(payload, file)


def _write_history(path: Path, history: list[dict[str, float]]) -> None:
    """The dvc-plots TSV, rewritten whole (atomically) after each epoch."""
    lines = ["epoch\tloss\tval_mAP\tseconds"]
    lines += [f"{r['epoch']}\t{r['loss']:.6f}\t{r['val_mAP']:.4f}\t{r['seconds']:.2f}" for r in history]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


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
    seed_everything(spec.seed)
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
