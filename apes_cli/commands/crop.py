"""apes-cli crop: cut every labelled face box into per-video Parquet shards of crops."""

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
from stages.core.choices import CROP_SIZE_RANGE
from stages.core.config import load_params

NAME = "crop"
HELP = ("Decode the planned frames with ffmpeg (seeking to the annotated windows) and cut every labelled, "
        "non-ambiguous face box: clipped, squared with a margin, resized to crop.size. Writes "
        "<out>/<split>/<video_id>.parquet (raw uint8 RGB or JPEG crops, crop.format; docs/media.md). Zero-area "
        "boxes and tracks without an APES identity are counted skips. Resumable.")


@friendly_errors
def command(
    params: ParamsOption = Path("params.yaml"),
    raw: Annotated[Optional[Path], typer.Option(
        "--raw", help="Raw layout folder (the videos). Default: data.raw_dir from params.")] = None,
    decoded: Annotated[Path, typer.Option("--decoded", help="Output folder of `decode`.")] = Path("data/decoded"),
    out: Annotated[Path, typer.Option("--out", help="Output folder for crop shards.")] = Path("data/crops"),
    size: Annotated[Optional[int], typer.Option(
        "--size", min=CROP_SIZE_RANGE[0], max=CROP_SIZE_RANGE[1],
        help="Crop side in pixels, even (paper 124). Default: crop.size.")] = None,
    workers: WorkersOption = None,
    split: SplitOption = None,
    metrics: MetricsOption = Path("metrics/crop.json"),
) -> None:
    """Cut face crops for every planned video."""
    from stages import crop
    loaded = load_params(params)
    run_stage(crop.run, overridden(loaded.crop, "crop", workers=workers, size=size),
              raw if raw is not None else Path(loaded.data.raw_dir), decoded, out, chosen_splits(split),
              metrics=metrics)
