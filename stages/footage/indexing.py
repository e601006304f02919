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
from collections import deque
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from stages.core.errors import ApesError, DataError
from stages.core.progress import Progress, Silent
from stages.footage.index_store import FACES, SPEECH, entry_dir, list_column, read_entry, write_entry
from stages.footage.settings import IndexSettings, file_digest, model_versions
from stages.media.video_io import VideoInfo, probe

THUMB = 96


@dataclasses.dataclass
class Entry:
    """One video's index: where it is, whether it was built now, its facts."""

    video: Path
    digest: str
    path: Path
    built: bool
    meta: dict[str, Any]


def check_video(path: str | Path) -> VideoInfo:
    """Probe a video, turning 'not a video' into a clear DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "video file not found")
    info = probe(path)
    if info.duration is not None and info.duration <= 0:
        raise DataError(path, "the video has no duration; expected a video file with frames")
    return info


def _jpeg(rgb: np.ndarray) -> bytes:
    import cv2
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    return data.tobytes() if ok else b""


def _faces_pass(info: VideoInfo, source, settings: IndexSettings, embedder, tick
                ) -> tuple[list, list[float], float, dict]:
    """Decode, detect, track and embed; returns finished tracks, cut times (s), duration, counters."""
    from stages.footage.detection import detect_faces, square_crop
    from stages.footage.tracking import Detection, FinishedTrack, Tracker, merge_by_appearance

    step = source.step
    tracker = Tracker(step / info.fps, settings.max_gap)
    finished: list[FinishedTrack] = []
    pending: deque = deque()
    handled_frame = 0
    cut_frames_used: set[int] = set()
    counters = {"samples": 0, "detections": 0, "embedded_chips": 0, "detect_seconds": 0.0, "embed_seconds": 0.0}

    def finish(tracks) -> None:
        for track in tracks:
            started = time.perf_counter()
            chips = embedder.embed(track.chosen_patches(settings.chips_per_track))
            counters["embed_seconds"] += time.perf_counter() - started
            counters["embedded_chips"] += len(chips)
            finished.append(FinishedTrack(
                track.track_id, track.shot, round(track.start, 3), round(track.end, 3),
                np.asarray(track.times, np.float32), np.asarray(track.boxes, np.float32), chips,
                embedder.pool(chips), _jpeg(track.thumb), float(np.mean(track.scores))))

    def drain(final: bool) -> None:
        nonlocal handled_frame
        while pending:
            frame, moment, detections = pending[0]
            cuts, reached = source.cuts_until(frame)
            if not (reached or final):
                return
            pending.popleft()
            for cut in cuts:
                if handled_frame < cut <= frame and cut not in cut_frames_used:
                    cut_frames_used.add(cut)
                    finish(tracker.cut(cut / info.fps))
            finish(tracker.update(moment, detections))
            handled_frame = frame

    last_tick = 0.0
    for frame, moment, rgb in source:
        started = time.perf_counter()
        height, width = rgb.shape[:2]
        scale = np.array([width, height, width, height], np.float32)
        detections = []
        for face in detect_faces(rgb, settings.upsample):
            detections.append(Detection(moment, face.box / scale, face.score, embedder.patch(rgb, face),
                                        square_crop(rgb, face.box, THUMB, 0.3)))
        counters["detect_seconds"] += time.perf_counter() - started
        counters["samples"] += 1
        counters["detections"] += len(detections)
        pending.append((frame, moment, detections))
        drain(False)
        if moment - last_tick >= 1.0:
            tick(moment - last_tick)
            last_tick = moment
    frames = source.frames_seen
    duration = frames / info.fps if frames else (info.duration or 0.0)
    cuts, _ = source.cuts_until(frames)
    drain(True)
    for cut in cuts:
        if cut > handled_frame and cut not in cut_frames_used:
            cut_frames_used.add(cut)
            finish(tracker.cut(cut / info.fps))
    finish(tracker.finish(duration))
    tick(max(0.0, duration - last_tick))
    merge_at = embedder.threshold + 0.1
    tracks = merge_by_appearance(finished, embedder.scores, embedder.pool, merge_at)
    tracks.sort(key=lambda t: (t.start, t.track_id))
    return tracks, [c / info.fps for c in sorted(cut_frames_used)], duration, counters


def build_entry(video: str | Path, settings: IndexSettings, index_dir: str | Path,
                tick=lambda seconds: None) -> Entry:
    """Index one video (or reuse its index): the face pass and the soundtrack (in a thread beside it: its
    models spend most of their time outside the GIL), then association."""
    video = Path(video)
    info = check_video(video)
    digest = file_digest(video)
    final = entry_dir(index_dir, digest, settings.key())
    if (final / "meta.json").is_file():
        loaded = read_entry(final)
        tick(info.duration or 0.0)
        return Entry(video, digest, final, False, loaded.meta)
    import torch  # only now: a reused index needs none of the models

    from stages.footage.association import associate
    from stages.footage.face_embedding import face_embedder
    from stages.footage.frames import FrameSource, sample_step
    from stages.footage.speech import analyze_audio

    started = time.perf_counter()
    embedder = face_embedder(settings.model)
    source = FrameSource(info, sample_step(info.fps, settings.face_rate), settings.detect_height)
    audio: dict[str, Any] = {}

    def audio_job() -> None:
        begun, begun_cpu = time.perf_counter(), time.thread_time()
        try:
            audio["value"] = analyze_audio(info, source.cuts_known)
        except BaseException as error:  # noqa: BLE001 - handed to the main thread
            audio["error"] = error
        audio["seconds"] = time.perf_counter() - begun
        audio["cpu"] = time.thread_time() - begun_cpu

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    main_cpu = time.thread_time()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one core for the audio models, one for ffmpeg + dlib
    worker = threading.Thread(target=audio_job, name="apes-audio", daemon=True)
    worker.start()
    try:
        tracks, cuts, duration, counters = _faces_pass(info, source, settings, embedder, tick)
    finally:
        source.finish()
        worker.join()
        torch.set_num_threads(threads)
    faces_seconds = time.perf_counter() - started
    main_cpu = time.thread_time() - main_cpu
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    ffmpeg_cpu = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
    if "error" in audio:
        raise audio["error"]
    segments, speech_seconds = audio["value"]
    audio_seconds = audio["seconds"]
    visible = associate([(s.start, s.end) for s in segments], [(t.track_id, t.start, t.end) for t in tracks])
    parts, asd_counters = _speakers(info, segments, visible, tracks)
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
    total = time.perf_counter() - started
    meta = {
        "video": str(video.resolve()), "sha256": digest, "fps": info.fps, "width": info.width,
        "height": info.height, "duration": round(duration, 3), "has_audio": info.has_audio,
        "cuts": [round(c, 3) for c in cuts], "settings": dataclasses.asdict(settings),
        "settings_key": settings.key(), "models": {**model_versions(), "face_embedder": embedder.name},
        "face_dim": int(embedder.dim), "tracks": len(tracks), "speech_segments": len(parts),
        "speech_seconds": round(speech_seconds, 2),
        "timings": {"faces_seconds": round(faces_seconds, 2), "audio_seconds": round(audio_seconds, 2),
                    "total_seconds": round(total, 2), "faces_thread_cpu": round(main_cpu, 2),
                    "audio_thread_cpu": round(audio.get("cpu", 0.0), 2), "ffmpeg_cpu": round(ffmpeg_cpu, 2),
                    **{k: round(v, 2) if isinstance(v, float) else v
                       for k, v in {**counters, **asd_counters}.items()}},
    }
    write_entry(final, meta, faces, speech)
    return Entry(video, digest, final, True, read_entry(final).meta)


def _speakers(info: VideoInfo, segments: list, visible: list[list[int]], tracks: list) -> tuple[list, dict]:
    """Active speaker detection over the speech segments (stages/footage/speakers.py)."""
    from stages.footage.speakers import FaceTrackPath, assign_speakers
    from stages.footage.speech import embed_audio
    paths = [FaceTrackPath(t.track_id, t.start, t.end, np.asarray(t.times, np.float64),
                           np.asarray(t.boxes, np.float64).reshape(-1, 4)) for t in tracks]
    return assign_speakers(info, segments, visible, paths, embed_audio)


def _worker(video: str, settings: IndexSettings, index_dir: str) -> tuple[str, Any]:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        import torch
        torch.set_num_threads(1)
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
