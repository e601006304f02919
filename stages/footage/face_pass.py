"""The face half of indexing: decode, detect, track and embed the faces of one video.

Samples arrive from `FrameSource` with their times and are detected on DETECT_THREADS threads (dlib's HOG lets
go of the GIL: two threads detect twice the frames a second on two idle cores); the results are taken in time
order, and each waits in `pending` until the cut finder (a thread on the thumbnails) has passed it, so that the
cuts before it close the open tracks first. A closed track is embedded at once (its chosen chips), and at the
end same-shot pieces that look alike are joined.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stages.footage.detection import detect_faces
from stages.footage.frames import FrameSource
from stages.footage.settings import IndexSettings
from stages.footage.tracking import Detection, FinishedTrack, Track, Tracker, merge_by_appearance
from stages.media.face_crop import crop_rgb

THUMB = 96
DETECT_THREADS = min(4, os.cpu_count() or 1)
AHEAD = 2  # samples in flight per detection thread: enough to keep them busy, few frames held in memory


@dataclass
class Faces:
    """What the face pass found: tracks in time order, the cut times used, where the video ends, counters."""

    tracks: list[FinishedTrack]
    cuts: list[float]
    video_end: float
    counters: dict[str, Any] = field(default_factory=dict)


def _jpeg(rgb: np.ndarray) -> bytes:
    import cv2
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    return data.tobytes() if ok else b""


class FacePass:
    """One video's faces: samples in, finished and embedded tracks out."""

    def __init__(self, source: FrameSource, settings: IndexSettings, embedder: Any) -> None:
        self.source, self.settings, self.embedder = source, settings, embedder
        self.tracker = Tracker(source.period, settings.max_gap)
        self.finished: list[FinishedTrack] = []
        self.pending: deque[tuple[float, list[Detection]]] = deque()
        self.handled = -np.inf      # time of the last sample given to the tracker
        self.cuts_used: set[float] = set()
        self.counters: dict[str, Any] = {"samples": 0, "detections": 0, "embedded_chips": 0,
                                         "detect_seconds": 0.0, "embed_seconds": 0.0}

    def run(self, tick: Callable[[float], None], fallback_end: float) -> Faces:
        """Consume the whole video; `tick(seconds)` reports progress in video seconds."""
        last_tick = 0.0
        in_flight: deque[tuple[float, Future]] = deque()
        with ThreadPoolExecutor(DETECT_THREADS, thread_name_prefix="apes-detect") as pool:
            for moment, rgb in self.source:
                in_flight.append((moment, pool.submit(self._detect, moment, rgb)))
                while len(in_flight) > AHEAD * DETECT_THREADS or (in_flight and in_flight[0][1].done()):
                    last_tick = self._take(*in_flight.popleft(), tick, last_tick)
            while in_flight:
                last_tick = self._take(*in_flight.popleft(), tick, last_tick)
        video_end = self.source.timeline.end() or fallback_end
        self._drain(final=True)
        self._apply_cuts(self.source.all_cuts(), np.inf)
        self._close(self.tracker.finish(video_end))
        tick(max(0.0, video_end - last_tick))
        tracks = merge_by_appearance(self.finished, self.embedder.scores, self.embedder.pool,
                                     self.embedder.threshold + 0.1)
        tracks.sort(key=lambda t: (t.start, t.track_id))
        return Faces(tracks, sorted(self.cuts_used), video_end, self.counters)

    def _take(self, moment: float, detected: Future, tick: Callable[[float], None], last_tick: float) -> float:
        """Hand one sample's detections (in time order) to the tracker; returns the time progress was told."""
        detections, seconds = detected.result()
        if not self.counters["samples"]:
            self.tracker.shot_start = moment  # the first shot starts with the stream, which may be after 0
        self.counters["detect_seconds"] += seconds
        self.counters["samples"] += 1
        self.counters["detections"] += len(detections)
        self.pending.append((moment, detections))
        self._drain(final=False)
        if moment - last_tick >= 1.0:
            tick(moment - last_tick)
            return moment
        return last_tick

    def _detect(self, moment: float, rgb: np.ndarray) -> tuple[list[Detection], float]:
        """The faces of one sample (on a detection thread) and the seconds it took."""
        started = time.perf_counter()
        height, width = rgb.shape[:2]
        scale = np.array([width, height, width, height], np.float32)
        detections = [Detection(moment, face.box / scale, face.score, self.embedder.patch(rgb, face),
                                crop_rgb(rgb, face.box, THUMB, 0.3))
                      for face in detect_faces(rgb, self.settings.upsample)]
        return detections, time.perf_counter() - started

    def _drain(self, final: bool) -> None:
        """Give the tracker every pending sample the cut finder has passed (all of them when `final`)."""
        while self.pending:
            moment, detections = self.pending[0]
            cuts, reached = self.source.cuts_until(moment)
            if not (reached or final):
                return
            self.pending.popleft()
            self._apply_cuts(cuts, moment)
            self._close(self.tracker.update(moment, detections))
            self.handled = moment

    def _apply_cuts(self, cuts: list[float], until: float) -> None:
        """Close the open tracks at each new cut after the last handled sample and up to `until`."""
        for cut in cuts:
            if self.handled < cut <= until and cut not in self.cuts_used:
                self.cuts_used.add(cut)
                self._close(self.tracker.cut(cut))

    def _close(self, tracks: list[Track]) -> None:
        """Embed closed tracks (their chosen chips) and keep them."""
        for track in tracks:
            started = time.perf_counter()
            chips = self.embedder.embed(track.chosen_patches(self.settings.chips_per_track))
            self.counters["embed_seconds"] += time.perf_counter() - started
            self.counters["embedded_chips"] += len(chips)
            self.finished.append(FinishedTrack(
                track.track_id, track.shot, round(track.start, 3), round(track.end, 3),
                np.asarray(track.times, np.float32), np.asarray(track.boxes, np.float32), chips,
                self.embedder.pool(chips), _jpeg(track.thumb), float(np.mean(track.scores))))
