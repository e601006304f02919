"""apes-cli report: the benchmark tables (paper Tables 3 and 4) from every evaluation's metrics file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from apes_cli.common import MetricsOption, ParamsOption, friendly_errors, overridden, run_stage
from stages.core.config import load_params
from stages.core.errors import ConfigError

NAME = "report"
HELP = (
    "Gather <eval-dir>/eval_*.json into <out>/benchmark.md and <out>/benchmark.json in the layout of the "
    "paper's Tables 3 (Seen & Heard) and 4 (Seen), the paper's numbers alongside; cells not evaluated yet "
    "show '—'. Also draws the best run's top-5 retrievals (<out>/benchmark_examples.png)."
)


def _parse_seeds(text: str) -> tuple[int, ...]:
    """The seeds of a comma-separated list such as 0,1,2."""
    try:
        seeds = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ConfigError("--seeds", f"expected comma-separated integers, got {text!r}", "command line") from None
    if not seeds:
        raise ConfigError("--seeds", "expected at least one seed", "command line")
    return seeds


@friendly_errors
def command(
    seeds: Annotated[str | None, typer.Option(
        help="Comma-separated seeds to aggregate, e.g. 0,1,2 (default: report.seeds in params).")] = None,
    eval_dir: Annotated[Path, typer.Option(help="Where the evaluate stage's eval_*.json files are.")] = Path(
        "metrics/eval"),
    crops_dir: Annotated[Path, typer.Option(help="Crop shards, for the retrieval figure.")] = Path("data/crops"),
    train_dir: Annotated[Path, typer.Option(
        help="The train stage's train_*.json, for the device, precision and CPU the runs were trained on.")] = Path(
        "metrics/train"),
    asd_metrics: Annotated[Path, typer.Option(
        help="The asd stage's metrics, for the Active speaker detection section (absent: not evaluated).")] = Path(
        "metrics/asd.json"),
    out: Annotated[Path, typer.Option(
        help="Output folder for benchmark.md, benchmark.json and benchmark_examples.png.")] = Path("metrics"),
    metrics: MetricsOption = Path("metrics/report.json"),
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Write the benchmark report."""
    from stages import report
    loaded = load_params(params)
    run_stage(report.run, overridden(loaded.report, "report", seeds=None if seeds is None else _parse_seeds(seeds)),
              eval_dir, crops_dir, out, train_dir, asd_metrics, metrics=metrics)
