"""apes-cli: every pipeline stage as a subcommand, in pipeline order."""

from __future__ import annotations

from typing import Annotated

import typer

from apes_cli.commands import asd, crop, decode, download, evaluate, mel, report, synth, train, triplets
from apes_cli.commands import index as index_command
from apes_cli.commands import people as people_command
from apes_cli.commands import search as search_command
from stages import __version__

app = typer.Typer(
    name="apes-cli",
    help=(
        "Audiovisual person search (APES), from untrimmed video to the benchmark tables.\n\n"
        "The pipeline, in order (each step is a DVC stage in dvc.yaml; `dvc repro` runs them all):\n\n"
        "synth or download -> decode -> crop -> mel -> triplets -> train -> evaluate -> report\n\n"
        "beside them: asd (active speaker detection on the val boxes, into the report)\n\n"
        "Every subcommand reads params.yaml and writes metrics/<stage>.json."
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"apes-cli {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Audiovisual person search toolkit."""


for module in (synth, download, decode, crop, mel, triplets, train, evaluate, asd, report):
    app.command(module.NAME, help=module.HELP)(module.command)

# Person search in any footage (docs/search.md): not pipeline stages.
for module in (index_command, search_command, people_command):
    app.command(module.NAME, help=module.HELP)(module.command)
