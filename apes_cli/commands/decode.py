"""apes-cli decode: map annotated timestamps to frames and extract the annotated window's audio."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from apes_cli.common import (
    MetricsOption,
    ParamsOption,
    SplitOption,
    WorkersOption,
    chosen_splits,
    friendly_errors,
    overridden,
    run_stage,
)
from stages.core.config import load_params

NAME = "decode"
HELP = ("Per video: check the annotations, map every annotated timestamp to its nearest frame (ffmpeg "
        "probe) and extract the annotated window's audio as 16 kHz mono WAV, seeking instead of decoding "
        "whole movies. Writes <out>/plan/<split>/<video_id>.parquet and <out>/audio/<split>/<video_id>.wav; "
        "videos already done are skipped (resumable). See docs/media.md.")


@friendly_errors
def command(
    params: ParamsOption = Path("params.yaml"),
    raw: Annotated[Optional[Path], typer.Option(
        "--raw", help="Raw layout folder (videos + annotations). Default: data.raw_dir from params.")] = None,
    out: Annotated[Path, typer.Option("--out", help="Output folder for frame plans and audio.")] = Path(
        "data/decoded"),
    workers: WorkersOption = None,
    split: SplitOption = None,
    metrics: MetricsOption = Path("metrics/decode.json"),
) -> None:
    """Plan frames and extract audio for every annotated video."""
    from stages import decode
    loaded = load_params(params)
    run_stage(decode.run, overridden(loaded.decode, "decode", workers=workers),
              raw if raw is not None else Path(loaded.data.raw_dir), out, chosen_splits(split), metrics=metrics)
