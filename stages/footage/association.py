"""Speech segments and the face tracks on screen during them (who may be speaking: stages/footage/speakers.py).

A track counts as on screen during a segment from 0.25 s (or a quarter of a short segment) of overlap, so a
sliver at a cut does not count; the ids are ordered by overlap, longest first.
"""

from __future__ import annotations

import numpy as np

def overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    """Seconds two intervals share."""
    return max(0.0, min(a1, b1) - max(a0, b0))


def associate(segments: list[tuple[float, float]], tracks: list[tuple[int, float, float]]) -> list[list[int]]:
    """For each (start, end) segment: the ids of the (id, start, end) tracks on screen during it."""
    out = []
    for start, end in segments:
        length = max(end - start, 1e-6)
        visible = [(tid, overlap(start, end, t0, t1)) for tid, t0, t1 in tracks]
        visible = [(tid, share) for tid, share in visible if share >= min(0.25, 0.25 * length)]
        out.append([tid for tid, _ in sorted(visible, key=lambda v: -v[1])])
    return out


def visible_share(start: float, end: float, tracks: list[tuple[int, float, float]]) -> np.ndarray:
    """Seconds of overlap of [start, end) with each track (same order)."""
    return np.array([overlap(start, end, t0, t1) for _, t0, t1 in tracks], np.float64)
