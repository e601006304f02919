"""dlib's face descriptor network (`dlib_face_recognition_resnet_model_v1.dat`) in numpy.

dlib's own forward pass takes about 100 ms a chip on one core here and holds the GIL throughout, so the face
pass's detection threads wait while it runs. The same ResNet as matrix products over gathered patches
(numpy's BLAS, which lets go of the GIL) gives the same descriptors to about 1e-5 (tests/test_reimplementations.py) in a
fraction of the time (docs/search.md). The weights are read from dlib's serialisation of the network: layers
in input-to-output order, each with a version string (`con_4`, `affine_`, `fc_2`, ...); integers as a count
byte (high bit: sign) and that many little-endian bytes; strings as such a count and the bytes; tensors as
version 2, four dimensions, then raw little-endian float32; floats as an integer mantissa and exponent.
The wrappers between the layers (tags, skips, training state) carry no weights and are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

BATCH = 16  # chips a pass (dlib's own batch): bounds the gathered patches to about 50 MB
# the layers that carry numbers (the pooling sizes are the network's fixed design, in `_forward`)
_LAYERS = {b"con_4": "con", b"affine_": "affine", b"fc_2": "fc", b"input_rgb_image_sized": "input"}


class _Reader:
    """dlib's deserialisation of one file's bytes, from a position."""

    def __init__(self, data: bytes, position: int) -> None:
        self.data, self.position = data, position

    def integer(self) -> int:
        """A count byte (high bit: negative) and that many little-endian bytes."""
        control = self.data[self.position]
        count = control & 0x0F
        value = int.from_bytes(self.data[self.position + 1:self.position + 1 + count], "little")
        self.position += 1 + count
        return -value if control & 0x80 else value

    def real(self) -> float:
        """mantissa * 2 ** exponent, both integers."""
        mantissa = self.integer()
        return float(np.ldexp(float(mantissa), self.integer()))

    def string(self) -> str:
        """A length and the bytes."""
        size = self.integer()
        self.position += size
        return self.data[self.position - size:self.position].decode()

    def tensor(self) -> np.ndarray:
        """Version 2, four dimensions, then the values as raw float32 (flat)."""
        if self.integer() != 2:
            raise ValueError(f"unexpected tensor version at byte {self.position}")
        shape = [self.integer() for _ in range(4)]
        count = int(np.prod(shape))
        values = np.frombuffer(self.data, "<f4", count, self.position).astype(np.float32)
        self.position += 4 * count
        return values

    def alias(self) -> tuple[int, ...]:
        """The shape of a view into a layer's parameters."""
        if self.integer() != 1:
            raise ValueError(f"unexpected alias tensor version at byte {self.position}")
        return tuple(self.integer() for _ in range(4))


@dataclass
class _Conv:
    """A convolution with the affine layer after it folded in."""

    weight: np.ndarray   # (kh * kw * in, out): the rows in the order of the gathered patches
    bias: np.ndarray
    size: int
    stride: int
    padding: int


def _read_layers(path: Path) -> tuple[np.ndarray, list[_Conv], np.ndarray]:
    """(per-channel input means, the convolutions with their affine layers folded in, the fc matrix)."""
    data = path.read_bytes()
    found = sorted((position, kind) for name, kind in _LAYERS.items()
                   for position in _positions(data, bytes([1, len(name)]) + name))
    means, convs, fc = None, [], None
    for position, kind in found:
        reader = _Reader(data, position)
        reader.string()
        if kind == "input":
            means = np.array([reader.real() for _ in range(3)], np.float32)
        elif kind == "con":
            params = reader.tensor()
            filters, rows, _ = reader.integer(), reader.integer(), reader.integer()  # rows == cols
            stride, _, padding, _ = (reader.integer() for _ in range(4))
            shape = reader.alias()
            weight = params[:int(np.prod(shape))].reshape(shape)  # (out, in, rows, cols)
            convs.append(_Conv(weight.transpose(2, 3, 1, 0).reshape(-1, filters), params[weight.size:].copy(),
                               rows, stride, padding))
        elif kind == "affine":
            params = reader.tensor()
            gamma, beta = params[:params.size // 2], params[params.size // 2:]
            last = convs[-1]  # every affine layer here follows a convolution: fold it in
            convs[-1] = _Conv(last.weight * gamma, last.bias * gamma + beta, last.size, last.stride, last.padding)
        elif kind == "fc":
            outputs, inputs = reader.integer(), reader.integer()
            fc = reader.tensor()[:inputs * outputs].reshape(inputs, outputs)
    if means is None or fc is None or len(convs) != 29:
        raise ValueError(f"{path}: not dlib's face recognition ResNet (found {len(convs)} convolutions)")
    return means, convs, fc


def _positions(data: bytes, pattern: bytes) -> list[int]:
    """Every offset of `pattern` in `data`."""
    out, start = [], data.find(pattern)
    while start >= 0:
        out.append(start)
        start = data.find(pattern, start + 1)
    return out


def _conv(x: np.ndarray, layer: _Conv) -> np.ndarray:
    """NHWC convolution as one matrix product over gathered patches."""
    if layer.padding:
        pad = layer.padding
        x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    windows = sliding_window_view(x, (layer.size, layer.size), axis=(1, 2))[:, ::layer.stride, ::layer.stride]
    n, rows, cols = windows.shape[:3]
    patches = windows.transpose(0, 1, 2, 4, 5, 3).reshape(n * rows * cols, -1)
    return (patches @ layer.weight + layer.bias).reshape(n, rows, cols, -1)


def _add_padded(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """dlib's add_prev: the sum over the larger shape, each input zero beyond its own size."""
    shape = tuple(max(i, j) for i, j in zip(a.shape, b.shape))
    out = np.zeros(shape, np.float32)
    out[:, :a.shape[1], :a.shape[2], :a.shape[3]] += a
    out[:, :b.shape[1], :b.shape[2], :b.shape[3]] += b
    return out


def _avg_pool2(x: np.ndarray) -> np.ndarray:
    """dlib's avg_pool<2,2,2,2>: the means of 2x2 blocks, an odd last row or column left out."""
    n, rows, cols, channels = x.shape
    rows, cols = (rows - 2) // 2 + 1, (cols - 2) // 2 + 1
    return x[:, :2 * rows, :2 * cols].reshape(n, rows, 2, cols, 2, channels).mean(axis=(2, 4))


class DlibResNet:
    """The descriptor network: (n, 150, 150, 3) uint8 RGB chips from `dlib.get_face_chip` -> (n, 128)."""

    def __init__(self, path: Path) -> None:
        self.means, self.convs, self.fc = _read_layers(path)

    def __call__(self, chips: np.ndarray) -> np.ndarray:
        return np.concatenate([self._forward(chips[lo:lo + BATCH]) for lo in range(0, len(chips), BATCH)]
                              or [np.zeros((0, self.fc.shape[1]), np.float32)])

    def _forward(self, chips: np.ndarray) -> np.ndarray:
        x = (np.asarray(chips, np.float32) - self.means) / 256.0
        x = np.maximum(_conv(x, self.convs[0]), 0.0)
        x = sliding_window_view(x, (3, 3), axis=(1, 2))[:, ::2, ::2].max(axis=(4, 5))
        for first in range(1, len(self.convs), 2):
            inner, outer = self.convs[first], self.convs[first + 1]
            y = _conv(np.maximum(_conv(x, inner), 0.0), outer)
            x = np.maximum(_add_padded(_avg_pool2(x) if inner.stride == 2 else x, y), 0.0)
        return x.mean(axis=(1, 2)) @ self.fc


@lru_cache(maxsize=None)
def dlib_resnet(path: str) -> DlibResNet:
    """The network of the .dat at `path`, read once per process."""
    return DlibResNet(Path(path))
