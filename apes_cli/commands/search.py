"""apes-cli search: find a person in videos by a face photo, a voice clip, or both."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from apes_cli.commands.index import (ChipsOption, DetectHeightOption, FaceRateOption, IndexDirOption, ModelOption,
                                     UpsampleOption, VideosArgument, VoiceEmbedderOption, WorkersOption,
                                     settings_from)
from apes_cli.common import Bar, friendly_errors

NAME = "search"
HELP = ("Find every moment a person is on screen (--face PHOTO) or heard (--voice CLIP), or "
        "on screen and talking (a face query's `speaking` hits; with a voice clip too they need both), in one or "
        "more videos; a face query alone also finds her voice, enrolled from her own speaking hits, on or off "
        "screen; --person PEOPLE.json:ID uses a person `apes-cli people` found. Indexes each video once (see "
        "`apes-cli index`; later queries "
        "reuse the index and take under a second). Writes OUT/results.json (query, videos, hits sorted by "
        "score, each with video, start, end, score, match, modality, track) and OUT/results.html (a page "
        "with thumbnails that opens offline; each time links to VIDEO#t=START), and prints the matches. "
        "Thresholds and how they were chosen: docs/search.md.")


def _table(results: dict) -> str:
    matches = [hit for hit in results["hits"] if hit["match"]]
    if not matches:
        return "no match (the best scores are in results.json and results.html)"
    lines = [f"{'video':<28} {'start':>8} {'end':>8} {'modality':<8} {'score':>6}  track"]
    for hit in matches:
        lines.append(f"{Path(hit['video']).name[-28:]:<28} {hit['start']:>8.2f} {hit['end']:>8.2f} "
                     f"{hit['modality']:<8} {hit['score']:>6.3f}  {hit['track']} {hit.get('segment', '')}".rstrip())
    return "\n".join(lines)


@friendly_errors
def command(
    videos: VideosArgument,
    face: Annotated[Optional[Path], typer.Option(
        "--face", help="Photo of the person's face (JPEG, PNG, ...). With several faces the largest is used "
                       "(and named) unless --face-index says otherwise.")] = None,
    voice: Annotated[Optional[Path], typer.Option(
        "--voice", help="Recording of the person's voice, any format ffmpeg reads (3 s of speech or more "
                        "is best).")] = None,
    person: Annotated[Optional[str], typer.Option(
        "--person", help="A person found by `apes-cli people`: DIR/people.json:person-3 (or :NAME with --names); "
                         "searches with their face and voice.")] = None,
    face_index: Annotated[Optional[int], typer.Option(
        "--face-index", help="Which face of the photo, 1-based, numbered left to right.")] = None,
    out: Annotated[Path, typer.Option("--out", help="Folder for results.json and results.html.")] = Path(
        "search-results"),
    top: Annotated[int, typer.Option("--top", help="Hits kept in the results (best scores first).")] = 100,
    threshold: Annotated[Optional[float], typer.Option(
        "--threshold", help="Raw score at or above which a hit is a match, for every queried modality "
                            "(default: face 0.45 = dlib distance 0.55; voice: a rule on the CAM++ cosine, "
                            "0.40 for segments of 1.5 s or more, up to 0.50 for short ones).")] = None,
    face_threshold: Annotated[Optional[float], typer.Option(
        "--face-threshold", help="Match threshold of face scores only (overrides --threshold).")] = None,
    voice_threshold: Annotated[Optional[float], typer.Option(
        "--voice-threshold", help="A fixed cosine threshold for voices instead of the length-aware rule "
                                  "(overrides --threshold; each hit's cosine is its `raw` in results.json).")] = None,
    index_dir: IndexDirOption = Path(".apes-index"),
    face_rate: FaceRateOption = 2.0,
    detect_height: DetectHeightOption = 720,
    upsample: UpsampleOption = 0,
    chips_per_track: ChipsOption = 3,
    model: ModelOption = None,
    voice_embedder: VoiceEmbedderOption = "campplus",
    workers: WorkersOption = 1,
) -> None:
    """Search videos for a person."""
    from stages.footage.search import search
    from stages.media.video_jobs import resolve_workers
    settings = settings_from(face_rate, detect_height, upsample, chips_per_track, model, voice_embedder)
    notes: list[str] = []
    with Bar() as bar:
        results = search(videos, out, settings, index_dir, face=face, voice=voice, face_index=face_index, top=top,
                         face_threshold=face_threshold if face_threshold is not None else threshold,
                         voice_threshold=voice_threshold if voice_threshold is not None else threshold,
                         workers=resolve_workers(workers), progress=bar, notes=notes, person=person)
    for note in notes:
        typer.secho(f"note: {note}", fg=typer.colors.YELLOW, err=True)
    typer.echo(_table(results))
    summary = results["summary"]
    typer.echo(f"{summary['matches']} match(es); query {summary['query_seconds']:.2f} s; "
               f"results in {out / 'results.json'} and {out / 'results.html'}", err=True)
