"""apes-cli evaluate: benchmark metrics of a trained run, of an untrained network, of random, or of a file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from apes_cli.common import ParamsOption, friendly_errors, print_metrics, read_params
from stages.core.config import MODALITIES, STRATEGIES, TASKS
from stages.core.errors import ConfigError

NAME = "evaluate"
HELP = (
    "Rank the val tracklets of each video by embedding distance and write P@K, R@K and mAP (paper 4.2).\n\n"
    "A trained run:   apes-cli evaluate --modality face --sampling within --task seen_heard\n\n"
    "Random weights:  apes-cli evaluate --modality face --task seen_heard --untrained\n\n"
    "Random ranking:  apes-cli evaluate --random --task seen_heard\n\n"
    "Any method:      apes-cli evaluate --embeddings mine.parquet --out mine.json  (docs/evaluation.md)"
)


def _choice(value: str | None, allowed: tuple[str, ...], option: str) -> str:
    if value is None:
        raise ConfigError(option, f"required here; one of {', '.join(allowed)}", "command line")
    if value not in allowed:
        raise ConfigError(option, f"unknown value {value!r}; expected one of {', '.join(allowed)}", "command line")
    return value


@friendly_errors
def command(
    modality: Annotated[str | None, typer.Option(help=f"Which network: {', '.join(MODALITIES)}.")] = None,
    sampling: Annotated[str | None, typer.Option(help=f"Training sampling: {', '.join(STRATEGIES)}.")] = None,
    task: Annotated[str | None, typer.Option(help=f"Benchmark task: {', '.join(TASKS)}.")] = None,
    seed: Annotated[int | None, typer.Option(
        help="Training seed of the run (default: params seed); also seeds the untrained weights.")] = None,
    untrained: Annotated[bool, typer.Option(
        "--untrained", help="Evaluate the network with seeded random weights (the report's Untrained row).")] = False,
    random: Annotated[bool, typer.Option(
        "--random", help="Write the exact expected metrics of a random ranking (the report's Random row).")] = False,
    embeddings: Annotated[Path | None, typer.Option(
        help="Evaluate this embeddings Parquet (video_id, entity_id, identity, embedding) instead.")] = None,
    out: Annotated[Path | None, typer.Option(
        help="Metrics JSON to write (default: metrics/eval_<run>.json).")] = None,
    crops_dir: Annotated[Path, typer.Option(help="Crop shards (read: <dir>/val/*.parquet).")] = Path("data/crops"),
    mels_dir: Annotated[Path, typer.Option(help="Mel shards (read: <dir>/val/*.parquet).")] = Path("data/mels"),
    models_dir: Annotated[Path, typer.Option(help="Trained runs: <dir>/<run>/model.pt.")] = Path("models"),
    embeddings_dir: Annotated[Path, typer.Option(
        help="Where the val embeddings of a run are written.")] = Path("data/embeddings"),
    metrics_dir: Annotated[Path, typer.Option(help="Where metrics/eval_<run>.json goes.")] = Path("metrics"),
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Evaluate one run, a baseline, or an embeddings file."""
    from stages import evaluate as stage  # imported here so `apes-cli --help` starts without torch
    if embeddings is not None:
        target = out or metrics_dir / f"eval_file_{embeddings.stem}.json"
        print_metrics(stage.evaluate_embeddings_file(embeddings, target))
        return
    settings = read_params(params)
    task = _choice(task, TASKS, "--task")
    if random:
        tracklets = stage.val_tracklets(crops_dir, mels_dir, task)
        print_metrics(stage.evaluate_random(tracklets, task, out or metrics_dir / f"eval_random_{task}.json"))
        return
    modality = _choice(modality, MODALITIES, "--modality")
    sampling = None if untrained else _choice(sampling, STRATEGIES, "--sampling")
    run = stage.Run(modality, sampling, task, settings.seed if seed is None else seed, seed is not None)
    print_metrics(stage.evaluate_run(run, settings, crops_dir=crops_dir, mels_dir=mels_dir, models_dir=models_dir,
                                     embeddings_dir=embeddings_dir, out=out or metrics_dir / f"eval_{run.name}.json"))
