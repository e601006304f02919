"""Active speaker detection without trained weights: audio-visual synchrony of a mouth region with the speech.

Hershey & Movellan's idea (a face region whose pixels vary with the audio energy is the one making the
sound), made robust the way SyncNet searches its offset:

1. `mouth_box`: the mouth region of a face box (or of 5-point landmarks, when there are any).
2. `mouth_crops`: that region, grey, resized to MOUTH_W x MOUTH_H, one crop per video frame.
3. `mouth_features`: the crops band-passed in time (a ~1 s moving average removed, so slow head and light
   drift do not count) and reduced to their FEATURES strongest principal components over the span.
4. `audio_envelope`: the log energy of the pre-emphasised 16 kHz audio around each video frame,
   band-passed the same way.
5. `sync`: the canonical correlation of the envelope with the mouth components (the share of the
   envelope's variance they explain, adjusted for the number of components), at the best audio-video
   offset in +-MAX_OFFSET seconds, minus the same measure against the sound moved by a few seconds (chance);
   also the same score in a sliding window per frame, at that offset.

Sign-free and placement-tolerant: lips opening darken some pixels and lighten others (teeth), and a
mouth placed a little off still has some pixels that move with the voice; the regression finds them.
Everything is numpy/OpenCV and runs on any frame source (the index's decoded spans, the benchmark's
AVA boxes). The scores compare the faces of one span best; `speaking_scores` adds the audio's activity
so that per-frame scores can also be ranked across videos (a mouth cannot be speaking audibly in silence).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16000
MOUTH_W, MOUTH_H = 32, 16
# Where the mouth sits in a face box without landmarks, as fractions of the box (x1, y1, x2, y2).
# dlib's HOG boxes run from the brows to just under the lower lip/chin, and the mouth centre is at
# about 0.78 of their height; AVA's head boxes (and the embedded data's, mouth at 0.76) are a little
# looser. A region 0.60..0.98 high and 0.22..0.78 wide holds the mouth in both kinds.
MOUTH_IN_BOX = (0.22, 0.60, 0.78, 0.98)
FEATURES = 4                 # principal components of the mouth crops kept
HIGH_PASS_SECONDS = 1.0      # the moving average removed from both signals
MAX_OFFSET = 0.2             # audio-video offsets searched, seconds either way
WINDOW_SECONDS = 3.0         # sliding window of the per-frame scores (1.6 s gave chance scores ~0.3)
NULL_SHIFTS = (1.1, 1.9, 2.7, 3.5)  # seconds the sound is moved to measure chance synchrony


@dataclass
class SyncResult:
    """One face's synchrony with the speech over a span of frames."""

    score: float               # adjusted R^2 of the envelope on the mouth components at the best offset, minus
                               # its chance level (the same with the sound moved by NULL_SHIFTS); <= 1
    offset: int                # frames; the envelope at frame t + offset pairs with the mouth at frame t
    frame_scores: np.ndarray   # (frames,) the same score in a WINDOW_SECONDS window around each frame


def mouth_box(face_box: np.ndarray, landmarks: np.ndarray | None = None) -> np.ndarray:
    """The mouth region (x1, y1, x2, y2) of a face box, in the box's units.

    With dlib's 5 landmarks (eye corners 0-3, nose base 4) the mouth is centred 0.40 eye-to-nose
    distances below the nose base, as wide as the outer eye corners; otherwise MOUTH_IN_BOX of the box.
    """
    box = np.asarray(face_box, np.float64)
    if landmarks is not None:
        points = np.asarray(landmarks, np.float64).reshape(5, 2)
        eyes = points[:4].mean(axis=0)
        nose = points[4]
        centre = nose + 0.40 * (nose - eyes)
        half_w = 0.5 * float(np.linalg.norm(points[0] - points[2]))
        half_h = 0.5 * half_w
        return np.array([centre[0] - half_w, centre[1] - half_h, centre[0] + half_w, centre[1] + half_h])
    x1, y1, x2, y2 = box
    fx1, fy1, fx2, fy2 = MOUTH_IN_BOX
    w, h = x2 - x1, y2 - y1
    return np.array([x1 + fx1 * w, y1 + fy1 * h, x1 + fx2 * w, y1 + fy2 * h])


def mouth_crops(frames: np.ndarray, face_boxes: np.ndarray, landmarks: np.ndarray | None = None) -> np.ndarray:
    """(T, MOUTH_H, MOUTH_W) float32 grey mouth crops from T frames (grey or RGB) and one face box each
    (pixels; NaN rows where the face is missing give crops of NaN)."""
    import cv2
    count = len(frames)
    out = np.full((count, MOUTH_H, MOUTH_W), np.nan, np.float32)
    for t in range(count):
        box = np.asarray(face_boxes[t], np.float64)
        if not np.all(np.isfinite(box)):
            continue
        frame = frames[t]
        grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) if frame.ndim == 3 else frame
        x1, y1, x2, y2 = mouth_box(box, None if landmarks is None else landmarks[t])
        if x2 - x1 < 2 or y2 - y1 < 2:
            continue
        # only the region around the mouth is touched: the frame may be large
        left, top = max(0, int(np.floor(x1)) - 2), max(0, int(np.floor(y1)) - 2)
        right, bottom = min(grey.shape[1], int(np.ceil(x2)) + 2), min(grey.shape[0], int(np.ceil(y2)) + 2)
        if right - left < 2 or bottom - top < 2:
            continue
        region = grey[top:bottom, left:right].astype(np.float32)
        x1, x2, y1, y2 = x1 - left, x2 - left, y1 - top, y2 - top
        factor = MOUTH_W / (x2 - x1)
        if factor < 0.67:  # shrink first so the warp does not alias
            region = cv2.resize(region, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
            x1, x2 = x1 * factor, x2 * factor
            y1, y2 = y1 * factor, y2 * factor
        # sub-pixel crop by an affine warp: the box moves smoothly, the crop does not jump by whole pixels
        matrix = np.array([[(x2 - x1) / MOUTH_W, 0, x1], [0, (y2 - y1) / MOUTH_H, y1]], np.float64)
        out[t] = cv2.warpAffine(region, matrix, (MOUTH_W, MOUTH_H),
                                flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)
    return out


def high_pass(values: np.ndarray, fps: float) -> np.ndarray:
    """Remove a centred moving average of HIGH_PASS_SECONDS (along axis 0): what is left moves at about
    1 Hz and faster, as syllables and lips do."""
    width = max(3, int(round(HIGH_PASS_SECONDS * fps)) | 1)
    pad = width // 2
    padded = np.pad(values, [(pad, pad)] + [(0, 0)] * (values.ndim - 1), mode="edge")
    sums = np.cumsum(np.concatenate([np.zeros((1,) + values.shape[1:]), padded]), axis=0)
    return values - (sums[width:] - sums[:-width]) / width


def mouth_features(crops: np.ndarray, fps: float) -> np.ndarray:
    """(T, FEATURES) band-passed principal components of the mouth crops (missing frames filled from
    their neighbours; a face missing throughout gives zeros)."""
    count = len(crops)
    flat = crops.reshape(count, -1).astype(np.float64)
    present = np.isfinite(flat).all(axis=1)
    if present.sum() < 2:
        return np.zeros((count, FEATURES))
    if not present.all():
        index = np.flatnonzero(present)
        nearest = index[np.clip(np.searchsorted(index, np.arange(count)), 0, len(index) - 1)]
        flat = flat[nearest]
    moving = high_pass(flat, fps)
    moving -= moving.mean(axis=0)
    # the principal components through the smaller Gram matrix (eigh is several times faster than an SVD)
    if count <= moving.shape[1]:
        values, vectors = np.linalg.eigh(moving @ moving.T)
        components = vectors[:, ::-1] * np.sqrt(np.clip(values[::-1], 0, None))
    else:
        _, vectors = np.linalg.eigh(moving.T @ moving)
        components = moving @ vectors[:, ::-1]
    k = min(FEATURES, components.shape[1])
    features = np.zeros((count, FEATURES))
    features[:, :k] = components[:, :k]
    return features


def audio_envelope(audio: np.ndarray, fps: float, frames: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """(frames,) log energy of the audio around each video frame (frame t at t / fps s from the audio's
    start), pre-emphasised (speech over hum and bass), floored 50 dB under the loudest frame."""
    audio = np.asarray(audio, np.float64)
    emphasised = np.append(audio[:1], audio[1:] - 0.97 * audio[:-1])
    half = max(1, int(round(sample_rate / fps)))  # a window of two frame periods
    cumulative = np.concatenate([[0.0], np.cumsum(emphasised ** 2)])
    centres = np.round(np.arange(frames) / fps * sample_rate).astype(np.int64)
    lo = np.clip(centres - half, 0, audio.size)
    hi = np.clip(centres + half, 0, audio.size)
    energy = (cumulative[hi] - cumulative[lo]) / np.maximum(hi - lo, 1)
    floor = max(float(energy.max()) * 1e-5, 1e-12)
    return np.log10(np.maximum(energy, floor))


def _explained(audio: np.ndarray, video: np.ndarray) -> float:
    """Adjusted share of the variance of `audio` (n,) explained linearly by `video` (n, k)."""
    n, k = video.shape
    if n <= k + 2:
        return 0.0
    a = audio - audio.mean()
    total = float(a @ a)
    if total <= 1e-12:
        return 0.0
    v = video - video.mean(axis=0)
    q, r = np.linalg.qr(v)
    rank = int((np.abs(np.diag(r)) > 1e-9 * max(1.0, float(np.abs(r).max()))).sum())
    if rank == 0:
        return 0.0
    r2 = float(np.sum((q[:, :rank].T @ a) ** 2)) / total
    return 1.0 - (1.0 - r2) * (n - 1) / (n - rank - 1)


def _paired(envelope: np.ndarray, features: np.ndarray, offset: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The envelope shifted by `offset` frames against the features; returns both and the first frame."""
    count = len(features)
    first, last = max(0, -offset), min(count, count - offset)
    return envelope[first + offset:last + offset], features[first:last], first


def sync(crops: np.ndarray, audio: np.ndarray, fps: float, sample_rate: int = SAMPLE_RATE,
         max_offset: float = MAX_OFFSET, window: float = WINDOW_SECONDS) -> SyncResult:
    """How well one face's mouth moves with the speech, over a span: crops (T, h, w) at `fps` from
    `mouth_crops`, audio of the same span (sample 0 = frame 0's time)."""
    envelope = speech_envelope(audio, fps, len(crops), sample_rate)
    return sync_features(mouth_features(crops, fps), envelope, fps, max_offset, window)


def speech_envelope(audio: np.ndarray, fps: float, frames: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The band-passed `audio_envelope` that `sync_features` compares with the mouths."""
    return high_pass(audio_envelope(audio, fps, frames, sample_rate), fps)


def _windowed(audio: np.ndarray, video: np.ndarray, half: int, step: int, breaks: np.ndarray) -> np.ndarray:
    """`_explained` in a window of +-half around every index, never across a `breaks` index, computed every
    `step` and interpolated."""
    count = len(audio)
    centres = np.unique(np.concatenate([np.arange(0, count, step), breaks[(breaks > 0) & (breaks < count)],
                                        breaks[(breaks > 0) & (breaks <= count)] - 1, [count - 1]])).astype(int)
    centres = centres[(centres >= 0) & (centres < count)]
    edges = np.unique(np.concatenate([[0, count], breaks[(breaks > 0) & (breaks < count)]]))
    values = np.zeros(len(centres))
    for k, t in enumerate(centres):
        at = int(np.searchsorted(edges, t, side="right")) - 1
        # at a span's or segment's edge the window slides inward rather than shrinking: half a window of
        # smooth signals is fitted about as well by the shifted sound (chance), and the score went negative
        lo = max(int(edges[at]), min(t - half, int(edges[at + 1]) - 2 * half - 1))
        hi = min(int(edges[at + 1]), max(t + half + 1, int(edges[at]) + 2 * half + 1))
        values[k] = _explained(audio[lo:hi], video[lo:hi]) if hi - lo > FEATURES + 2 else 0.0
    return np.interp(np.arange(count), centres, values) if count else values


def sync_features(features: np.ndarray, envelope: np.ndarray, fps: float, max_offset: float = MAX_OFFSET,
                  window: float = WINDOW_SECONDS, breaks: np.ndarray | None = None) -> SyncResult:
    """`sync` from precomputed `mouth_features` and `speech_envelope` (several faces, one audio); the
    per-frame windows never cross a `breaks` frame (where one speech segment ends and another begins:
    the offset and the components still come from the whole span).

    Scores are the synchrony in excess of chance: the same measure with the envelope shifted by NULL_SHIFTS
    seconds (circularly, so unrelated sound against the same mouth) is subtracted. Smooth signals give a
    regression many fewer independent samples than frames, so chance alone reached 0.2 on still mouths.
    """
    count = len(features)
    reach = int(round(max_offset * fps))
    best_score, best_offset = -np.inf, 0
    for offset in range(-reach, reach + 1):
        a, v, _ = _paired(envelope, features, offset)
        # prefer the smaller offset on ties: with no signal every offset scores alike
        score = _explained(a, v) - 1e-6 * abs(offset)
        if score > best_score:
            best_score, best_offset = score, offset
    half = max(2, int(round(window * fps / 2)))
    step = max(1, int(round(fps / 5)))
    a, v, first = _paired(envelope, features, best_offset)
    breaks = np.zeros(0, int) if breaks is None else np.asarray(breaks, int) - first
    raw = _windowed(a, v, half, step, breaks)
    shifts = [int(round(seconds * fps)) % max(1, count) for seconds in NULL_SHIFTS]
    shifts = [shift for shift in shifts if shift] or [max(1, count // 2)]
    nulls = [_paired(np.roll(envelope, shift), features, best_offset)[:2] for shift in shifts]
    chance = np.mean([_windowed(na, nv, half, step, breaks) for na, nv in nulls], axis=0)
    chance_span = float(np.mean([_explained(na, nv) for na, nv in nulls]))
    frame_scores = np.zeros(count)
    frame_scores[first:first + len(a)] = raw - chance
    return SyncResult(float(max(best_score - chance_span, -1.0)), best_offset, frame_scores)


def speech_activity(audio: np.ndarray, fps: float, frames: int, sample_rate: int = SAMPLE_RATE,
                    silence_db: float = -45.0) -> np.ndarray:
    """(frames,) 0..1: how far each frame's energy is above `silence_db` dBFS, reaching 1 at 15 dB above."""
    level = 10 * audio_envelope(np.asarray(audio, np.float64), fps, frames, sample_rate)
    return np.clip((level - silence_db) / 15.0, 0.0, 1.0)


def speaking_scores(crops: np.ndarray, audio: np.ndarray, fps: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """(T,) per-frame speaking score of one face: its windowed synchrony (clipped at 0) times the audio's
    activity, so frames in silence score 0 whatever the mouth does."""
    result = sync(crops, audio, fps, sample_rate)
    return np.clip(result.frame_scores, 0.0, None) * speech_activity(audio, fps, len(crops), sample_rate)
