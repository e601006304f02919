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


@dataclass(frozen=True)
class Decision:
    """Per item: raw similarity, the score the decision reads, the threshold on the raw value, the match."""

    raw: np.ndarray
    score: np.ndarray
    threshold: np.ndarray
    match: np.ndarray
    rule: str


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
    return Decision(raw, score, limit, raw >= limit, rule)


def score_face(query: np.ndarray, tracks: np.ndarray, threshold: float = FACE_THRESHOLD) -> Decision:
    """Decide which face tracks (dlib descriptors, one per row) show the person of `query`."""
    from stages.footage.face_embedding import DlibFaceEmbedder
    raw = DlibFaceEmbedder.scores(np.asarray(query, np.float32), tracks)
    limit = np.full(raw.shape, threshold)
    return Decision(raw, raw, limit, raw >= limit, f"1 - Euclidean distance of dlib descriptors >= {threshold}")
