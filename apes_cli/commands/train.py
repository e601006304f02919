"""apes-cli train: triplet training of one (modality, sampling, task) run; torchrun launches DDP."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Annotated

import typer

from apes_cli.common import Bar, ParamsOption, friendly_errors, print_metrics, read_params
from stages.core.config import MODALITIES, STRATEGIES, TASKS, with_overrides
from stages.core.errors import ConfigError

NAME = "train"
HELP = (
    "Train one embedding network with the triplet loss (paper 4.1) and log loss and val mAP per epoch.\n\n"
    "  apes-cli train --modality face --sampling within --task seen_heard\n\n"
    "Outputs models/<run>/{last.pt,model.pt} and metrics/train_<run>.{tsv,json}, where run is "
    "<modality>_<sampling>_<task> (plus _seed<N> when --seed is given). voice and crossmodal need "
    "--task seen_heard.\n\n"
    "Several processes: torchrun --nproc_per_node 2 $(which apes-cli) train ... (DDP; rank 0 writes). docs/training.md"
)


def _choice(value: str, allowed: tuple[str, ...], option: str) -> str:
    if value not in allowed:
        raise ConfigError(option, f"unknown value {value!r}; expected one of {', '.join(allowed)}", "command line")
    return value


@friendly_errors
def command(
    modality: Annotated[str, typer.Option(help=f"Network: {', '.join(MODALITIES)}.")] = "face",
    sampling: Annotated[str, typer.Option(help=f"Triplet sampling strategy: {', '.join(STRATEGIES)}.")] = "within",
    task: Annotated[str, typer.Option(help=f"Task: {', '.join(TASKS)}.")] = "seen_heard",
    seed: Annotated[int | None, typer.Option(
        help="Seed (default: params seed); when given, the run name gets _seed<N>.")] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue from models/<run>/last.pt (same settings) to the same result.")] = False,
    device: Annotated[str, typer.Option(help="auto (CUDA when present), cpu or cuda.")] = "auto",
    out: Annotated[Path, typer.Option(help="Models directory: <out>/<run>/.")] = Path("models"),
    profile: Annotated[str | None, typer.Option(
        help="Override train.profile: embedded (params.yaml values) or paper (the paper's schedule).")] = None,
    crops_dir: Annotated[Path, typer.Option(help="Crop shards (<dir>/train, <dir>/val).")] = Path("data/crops"),
    mels_dir: Annotated[Path, typer.Option(help="Mel shards (<dir>/train, <dir>/val).")] = Path("data/mels"),
    triplets_dir: Annotated[Path, typer.Option(help="Tracklet tables of `apes-cli triplets`.")] = Path("data/triplets"),
    metrics_dir: Annotated[Path, typer.Option(help="Where train_<run>.tsv/json go.")] = Path("metrics"),
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Train one run."""
    from stages import train as stage  # imported here so `apes-cli --help` starts without torch
    settings = read_params(params)
    if profile is not None:
        if profile not in ("embedded", "paper"):
            raise ConfigError("--profile", f"unknown profile {profile!r}; expected embedded or paper", "command line")
        settings = with_overrides(settings, train=dataclasses.replace(settings.train, profile=profile))
    spec = stage.RunSpec(_choice(modality, MODALITIES, "--modality"), _choice(sampling, STRATEGIES, "--sampling"),
                         _choice(task, TASKS, "--task"), settings.seed if seed is None else seed, seed is not None)
    leader = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 reports
    bar = Bar() if leader else None
    try:
        result = stage.train_run(settings, spec, device=device, resume=resume, crops_dir=crops_dir,
                                 mels_dir=mels_dir, triplets_dir=triplets_dir, models_dir=out,
                                 metrics_dir=metrics_dir, progress=bar)
    finally:
        if bar is not None:
            bar.close()
    if leader:
        print_metrics(result)
