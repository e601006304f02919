"""Face tracks from sampled detections: linked by box overlap, short gaps bridged, cut at shot changes,
then same-shot pieces joined by appearance.

Timing rule (docs/search.md): a track that is seen on the first sample of its shot starts at the cut
(the shot start), otherwise half a sampling step before its first detection; symmetrically at the end.
So a face that fills a shot gets the shot's boundaries, not the sampling grid's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MIN_IOU = 0.25


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two x1, y1, x2, y2 boxes."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _near(a: np.ndarray, b: np.ndarray) -> bool:
    """Fast motion fallback: centres within half a box width and sizes within a factor 1.5."""
    wa, wb = a[2] - a[0], b[2] - b[0]
    if not (wa > 0 and wb > 0 and 1 / 1.5 <= wa / wb <= 1.5):
        return False
    dx = (a[0] + a[2] - b[0] - b[2]) / 2
    dy = (a[1] + a[3] - b[1] - b[3]) / 2
    return (dx * dx + dy * dy) ** 0.5 <= 0.5 * max(wa, wb)


@dataclass
class Detection:
    """One face at one sample: normalised box, detector score, the patch to embed, a thumbnail."""

    time: float
    box: np.ndarray
    score: float
    patch: np.ndarray
    thumb: np.ndarray


@dataclass
class Track:
    """A face track while it is built; `patches` keeps a bounded, evenly thinned selection."""

    track_id: int
    shot: int
    shot_start: float
    times: list[float] = field(default_factory=list)
    boxes: list[np.ndarray] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    patches: list[tuple[float, float, np.ndarray]] = field(default_factory=list)  # (time, score, patch)
    patch_stride: int = 1
    thumb: np.ndarray | None = None
    thumb_score: float = -1e9
    missed: int = 0
    start: float = 0.0
    end: float = 0.0

    KEEP = 12

    def add(self, detection: Detection) -> None:
        """Append a detection; thin the kept patches when the buffer is full (memory flat in length)."""
        self.times.append(detection.time)
        self.boxes.append(detection.box)
        self.scores.append(detection.score)
        self.missed = 0
        if (len(self.times) - 1) % self.patch_stride == 0:
            self.patches.append((detection.time, detection.score, detection.patch))
            if len(self.patches) > self.KEEP:
                self.patches = self.patches[::2]
                self.patch_stride *= 2
        if detection.score > self.thumb_score:
            self.thumb, self.thumb_score = detection.thumb, detection.score

    def chosen_patches(self, count: int) -> list[np.ndarray]:
        """Up to `count` patches spread over the track, the best-scored one of each part."""
        parts = np.array_split(np.arange(len(self.patches)), min(count, len(self.patches)))
        return [self.patches[max(part, key=lambda i: self.patches[i][1])][2] for part in parts if len(part)]


class Tracker:
    """Greedy overlap tracker over samples taken every `step` seconds."""

    def __init__(self, step: float, max_gap: float) -> None:
        self.step = step
        self.max_missed = max(0, int(round(max_gap / step)))
        self.active: list[Track] = []
        self.shot, self.shot_start = 0, 0.0
        self._next_id = 0
        self._last_time: float | None = None

    def _bounds(self, track: Track, shot_end: float | None) -> Track:
        first, last = track.times[0], track.times[-1]
        track.start = track.shot_start if first - track.shot_start <= self.step * 1.01 else first - self.step / 2
        if shot_end is not None and shot_end - last <= self.step * 1.01:
            track.end = shot_end
        else:
            track.end = last + self.step / 2
            if shot_end is not None:
                track.end = min(track.end, shot_end)
        track.start = max(track.start, track.shot_start)
        return track

    def cut(self, time: float) -> list[Track]:
        """A new shot starts at `time`: close every open track at it."""
        closed = [self._bounds(track, time) for track in self.active]
        self.active = []
        self.shot, self.shot_start = self.shot + 1, time
        return closed

    def update(self, time: float, detections: list[Detection]) -> list[Track]:
        """Link one sample's detections; returns the tracks that ended (gap too long)."""
        pairs = []
        for t_index, track in enumerate(self.active):
            for d_index, detection in enumerate(detections):
                overlap = iou(track.boxes[-1], detection.box)
                if overlap >= MIN_IOU or _near(track.boxes[-1], detection.box):
                    pairs.append((overlap, t_index, d_index))
        pairs.sort(reverse=True)
        used_tracks, used_detections = set(), set()
        for _, t_index, d_index in pairs:
            if t_index in used_tracks or d_index in used_detections:
                continue
            used_tracks.add(t_index)
            used_detections.add(d_index)
            self.active[t_index].add(detections[d_index])
        closed, still = [], []
        for t_index, track in enumerate(self.active):
            if t_index not in used_tracks:
                track.missed += 1
                if track.missed > self.max_missed:
                    closed.append(self._bounds(track, None))
                    continue
            still.append(track)
        self.active = still
        for d_index, detection in enumerate(detections):
            if d_index not in used_detections:
                track = Track(self._next_id, self.shot, self.shot_start)
                self._next_id += 1
                track.add(detection)
                self.active.append(track)
        self._last_time = time
        return closed

    def finish(self, end_time: float) -> list[Track]:
        """The video ended at `end_time`: close everything."""
        closed = [self._bounds(track, end_time) for track in self.active]
        self.active = []
        return closed


@dataclass
class FinishedTrack:
    """A closed, embedded track (what the index stores)."""

    track_id: int
    shot: int
    start: float
    end: float
    times: np.ndarray
    boxes: np.ndarray          # n x 4, normalised
    embeddings: np.ndarray     # k x dim, the chosen chips
    embedding: np.ndarray      # pooled
    thumb: bytes               # JPEG
    score: float               # mean detector score


def merge_by_appearance(tracks: list[FinishedTrack], scores_fn, pool_fn, threshold: float,
                        max_gap: float = 5.0) -> list[FinishedTrack]:
    """Join same-shot tracks that do not overlap in time and look alike (a face lost and found again)."""
    tracks = sorted(tracks, key=lambda t: (t.shot, t.start))
    merged: list[FinishedTrack] = []
    for track in tracks:
        best, best_score = None, threshold
        for other in merged:
            if other.shot != track.shot or other.end > track.start + 1e-6 or track.start - other.end > max_gap:
                continue
            score = float(scores_fn(other.embedding, track.embedding[None, :])[0])
            if score >= best_score:
                best, best_score = other, score
        if best is None:
            merged.append(track)
            continue
        best.end = track.end
        best.times = np.concatenate([best.times, track.times])
        best.boxes = np.concatenate([best.boxes, track.boxes])
        best.embeddings = np.concatenate([best.embeddings, track.embeddings])
        best.embedding = pool_fn(best.embeddings)
        best.score = float((best.score + track.score) / 2)
    return merged
