"""apes-cli triplets: each task's train tracklet table and the sampling statistics (paper Table 2)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from apes_cli.common import ParamsOption, friendly_errors, run_stage
from stages.core.config import load_params

NAME = "triplets"
HELP = (
    "Build the train sample sets of each task (Seen; Seen & Heard = audible speech and a mel snippet) for the\n\n"
    "Within, Across and Weak strategies (paper 4.2, Table 2): data/triplets/<task>.parquet and\n\n"
    "metrics/triplets.json (average positive and negative tracklets per anchor). docs/training.md"
)


@friendly_errors
def command(
    crops_dir: Annotated[Path, typer.Option(
        help="Crop shards (reads <dir>/train and <dir>/val).")] = Path("data/crops"),
    mels_dir: Annotated[Path, typer.Option(help="Mel shards (reads <dir>/train).")] = Path("data/mels"),
    out: Annotated[Path, typer.Option(help="Folder of the <task>.parquet tracklet tables.")] = Path("data/triplets"),
    metrics: Annotated[Path, typer.Option(help="The stage's metrics JSON.")] = Path("metrics/triplets.json"),
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Write the tracklet tables and Table 2."""
    from stages import triplets as stage
    settings = load_params(params).triplets
    run_stage(stage.run, settings, crops_dir, mels_dir, out, metrics=metrics)
