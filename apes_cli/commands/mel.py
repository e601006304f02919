"""apes-cli mel: log-mel spectrograms of voice snippets under each track's audible speech."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

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

NAME = "mel"
HELP = ("For each labelled face track, cut mel.snippet_seconds snippets of the decoded 16 kHz audio under its "
        "SPEAKING_AUDIBLE runs (Seen & Heard only) and turn them into log-mel spectrograms with torchaudio, "
        "batched. Writes <out>/<split>/<video_id>.parquet (float32 n_mels x frames; schema in docs/media.md). "
        "Resumable.")


@friendly_errors
def command(
    params: ParamsOption = Path("params.yaml"),
    decoded: Annotated[Path, typer.Option("--decoded", help="Output folder of `decode`.")] = Path("data/decoded"),
    out: Annotated[Path, typer.Option("--out", help="Output folder for mel shards.")] = Path("data/mels"),
    workers: WorkersOption = None,
    split: SplitOption = None,
    metrics: MetricsOption = Path("metrics/mel.json"),
) -> None:
    """Compute voice snippet log-mels for every decoded video."""
    from stages import mel
    loaded = load_params(params)
    run_stage(mel.run, overridden(loaded.mel, "mel", workers=workers), decoded, out, chosen_splits(split),
              metrics=metrics)
