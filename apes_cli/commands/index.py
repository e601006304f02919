"""apes-cli index: index videos ahead of a search (face tracks, embeddings, speech segments)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from apes_cli.common import Bar, friendly_errors, print_metrics

NAME = "index"
HELP = ("Index videos for `apes-cli search`: decode every N-th frame (N = fps / --face-rate), detect and "
        "track faces (cut at shot changes), embed each track a few times (dlib ResNet, or --model), find speech "
        "(Silero VAD), split it where the voice changes, embed each segment (CAM++, or --voice-embedder resemblyzer) and link it to the "
        "face on screen. Writes one folder of Parquet tables per video content and settings under --index-dir "
        "(reused by later searches). See docs/search.md.")

VideosArgument = Annotated[list[Path], typer.Argument(
    help="Video files (any container/codec ffmpeg reads).", show_default=False)]
IndexDirOption = Annotated[Path, typer.Option(
    "--index-dir", help="Where indexes live: one folder per video content + settings, Parquet inside.")]
FaceRateOption = Annotated[float, typer.Option(
    "--face-rate", help="Face samples per second (every N = round(fps / rate) frames go to the detector).")]
DetectHeightOption = Annotated[int, typer.Option(
    "--detect-height", help="Frames are scaled down to this height for face detection (smallest face found: "
                            "about 80 px at this height).")]
UpsampleOption = Annotated[int, typer.Option(
    "--upsample", help="dlib HOG upsampling: 1 finds faces half as large, about 4x slower.")]
ModelOption = Annotated[Optional[Path], typer.Option(
    "--model", help="Face embeddings from a network trained by this pipeline (models/<run>/model.pt) "
                    "instead of the pretrained dlib descriptor.")]
WorkersOption = Annotated[int, typer.Option(
    "--workers", min=0, help="Videos indexed in parallel processes (0 = one per core).")]
ChipsOption = Annotated[int, typer.Option(
    "--chips-per-track", help="Face descriptors computed per track (spread over it, best detections).")]

VoiceEmbedderOption = Annotated[str, typer.Option(
    "--voice-embedder", help="Speaker embedder of the speech segments and the voice query: campplus (CAM++, "
                             "the default: fewer errors on real voices) or resemblyzer (docs/search.md).")]


def settings_from(face_rate: float, detect_height: int, upsample: int, chips: int, model: Optional[Path],
                  voice_embedder: str = "campplus"):
    """IndexSettings from the shared options."""
    from stages.footage.settings import IndexSettings
    return IndexSettings(face_rate=face_rate, detect_height=detect_height, upsample=upsample,
                         chips_per_track=chips, model=str(model) if model else "", voice_embedder=voice_embedder)


@friendly_errors
def command(
    videos: VideosArgument,
    index_dir: IndexDirOption = Path(".apes-index"),
    face_rate: FaceRateOption = 2.0,
    detect_height: DetectHeightOption = 720,
    upsample: UpsampleOption = 0,
    chips_per_track: ChipsOption = 3,
    model: ModelOption = None,
    voice_embedder: VoiceEmbedderOption = "campplus",
    workers: WorkersOption = 1,
) -> None:
    """Index videos."""
    from stages.footage.indexing import index_videos
    from stages.media.video_jobs import resolve_workers
    settings = settings_from(face_rate, detect_height, upsample, chips_per_track, model, voice_embedder)
    with Bar() as bar:
        entries, summary = index_videos(videos, settings, index_dir, bar, resolve_workers(workers))
    for entry in entries:
        if entry.warning:
            typer.secho(f"warning: {entry.warning}", fg=typer.colors.YELLOW, err=True)
        state = "indexed" if entry.built else "already indexed"
        typer.echo(f"{entry.video}: {state}: {entry.meta['tracks']} face tracks, "
                   f"{entry.meta['speech_segments']} speech segments -> {entry.path}", err=True)
    print_metrics(summary)
