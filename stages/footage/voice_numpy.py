"""The query side of the voice search without torch: Resemblyzer's network in numpy, WebRTC VAD.

Importing torch alone takes seconds, more than a whole query on an indexed video may cost. The query clip
only needs one embedding, so its path reads Resemblyzer's weights (resemblyzer/pretrained.pt, torch's
legacy serialisation) with a small unpickler, runs the 3-layer LSTM + linear + ReLU + L2 norm in numpy
(equal to the torch model to 1e-5, tests/test_reimplementations.py), and trims silences with WebRTC VAD the way
Resemblyzer's own `preprocess_wav` does (30 ms frames, moving average over 8, dilated over 7 frames).
The index keeps the torch model and Silero VAD, which are faster on hours of audio.
"""

from __future__ import annotations

import importlib.util
import pickle
import struct
from functools import lru_cache
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "LongStorage": np.int64,
           "IntStorage": np.int32, "HalfStorage": np.float16}


class _Storage:
    def __init__(self, kind: str, key: str, size: int) -> None:
        self.kind, self.key, self.size = kind, key, size
        self.data: np.ndarray | None = None


class _Tensor:
    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple) -> None:
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def array(self) -> np.ndarray:
        data = self.storage.data
        item = data.itemsize
        return np.lib.stride_tricks.as_strided(data[self.offset:], self.size, [s * item for s in self.stride]).copy()


class _Unpickler(pickle.Unpickler):
    def __init__(self, handle, storages: dict) -> None:
        super().__init__(handle)
        self.storages = storages

    def find_class(self, module: str, name: str):
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return lambda storage, offset, size, stride, *rest: _Tensor(storage, offset, size, stride)
        if module == "torch" and name.endswith("Storage"):
            return name
        if module == "collections" and name == "OrderedDict":
            import collections
            return collections.OrderedDict
        raise pickle.UnpicklingError(f"unexpected {module}.{name} in the weights file")

    def persistent_load(self, pid):
        _, kind, key, _, size, *_ = pid
        if key not in self.storages:
            self.storages[key] = _Storage(kind if isinstance(kind, str) else str(kind), key, size)
        return self.storages[key]


def weights_file() -> Path:
    """resemblyzer/pretrained.pt of the installed package."""
    spec = importlib.util.find_spec("resemblyzer")
    if spec is None or not spec.submodule_search_locations:
        from stages.footage.detection import MissingModel
        raise MissingModel("resemblyzer is not installed: run `bash scripts/setup.sh`")
    return Path(next(iter(spec.submodule_search_locations))) / "pretrained.pt"


@lru_cache(maxsize=1)
def weights() -> dict[str, np.ndarray]:
    """The encoder's state dict as numpy arrays (torch's legacy, non-zip serialisation format)."""
    storages: dict = {}
    with open(weights_file(), "rb") as handle:
        for _ in range(3):  # magic number, protocol version, system info
            pickle.load(handle)
        payload = _Unpickler(handle, storages).load()
        keys = pickle.load(handle)
        for key in keys:
            storage = storages[key]
            (count,) = struct.unpack("<q", handle.read(8))
            dtype = _DTYPES[storage.kind]
            storage.data = np.frombuffer(handle.read(count * np.dtype(dtype).itemsize), dtype)
    state = payload["model_state"] if isinstance(payload, dict) and "model_state" in payload else payload
    return {name: value.array().astype(np.float32) for name, value in state.items() if isinstance(value, _Tensor)}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def embed_windows(mels: np.ndarray) -> np.ndarray:
    """(B, 160, 40) mel windows -> (B, 256) unit embeddings, as resemblyzer.VoiceEncoder.forward."""
    w = weights()
    x = np.asarray(mels, np.float32)
    batch, steps, _ = x.shape
    for layer in range(3):
        w_ih, w_hh = w[f"lstm.weight_ih_l{layer}"], w[f"lstm.weight_hh_l{layer}"]
        bias = w[f"lstm.bias_ih_l{layer}"] + w[f"lstm.bias_hh_l{layer}"]
        hidden = w_hh.shape[1]
        projected = x @ w_ih.T + bias
        h = np.zeros((batch, hidden), np.float32)
        c = np.zeros((batch, hidden), np.float32)
        outputs = np.empty((batch, steps, hidden), np.float32)
        w_hh_t = np.ascontiguousarray(w_hh.T)
        for t in range(steps):
            gates = projected[:, t] + h @ w_hh_t
            i, f = _sigmoid(gates[:, :hidden]), _sigmoid(gates[:, hidden:2 * hidden])
            g, o = np.tanh(gates[:, 2 * hidden:3 * hidden]), _sigmoid(gates[:, 3 * hidden:])
            c = f * c + i * g
            h = o * np.tanh(c)
            outputs[:, t] = h
        x = outputs
    raw = np.maximum(h @ w["linear.weight"].T + w["linear.bias"], 0.0)
    return raw / np.maximum(np.linalg.norm(raw, axis=1, keepdims=True), 1e-12)


def speech_mask(audio: np.ndarray, mode: int = 3) -> np.ndarray:
    """Per-sample speech flags: WebRTC VAD on 30 ms frames, smoothed and dilated as Resemblyzer does."""
    import webrtcvad
    frame = SAMPLE_RATE * 30 // 1000
    usable = audio.size - audio.size % frame
    if usable == 0:
        return np.zeros(audio.size, bool)
    pcm = (np.clip(audio[:usable], -1, 1) * 32767).astype("<i2").tobytes()
    vad = webrtcvad.Vad(mode)
    flags = np.array([vad.is_speech(pcm[k * 2:(k + frame) * 2], SAMPLE_RATE) for k in range(0, usable, frame)],
                     np.float64)
    width = 8
    padded = np.concatenate([np.zeros((width - 1) // 2), flags, np.zeros(width // 2)])
    smooth = np.convolve(padded, np.ones(width) / width, mode="valid")[:flags.size] > 0.5
    grown = smooth.copy()
    for shift in range(1, 4):  # Resemblyzer: binary_dilation with a structure of 6 + 1 frames (3 each way)
        grown[shift:] |= smooth[:-shift]
        grown[:-shift] |= smooth[shift:]
    mask = np.repeat(grown, frame)
    return np.concatenate([mask, np.zeros(audio.size - usable, bool)])
