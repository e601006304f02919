"""Shared CLI plumbing: params loading, progress bars, and turning ApesError into a clear exit."""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer
from tqdm import tqdm

from stages.core.atomic import write_json
from stages.core.errors import ApesError
from stages.rawdata.layout import SPLITS

F = TypeVar("F", bound=Callable[..., Any])
S = TypeVar("S")


def _choices(name: str, values: tuple[str, ...]) -> type[enum.Enum]:
    """A str Enum of the allowed values, so Typer lists and checks them."""
    return enum.Enum(name, {v: v for v in values}, type=str)  # type: ignore[return-value]


Split = _choices("Split", SPLITS)

ParamsOption = Annotated[
    Path, typer.Option("--params", help="The params.yaml to read (the single source of configuration).")
]


MetricsOption = Annotated[Path, typer.Option("--metrics", help="Where to write the stage metrics (JSON).")]

WorkersOption = Annotated[Optional[int], typer.Option(
    "--workers", min=0, help="Videos processed in parallel (0 = one per core). Default: the stage's `workers` param.")]

SplitOption = Annotated[Optional[list[Split]], typer.Option(  # type: ignore[valid-type]
    "--split", help="Split to process (repeatable). Default: both.")]


def chosen_splits(splits: Optional[list[Split]]) -> tuple[str, ...]:  # type: ignore[valid-type]
    """The splits asked for on the command line, in pipeline order; all of them when none was."""
    return tuple(s for s in SPLITS if s in {split.value for split in splits}) if splits else SPLITS


class Bar:
    """A tqdm progress bar per phase, on stderr; hidden when stderr is not a terminal and CI is set."""

    def __init__(self) -> None:
        self._bar: tqdm | None = None

    def start(self, total: int, description: str) -> None:
        """Open a bar for a new phase."""
        self.close()
        self._bar = tqdm(total=total, desc=description, unit="it", file=sys.stderr, dynamic_ncols=True,
                         mininterval=0.5, leave=True)

    def advance(self, amount: int = 1) -> None:
        """Move the current bar."""
        if self._bar is not None:
            self._bar.update(amount)

    def close(self) -> None:
        """Finish the current bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def overridden(section: S, key: str, **options: Any) -> S:
    """A params section with the command-line options that were given (not None) in its place, checked again."""
    section = dataclasses.replace(section, **{name: value for name, value in options.items() if value is not None})
    section.validate(key)  # type: ignore[attr-defined]
    return section


def run_stage(run: Callable[..., dict[str, Any]], *inputs: Any, metrics: Path, bar: Bar | None = None) -> None:
    """Run a stage function under a progress bar, then report its metrics: every stage command's ending."""
    with (bar if bar is not None else Bar()) as progress:
        result = run(*inputs, progress)
    report_metrics(result, metrics)


def print_metrics(metrics: dict[str, Any]) -> None:
    """Echo a stage's metrics as compact JSON on stdout."""
    typer.echo(json.dumps(metrics, sort_keys=True))


def report_metrics(metrics: dict[str, Any], path: Path | None) -> None:
    """Every command's ending: write the stage's metrics JSON (atomically) where asked, and echo it."""
    if path is not None:
        write_json(path, metrics)
    print_metrics(metrics)


def friendly_errors(func: F) -> F:
    """Report ApesError as one line on stderr with exit code 2, without a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ApesError as error:
            typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
            raise typer.Exit(code=2) from None

    return wrapper  # type: ignore[return-value]
