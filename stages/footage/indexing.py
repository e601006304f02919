"""apes-cli index: build the search index of videos (face tracks, face and voice embeddings, speech).

`index_videos(paths, settings, index_dir, progress, workers) -> (entries, summary)`: one index folder per
video content and settings (stages/footage/index_store.py); an existing one is reused. Videos run in
parallel processes when `workers` > 1. How it works, the models and the timings: docs/search.md.
"""

from __future__ import annotations

import dataclasses
import os
import resource
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from stages.core.atomic import check_writable
from stages.core.errors import ApesError, DataError
from stages.core.progress import Progress, Silent
from stages.core.threads import torch_threads
from stages.footage.index_store import FACES, SPEECH, entry_dir, list_column, read_entry, write_entry
from stages.footage.settings import IndexSettings, file_digest, model_versions
from stages.media.video_io import VideoInfo, probe

if TYPE_CHECKING:  # the modules below load the models' packages, which a reused index does not need
    import numpy as np

    from stages.footage.face_pass import Faces
    from stages.footage.frames import Timeline
    from stages.footage.speakers import SpeechPart
    from stages.footage.speech import CutsKnown, Soundtrack

INDEX_BASE_BYTES, INDEX_BYTES_PER_MINUTE = 1_000_000, 500_000  # free space asked for before indexing
TRUNCATED_SECONDS = 0.5  # decoded this much less than the container says: the file is cut short


@dataclasses.dataclass
class Entry:
    """One video's index: where it is, whether it was built now, its facts."""

    video: Path
    digest: str
    path: Path
    built: bool
    meta: dict[str, Any]

    @property
    def warning(self) -> str | None:
        """One line naming the video and what of it was damaged; None for a whole video."""
        damage = self.meta.get("damage")
        return f"{self.video}: {damage['message']}" if damage else None


def index_bytes(seconds: float) -> int:
    """A generous size of the index of `seconds` of video (about 35 KB for 14 s with one face track)."""
    return int(INDEX_BASE_BYTES + INDEX_BYTES_PER_MINUTE * seconds / 60)


def check_video(path: str | Path) -> VideoInfo:
    """Probe a video, turning 'not a video' into a clear DataError."""
    path = Path(path)
    info = probe(path)
    if info.duration is not None and info.duration <= 0:
        raise DataError(path, "the video has no duration; expected a video file with frames")
    return info


def _spans(times: list[float], reach: float) -> list[list[float]]:
    """Times widened by `reach` either side and merged into [start, end] spans."""
    spans: list[list[float]] = []
    for moment in sorted(times):
        lo, hi = max(0.0, moment - reach), moment + reach
        if spans and lo <= spans[-1][1]:
            spans[-1][1] = hi
        else:
            spans.append([lo, hi])
    return [[round(lo, 1), round(hi, 1)] for lo, hi in spans]


def damage_report(info: VideoInfo, timeline: Timeline, soundtrack: Soundtrack, decoded_end: float) -> dict[str, Any] | None:
    """What decoding lost (errors, gaps, a missing end) with the seconds affected; None for a whole file."""
    gaps = [[round(a, 1), round(b, 1)] for a, b in timeline.gaps()]
    jumps = [[round(a, 1), round(b, 1)] for a, b in timeline.jumps_back()]
    short = info.duration is not None and decoded_end < info.duration - TRUNCATED_SECONDS
    errors = timeline.errors + soundtrack.errors
    if not (errors or gaps or jumps or short):
        return None
    parts = []
    if errors:
        spans = _spans(timeline.error_times + soundtrack.error_times, 0.5)
        parts.append(f"{errors} decoding error(s) near " + ", ".join(f"{a:.1f}-{b:.1f} s" for a, b in spans))
    if gaps:
        parts.append("no video frames " + ", ".join(f"{a:.1f}-{b:.1f} s" for a, b in gaps))
    if jumps:
        parts.append("timestamps jump back " + ", ".join(f"from {a:.1f} to {b:.1f} s" for a, b in jumps))
    if short:
        parts.append(f"only {decoded_end:.1f} s of {info.duration:.1f} s could be decoded (truncated?)")
    return {"decode_errors": errors, "video_errors": timeline.errors, "audio_errors": soundtrack.errors,
            "error_seconds": _spans(timeline.error_times + soundtrack.error_times, 0.5) if errors else [],
            "gaps": gaps, "jumps_back": jumps, "decoded_seconds": round(decoded_end, 2), "container_seconds": info.duration,
            "truncated": short, "message": "damaged: " + "; ".join(parts) + "; the index holds only what "
            "decoded"}


class _AudioThread(threading.Thread):
    """The soundtrack pass beside the face pass (its models spend most of their time outside the GIL)."""

    def __init__(self, info: VideoInfo, cuts_known: CutsKnown, embed: Callable[[np.ndarray], np.ndarray]) -> None:
        super().__init__(name="apes-audio", daemon=True)
        self.info, self.cuts_known, self.embed = info, cuts_known, embed
        self.result: Soundtrack | None = None
        self.error: BaseException | None = None
        self.seconds = self.cpu = 0.0

    def run(self) -> None:
        """Analyse the soundtrack, keeping the result or the error for the main thread."""
        from stages.footage.speech import analyze_audio
        begun, begun_cpu = time.perf_counter(), time.thread_time()
        try:
            # torch (1.5 s to import) loads here, beside the face pass, not before it on the main thread
            with torch_threads(1):
                self.result = analyze_audio(self.info, self.cuts_known, embed=self.embed)
        except BaseException as error:  # noqa: BLE001 - handed to the main thread
            self.error = error
        self.seconds, self.cpu = time.perf_counter() - begun, time.thread_time() - begun_cpu

    def outcome(self) -> Soundtrack:
        """The analysis (after the thread ended), or its error raised here."""
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


@dataclasses.dataclass
class _Analysis:
    """Everything one video's indexing found, and what it cost."""

    faces: Faces
    soundtrack: Soundtrack
    speech: list[SpeechPart]   # the rows of speech.parquet: segments, split where the speaker changes
    timeline: Timeline
    embedder_name: str
    face_dim: int
    timings: dict[str, Any]


def _analyse(info: VideoInfo, settings: IndexSettings, tick: Callable[[float], None]) -> _Analysis:
    """The face pass (ffmpeg, then dlib on stages.footage.face_pass.DETECT_THREADS threads) and the soundtrack on a
    thread of its own."""
    from threadpoolctl import threadpool_limits

    from stages.footage.face_embedding import face_embedder
    from stages.footage.face_pass import FacePass
    from stages.footage.frames import FrameSource, sample_period
    from stages.footage.voice_embedders import voice_embedder

    started = time.perf_counter()
    embedder = face_embedder(settings.model)
    source = FrameSource(info, sample_period(info.fps, settings.face_rate), settings.detect_height)
    voice = voice_embedder(settings.voice_embedder)
    audio = _AudioThread(info, source.cuts_known, voice.embed_segment)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    main_cpu = time.thread_time()
    audio.start()
    try:
        with threadpool_limits(1):  # the face network's BLAS: the cores are busy with the detection threads
            faces = FacePass(source, settings, embedder).run(tick, info.duration or 0.0)
    finally:
        source.finish()
        audio.join()
    faces_seconds = time.perf_counter() - started
    main_cpu = time.thread_time() - main_cpu
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    soundtrack = audio.outcome()
    ffmpeg_cpu = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
    speech, asd_counters = _speakers(info, soundtrack.segments, faces.tracks, voice.embed_segment)
    timings = {"faces_seconds": faces_seconds, "audio_seconds": audio.seconds, "faces_thread_cpu": main_cpu,
               "audio_thread_cpu": audio.cpu, "ffmpeg_cpu": ffmpeg_cpu, **faces.counters, **asd_counters}
    return _Analysis(faces, soundtrack, speech, source.timeline, embedder.name, int(embedder.dim), timings)


def _tables(digest: str, analysis: _Analysis) -> tuple[pa.Table, pa.Table]:
    """faces.parquet and speech.parquet of one video; each speech row with the faces on screen and its speaker."""
    tracks, parts = analysis.faces.tracks, analysis.speech
    faces = pa.table({
        "video_sha256": pa.array([digest] * len(tracks), pa.string()),
        "track": pa.array([t.track_id for t in tracks], pa.int32()),
        "shot": pa.array([t.shot for t in tracks], pa.int32()),
        "start": pa.array([t.start for t in tracks], pa.float64()),
        "end": pa.array([t.end for t in tracks], pa.float64()),
        "detections": pa.array([len(t.times) for t in tracks], pa.int32()),
        "times": list_column([t.times for t in tracks]),
        "boxes": list_column([t.boxes for t in tracks]),
        "embeddings": list_column([t.embeddings for t in tracks]),
        "embedding": list_column([t.embedding for t in tracks]),
        "detector_score": pa.array([t.score for t in tracks], pa.float32()),
        "thumbnail": pa.array([t.thumb for t in tracks], pa.binary()),
    }, schema=FACES)
    speech = pa.table({
        "video_sha256": pa.array([digest] * len(parts), pa.string()),
        "segment": pa.array(range(len(parts)), pa.int32()),
        "start": pa.array([p.start for p in parts], pa.float64()),
        "end": pa.array([p.end for p in parts], pa.float64()),
        "embedding": list_column([p.embedding for p in parts]),
        "visible_tracks": list_column([p.visible for p in parts], pa.int32()),
        "speaker_track": pa.array([p.speaker for p in parts], pa.int32()),
        "speaker_score": pa.array([p.score for p in parts], pa.float32()),
    }, schema=SPEECH)
    return faces, speech


def _meta(video: Path, digest: str, info: VideoInfo, settings: IndexSettings, analysis: _Analysis,
          seconds: float) -> dict[str, Any]:
    """meta.json of one video: its facts on the file's timeline, what was damaged, settings, models, timings."""
    faces, soundtrack = analysis.faces, analysis.soundtrack
    duration = max(faces.video_end, soundtrack.decoded_seconds)
    damage = damage_report(info, analysis.timeline, soundtrack, duration)
    timings = {**analysis.timings, "total_seconds": seconds}
    return {
        "video": str(video.resolve()), "sha256": digest, "fps": info.fps, "width": info.width,
        "height": info.height, "rotation": info.rotation, "duration": round(duration, 3),
        "container_duration": info.duration, "video_start": round(analysis.timeline.times[0], 3),
        "has_audio": info.has_audio, "complete": damage is None, "damage": damage,
        "cuts": [round(c, 3) for c in faces.cuts], "settings": dataclasses.asdict(settings),
        "settings_key": settings.key(), "models": {**model_versions(), "face_embedder": analysis.embedder_name,
                                                                   "voice_embedder": settings.voice_embedder},
        "face_dim": analysis.face_dim, "tracks": len(faces.tracks), "speech_segments": len(analysis.speech),
        "speech_seconds": round(soundtrack.speech_seconds, 2),
        "timings": {k: round(v, 2) if isinstance(v, float) else v for k, v in timings.items()},
    }


def build_entry(video: str | Path, settings: IndexSettings, index_dir: str | Path,
                tick: Callable[[float], None] = lambda seconds: None) -> Entry:
    """Index one video (or reuse its index): faces and soundtrack side by side, then association."""
    video = Path(video)
    info = check_video(video)
    digest = file_digest(video)
    final = entry_dir(index_dir, digest, settings.key())
    if (final / "meta.json").is_file():
        tick(info.duration or 0.0)
        return Entry(video, digest, final, False, read_entry(final).meta)
    started = time.perf_counter()
    analysis = _analyse(info, settings, tick)
    faces, speech = _tables(digest, analysis)
    write_entry(final, _meta(video, digest, info, settings, analysis, time.perf_counter() - started), faces, speech)
    return Entry(video, digest, final, True, read_entry(final).meta)


def _speakers(info: VideoInfo, segments: list, tracks: list,
              embed: Callable[[np.ndarray], np.ndarray]) -> tuple[list[SpeechPart], dict]:
    """The faces on screen during each speech segment and the one speaking it (stages/footage/speakers.py);
    `embed` re-embeds the parts of a segment split between two speakers (the index's voice embedder)."""
    import numpy as np

    from stages.footage.association import associate
    from stages.footage.speakers import FaceTrackPath, assign_speakers
    visible = associate([(s.start, s.end) for s in segments], [(t.track_id, t.start, t.end) for t in tracks])
    paths = [FaceTrackPath(t.track_id, t.start, t.end, np.asarray(t.times, np.float64),
                           np.asarray(t.boxes, np.float64).reshape(-1, 4)) for t in tracks]
    return assign_speakers(info, segments, visible, paths, embed)


def _worker(video: str, settings: IndexSettings, index_dir: str) -> tuple[str, Any]:
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # read by torch when the audio thread imports it
    try:
        return "ok", build_entry(video, settings, index_dir)
    except ApesError as error:  # DataError does not survive pickling: send the message
        return "error", str(error)


def index_videos(videos: list[str | Path], settings: IndexSettings, index_dir: str | Path,
                 progress: Progress | None = None, workers: int = 1) -> tuple[list[Entry], dict[str, Any]]:
    """Index every video (reusing existing entries); returns the entries in input order and a summary."""
    progress = progress or Silent()
    settings = settings.resolved()
    infos = [check_video(video) for video in videos]  # every input checked before any work
    total = sum(info.duration or 0.0 for info in infos)
    check_writable(index_dir, index_bytes(total))
    progress.start(max(1, int(round(total))), "indexing (video seconds)")
    started = time.perf_counter()
    entries: list[Entry | None] = [None] * len(videos)
    done = [0.0]

    def tick(seconds: float) -> None:
        done[0] += seconds
        whole = int(done[0])
        if whole:
            progress.advance(whole)
            done[0] -= whole

    if workers > 1 and len(videos) > 1:
        import multiprocessing
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(workers, len(videos)), mp_context=context) as pool:
            futures = {pool.submit(_worker, str(v), settings, str(index_dir)): i for i, v in enumerate(videos)}
            for future in as_completed(futures):
                status, value = future.result()
                if status == "error":
                    raise ApesError(value)
                entries[futures[future]] = value
                tick(infos[futures[future]].duration or 0.0)
    else:
        for i, video in enumerate(videos):
            entries[i] = build_entry(video, settings, index_dir, tick)
    wall = time.perf_counter() - started
    built = [e for e in entries if e is not None and e.built]
    summary = {
        "videos": len(videos), "built": len(built), "reused": len(videos) - len(built),
        "video_seconds": round(total, 2), "wall_seconds": round(wall, 2),
        "realtime_factor": round(sum(e.meta["duration"] for e in built) / wall, 2) if built and wall > 0 else None,
        "tracks": sum(e.meta["tracks"] for e in entries if e is not None),
        "speech_segments": sum(e.meta["speech_segments"] for e in entries if e is not None),
        "settings_key": settings.key(), "index_dir": str(index_dir),
    }
    return [e for e in entries if e is not None], summary
