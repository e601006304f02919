"""Procedural faces: an identity is a set of drawing parameters; a track adds the paper's nuisances.

A sprite is an RGBA head-and-shoulders drawing whose face box (forehead to chin, cheek to cheek) sits at
a known place, so the annotated box is exactly the rendered face.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

CANVAS = 128                      # sprite side before scaling
FACE_BOX = (34, 26, 94, 102)      # x1, y1, x2, y2 of the face box inside the canvas
MOUTH_LEVELS = 4                  # 0 = closed ... 3 = wide open

_SKIN = np.array([[255, 224, 196], [241, 194, 160], [224, 172, 130], [198, 134, 90], [161, 102, 64],
                  [120, 75, 45], [90, 56, 36], [250, 205, 180]], np.float32)
_HAIR = np.array([[20, 18, 18], [60, 40, 25], [110, 70, 35], [200, 160, 90], [150, 60, 25], [160, 160, 160],
                  [235, 235, 225], [40, 40, 120], [120, 30, 90]], np.float32)
_IRIS = np.array([[60, 40, 20], [40, 90, 150], [70, 120, 60], [30, 25, 20], [100, 100, 110]], np.float32)


@dataclass(frozen=True)
class FaceIdentity:
    """Drawing parameters that stay fixed for one person."""

    aspect: float            # face height / width
    jaw: float               # lower-face width relative to upper (pointy chin < 1)
    skin: tuple[int, int, int]
    hair_style: int          # 0 bald, 1 short, 2 long, 3 bun, 4 spiky, 5 side part, 6 curly
    hair: tuple[int, int, int]
    eye_gap: float
    eye_size: float
    iris: tuple[int, int, int]
    brow_width: int
    brow_tilt: float
    nose_length: float
    nose_style: int          # 0 line, 1 triangle, 2 nostrils
    mouth_width: float
    lips: tuple[int, int, int]
    glasses: int             # 0 none, 1 round, 2 square, 3 sunglasses
    glasses_colour: tuple[int, int, int]
    beard: int               # 0 none, 1 stubble, 2 full, 3 moustache, 4 goatee
    ear_size: float
    mole: tuple[float, float] | None


@dataclass(frozen=True)
class TrackLook:
    """Per-track nuisances (pose, lighting, blur, noise, occlusion) and clothing."""

    roll_deg: float
    yaw: float               # -1..1, squashes the face and shifts the features sideways
    gain: float              # brightness
    contrast: float
    cast: tuple[float, float, float]
    blur: float              # Gaussian sigma in canvas pixels
    noise: float             # per-frame noise std in grey levels
    occluder: tuple[int, float, tuple[int, int, int]] | None  # side (0 left, 1 right, 2 bottom), extent, colour
    shirt: tuple[int, int, int]


def _colour(rng: np.random.Generator, palette: np.ndarray, jitter: float) -> tuple[int, int, int]:
    base = palette[rng.integers(len(palette))] + rng.normal(0, jitter, 3)
    return tuple(int(v) for v in np.clip(base, 0, 255))


def draw_identity(rng: np.random.Generator) -> FaceIdentity:
    """Draw one person's face parameters."""
    bald = rng.random() < 0.08
    return FaceIdentity(
        aspect=float(rng.uniform(1.05, 1.45)),
        jaw=float(rng.uniform(0.6, 1.05)),
        skin=_colour(rng, _SKIN, 10),
        hair_style=0 if bald else int(rng.integers(1, 7)),
        hair=_colour(rng, _HAIR, 12),
        eye_gap=float(rng.uniform(0.34, 0.5)),
        eye_size=float(rng.uniform(0.06, 0.11)),
        iris=_colour(rng, _IRIS, 15),
        brow_width=int(rng.integers(1, 5)),
        brow_tilt=float(rng.uniform(-0.35, 0.35)),
        nose_length=float(rng.uniform(0.12, 0.24)),
        nose_style=int(rng.integers(3)),
        mouth_width=float(rng.uniform(0.25, 0.5)),
        lips=_colour(rng, np.array([[170, 80, 80], [140, 70, 70], [200, 100, 110], [110, 60, 50]], np.float32), 12),
        glasses=int(rng.choice(4, p=[0.6, 0.15, 0.15, 0.1])),
        glasses_colour=_colour(rng, np.array([[20, 20, 20], [120, 70, 30], [180, 180, 190], [150, 20, 20]],
                                             np.float32), 10),
        beard=int(rng.choice(5, p=[0.6, 0.1, 0.12, 0.1, 0.08])),
        ear_size=float(rng.uniform(0.1, 0.18)),
        mole=(float(rng.uniform(-0.3, 0.3)), float(rng.uniform(-0.1, 0.3))) if rng.random() < 0.25 else None,
    )


def draw_look(rng: np.random.Generator, nuisance: float) -> TrackLook:
    """Draw one track's nuisances; `nuisance` in [0, 1] scales every one of them."""
    n = nuisance
    occluder = None
    if rng.random() < 0.6 * n:
        occluder = (int(rng.integers(3)), float(rng.uniform(0.2, 0.2 + 0.3 * n)),
                    tuple(int(v) for v in rng.integers(0, 256, 3)))
    return TrackLook(
        roll_deg=float(rng.uniform(-1, 1) * 30 * n),
        yaw=float(np.clip(rng.uniform(-1, 1) * 1.6 * n, -0.8, 0.8)),
        gain=float(np.exp(rng.uniform(-1, 1) * 0.8 * n)),
        contrast=float(np.exp(rng.uniform(-1, 1) * 0.7 * n)),
        cast=tuple(float(1 + rng.uniform(-1, 1) * 0.4 * n) for _ in range(3)),
        blur=float(rng.uniform(0, 4.0 * n)),
        noise=float(rng.uniform(0, 30 * n)),
        occluder=occluder,
        shirt=tuple(int(v) for v in rng.integers(0, 256, 3)),
    )


def _hair_back(img: np.ndarray, f: FaceIdentity, cx: int, cy: int, w: int, h: int) -> None:
    """Hair drawn behind the face (long hair, bun, curls)."""
    if f.hair_style == 2:
        cv2.ellipse(img, (cx, cy + h // 6), (w // 2 + 9, h // 2 + 14), 0, 180, 360, f.hair, -1, cv2.LINE_AA)
        cv2.rectangle(img, (cx - w // 2 - 9, cy + h // 6), (cx + w // 2 + 9, cy + h // 2 + 14), f.hair, -1)
    elif f.hair_style == 3:
        cv2.circle(img, (cx, cy - h // 2 - 8), 13, f.hair, -1, cv2.LINE_AA)
    elif f.hair_style == 6:
        for angle in np.linspace(np.pi * 0.9, np.pi * 2.1, 11):
            cv2.circle(img, (int(cx + (w // 2 + 2) * np.cos(angle)), int(cy + (h // 2 + 2) * np.sin(angle))),
                       9, f.hair, -1, cv2.LINE_AA)


def _hair_front(img: np.ndarray, f: FaceIdentity, cx: int, cy: int, w: int, h: int) -> None:
    """Hair drawn over the forehead."""
    top = cy - h // 2
    if f.hair_style in (1, 2, 3, 6):
        cv2.ellipse(img, (cx, cy - h // 5), (w // 2 + 3, h // 3 + 2), 0, 180, 360, f.hair, -1, cv2.LINE_AA)
    elif f.hair_style == 4:
        for k in range(-3, 4):
            x = cx + k * w // 8
            pts = np.array([[x - 6, top + 12], [x, top - 10], [x + 6, top + 12]], np.int32)
            cv2.fillConvexPoly(img, pts, f.hair, cv2.LINE_AA)
    elif f.hair_style == 5:
        cv2.ellipse(img, (cx + w // 6, cy - h // 5), (w // 2 + 6, h // 3), -12, 180, 360, f.hair, -1, cv2.LINE_AA)


def _beard(img: np.ndarray, f: FaceIdentity, cx: int, mouth_y: int, w: int, h: int, chin: int) -> None:
    shade = tuple(int(v * 0.9) for v in f.hair)
    if f.beard == 1:
        cv2.ellipse(img, (cx, mouth_y + 4), (int(w * 0.42 * f.jaw), chin - mouth_y), 0, 0, 180,
                    tuple(int(0.6 * s + 0.4 * c) for s, c in zip(f.skin, shade)), -1, cv2.LINE_AA)
    elif f.beard == 2:
        cv2.ellipse(img, (cx, mouth_y), (int(w * 0.48 * f.jaw), chin - mouth_y + 5), 0, 0, 180, shade, -1,
                    cv2.LINE_AA)
    elif f.beard == 4:
        cv2.ellipse(img, (cx, chin - 6), (w // 8, 9), 0, 0, 360, shade, -1, cv2.LINE_AA)
    if f.beard in (2, 3):
        cv2.ellipse(img, (cx, mouth_y - 5), (int(f.mouth_width * w * 0.6), 4), 0, 0, 360, shade, -1, cv2.LINE_AA)


def render_sprite(f: FaceIdentity, look: TrackLook, mouth: int) -> np.ndarray:
    """RGBA head-and-shoulders sprite (CANVAS x CANVAS, uint8) with the mouth at openness `mouth`."""
    img = np.zeros((CANVAS, CANVAS, 3), np.uint8)
    x1, y1, x2, y2 = FACE_BOX
    cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
    h = y2 - y1
    w = int(round(h / f.aspect * (1 - 0.25 * abs(look.yaw))))
    shift = int(round(look.yaw * w * 0.22))          # features move towards the turned side
    cv2.rectangle(img, (cx - 40, cy + h // 2 + 4), (cx + 40, CANVAS), look.shirt, -1)
    cv2.rectangle(img, (cx - w // 5, cy + h // 3), (cx + w // 5, cy + h // 2 + 8), f.skin, -1)
    _hair_back(img, f, cx, cy, w, h)
    ear = int(f.ear_size * h)
    for side in (-1, 1):
        cv2.ellipse(img, (cx + side * (w // 2) - shift // 2, cy), (ear // 2, ear), 0, 0, 360, f.skin, -1,
                    cv2.LINE_AA)
    cv2.ellipse(img, (cx, cy), (w // 2, h // 2), 0, 180, 360, f.skin, -1, cv2.LINE_AA)
    cv2.ellipse(img, (cx, cy), (int(w // 2 * f.jaw), h // 2), 0, 0, 180, f.skin, -1, cv2.LINE_AA)
    cv2.rectangle(img, (cx - int(w // 2 * f.jaw), cy - 1), (cx + w // 2, cy + 1), f.skin, -1)
    cv2.ellipse(img, (cx, cy), (w // 2, 4), 0, 0, 360, f.skin, -1)
    fx = cx + shift
    eye_y = cy - int(0.06 * h)
    gap = int(f.eye_gap * w / 2)
    eye_r = max(2, int(f.eye_size * h / 2))
    mouth_y = cy + int(0.26 * h)
    chin = cy + h // 2
    _beard(img, f, fx, mouth_y, w, h, chin)
    for side in (-1, 1):
        ex = fx + side * gap
        cv2.ellipse(img, (ex, eye_y), (eye_r + 2, eye_r), 0, 0, 360, (250, 250, 250), -1, cv2.LINE_AA)
        cv2.circle(img, (ex, eye_y), max(1, eye_r - 1), f.iris, -1, cv2.LINE_AA)
        cv2.circle(img, (ex, eye_y), max(1, eye_r // 3), (10, 10, 10), -1, cv2.LINE_AA)
        by = eye_y - eye_r - 5
        tilt = int(f.brow_tilt * 8) * side
        cv2.line(img, (ex - eye_r - 3, by + tilt), (ex + eye_r + 3, by - tilt), f.hair, f.brow_width, cv2.LINE_AA)
    nose_top, nose_bottom = eye_y + 3, eye_y + 3 + int(f.nose_length * h)
    shade = tuple(int(v * 0.75) for v in f.skin)
    if f.nose_style == 0:
        cv2.line(img, (fx, nose_top), (fx + 2, nose_bottom), shade, 2, cv2.LINE_AA)
    elif f.nose_style == 1:
        pts = np.array([[fx, nose_top], [fx - 5, nose_bottom], [fx + 5, nose_bottom]], np.int32)
        cv2.fillConvexPoly(img, pts, shade, cv2.LINE_AA)
    else:
        for side in (-1, 1):
            cv2.circle(img, (fx + side * 3, nose_bottom), 2, shade, -1, cv2.LINE_AA)
    half = int(f.mouth_width * w / 2)
    opening = int(round(mouth * 0.035 * h))
    if opening == 0:
        cv2.line(img, (fx - half, mouth_y), (fx + half, mouth_y), f.lips, 3, cv2.LINE_AA)
    else:
        cv2.ellipse(img, (fx, mouth_y), (half, opening + 1), 0, 0, 360, f.lips, -1, cv2.LINE_AA)
        cv2.ellipse(img, (fx, mouth_y), (max(1, half - 3), max(1, opening - 1)), 0, 0, 360, (40, 10, 15), -1,
                    cv2.LINE_AA)
    if f.mole is not None:
        cv2.circle(img, (fx + int(f.mole[0] * w), cy + int(f.mole[1] * h)), 2, (70, 40, 30), -1, cv2.LINE_AA)
    _hair_front(img, f, cx, cy, w, h)
    if f.glasses:
        for side in (-1, 1):
            ex = fx + side * gap
            r = eye_r + 5
            if f.glasses == 2:
                cv2.rectangle(img, (ex - r, eye_y - r + 2), (ex + r, eye_y + r - 2), f.glasses_colour, 2, cv2.LINE_AA)
            else:
                cv2.circle(img, (ex, eye_y), r, f.glasses_colour, -1 if f.glasses == 3 else 2, cv2.LINE_AA)
        cv2.line(img, (fx - gap + eye_r + 4, eye_y), (fx + gap - eye_r - 4, eye_y), f.glasses_colour, 2)
    return _finish(img, look)


def _finish(img: np.ndarray, look: TrackLook) -> np.ndarray:
    """Occlusion, lighting, roll and blur; the alpha channel marks drawn pixels."""
    alpha = (img.max(axis=2) > 0).astype(np.uint8) * 255
    x1, y1, x2, y2 = FACE_BOX
    if look.occluder is not None:
        side, extent, colour = look.occluder
        if side == 0:
            box = (x1 - 4, y1 - 4, x1 + int(extent * (x2 - x1)), y2 + 4)
        elif side == 1:
            box = (x2 - int(extent * (x2 - x1)), y1 - 4, x2 + 4, y2 + 4)
        else:
            box = (x1 - 4, y2 - int(extent * (y2 - y1)), x2 + 4, y2 + 4)
        cv2.rectangle(img, box[:2], box[2:], colour, -1)
        cv2.rectangle(alpha, box[:2], box[2:], 255, -1)
    lit = img.astype(np.float32) * np.array(look.cast, np.float32) * look.gain
    lit = (lit - 128.0) * look.contrast + 128.0
    rgba = np.dstack([np.clip(lit, 0, 255).astype(np.uint8), alpha])
    if look.roll_deg:
        centre = ((x1 + x2) / 2, (y1 + y2) / 2)
        matrix = cv2.getRotationMatrix2D(centre, look.roll_deg, 1.0)
        rgba = cv2.warpAffine(rgba, matrix, (CANVAS, CANVAS), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0, 0))
    if look.blur > 0.3:
        rgba = cv2.GaussianBlur(rgba, (0, 0), look.blur)
    return rgba


@dataclass(frozen=True)
class Sprite:
    """A sprite ready to paste: premultiplied float RGB, float alpha, and the face box inside it."""

    premultiplied: np.ndarray
    alpha: np.ndarray
    box: tuple[int, int, int, int]


def scale_sprite(sprite: np.ndarray, face_height: int) -> Sprite:
    """Resize an RGBA sprite so its face box is `face_height` pixels tall and prepare it for pasting."""
    factor = face_height / (FACE_BOX[3] - FACE_BOX[1])
    side = max(4, int(round(CANVAS * factor)))
    scaled = cv2.resize(sprite, (side, side), interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR)
    rows, cols = np.flatnonzero(scaled[..., 3].any(axis=1)), np.flatnonzero(scaled[..., 3].any(axis=0))
    top, left = (rows[0], cols[0]) if rows.size else (0, 0)
    bottom, right = (rows[-1] + 1, cols[-1] + 1) if rows.size else (1, 1)
    scaled = scaled[top:bottom, left:right]          # transparent margins cost blending time only
    alpha = scaled[..., 3:4].astype(np.float32) / 255.0
    x1, y1, x2, y2 = (int(round(v * side / CANVAS)) for v in FACE_BOX)
    return Sprite(scaled[..., :3].astype(np.float32) * alpha, alpha, (x1 - left, y1 - top, x2 - left, y2 - top))


def paste(frame: np.ndarray, sprite: Sprite, left: int, top: int, noise: np.ndarray | None = None) -> None:
    """Alpha-blend a sprite into an RGB frame at (left, top), clipped to the frame, in place."""
    fh, fw = frame.shape[:2]
    sh, sw = sprite.alpha.shape[:2]
    x0, y0 = max(0, left), max(0, top)
    x1, y1 = min(fw, left + sw), min(fh, top + sh)
    if x1 <= x0 or y1 <= y0:
        return
    rows, cols = slice(y0 - top, y1 - top), slice(x0 - left, x1 - left)
    alpha = sprite.alpha[rows, cols]
    blended = frame[y0:y1, x0:x1].astype(np.float32)
    blended *= 1.0 - alpha
    blended += sprite.premultiplied[rows, cols]
    if noise is not None:
        blended += noise[: y1 - y0, : x1 - x0] * alpha
    np.clip(blended, 0, 255, out=blended)
    frame[y0:y1, x0:x1] = blended.astype(np.uint8)


def background(rng: np.random.Generator, width: int, height: int, nuisance: float) -> np.ndarray:
    """A shot's backdrop: a colour gradient with random blocks and discs (clutter grows with nuisance)."""
    top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    ramp = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    img = np.broadcast_to(top * (1 - ramp) + bottom * ramp, (height, width, 3)).astype(np.uint8).copy()
    for _ in range(int(rng.integers(2, 4 + int(12 * nuisance)))):
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        x, y = int(rng.integers(width)), int(rng.integers(height))
        size = int(rng.integers(height // 12, height // 3))
        if rng.random() < 0.5:
            cv2.rectangle(img, (x, y), (x + size, y + int(size * rng.uniform(0.5, 3))), colour, -1)
        else:
            cv2.circle(img, (x, y), size // 2, colour, -1, cv2.LINE_AA)
    return cv2.GaussianBlur(img, (0, 0), 1.0 + 2.0 * rng.random())
