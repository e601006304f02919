"""Crop pixels in shards: raw uint8 RGB or JPEG, encoded once by `crop`, decoded in batches wherever crops are read.

A crop shard names its format in the schema metadata (`image_format`: `raw_rgb_uint8` or `jpeg`, with
`jpeg_quality`); readers call `decode_crops`, which gives (N, S, S, 3) uint8 RGB either way. JPEGs are decoded by
torchvision's `decode_jpeg` on a list of crops at once, on the GPU when CUDA is there (docs/media.md).
"""

from __future__ import annotations

import warnings
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import pyarrow as pa

from stages.core.errors import DataError
from stages.media.shards import binary_to_array

if TYPE_CHECKING:  # torch only for JPEG shards: raw crops (the default) are read without its 1.5-2 s import
    import torch

RAW = "raw_rgb_uint8"
JPEG = "jpeg"
IMAGE_FORMATS = {"raw": RAW, "jpeg": JPEG}  # crop.format -> the image_format a shard records
DECODE_BATCH = 4096  # crops per decode_jpeg call: bounds the list of small tensors held at once


def default_device() -> torch.device:
    """Where JPEG crops are decoded when the caller does not say: the GPU when CUDA is there."""
    import torch
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def encode_crops(images: np.ndarray, image_format: str, quality: int) -> pa.Array:
    """(N, S, S, 3) uint8 RGB crops -> one binary value per crop in `image_format` (RAW or JPEG)."""
    count = len(images)
    if image_format == RAW:
        item = int(np.prod(images.shape[1:]))
        offsets = pa.py_buffer(np.arange(count + 1, dtype=np.int32) * item)
        return pa.Array.from_buffers(pa.binary(), count, [None, offsets, pa.py_buffer(np.ascontiguousarray(images))])
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    encoded = [cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params)[1].tobytes() for image in images]
    return pa.array(encoded, pa.binary())


def crop_size(meta: dict[str, str], path: str | Path) -> int:
    """The crop side a shard's metadata records; an error naming the shard when it is missing."""
    if "crop_size" not in meta:
        raise DataError(path, "missing crop_size in the schema metadata (not written by `apes-cli crop`?)")
    return int(meta["crop_size"])


def _jpeg_items(column: pa.ChunkedArray | pa.Array, path: str | Path) -> list[torch.Tensor]:
    """Each JPEG of a binary column as a uint8 tensor (views of one copy of the column's bytes)."""
    import torch
    items: list[torch.Tensor] = []
    for chunk in column.chunks if isinstance(column, pa.ChunkedArray) else [column]:
        if len(chunk) == 0:
            continue
        if chunk.null_count:
            raise DataError(path, "null item in the image column")
        offsets = np.frombuffer(chunk.buffers()[1], np.int32)[chunk.offset: chunk.offset + len(chunk) + 1]
        data = torch.from_numpy(np.frombuffer(chunk.buffers()[2], np.uint8)[offsets[0]:offsets[-1]].copy())
        ends = (offsets - offsets[0]).tolist()
        items.extend(data[a:b] for a, b in pairwise(ends))
    return items


def decode_jpegs(column: pa.ChunkedArray | pa.Array, size: int, path: str | Path,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """A binary column of JPEG crops -> (N, 3, size, size) uint8 on `device` (default: CUDA when there)."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg  # only JPEG shards need it: its import costs ~1.5 s
    device = torch.device(device) if device is not None else default_device()
    items = _jpeg_items(column, path)
    out = torch.empty((len(items), 3, size, size), dtype=torch.uint8, device=device)
    for first in range(0, len(items), DECODE_BATCH):
        try:
            with warnings.catch_warnings():  # torchvision 0.29 points at torchcodec (not installed); it still works
                warnings.simplefilter("ignore", DeprecationWarning)
                images = decode_jpeg(items[first:first + DECODE_BATCH], mode=ImageReadMode.RGB, device=device)
        except RuntimeError as error:
            raise DataError(path, f"undecodable JPEG crop in rows {first}..{first + DECODE_BATCH - 1}: {error}",
                            field="image") from None
        for row, image in enumerate(images, start=first):
            if image.shape != (3, size, size):
                raise DataError(path, f"JPEG crop of shape {tuple(image.shape)} at row {row}, expected "
                                      f"(3, {size}, {size})", row + 1, "image")
        out[first:first + len(images)] = torch.stack(images)
    return out


def decode_crops(column: pa.ChunkedArray | pa.Array, meta: dict[str, str], path: str | Path,
                 device: torch.device | str | None = None) -> np.ndarray:
    """A crop shard's image column (or rows of it) -> (N, S, S, 3) uint8 RGB, whatever its image_format."""
    size = crop_size(meta, path)
    image_format = meta.get("image_format", RAW)
    if image_format == RAW:
        return binary_to_array(column, (size, size, 3), np.uint8, path)
    if image_format != JPEG:
        raise DataError(path, f"unknown image_format {image_format!r} in the schema metadata, expected "
                              f"{RAW!r} or {JPEG!r}")
    return np.ascontiguousarray(decode_jpegs(column, size, path, device).permute(0, 2, 3, 1).cpu().numpy())
