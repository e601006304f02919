"""Voice activity: where 16 kHz audio holds speech, by Silero VAD (the MIT model inside the silero-vad wheel).

Shared by `apes-cli index` (speech segments) and the active speaker benchmark (its rule baselines and the
detector see speech where the index would).
"""

from __future__ import annotations

import threading
import warnings
from functools import lru_cache

import numpy as np

SAMPLE_RATE = 16000
# The model keeps state between its 32 ms chunks: two threads must not run it at once.
_MODEL_LOCK = threading.Lock()


@lru_cache(maxsize=1)
def _vad_model():
    from silero_vad import load_silero_vad
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_silero_vad()


def speech_regions(audio: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) sample indices of speech in 16 kHz float audio."""
    import torch
    from silero_vad import get_speech_timestamps
    if audio.size < SAMPLE_RATE // 10:
        return []
    with _MODEL_LOCK:
        stamps = get_speech_timestamps(torch.from_numpy(np.ascontiguousarray(audio, np.float32)), _vad_model(),
                                       sampling_rate=SAMPLE_RATE, threshold=0.5, min_speech_duration_ms=250,
                                       min_silence_duration_ms=200, speech_pad_ms=30)
    return [(int(s["start"]), int(s["end"])) for s in stamps]


def speech_regions_by_block(audio: np.ndarray, block_seconds: float) -> list[tuple[int, int]]:
    """`speech_regions` of consecutive blocks of `block_seconds` (a region crossing a block end is split).

    One call on minutes of audio drifts: on the embedded val videos' 279 s and 358 s soundtracks it found 2.4 s
    and 1.6 s of speech, in 60 s blocks 17 s and 84 s (the index reads audio in 60 s blocks too)."""
    block = max(1, int(block_seconds * SAMPLE_RATE))
    return [(start + offset, end + offset) for offset in range(0, audio.size, block)
            for start, end in speech_regions(audio[offset:offset + block])]


def speech_at(regions: list[tuple[int, int]], seconds: np.ndarray) -> np.ndarray:
    """Whether each time (seconds from the audio's first sample) falls inside one of `regions`."""
    samples = np.asarray(seconds, np.float64) * SAMPLE_RATE
    inside = np.zeros(samples.shape, bool)
    for start, end in regions:
        inside |= (samples >= start) & (samples < end)
    return inside
