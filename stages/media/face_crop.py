"""The geometry of a face crop, one for the crop stage and for `apes-cli search --model`: a box clipped to the
frame, squared around its centre with a margin of its longer side, black outside the frame, area-resized.

Trained networks see crops cut this way (stages/crop.py, from the YUV planes); the checkpoint records the size
and margin (and the black fill), and search crops its RGB frames with `crop_rgb`, so a model sees at search
time what it saw in training.
"""

from __future__ import annotations

import cv2
import numpy as np

BLACK_YUV = (16, 128, 128)  # limited-range Y, U, V of black: the crop stage's fill outside the frame
BLACK_RGB = 0
FILL = "black"  # what the checkpoint records as the crop's fill


def square_boxes(boxes: np.ndarray, width: int, height: int, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel squares (left, top, side) of normalised (N, 4) boxes, and which boxes have an area.

    A box is clipped to the frame, then squared around its centre with `margin` of its longer side on
    every side. All three numbers are even, so the square falls on whole 4:2:0 chroma samples. A box
    under one pixel wide or high has no area (a counted skip).
    """
    clipped = np.clip(np.asarray(boxes, np.float64).reshape(-1, 4), 0.0, 1.0)
    left, right = clipped[:, 0] * width, clipped[:, 2] * width
    top, bottom = clipped[:, 1] * height, clipped[:, 3] * height
    valid = (right - left >= 1.0) & (bottom - top >= 1.0)
    side = 2 * np.maximum(1, np.rint(np.maximum(right - left, bottom - top) * (1.0 + 2.0 * margin) / 2.0))
    x = 2 * np.rint(((left + right) / 2.0 - side / 2.0) / 2.0)
    y = 2 * np.rint(((top + bottom) / 2.0 - side / 2.0) / 2.0)
    return np.stack([x, y, side], axis=1).astype(np.int64), valid


def square_of(plane: np.ndarray, left: int, top: int, side: int, fill: int) -> np.ndarray:
    """The square [left, left+side) x [top, top+side) of one plane (or of an image's channels), `fill` outside it."""
    height, width = plane.shape[:2]
    x0, y0, x1, y1 = max(left, 0), max(top, 0), min(left + side, width), min(top + side, height)
    if x0 == left and y0 == top and x1 == left + side and y1 == top + side:
        return plane[top:top + side, left:left + side]
    region = np.full((side, side) + plane.shape[2:], fill, np.uint8)
    if x1 > x0 and y1 > y0:
        region[y0 - top:y1 - top, x0 - left:x1 - left] = plane[y0:y1, x0:x1]
    return region


def resize_square(square: np.ndarray, size: int) -> np.ndarray:
    """Area-average down to size x size: bilinear to the nearest multiple of `size`, then an integer-factor
    area resize (same result within a grey level as one INTER_AREA call, several times faster)."""
    side = square.shape[0]
    factor = side // size
    if factor < 2:
        return cv2.resize(square, (size, size), interpolation=cv2.INTER_LINEAR)
    if side != factor * size:
        square = cv2.resize(square, (factor * size, factor * size), interpolation=cv2.INTER_LINEAR)
    return cv2.resize(square, (size, size), interpolation=cv2.INTER_AREA)


def crop_rgb(rgb: np.ndarray, box: np.ndarray, size: int, margin: float) -> np.ndarray:
    """The size x size RGB crop of a pixel box (x1, y1, x2, y2), cut like the crop stage: clipped, squared with
    `margin`, black outside the frame, area-resized."""
    height, width = rgb.shape[:2]
    normalised = np.asarray(box, np.float64).reshape(1, 4) / np.array([width, height, width, height])
    squares, _ = square_boxes(normalised, width, height, margin)
    left, top, side = (int(value) for value in squares[0])
    square = square_of(rgb, left, top, side, BLACK_RGB)  # the square first: the frame's channels are not copied
    channels = [resize_square(np.ascontiguousarray(square[:, :, c]), size) for c in range(rgb.shape[2])]
    return np.ascontiguousarray(np.stack(channels, axis=2))
