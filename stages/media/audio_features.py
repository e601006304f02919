"""The log-mel transform of voice snippets (torchaudio, batched), shared by the mel stage, training and evaluation.

Settings match librosa's defaults so the two agree (tests/test_mel.py): centred frames padded with
zeros, Slaney mel scale and Slaney area normalisation, power spectrogram, natural log with a floor.
"""

from __future__ import annotations

import numpy as np
import torch
import torchaudio

from stages.core.config import MelParams

LOG_FLOOR = 1e-6
CENTER = True
PAD_MODE = "constant"
MEL_SCALE = "slaney"
NORM = "slaney"


def snippet_samples(params: MelParams, sample_rate: int) -> int:
    """Samples in one snippet."""
    return int(round(params.snippet_seconds * sample_rate))


def snippet_frames(params: MelParams, sample_rate: int) -> int:
    """Spectrogram frames of one snippet (centred framing: 1 + samples // hop)."""
    return 1 + snippet_samples(params, sample_rate) // params.hop_length


class LogMel(torch.nn.Module):
    """(batch, samples) float waveforms in [-1, 1] -> (batch, n_mels, frames) natural-log mel power."""

    def __init__(self, params: MelParams, sample_rate: int) -> None:
        super().__init__()
        self.n_mels, self.hop_length, self.n_fft = params.n_mels, params.hop_length, params.n_fft
        self.spectrogram = torchaudio.transforms.Spectrogram(
            n_fft=params.n_fft, win_length=params.win_length, hop_length=params.hop_length, power=None,
            center=CENTER, pad_mode=PAD_MODE,
        )
        self.mel_scale = torchaudio.transforms.MelScale(
            n_mels=params.n_mels, sample_rate=sample_rate, n_stft=params.n_fft // 2 + 1, norm=NORM,
            mel_scale=MEL_SCALE,
        )

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        """Log-mel of a batch of equal-length waveforms."""
        spectrum = self.spectrogram(waveforms)
        # |z|^2 as re^2 + im^2: five times faster than torch's complex abs() followed by a square.
        power = spectrum.real.square() + spectrum.imag.square()
        return torch.log(self.mel_scale(power) + LOG_FLOOR)


def log_mel_batches(transform: LogMel, snippets: np.ndarray, batch_size: int) -> np.ndarray:
    """Run (N, samples) float32 snippets through `transform` in batches; returns (N, n_mels, frames) float32."""
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(snippets), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(snippets[start:start + batch_size]))
            outputs.append(transform(batch).numpy())
    if not outputs:
        return np.empty((0, transform.n_mels, 1 + snippets.shape[1] // transform.hop_length), np.float32)
    return np.concatenate(outputs).astype(np.float32, copy=False)


def _runs(offsets: np.ndarray, length: int, hop: int) -> list[np.ndarray]:
    """Group snippet indices (sorted by offset) into runs that overlap and share one frame grid."""
    order = np.argsort(offsets, kind="stable")
    runs: list[list[int]] = []
    for index in order:
        if runs:
            first, last = offsets[runs[-1][0]], offsets[runs[-1][-1]]
            if (offsets[index] - first) % hop == 0 and offsets[index] - last < length:
                runs[-1].append(int(index))
                continue
        runs.append([int(index)])
    return [np.asarray(run) for run in runs]


def log_mel_at(transform: LogMel, audio: np.ndarray, offsets: np.ndarray, length: int) -> np.ndarray:
    """Log-mels of the snippets audio[o:o + length] for every offset: (N, n_mels, frames) float32.

    The same numbers as transforming each snippet alone, computed once per frame: a frame whose FFT
    window lies inside its snippet does not see the zero padding, so overlapping snippets on one hop
    grid (the mel stage cuts them every 0.15 s = 15 hops) share it. Only the first and last few
    frames of each snippet, which reach into the padding, are computed per snippet.
    """
    hop, reach = transform.hop_length, transform.n_fft // 2
    offsets = np.asarray(offsets, np.int64)
    frames = 1 + length // hop
    first_inner, last_inner = -(-reach // hop), (length - reach) // hop
    if len(offsets) == 0 or last_inner < first_inner:
        snippets = np.stack([audio[o:o + length] for o in offsets]) if len(offsets) else np.empty((0, length))
        return log_mel_batches(transform, snippets.astype(np.float32), max(1, len(offsets)))
    out = np.empty((len(offsets), transform.n_mels, frames), np.float32)

    # Inner frames: each run of snippets becomes one stretch of a long signal (stretches start on hop
    # boundaries), transformed once.
    pieces, base_frames, position = [], [], 0
    runs = _runs(offsets, length, hop)
    for run in runs:
        start, stop = offsets[run[0]], offsets[run[-1]] + length
        padded = -(-(stop - start) // hop) * hop
        pieces.append(np.pad(audio[start:stop], (0, padded - (stop - start))))
        base_frames.append(position // hop)
        position += padded
    with torch.inference_mode():
        signal = torch.from_numpy(np.concatenate(pieces).astype(np.float32, copy=False))
        grid = transform(signal[None])[0].numpy()
    inner = slice(first_inner, last_inner + 1)
    for run, base in zip(runs, base_frames):
        for index in run:
            frame = base + (offsets[index] - offsets[run[0]]) // hop
            out[index, :, inner] = grid[:, frame + first_inner: frame + last_inner + 1]

    # Edge frames, per snippet: the head of each snippet, and its tail from a hop boundary on.
    head = min(length, (first_inner - 1) * hop + reach) if first_inner > 0 else 0
    tail_start = max(0, ((last_inner + 1) * hop - reach) // hop * hop)
    with torch.inference_mode():
        if first_inner > 0:
            heads = torch.from_numpy(np.stack([audio[o:o + head] for o in offsets]).astype(np.float32, copy=False))
            out[:, :, :first_inner] = transform(heads).numpy()[:, :, :first_inner]
        if last_inner + 1 < frames:
            tails = torch.from_numpy(np.stack([audio[o + tail_start:o + length] for o in offsets])
                                     .astype(np.float32, copy=False))
            out[:, :, last_inner + 1:] = transform(tails).numpy()[:, :, last_inner + 1 - tail_start // hop:]
    return out
