"""apes-cli asd: active speaker detection on the val videos' labelled boxes, scored as AVA-ActiveSpeaker is."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from apes_cli.common import MetricsOption, ParamsOption, WorkersOption, friendly_errors, overridden, run_stage
from stages.core.config import load_params

NAME = "asd"
HELP = ("Score every labelled face box of the val videos as speaking or not, with the synchrony detector "
        "(stages/media/active_speaker.py) and the baselines (chance, only face, largest face), and compute the "
        "official AVA-ActiveSpeaker average precision of SPEAKING_AUDIBLE for each. Writes <out>/<method>.csv in "
        "the official predictions format (score it again, or your own, with `apes-cli evaluate --asd`). "
        "See docs/evaluation.md.")


@friendly_errors
def command(
    raw: Annotated[Optional[Path], typer.Option(
        "--raw", help="Raw layout folder (videos + annotations). Default: data.raw_dir from params.")] = None,
    out: Annotated[Path, typer.Option(help="Folder of the <method>.csv predictions.")] = Path("data/asd"),
    workers: WorkersOption = None,
    metrics: MetricsOption = Path("metrics/asd.json"),
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Score active speaker detection on the val videos."""
    from stages import asd as stage
    loaded = load_params(params)
    run_stage(stage.run, overridden(loaded.asd, "asd", workers=workers),
              raw if raw is not None else Path(loaded.data.raw_dir), out, metrics=metrics)
