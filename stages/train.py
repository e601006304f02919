"""Stage 'train': triplet training of one (modality, sampling, task) run, with per-epoch validation mAP.

Outputs (rank 0 only): models/<run>/last.pt every epoch (resume) and model.pt at the end;
metrics/train_<run>.tsv (epoch, loss, val_mAP, seconds) and metrics/train_<run>.json.
A batch is a pure function of (seed, epoch, step), so `resume` replays an interrupted epoch exactly.
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from stages.core.atomic import atomic_path, write_json
from stages.core.config import Params, TrainParams
from stages.core.errors import ApesError, DataError
from stages.core.progress import Progress, Silent
from stages.core.runs import run_name
from stages.evaluation.ranking import ranking_metrics
from stages.learning import losses
from stages.learning.datasets import BatchDataset, Store, load_store
from stages.learning.embed import embed_store, use_bf16
from stages.learning.models import Embedder, build_model, checkpoint_payload
from stages.learning.pool import STREAMS
from stages.learning.samplers import PKSampler, TripletSampler
from stages.learning.strategies import strategy_named
from stages.learning.tracklets import read_tracklet_table

PAPER = {"face": (3e-4, 70, 30), "voice": (5e-4, 120, 50), "crossmodal": (5e-5, 120, 45)}  # lr, epochs, step
PAPER_BATCH = 3 * 128  # 128 triplets a step


class TrainingError(ApesError):
    """A run that cannot start or cannot go on (bad combination, NaN loss, mismatched resume)."""


@dataclass(frozen=True)
class RunSpec:
    """One cell of the grid; the seed joins the name only when asked (several seeds side by side)."""

    modality: str
    sampling: str
    task: str
    seed: int
    seed_in_name: bool = False

    @property
    def name(self) -> str:
        """<modality>_<sampling>_<task>[_seed<N>]: models/<name>/ and metrics/train_<name>.*"""
        return run_name(self.modality, self.sampling, self.task, self.seed, self.seed_in_name)


@dataclass(frozen=True)
class Schedule:
    """What the profile resolves to for one run."""

    lr: float
    epochs: int
    step_epochs: int
    batch_size: int
    steps_per_epoch: int


def check_combination(modality: str, task: str) -> None:
    """Voice and cross-modal runs need speech: only the seen_heard task has it for every tracklet."""
    if modality in ("voice", "crossmodal") and task != "seen_heard":
        raise TrainingError(f"modality '{modality}' needs task 'seen_heard' (task '{task}' holds silent tracks "
                            "without voice snippets)")


def resolve_schedule(train: TrainParams, modality: str, anchors: int) -> Schedule:
    """The embedded profile reads params.yaml; the paper profile uses the paper's values and full epochs."""
    if train.profile == "paper":
        lr, epochs, step = PAPER[modality]
        return Schedule(lr, epochs, step, PAPER_BATCH, max(1, math.ceil(anchors / (PAPER_BATCH // 3))))
    optim = getattr(train, modality)
    return Schedule(optim.lr, optim.epochs, optim.step_epochs, train.batch_size, train.steps_per_epoch)


def select_device(setting: str, local_rank: int = 0) -> torch.device:
    """auto: CUDA when available, else CPU; asking for CUDA without one is an error."""
    if setting not in ("auto", "cpu", "cuda"):
        raise TrainingError(f"unknown device '{setting}': expected auto, cpu or cuda")
    if setting == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda asked for, but no CUDA device is visible")
    if setting == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


def _world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) when launched plainly."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


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


def make_sampler(store: Store, spec: RunSpec, train: TrainParams, batch_size: int) -> TripletSampler | PKSampler:
    """Plain triplets (the paper) or P x K batches for in-batch mining."""
    if train.mining == "none":
        return TripletSampler(store.tracks, strategy_named(spec.sampling), spec.modality, batch_size, spec.seed)
    return PKSampler(store.tracks, strategy_named(spec.sampling), spec.modality, batch_size, spec.seed, train.pk_k)


def batch_loss(model: torch.nn.Module, normalize: bool, inputs: dict[str, torch.Tensor], mining: str,
               margin: float, distinct_tracks: bool) -> torch.Tensor:
    """Sum of the triplet losses of every output (face, voice and, cross-modal, joint)."""
    outputs = model(crops=inputs.get("crops"), mels=inputs.get("mels"))
    masks = None
    if mining != "none":
        masks = losses.pair_masks(inputs["labels"], inputs["tracks"], inputs.get("groups"), distinct_tracks)
    total = torch.zeros((), device=next(iter(outputs.values())).device)
    for embedding in outputs.values():
        embedding = embedding.float()
        if normalize:
            embedding = F.normalize(embedding, dim=1)
        if masks is None:
            total = total + losses.triplet_margin_loss(*losses.split_triplets(embedding), margin)
            continue
        distances = losses.pairwise_distances(embedding)
        if mining == "batch_hard":
            triplets = losses.batch_hard_miner(distances, *masks)
        else:
            triplets = losses.semi_hard_miner(distances, *masks)
        total = total + losses.mined_triplet_loss(distances, triplets, margin)
    return total


def validate(model: Embedder, store: Store, device: torch.device, params: Params, bf16: bool,
             where: str | Path = "val") -> dict:
    """Ranking metrics of the val tracklets (the paper's per-video mAP)."""
    embeddings = embed_store(model, store, device, params.evaluate.batch_size, bf16)
    try:
        return ranking_metrics(store.tracklets["video_id"].to_pylist(), store.tracklets["identity"].to_pylist(),
                               embeddings, store.tracklets["entity_id"].to_pylist())
    except ValueError as error:
        raise DataError(where, f"cannot validate: {error}") from None


def _write_history(path: Path, history: list[dict[str, float]]) -> None:
    """The dvc-plots TSV, rewritten whole (atomically) after each epoch."""
    lines = ["epoch\tloss\tval_mAP\tseconds"]
    lines += [f"{r['epoch']}\t{r['loss']:.6f}\t{r['val_mAP']:.4f}\t{r['seconds']:.2f}" for r in history]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def _save(path: Path, payload: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def train_run(params: Params, spec: RunSpec, *, device: str = "auto", resume: bool = False,
              crops_dir: str | Path = "data/crops", mels_dir: str | Path = "data/mels",
              triplets_dir: str | Path = "data/triplets", models_dir: str | Path = "models",
              metrics_dir: str | Path = "metrics",
              progress: Progress | None = None) -> dict[str, Any]:
    """Train one run end to end (or continue it with `resume`); returns the final metrics."""
    started = time.perf_counter()
    progress = progress or Silent()
    check_combination(spec.modality, spec.task)
    train = params.train
    rank, world, local_rank = _world()
    dev = select_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    torch.set_num_threads(max(1, train.threads // local_world))
    _seed_everything(spec.seed)
    bf16 = use_bf16(dev, train.precision)
    streams = STREAMS[spec.modality]

    store = load_store(crops_dir, mels_dir, "train", spec.task, streams, max_crops=train.max_crops_per_track,
                       tracklets=read_tracklet_table(triplets_dir, spec.task))
    val_store = load_store(crops_dir, mels_dir, "val", spec.task, streams,
                           max_crops=train.val_items_per_track, max_snippets=train.val_items_per_track)
    try:
        schedule = resolve_schedule(train, spec.modality, len(make_sampler(store, spec, train, 3).anchors))
        sampler = make_sampler(store, spec, train, schedule.batch_size)
    except ValueError as error:
        raise TrainingError(f"run {spec.name}: {error}") from None

    model = build_model(spec.modality, train.normalize, train.pretrained).to(dev)
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=schedule.lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=schedule.step_epochs, gamma=0.1)
    signature = {"run": spec.name, "seed": spec.seed, "schedule": schedule.__dict__, "mining": train.mining,
                 "normalize": train.normalize, "margin": train.margin, "pk_k": train.pk_k,
                 "pretrained": train.pretrained, "max_crops_per_track": train.max_crops_per_track,
                 "world": world, "tracklets": store.tracklets.num_rows}
    run_dir = Path(models_dir) / spec.name
    last = run_dir / "last.pt"
    history: list[dict[str, float]] = []
    first_epoch, elapsed_before = 0, 0.0
    if resume and last.is_file():
        state = torch.load(last, map_location="cpu", weights_only=False)
        if state["signature"] != signature:
            raise TrainingError(f"{last} was written by a run with other settings; drop --resume to start over "
                                f"(saved {state['signature']}, now {signature})")
        model.load_state_dict(state["model"]["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _restore_rng(state["rng"])
        first_epoch, history = state["epoch"], state["history"]
        elapsed_before = history[-1]["seconds"] if history else 0.0

    net: torch.nn.Module = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    keys = [(epoch, step) for epoch in range(first_epoch, schedule.epochs) for step in range(schedule.steps_per_epoch)]
    loader = torch.utils.data.DataLoader(
        BatchDataset(store, sampler, spec.seed, rank, world), batch_size=None, sampler=keys,
        num_workers=train.workers, pin_memory=dev.type == "cuda", persistent_workers=False)
    progress.start(len(keys), f"train {spec.name}")
    samples, train_seconds = 0, 0.0
    epoch_loss: list[float] = []
    step_started = time.perf_counter()
    model.train()
    for (epoch, step), inputs in zip(keys, loader):
        inputs = {k: v.to(dev, non_blocking=True) for k, v in inputs.items()}
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            loss = batch_loss(net, train.normalize, inputs, train.mining, train.margin, sampler.strategy.distinct_tracks)
        value = loss.detach().float()
        if world > 1:
            dist.all_reduce(value)
            value /= world
        if not torch.isfinite(value):
            raise TrainingError(f"run {spec.name}: the loss became {value.item()} at epoch {epoch + 1}, "
                                f"step {step + 1}; lower train.{spec.modality}.lr, set train.precision: fp32, "
                                "or look for NaN/inf in the inputs")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        epoch_loss.append(value.item())
        samples += len(next(iter(inputs.values()))) * world
        progress.advance()
        if step + 1 < schedule.steps_per_epoch:
            continue
        train_seconds += time.perf_counter() - step_started
        scheduler.step()
        final_epoch = epoch + 1 == schedule.epochs
        val_map = float("nan")
        if rank == 0 and (final_epoch or (epoch + 1) % train.val_every == 0):
            val_map = validate(model, val_store, dev, params, bf16, Path(crops_dir) / "val")["mAP"]
        history.append({"epoch": epoch + 1, "loss": float(np.mean(epoch_loss)), "val_mAP": val_map,
                        "seconds": round(elapsed_before + time.perf_counter() - started, 2)})
        epoch_loss = []
        if rank == 0:
            model.meta = {"run": spec.name, "sampling": spec.sampling, "task": spec.task, "seed": spec.seed,
                          "epochs": epoch + 1, "crop_size": int(store.crops.shape[1]) if "crops" in streams else 0}
            _save(last, {"model": checkpoint_payload(model), "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), "epoch": epoch + 1, "history": history,
                         "rng": _rng_states(), "signature": signature})
            _write_history(Path(metrics_dir) / f"train_{spec.name}.tsv", history)
        if world > 1:
            dist.barrier()
        step_started = time.perf_counter()

    if not history:
        raise TrainingError(f"run {spec.name}: nothing to train (epochs {schedule.epochs})")
    final = history[-1]
    if math.isnan(final["val_mAP"]) and rank == 0:
        final["val_mAP"] = validate(model, val_store, dev, params, bf16, Path(crops_dir) / "val")["mAP"]
    metrics = {
        "run": spec.name, "modality": spec.modality, "sampling": spec.sampling, "task": spec.task,
        "seed": spec.seed, "profile": train.profile, "device": dev.type, "precision": "bf16" if bf16 else "fp32",
        "world_size": world, "threads": torch.get_num_threads(), "epochs": final["epoch"],
        "steps_per_epoch": schedule.steps_per_epoch, "batch_size": schedule.batch_size, "lr": schedule.lr,
        "mining": train.mining, "normalize": train.normalize, "loss": round(final["loss"], 6),
        "first_loss": round(history[0]["loss"], 6), "val_mAP": round(final["val_mAP"], 4),
        "train_tracklets": store.tracklets.num_rows, "anchors": int(len(sampler.anchors)),
        "val_tracklets": val_store.tracklets.num_rows,
        "images_per_s": round(samples / train_seconds, 1) if train_seconds else None,
        "seconds": round(elapsed_before + time.perf_counter() - started, 2), "resumed_at_epoch": first_epoch,
    }
    if rank == 0:
        _save(run_dir / "model.pt", checkpoint_payload(model))
        write_json(Path(metrics_dir) / f"train_{spec.name}.json", metrics)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return metrics
