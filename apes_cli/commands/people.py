"""apes-cli people: who is in these videos (faces clustered into people, voices joined), without a query."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from apes_cli.commands.index import (ChipsOption, DetectHeightOption, FaceRateOption, IndexDirOption, ModelOption,
                                     UpsampleOption, VideosArgument, WorkersOption, settings_from)
from apes_cli.common import Bar, friendly_errors

NAME = "people"
HELP = ("Find who is in one or more videos, with no photo or recording: face tracks of all the videos are "
        "clustered into people (two faces on screen together are never one person), speech given to a face "
        "joins that person, off-screen speech joins them by voice, unseen voices become people of their own. "
        "Indexes what is not indexed yet (see `apes-cli index`). Writes OUT/people.json, OUT/people.html and "
        "per video OUT/<stem>.rttm (who speaks when) and OUT/<stem>.vtt (subtitles naming the speaker). "
        "A person found here is searchable elsewhere: `apes-cli search OTHER.mp4 --person OUT/people.json:person-1`. "
        "See docs/search.md.")


@friendly_errors
def command(
    videos: VideosArgument,
    out: Annotated[Path, typer.Option("--out", help="Folder for people.json, people.html, *.rttm, *.vtt.")] = Path(
        "people"),
    names: Annotated[Optional[Path], typer.Option(
        "--names", help="Text file of 'person-N = Name' lines: names used in every output (and by "
                        "`search --person FILE:Name`).")] = None,
    index_dir: IndexDirOption = Path(".apes-index"),
    face_rate: FaceRateOption = 2.0,
    detect_height: DetectHeightOption = 720,
    upsample: UpsampleOption = 0,
    chips_per_track: ChipsOption = 3,
    model: ModelOption = None,
    workers: WorkersOption = 1,
) -> None:
    """Find the people in videos."""
    from stages.footage.people_outputs import label, people
    from stages.media.video_jobs import resolve_workers
    settings = settings_from(face_rate, detect_height, upsample, chips_per_track, model)
    notes: list[str] = []
    with Bar() as bar:
        document = people(videos, out, settings, index_dir, names_file=names, workers=resolve_workers(workers),
                          progress=bar, notes=notes)
    for note in notes:
        typer.secho(f"warning: {note}", fg=typer.colors.YELLOW, err=True)
    typer.echo(f"{'person':<24} {'on screen':>10} {'speaking':>10}  ")
    for person in document["people"]:
        kind = "face only" if person["face_only"] else "voice only" if person["voice_only"] else ""
        typer.echo(f"{label(person)[:24]:<24} {person['screen_seconds']:>9.1f}s {person['speaking_seconds']:>9.1f}s  "
                   f"{kind}")
    typer.echo(f"{len(document['people'])} people; results in {out / 'people.json'} and {out / 'people.html'}",
               err=True)
