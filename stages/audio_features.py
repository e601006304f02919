"""The log-mel transform of voice snippets (torchaudio, batched), shared by the mel stage, training and evaluation.

Settings match librosa's defaults so the two agree (tests/test_mel.py): centred frames padded with
zeros, Slaney mel scale and Slaney area normalisation, power spectrogram, natural log with a floor.
"""

from __future__ import annotations

import numpy as np
import torch
import torchaudio

from stages.config import MelParams

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
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate, n_fft=params.n_fft, win_length=params.win_length,
            hop_length=params.hop_length, n_mels=params.n_mels, power=2.0,
            center=CENTER, pad_mode=PAD_MODE, mel_scale=MEL_SCALE, norm=NORM,
        )

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        """Log-mel of a batch of equal-length waveforms."""
        return torch.log(self.mel(waveforms) + LOG_FLOOR)


def log_mel_batches(transform: LogMel, snippets: np.ndarray, batch_size: int) -> np.ndarray:
    """Run (N, samples) float32 snippets through `transform` in batches; returns (N, n_mels, frames) float32."""
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(snippets), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(snippets[start:start + batch_size]))
            outputs.append(transform(batch).numpy())
    if not outputs:
        n_mels = transform.mel.n_mels
        frames = 1 + snippets.shape[1] // transform.mel.hop_length
        return np.empty((0, n_mels, frames), np.float32)
    return np.concatenate(outputs).astype(np.float32, copy=False)
