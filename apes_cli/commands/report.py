"""apes-cli report: the benchmark tables (paper Tables 3 and 4) from every evaluation's metrics file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from apes_cli.common import ParamsOption, friendly_errors, print_metrics, read_params
from stages.core.errors import ConfigError

NAME = "report"
HELP = (
    "Gather metrics/eval/eval_*.json into metrics/benchmark.md and metrics/benchmark.json in the layout of the "
    "paper's Tables 3 (Seen & Heard) and 4 (Seen), the paper's numbers alongside; cells not evaluated yet "
    "show '—'. Also draws the best run's top-5 retrievals (metrics/benchmark_examples.png)."
)


def _parse_seeds(text: str) -> tuple[int, ...]:
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
    out_dir: Annotated[Path, typer.Option(
        help="Where benchmark.md, benchmark.json, benchmark_examples.png and report.json go.")] = Path("metrics"),
    crops_dir: Annotated[Path, typer.Option(help="Crop shards, for the retrieval figure.")] = Path("data/crops"),
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Write the benchmark report."""
    from stages import report as stage  # imported here so `apes-cli --help` starts without torch
    settings = read_params(params)
    chosen = settings.report.seeds if seeds is None else _parse_seeds(seeds)
    print_metrics(stage.write_report(
        eval_dir, chosen, crops_dir,
        out_md=out_dir / "benchmark.md", out_json=out_dir / "benchmark.json",
        figure_png=out_dir / "benchmark_examples.png", stage_metrics=out_dir / "report.json"))
