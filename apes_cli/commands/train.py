"""apes-cli train: triplet training of one (modality, sampling, task) run; torchrun launches DDP."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path
from typing import Annotated

import typer

from apes_cli.common import Bar, ParamsOption, friendly_errors, report_metrics
from stages.core.choices import Device, Modality, Profile, Sampling, Task
from stages.core.config import load_params
from stages.core.runs import Run

NAME = "train"
HELP = (
    "Train one embedding network with the triplet loss (paper 4.1) and log loss and val mAP per epoch.\n\n"
    "  apes-cli train --modality face --sampling within --task seen_heard\n\n"
    "Outputs <out>/<run>/last.pt after every epoch (for --resume), replaced by model.pt when the run ends, the "
    "metrics JSON (default metrics/train_<run>.json) and the "
    "per-epoch TSV beside it, where run is <modality>_<sampling>_<task> (plus _seed<N> when --seed is given). "
    "voice and crossmodal need --task seen_heard. With train.crossmodal_init: single_runs a crossmodal run starts "
    "from the face and voice runs of its sampling, task and seed, and trains them first when their model.pt is "
    "missing.\n\n"
    "Several processes: torchrun --nproc_per_node 2 $(which apes-cli) train ... (DDP; rank 0 writes). docs/training.md"
)


@friendly_errors
def command(
    modality: Annotated[Modality, typer.Option(help="Network.")] = Modality.face,
    sampling: Annotated[Sampling, typer.Option(help="Triplet sampling strategy.")] = Sampling.within,
    task: Annotated[Task, typer.Option(help="Task.")] = Task.seen_heard,
    seed: Annotated[int | None, typer.Option(
        min=0, help="Seed (default: params seed); when given, the run name gets _seed<N>.")] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue an unfinished run from <out>/<run>/last.pt (same settings) to the same "
                         "result; with no last.pt the run starts over.")] = False,
    device: Annotated[Device, typer.Option(help="auto (CUDA when present), cpu or cuda.")] = Device.auto,
    out: Annotated[Path, typer.Option(help="Models folder: <out>/<run>/.")] = Path("models"),
    metrics: Annotated[Path | None, typer.Option(
        help="Metrics JSON; the per-epoch TSV goes beside it (default: metrics/train_<run>.json).")] = None,
    profile: Annotated[Profile | None, typer.Option(
        help="Override train.profile: embedded (params.yaml values), paper (the paper's text: ImageNet weights, "
             "lr 3e-4, x0.1 every 30 of 70 epochs, 124 px) or authors (their released code).")] = None,
    crops_dir: Annotated[Path, typer.Option(help="Crop shards (<dir>/train, <dir>/val).")] = Path("data/crops"),
    mels_dir: Annotated[Path, typer.Option(help="Mel shards (<dir>/train, <dir>/val).")] = Path("data/mels"),
    triplets_dir: Annotated[Path, typer.Option(help="Tracklet tables of `apes-cli triplets`.")] = Path("data/triplets"),
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Train one run."""
    from stages import train as stage
    loaded = load_params(params)
    settings = loaded.train if profile is None else dataclasses.replace(loaded.train, profile=profile)
    spec = Run(modality, sampling, task, loaded.seed if seed is None else seed, seed is not None)
    metrics = metrics or Path("metrics") / f"train_{spec.name}.json"
    leader = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 reports
    with (Bar() if leader else contextlib.nullcontext()) as bar:
        result = stage.run(settings, spec, crops_dir, mels_dir, triplets_dir, out, metrics.with_suffix(".tsv"),
                           eval_batch_size=loaded.evaluate.batch_size, device=device, resume=resume,
                           progress=bar)
    if leader:
        for name, first in result.pop("trained_first", {}).items():  # single runs a cross-modal run started from
            report_metrics(first, metrics.with_name(f"train_{name}.json"))
        report_metrics(result, metrics)
