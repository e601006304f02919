"""Speech segments to the on-screen face tracks that are speaking them (Seen & Heard).

Rule: a segment is given to a face track when that track is the only one on screen for most of the
segment (overlap >= MIN_SHARE of the segment); a track counts as visible from 0.25 s (or a quarter of a short
segment) of overlap — the time-overlap rule with a single visible face.
With several faces visible the segment keeps the list of visible tracks but no speaker: the 5-point
landmarks carry no mouth points, so mouth motion cannot decide here (docs/search.md).
"""

from __future__ import annotations

import numpy as np

MIN_SHARE = 0.5


def overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    """Seconds two intervals share."""
    return max(0.0, min(a1, b1) - max(a0, b0))


def associate(segments: list[tuple[float, float]], tracks: list[tuple[int, float, float]]
              ) -> list[tuple[list[int], int]]:
    """For each (start, end) segment: the ids of the tracks visible during it, and the speaker track or -1."""
    out = []
    for start, end in segments:
        length = max(end - start, 1e-6)
        visible = [(tid, overlap(start, end, t0, t1)) for tid, t0, t1 in tracks]
        visible = [(tid, share) for tid, share in visible if share >= min(0.25, 0.25 * length)]
        ids = [tid for tid, _ in sorted(visible, key=lambda v: -v[1])]
        major = [tid for tid, share in visible if share >= MIN_SHARE * length]
        # the only face on screen: no other track overlaps the segment by more than a sliver
        others = [tid for tid, share in visible if share >= 0.2 * length and tid not in major]
        speaker = major[0] if len(major) == 1 and not others else -1
        out.append((ids, int(speaker)))
    return out


def visible_share(start: float, end: float, tracks: list[tuple[int, float, float]]) -> np.ndarray:
    """Seconds of overlap of [start, end) with each track (same order)."""
    return np.array([overlap(start, end, t0, t1) for _, t0, t1 in tracks], np.float64)
