"""apes-cli synth: generate the embedded mini-APES data set."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from apes_cli.common import (
    MetricsOption,
    ParamsOption,
    WorkersOption,
    friendly_errors,
    overridden,
    run_stage,
)
from stages.core.config import load_params

NAME = "synth"
HELP = ("Generate the embedded mini-APES: untrimmed mp4 videos (procedural faces, espeak-ng voices, music "
        "and noise), AVA-ActiveSpeaker CSVs, APES identity CSVs and the file list, in the raw layout of "
        "docs/data.md. Deterministic for a seed; sizes and difficulty knobs are in params.yaml `synth:`.")


@friendly_errors
def command(
    params: ParamsOption = Path("params.yaml"),
    out: Annotated[Path, typer.Option("--out", help="Raw layout folder to write (replaced whole).")] = Path(
        "data/raw_synth"),
    seed: Annotated[Optional[int], typer.Option(
        "--seed", help="Random seed of the generator. Default: `seed` from params.")] = None,
    workers: WorkersOption = None,
    metrics: MetricsOption = Path("metrics/synth.json"),
) -> None:
    """Generate the embedded data set."""
    from stages import synth
    loaded = load_params(params)
    run_stage(synth.run, overridden(loaded.synth, "synth", workers=workers), loaded.seed if seed is None else seed,
              out, metrics=metrics)
