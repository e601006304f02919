"""Who is speaking: each speech segment given to the face whose mouth moves with it (active speaker detection).

For every speech segment with a face on screen, the segment's frames are decoded at the full frame rate
(only the band of the frame that holds the faces, grey), with CONTEXT seconds either side (consecutive
segments with the same faces share one span: a short span leaves too few frames for the synchrony to be
told from chance), each visible track's box is interpolated between
its detections to every frame, and stages/media/active_speaker.py scores the synchrony of each mouth
region with the speech, per frame. A frame belongs to the best track when its score reaches MIN_SCORE and
beats the next track's by MARGIN; runs shorter than MIN_PART are absorbed by their neighbours, and a
segment whose frames go to different speakers is split there (each part its own voice embedding) when
each speaker's run holds a mean score of SPLIT_SCORE (a clear split; otherwise the unclear speakers are
dropped); one with a single speaker stays whole, hers when she holds at least half of it.
How the thresholds were chosen, and what they give: docs/search.md ("Who is speaking").
"""

from __future__ import annotations

import os
import resource
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import ffmpeg
import numpy as np

from stages.core.errors import DataError
from stages.media.active_speaker import (FEATURES, SAMPLE_RATE, high_pass, mouth_crops, mouth_features,
                                         speech_envelope, sync_features)
from stages.media.video_io import VideoInfo, ffmpeg_exe, frame_indices_at, frame_times, read_audio, seek_time

MIN_SCORE = 0.10      # windowed adjusted R^2 a speaking mouth reaches
MARGIN = 0.08         # ... and by which it beats the next face on screen
SPLIT_SCORE = MIN_SCORE + MARGIN  # a segment split between faces: each part's mean score must reach this
STILL_RATIO = 1.55    # mouth motion under this many times the eyes' motion: lips not seen moving
STILL_PROBE = 0.45    # the eye region: the mouth region moved up by this share of the box height
LONE_SCORE = 0.25     # a face alone on screen has no rival to beat: it needs more (a still photo reached 0.17)
MIN_PART = 0.8        # seconds: shorter runs of one decision join their neighbours
MAX_HEIGHT = 720      # frames are scaled to at most this height before the mouths are cut
SMOOTH_DETECTIONS = 5 # face boxes averaged over this many detections (2.5 s at 2 samples/s)
CONTEXT = 2.0         # seconds analysed either side of a segment (same faces): short spans overfit
SPAN_THREADS = min(2, os.cpu_count() or 1)  # spans decoded and scored at once


@dataclass
class SpeechPart:
    """One row of speech.parquet: a segment, or a piece of one split where the speaker changes."""

    start: float
    end: float
    embedding: np.ndarray
    visible: list[int]
    speaker: int           # track id, -1 = none
    score: float           # the speaker's mean synchrony over the part (the best face's when none is chosen)


@dataclass
class FaceTrackPath:
    """Where a face track is: its id, time span, detection times and normalised boxes (n x 4)."""

    track_id: int
    start: float
    end: float
    times: np.ndarray
    boxes: np.ndarray

    def boxes_at(self, times: np.ndarray) -> np.ndarray:
        """Boxes interpolated at `times` (held before the first and after the last detection), NaN outside
        the track. The detections are smoothed first (a mean over SMOOTH_DETECTIONS): HOG boxes jitter by
        several pixels from one sample to the next, and a mouth crop that slides with them moves more than
        the lips do."""
        reach = min(SMOOTH_DETECTIONS // 2, (len(self.boxes) - 1) // 2)
        padded = np.pad(self.boxes, ((reach, reach), (0, 0)), mode="edge")
        kernel = np.ones(2 * reach + 1) / (2 * reach + 1)
        smooth = np.stack([np.convolve(padded[:, i], kernel, mode="valid") for i in range(4)], axis=1)
        out = np.stack([np.interp(times, self.times, smooth[:, i]) for i in range(4)], axis=1)
        out[(times < self.start) | (times > self.end)] = np.nan
        return out


def _decode_band(info: VideoInfo, first: int, count: int, band: tuple[float, float], scale: float,
                 stamps: np.ndarray | None) -> tuple[np.ndarray, tuple[int, int]]:
    """Grey frames first..first+count (stream order; `stamps` from `frame_times` place them) of the rows `band`
    (normalised top, bottom), scaled by `scale`; returns (count', h, w) uint8 and the (top row, full height)
    of the band in scaled pixels."""
    full_w, full_h = max(2, int(round(info.width * scale / 2)) * 2), max(2, int(round(info.height * scale / 2)) * 2)
    top = max(0, int(np.floor(band[0] * full_h / 2)) * 2)
    bottom = min(full_h, int(np.ceil(band[1] * full_h / 2)) * 2)
    height = max(2, bottom - top)
    # without H.264's deblocking filter: 15 % less CPU here, the same decisions on the bench videos
    stream = (ffmpeg.input(str(info.path), ss=f"{seek_time(first, info.fps, stamps):.6f}",
                           skip_loop_filter="all", threads=1)["v:0"]
              .filter("scale", full_w, full_h, flags="area").filter("crop", full_w, height, 0, top)
              .filter("format", "gray")
              .output("pipe:1", format="rawvideo", vframes=count, fps_mode="passthrough")
              .global_args("-hide_banner", "-nostdin", "-loglevel", "error"))
    with tempfile.TemporaryFile() as errors:
        result = subprocess.run(stream.compile(cmd=ffmpeg_exe()), stdout=subprocess.PIPE, stderr=errors)
        if result.returncode != 0:
            errors.seek(0)
            lines = errors.read().decode(errors="replace").strip().splitlines()
            raise DataError(info.path, f"cannot decode the video for speaker detection "
                                       f"(ffmpeg: {lines[-1] if lines else result.returncode})")
    size = full_w * height
    frames = np.frombuffer(result.stdout[:len(result.stdout) // size * size], np.uint8)
    return frames.reshape(-1, height, full_w), (top, full_h)


def _frame_times(info: VideoInfo, start: float, end: float, stamps: np.ndarray | None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """A regular grid of times at the nominal rate over [start, end] on the file's timeline, within the video
    stream, and the stream frame shown at each (the frame k = t * fps of a constant-rate stream from 0; else
    the nearest presentation timestamp: a late start or a variable rate keeps the index's timeline)."""
    first, last = int(np.ceil(start * info.fps - 1e-6)), int(np.floor(end * info.fps + 1e-6))
    times = (first + np.arange(max(0, last - first))) / info.fps
    if stamps is None:
        return times, first + np.arange(times.size)
    half = 0.5 / info.fps
    times = times[(times >= stamps[0] - half) & (times <= stamps[-1] + half)] if stamps.size else times[:0]
    return times, frame_indices_at(times, stamps) if times.size else np.zeros(0, np.int64)


def _frame_scores(info: VideoInfo, start: float, end: float, paths: list[FaceTrackPath],
                  edges: list[float], stamps: np.ndarray | None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Frame times, their audio, and per-track per-frame synchrony (tracks x frames; -inf where absent);
    the scores' windows stop at the `edges` (seconds where one segment ends and the next begins)."""
    times, shown = _frame_times(info, start, end, stamps)
    count = times.size
    boxes = [p.boxes_at(times) for p in paths]
    known = np.concatenate([b[np.isfinite(b).all(axis=1)] for b in boxes])
    if count < FEATURES + 3 or not len(known):
        return times, np.zeros(0), np.full((len(paths), count), -np.inf), np.zeros(len(paths), bool)
    scale = min(1.0, MAX_HEIGHT / info.height)
    margin = 0.02
    first = int(shown[0])
    decoded, (top, full_h) = _decode_band(info, first, int(shown[-1]) - first + 1,
                                          (float(known[:, 1].min()) - margin, float(known[:, 3].max()) + margin),
                                          scale, stamps)
    count = int(np.searchsorted(shown - first, len(decoded)))  # the grid times whose frame was decoded
    frames = decoded[shown[:count] - first]  # a frame shown over several grid times (variable rate) repeats
    times = times[:count]
    if count < FEATURES + 3:  # the container's duration promised frames the stream does not have
        return times, np.zeros(0), np.full((len(paths), count), -np.inf), np.zeros(len(paths), bool)
    audio = read_audio(info, float(times[0]), count / info.fps, SAMPLE_RATE).astype(np.float32) / 32768.0
    envelope = speech_envelope(audio, info.fps, count)
    width = frames.shape[2] if count else 1
    pixels = np.array([width, full_h, width, full_h], np.float64)
    shift = np.array([0, top, 0, top], np.float64)
    scores = np.full((len(paths), count), -np.inf)
    still = np.zeros(len(paths), bool)
    for row, track_boxes in enumerate(boxes):
        track_boxes = track_boxes[:count] * pixels - shift
        present = np.isfinite(track_boxes).all(axis=1)
        if present.sum() < FEATURES + 3:
            continue
        crops = mouth_crops(frames, track_boxes)
        breaks = np.searchsorted(times, edges)
        result = sync_features(mouth_features(crops, info.fps), envelope, info.fps, breaks=breaks)
        scores[row] = np.where(present, result.frame_scores, -np.inf)
        height = (track_boxes[:, 3] - track_boxes[:, 1])[:, None] * np.array([[0, 1, 0, 1]])
        brows = mouth_crops(frames, track_boxes - STILL_PROBE * height)  # the same region moved up to the eyes
        still[row] = _motion(crops, info.fps) < STILL_RATIO * _motion(brows, info.fps)
    return times, audio, scores, still


def _motion(crops: np.ndarray, fps: float) -> float:
    """Mean absolute frame-to-frame change of band-passed crops (grey levels)."""
    flat = crops.reshape(len(crops), -1)
    flat = flat[np.isfinite(flat).all(axis=1)]
    return float(np.mean(np.abs(np.diff(high_pass(flat, fps), axis=0)))) if len(flat) > 2 else 0.0


def _runs(labels: np.ndarray, min_frames: int) -> list[tuple[int, int, int]]:
    """(first, end, label) runs of equal labels; runs shorter than `min_frames` join the longer neighbour."""
    runs = []
    for index, label in enumerate(labels):
        if runs and runs[-1][2] == label:
            runs[-1][1] = index + 1
        else:
            runs.append([index, index + 1, int(label)])
    while len(runs) > 1:
        lengths = [b - a for a, b, _ in runs]
        shortest = int(np.argmin(lengths))
        if lengths[shortest] >= min_frames:
            break
        if shortest == 0:
            neighbour = 1
        elif shortest == len(runs) - 1:
            neighbour = shortest - 1
        else:
            neighbour = shortest - 1 if lengths[shortest - 1] >= lengths[shortest + 1] else shortest + 1
        a, b = sorted((shortest, neighbour))
        keep = runs[neighbour][2]
        runs[a:b + 1] = [[runs[a][0], runs[b][1], keep]]
        merged = []  # neighbours that now carry the same label become one run
        for run in runs:
            if merged and merged[-1][2] == run[2]:
                merged[-1][1] = run[1]
            else:
                merged.append(run)
        runs = merged
    return [(a, b, label) for a, b, label in runs]


def decide(scores: np.ndarray, track_ids: list[int], fps: float, still: np.ndarray | None = None
           ) -> list[tuple[int, int, int, float]]:
    """Per-frame decisions from (tracks x frames) scores: (first, end, track id or -1, mean score) runs.
    A face alone on screen whose mouth is `still` (no lips seen moving: a photo, a face too small or blurred)
    keeps the speech, as nothing contradicts it; one whose lips move must move them with the sound."""
    count = scores.shape[1]
    if not track_ids or count == 0:
        return [(0, count, -1, 0.0)]
    order = np.argsort(-scores, axis=0)
    best = scores[order[0], np.arange(count)]
    second = scores[order[1], np.arange(count)] if len(track_ids) > 1 else np.full(count, -np.inf)
    alone = ~np.isfinite(second)
    second = np.where(alone, 0.0, second)
    chosen = (best >= np.where(alone, LONE_SCORE, MIN_SCORE)) & (best - second >= MARGIN)
    if still is not None:
        chosen |= alone & np.isfinite(best) & np.asarray(still)[order[0]]
    labels = np.where(chosen, np.asarray(track_ids)[order[0]], -1)
    out = []
    for a, b, label in _runs(labels, max(1, int(round(MIN_PART * fps)))):
        if label >= 0:
            row = track_ids.index(label)
            score = float(np.mean(scores[row, a:b]))
        else:
            part = scores[:, a:b]
            score = float(np.max(np.where(np.isfinite(part), part, -1.0).mean(axis=1)))
        out.append((a, b, label, score))
    return out


def clear_split(runs: list[tuple[int, int, int, float]]) -> list[tuple[int, int, int, float]]:
    """The runs of one segment, with the speakers of a split that is not clear taken out (label -1).

    A split gives a voice to two faces at once, so each face's run must hold a mean score of SPLIT_SCORE,
    not only pass MIN_SCORE frame by frame: runs at the threshold (0.10 against 0.08) in a shot where one
    person speaks split her voice and seeded part of it on the listener's face."""
    if len({speaker for _, _, speaker, _ in runs if speaker >= 0}) <= 1:
        return runs
    return [(a, b, speaker if score >= SPLIT_SCORE else -1, score) for a, b, speaker, score in runs]


def assign_speakers(info: VideoInfo, segments: list, visible: list[list[int]], paths: list[FaceTrackPath],
                    embed) -> tuple[list[SpeechPart], dict[str, float]]:
    """Speech rows with their speaker: `segments` have start, end, embedding; `visible[i]` the track ids
    on screen during segment i; `embed(audio)` re-embeds the parts of a split segment."""
    from threadpoolctl import threadpool_limits
    with threadpool_limits(limits=1):  # small matrices: BLAS threads only contend with the other work
        return _assign(info, segments, visible, paths, embed)


def _children_cpu() -> float:
    """CPU seconds of this process's finished child processes (the ffmpeg decodes)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _groups(segments: list, visible: list[list[int]], paths: dict[int, FaceTrackPath]
            ) -> list[tuple[float, float, list[int], list[int]]]:
    """Analysis spans: (start, end, track ids, segment numbers) of consecutive segments with the same faces
    on screen, widened by CONTEXT seconds either side within the tracks' time on screen."""
    groups: list[tuple[float, float, list[int], list[int]]] = []
    for number, (segment, ids) in enumerate(zip(segments, visible)):
        if not ids:
            continue
        first = min(paths[i].start for i in ids)
        last = max(paths[i].end for i in ids)
        lo, hi = max(first, segment.start - CONTEXT), min(last, segment.end + CONTEXT)
        if groups and sorted(groups[-1][2]) == sorted(ids) and lo <= groups[-1][1]:
            start, _, _, members = groups[-1]
            groups[-1] = (start, max(hi, groups[-1][1]), ids, members + [number])
        else:
            groups.append((lo, hi, ids, [number]))
    return groups


def _assign(info: VideoInfo, segments: list, visible: list[list[int]], paths: list[FaceTrackPath],
            embed) -> tuple[list[SpeechPart], dict[str, float]]:
    by_id = {p.track_id: p for p in paths}
    counters = {"asd_seconds": 0.0, "asd_cpu": 0.0, "asd_spans": 0, "asd_frames": 0, "asd_splits": 0,
                "asd_unclear_splits": 0}
    started, cpu_before = time.perf_counter(), time.process_time() + _children_cpu()
    decided: dict[int, list[SpeechPart]] = {}
    groups = _groups(segments, visible, by_id) if info.has_audio else []
    stamps = frame_times(info) if groups else None  # None: constant rate from 0, frame k at k / fps

    def span_scores(group: tuple[float, float, list[int], list[int]]) -> tuple[np.ndarray, ...]:
        start, end, ids, members = group
        # windows stop where one segment ends and the next begins at once (a voice change), not at pauses
        edges = [segments[n].end for n in members[:-1] if abs(segments[n + 1].start - segments[n].end) < 1e-3]
        return _frame_scores(info, start, end, [by_id[i] for i in ids], edges, stamps)

    # spans scored SPAN_THREADS at a time (ffmpeg decodes and numpy let go of the GIL), decided in order
    with ThreadPoolExecutor(SPAN_THREADS, thread_name_prefix="apes-asd") as pool:
        scored = list(pool.map(span_scores, groups))
    for (start, end, ids, members), (times, audio, scores, still) in zip(groups, scored):
        counters["asd_spans"] += 1
        counters["asd_frames"] += len(times)
        for number in members:
            segment = segments[number]
            inside = np.flatnonzero((times >= segment.start) & (times < segment.end))
            if not audio.size or inside.size == 0:
                continue
            runs = decide(scores[:, inside], ids, info.fps, still)
            clear = clear_split(runs)
            counters["asd_unclear_splits"] += clear != runs
            runs = clear
            speakers = {speaker for _, _, speaker, _ in runs if speaker >= 0}
            if len(speakers) <= 1:  # one speaker at most: the segment stays whole, hers if she holds most of it
                a, b, speaker, score = max(runs, key=lambda run: (run[2] >= 0, run[1] - run[0]))
                if 2 * (b - a) < inside.size:
                    speaker = -1
                decided[number] = [SpeechPart(segment.start, segment.end, segment.embedding, ids, speaker, score)]
                continue
            counters["asd_splits"] += len(runs) - 1
            edges = [segment.start] + [float(times[inside[a]]) - 0.5 / info.fps for a, _, _, _ in runs[1:]]
            edges.append(segment.end)
            decided[number] = []
            for (_, _, speaker, score), lo, hi in zip(runs, edges[:-1], edges[1:]):
                piece = audio[max(0, int((lo - times[0]) * SAMPLE_RATE)):int((hi - times[0]) * SAMPLE_RATE)]
                decided[number].append(SpeechPart(round(lo, 3), round(hi, 3), embed(piece), ids, speaker, score))
    counters["asd_seconds"] = time.perf_counter() - started
    counters["asd_cpu"] = time.process_time() + _children_cpu() - cpu_before  # all threads (nothing else runs now)
    parts: list[SpeechPart] = []
    for number, (segment, ids) in enumerate(zip(segments, visible)):
        parts += decided.get(number, [SpeechPart(segment.start, segment.end, segment.embedding, ids, -1, 0.0)])
    return parts, counters
