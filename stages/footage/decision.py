"""Match decisions for a query against index items: raw similarity, decision score and match, voice and face.

Voice (CAM++, the default embedder): a segment matches when its cosine with the query reaches a threshold
that depends on the segment's length, because short segments give noisier embeddings whose scores against
other voices spread higher (choose part of bench/voice_decision.py: the 99th percentile of other-voice
cosines was 0.37 under 2 s and 0.28-0.30 above): threshold = 0.40 for segments of 1.5 s and more, rising
linearly to 0.50 at 0.5 s and below. The decision score is logistic(SLOPE * (cosine - threshold)), 0.5 at
the threshold, with the slope of a logistic calibration fitted on the same trials, so scores of different
lengths compare on one scale. Resemblyzer keeps its fixed cosine threshold 0.80 (docs/search.md).
Score normalisation against a cohort (AS-norm, the video's other segments as cohort) was measured and not
used: the searched person's own segments enter the cohort and pull their scores down (docs/search.md).

Turns (`in_turns`, `turn_spans`): a person speaks in turns with short pauses, which voice activity cuts into
separate segments. A short segment across a pause of at most TURN_PAUSE from a matched one is judged with
the long-segment threshold (the neighbour makes her voice far likelier than the 1 in 10 the short-segment
margin assumes), and a matched hit's span runs through such pauses to the next matched segment and
EDGE_PAD into the silence at the turn's edges (the onsets and decays voice activity leaves out), never past
the middle of a pause before other speech (docs/search.md, "Voice: turns").

Face (dlib): raw = 1 - Euclidean distance of the descriptors, match when >= 0.45; the score is the raw one.

`score_voice` / `score_face` are what `search` uses; `people` clustering can call them with any embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stages.footage.settings import FACE_THRESHOLD, VOICE_THRESHOLD as RESEMBLYZER_THRESHOLD

VOICE_BASE_THRESHOLD = 0.40     # CAM++ cosine for segments of LONG_SECONDS and more
VOICE_SHORT_EXTRA = 0.10        # added at SHORT_SECONDS and below, linearly in between
LONG_SECONDS, SHORT_SECONDS = 1.5, 0.5
VOICE_SLOPE = 16.7              # logistic slope per unit of cosine (fitted on the choose trials)
TURN_PAUSE = 0.5                # s: a pause this short between two matched segments belongs to the turn
EDGE_PAD = 0.05                 # s: added at a turn's edges, a hangover over Silero's own 30 ms pad
VOICE_CHANGE_GAP = 0.05         # s: segments closer than this were split at a voice change, not at a pause


@dataclass(frozen=True)
class Decision:
    """Per item: raw similarity, the score the decision reads, the threshold on the raw value, the match."""

    raw: np.ndarray
    score: np.ndarray
    threshold: np.ndarray
    match: np.ndarray
    rule: str
    length_aware: bool = False    # the threshold rises for short segments (CAM++'s default rule)


def voice_threshold(seconds: np.ndarray) -> np.ndarray:
    """The CAM++ cosine a segment of `seconds` must reach to match."""
    shortness = np.clip((LONG_SECONDS - np.asarray(seconds, np.float64)) / (LONG_SECONDS - SHORT_SECONDS), 0, 1)
    return VOICE_BASE_THRESHOLD + VOICE_SHORT_EXTRA * shortness


def voice_score_threshold(embedder: str, fixed: float | None = None) -> float:
    """The value of `score` at and above which a segment matches (the query's `threshold` in results.json)."""
    if fixed is not None:
        return fixed
    return 0.5 if embedder == "campplus" else RESEMBLYZER_THRESHOLD


def voice_rule(embedder: str, fixed: float | None = None) -> str:
    """One line naming the rule that decides (for results.json)."""
    if fixed is not None:
        return f"cosine >= {fixed} (set by the user); score = cosine"
    if embedder == "campplus":
        return (f"cosine >= {VOICE_BASE_THRESHOLD} for segments of {LONG_SECONDS} s and more, rising linearly to "
                f"{VOICE_BASE_THRESHOLD + VOICE_SHORT_EXTRA} at {SHORT_SECONDS} s and less; "
                f"{VOICE_BASE_THRESHOLD} also for a shorter segment within {TURN_PAUSE} s of silence of a matched one; "
                f"score = logistic({VOICE_SLOPE} x (cosine - threshold)), a match from 0.5")
    return f"cosine >= {RESEMBLYZER_THRESHOLD}; score = cosine"


def score_voice(query: np.ndarray, segments: np.ndarray, seconds: np.ndarray, embedder: str = "campplus",
                fixed: float | None = None) -> Decision:
    """Decide which segments (unit rows, lengths in `seconds`) are the voice of `query` (a unit vector).

    `fixed` replaces the rule by a plain cosine threshold (the user's --voice-threshold).
    """
    raw = np.asarray(segments, np.float64) @ np.asarray(query, np.float64)
    rule = voice_rule(embedder, fixed)
    if fixed is not None or embedder != "campplus":
        limit = np.full(raw.shape, RESEMBLYZER_THRESHOLD if fixed is None else fixed)
        return Decision(raw, raw, limit, raw >= limit, rule)
    limit = voice_threshold(seconds)
    score = 1.0 / (1.0 + np.exp(-VOICE_SLOPE * (raw - limit)))
    return Decision(raw, score, limit, raw >= limit, rule, length_aware=True)


def _pause_neighbours(starts: np.ndarray, ends: np.ndarray) -> list[tuple[int, int, float]]:
    """(earlier, later, pause seconds) of each pair of time-consecutive segments."""
    order = np.argsort(starts, kind="stable")
    return [(int(a), int(b), float(starts[b] - ends[a])) for a, b in zip(order[:-1], order[1:])]


def in_turns(decision: Decision, starts: np.ndarray, ends: np.ndarray) -> Decision:
    """The length-aware rule with turn context: a segment whose threshold is raised for its shortness takes
    the long-segment threshold when a pause of at most TURN_PAUSE (not a voice change) separates it from a
    segment that matches on its own. Other rules (a fixed cosine) are returned unchanged."""
    if not decision.length_aware:
        return decision
    starts, ends = np.asarray(starts, np.float64), np.asarray(ends, np.float64)
    limit = decision.threshold.copy()
    for a, b, pause in _pause_neighbours(starts, ends):
        if VOICE_CHANGE_GAP < pause <= TURN_PAUSE:
            for short, other in ((a, b), (b, a)):
                if decision.match[other] and not decision.match[short] and limit[short] > VOICE_BASE_THRESHOLD:
                    limit[short] = VOICE_BASE_THRESHOLD
    score = 1.0 / (1.0 + np.exp(-VOICE_SLOPE * (decision.raw - limit)))
    return Decision(decision.raw, score, limit, decision.raw >= limit, decision.rule, length_aware=True)


def turn_spans(starts: np.ndarray, ends: np.ndarray, match: np.ndarray, duration: float
               ) -> tuple[np.ndarray, np.ndarray]:
    """Each matched segment's span as part of a turn: through a pause of at most TURN_PAUSE to a matched
    neighbour, else EDGE_PAD into the silence (at most half the pause to the neighbouring speech, or to
    the file's start and `duration`)."""
    starts, ends = np.asarray(starts, np.float64), np.asarray(ends, np.float64)
    new_starts, new_ends = starts.copy(), ends.copy()
    first = int(np.argmin(starts)) if starts.size else -1
    if first >= 0 and match[first]:
        new_starts[first] = max(0.0, starts[first] - EDGE_PAD)
    last = int(np.argmax(starts)) if starts.size else -1
    if last >= 0 and match[last]:
        new_ends[last] = max(ends[last], min(duration, ends[last] + EDGE_PAD))
    for a, b, pause in _pause_neighbours(starts, ends):
        pause = max(pause, 0.0)
        bridged = match[a] and match[b] and pause <= TURN_PAUSE
        reach = pause if bridged else min(EDGE_PAD, pause / 2)
        if match[a]:
            new_ends[a] = ends[a] + reach
        if match[b] and not bridged:
            new_starts[b] = starts[b] - reach
    return new_starts, new_ends


def score_face(query: np.ndarray, tracks: np.ndarray, threshold: float = FACE_THRESHOLD) -> Decision:
    """Decide which face tracks (dlib descriptors, one per row) show the person of `query`."""
    from stages.footage.face_embedding import DlibFaceEmbedder
    raw = DlibFaceEmbedder.scores(np.asarray(query, np.float32), tracks)
    limit = np.full(raw.shape, threshold)
    return Decision(raw, raw, limit, raw >= limit, f"1 - Euclidean distance of dlib descriptors >= {threshold}")
