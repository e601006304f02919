"""Composed talking-face videos with exact truth, for active speaker detection (tests and bench/asd.py).

No real talking-face video is at hand, so real photos are made to talk: the lower face of each photo is
pulled down by a smooth displacement field (the jaw drops) and a dark mouth opening is blended in, by an
amount that follows the loudness of real speech (an RMS envelope, smoothed over 3 frames, the lips one
frame ahead of the sound, as real lips lead). Every face also drifts and scales slowly on its own
(a head never stands still; wobble in position, not in size), so a detector cannot just look for "the face that moves".

A scene is one shot: the faces on screen, the voice heard (whose, and whether that person is on screen),
and what drives each face's lips: its own voice when it is the one heard, or another stretch of speech
that is not heard (the hard negative: lips that move, out of sync), or nothing (a still mouth).

Two casts, so that choices made on one can be checked on the other (docs/search.md):
- "group": the six faces of fixtures/group-photo-6-faces.jpg and the voices of fixtures/sample.wav and of
  realdev's interview (choosing);
- "realdev": the four portraits of fixtures/realdev/faces with realdev's speaker T and read speech (checking).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from search_media import FIXTURES, GROUP_PHOTO, RATE, encode, merged, sample_audio

REALDEV = FIXTURES / "realdev"
PORTRAITS = ("paul_rudd", "angelina_jolie", "kate_siegel", "shea_whigham")
FACE_SIDE = 220      # pixels of the stored face squares (the face box is about 0.55 of it)


@dataclass
class Talker:
    """A face photo that can open its mouth: an RGB square and the mouth (centre x, y, half width) in it."""

    face: np.ndarray
    mouth: tuple[float, float, float]


def _talker(photo: np.ndarray, box: np.ndarray) -> Talker:
    """Cut a face square around a detected box; the mouth line at 0.76 of the box height."""
    from stages.media.face_crop import crop_rgb
    margin = 0.45
    side = max(box[2] - box[0], box[3] - box[1]) * (1 + 2 * margin)
    scale = FACE_SIDE / side
    cy = (box[1] + box[3]) / 2
    mouth_x = FACE_SIDE / 2
    mouth_y = FACE_SIDE / 2 + (box[1] + 0.76 * (box[3] - box[1]) - cy) * scale
    half = 0.14 * (box[2] - box[0]) * scale
    return Talker(crop_rgb(photo, box, FACE_SIDE, margin), (mouth_x, mouth_y, half))


@lru_cache(maxsize=2)
def talkers(cast: str) -> tuple[Talker, ...]:
    """The cast's faces: "group" (6, left to right) or "realdev" (the 4 portraits, in PORTRAITS order)."""
    from stages.footage.detection import detect_faces
    photos = [GROUP_PHOTO] if cast == "group" else [REALDEV / "faces" / f"{name}.jpg" for name in PORTRAITS]
    out = []
    for path in photos:
        photo = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        faces = sorted(detect_faces(photo, upsample=1), key=lambda f: f.box[0])
        if cast != "group":
            faces = faces[:1]
        out += [_talker(photo, face.box) for face in faces]
    return tuple(out)


@lru_cache(maxsize=16)
def realdev_voice(name: str) -> np.ndarray:
    """A realdev voice file (e.g. "speaker-T-4glfwiMXgwQ", "read-p240_00000") as 16 kHz float audio."""
    from stages.footage.speech import read_clip
    return read_clip(REALDEV / "voices" / f"{name}.mp3")


def sample_piece(start: float, end: float) -> np.ndarray:
    """A stretch of fixtures/sample.wav."""
    return sample_audio()[int(start * RATE):int(end * RATE)]


def openness(audio: np.ndarray, fps: float, frames: int) -> np.ndarray:
    """Mouth opening 0..1 per video frame from the speech loudness (0 for silence)."""
    out = np.zeros(frames, np.float32)
    if audio is None or audio.size == 0 or float(np.abs(audio).max()) < 1e-3:
        return out
    half = int(RATE * 0.02)
    levels = []
    for k in range(frames + 1):
        centre = int(round((k + 1) / fps * RATE))  # one frame ahead: lips lead the sound
        window = audio[max(0, centre - half):centre + half]
        levels.append(10 * np.log10(float(np.mean(window ** 2)) + 1e-10) if window.size else -100.0)
    level = np.array(levels[:frames])
    # between a quiet and a loud moment of this very speech: broadcast speech, compressed to a narrow
    # range of loudness, still opens and closes the mouth with its syllables
    active = level[level > np.percentile(level, 95) - 40]
    low, high = np.percentile(active, 15), np.percentile(active, 95)
    opening = np.clip((level - low) / max(high - low, 3.0), 0, 1)
    return np.convolve(np.pad(opening, 1, mode="edge"), np.ones(3) / 3, mode="valid").astype(np.float32)


@lru_cache(maxsize=64)
def _mouth_field(number: int, cast: str, side: int) -> tuple[np.ndarray, ...]:
    """The resized face, the pixel grid and the displacement profile of one talker at one size."""
    talker = talkers(cast)[number]
    face = cv2.resize(talker.face, (side, side), interpolation=cv2.INTER_AREA)
    scale = side / FACE_SIDE
    mx, my, half = (v * scale for v in talker.mouth)
    ys, xs = np.mgrid[0:side, 0:side].astype(np.float32)
    across = np.exp(-((xs - mx) / (1.7 * half)) ** 2)
    below = np.clip((ys - my) / (0.04 * side), 0, 1) * np.clip((my + 0.45 * side - ys) / (0.15 * side), 0, 1)
    return face, xs, ys, (across * below).astype(np.float32), np.array([mx, my, half])


def open_mouth(number: int, cast: str, amount: float, side: int) -> np.ndarray:
    """Talker `number` of the cast at `side` pixels with the mouth opened by `amount` (0..1)."""
    face, xs, ys, profile, (mx, my, half) = _mouth_field(number, cast, side)
    if amount <= 0.02:
        return face
    drop = amount * 0.06 * side
    warped = cv2.remap(face, xs, ys - drop * profile, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    mask = np.zeros((side, side), np.float32)
    cv2.ellipse(mask, (int(round(mx)), int(round(my + drop / 2))), (int(round(half * 0.85)), max(1, int(drop / 2))),
                0, 0, 360, 1.0, -1, cv2.LINE_AA)
    mask = 0.85 * cv2.GaussianBlur(mask, (0, 0), max(0.6, side / 200))[..., None]
    inside = np.array([45, 18, 22], np.float32)
    return (warped * (1 - mask) + inside * mask).astype(np.uint8)


@dataclass
class Scene:
    """One shot: faces (talker, x centre 0..1) on screen; `turns` (talker, speech) heard one after the
    other, the talker on screen or not; `lips`: talker -> speech that moves its lips unheard."""

    seconds: float
    faces: list[tuple[int, float]] = field(default_factory=list)
    turns: list[tuple[int, np.ndarray]] = field(default_factory=list)
    lips: dict[int, np.ndarray] = field(default_factory=dict)
    size: float = 0.5          # face square side as a share of the frame height
    background: tuple[int, int, int] = (70, 90, 110)


@dataclass
class TalkTruth:
    """Exact truth: per talker, seconds on screen, seconds heard, and seconds on screen and heard."""

    duration: float
    on_screen: dict[int, list[tuple[float, float]]]
    heard: dict[int, list[tuple[float, float]]]
    seen_heard: dict[int, list[tuple[float, float]]]
    out_of_sync: dict[int, list[tuple[float, float]]]   # on screen, lips moving, another voice heard
    cuts: list[float]


def _voice_spans(voice: np.ndarray, start: float) -> list[tuple[float, float]]:
    """Where a voice piece is actually sounding (pauses over 0.3 s left out), absolute seconds."""
    hop = int(RATE * 0.02)
    frames = voice[:voice.size // hop * hop].reshape(-1, hop)
    level = 10 * np.log10(np.mean(frames ** 2, axis=1) + 1e-10)
    loud = level > np.percentile(level, 95) - 35
    spans, begin, quiet = [], None, 0
    for k, on in enumerate(loud):
        if on:
            begin = k if begin is None else begin
            quiet = 0
        elif begin is not None:
            quiet += 1
            if quiet * hop >= 0.3 * RATE:
                spans.append((start + begin * hop / RATE, start + (k - quiet + 1) * hop / RATE))
                begin = None
    if begin is not None:
        spans.append((start + begin * hop / RATE, start + len(loud) * hop / RATE))
    return spans


def compose_talking(path: Path, cast: str, scenes: list[Scene], width: int = 640, height: int = 360,
                    fps: int = 25, seed: int = 0, crf: int = 24) -> TalkTruth:
    """Encode the scenes into `path` (H.264 + AAC) and return the exact truth."""
    rng = np.random.default_rng(seed)
    counts = [int(round(s.seconds * fps)) for s in scenes]
    total = sum(counts)
    audio = rng.normal(0, 0.0005, int(round(total / fps * RATE))).astype(np.float32)
    truth = TalkTruth(total / fps, {}, {}, {}, {}, [])
    drivers: list[dict[int, np.ndarray]] = []
    first = 0
    for scene, count in zip(scenes, counts):
        start, end = first / fps, (first + count) / fps
        if first:
            truth.cuts.append(start)
        for number, _ in scene.faces:
            truth.on_screen.setdefault(number, []).append((start, end))
        lo = int(round(start * RATE))
        voice = np.zeros(int(round((end - start) * RATE)), np.float32)
        drive = {number: np.zeros_like(voice) for number, _ in scene.faces}
        at = 0
        for speaker, piece in scene.turns:
            piece = piece[:voice.size - at]
            voice[at:at + piece.size] = piece
            if speaker in drive:
                drive[speaker][at:at + piece.size] = piece
            spans = _voice_spans(piece, start + at / RATE)
            truth.heard.setdefault(speaker, []).extend(spans)
            if speaker in drive:
                truth.seen_heard.setdefault(speaker, []).extend(spans)
            for number in scene.lips:
                if number != speaker:
                    truth.out_of_sync.setdefault(number, []).extend(spans)
            at += piece.size
        audio[lo:lo + voice.size] += voice[:audio.size - lo]
        for number, speech in scene.lips.items():
            drive[number] = speech[:voice.size]
        drivers.append({number: openness(speech, fps, count) for number, speech in drive.items()})
        first += count

    def frames() -> Iterator[np.ndarray]:
        for scene, count, opening in zip(scenes, counts, drivers):
            phases = rng.uniform(0, 2 * np.pi, (len(scene.faces), 2))
            ramp = np.linspace(0.75, 1.2, height)[:, None, None]
            backdrop = np.clip(np.array(scene.background)[None, None, :] * ramp, 0, 255).astype(np.uint8)
            backdrop = np.broadcast_to(backdrop, (height, width, 3))
            for k in range(count):
                frame = backdrop.copy()
                for (number, x), phase in zip(scene.faces, phases):
                    wobble = np.sin(2 * np.pi * np.array([0.23, 0.31]) * k / fps + phase)
                    side = int(round(scene.size * height))
                    face = open_mouth(number, cast, float(opening[number][k]), side)
                    left = int(round(x * width + 0.015 * height * wobble[0])) - side // 2
                    top = int(round(height / 2 + 0.015 * height * wobble[1])) - side // 2
                    a0, b0 = max(0, left), max(0, top)
                    a1, b1 = min(width, left + side), min(height, top + side)
                    frame[b0:b1, a0:a1] = face[b0 - top:b1 - top, a0 - left:a1 - left]
                grain = rng.integers(0, 4, (height, width, 1), dtype=np.uint8)
                yield cv2.add(frame, np.broadcast_to(grain, frame.shape).copy())

    encode(path, frames(), audio, width, height, fps, crf)
    for table in (truth.on_screen, truth.heard, truth.seen_heard, truth.out_of_sync):
        for number in table:
            table[number] = merged(table[number])
    return truth
