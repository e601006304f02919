"""Voice activity: where 16 kHz audio holds speech, by Silero VAD (the MIT model inside the silero-vad wheel).

Shared by `apes-cli index` (speech segments) and the active speaker benchmark (its rule baselines and the
detector see speech where the index would).
"""

from __future__ import annotations

import warnings
from functools import lru_cache

import numpy as np

SAMPLE_RATE = 16000
CHUNK = 512    # samples Silero scores at a time (32 ms at 16 kHz) ...
CONTEXT = 64   # ... after the previous chunk's last samples


@lru_cache(maxsize=1)
def _vad_model():
    from silero_vad import load_silero_vad
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_silero_vad()


def speech_probabilities(audio: np.ndarray) -> list[float]:
    """Silero's speech probability of each 32 ms chunk of 16 kHz float audio, as its own loop computes them (the
    last chunk zero-padded, each after the previous chunk's last 64 samples, the LSTM state carried along), with
    the feature extractor and the convolutions run on all chunks at once: chunk by chunk they cost 0.5 ms each,
    the largest part of the soundtrack pass (docs/search.md). Only the small LSTM cell steps through time."""
    import torch
    network = _vad_model()._model  # the 16 kHz network behind the stateful wrapper
    count = -(-audio.size // CHUNK)
    chunks = torch.zeros(count, CHUNK)
    chunks.view(-1)[:audio.size] = torch.from_numpy(np.ascontiguousarray(audio, np.float32))
    context = torch.cat([torch.zeros(1, CONTEXT), chunks[:-1, -CONTEXT:]])
    with torch.inference_mode():
        features = network.encoder(network.run_extractors(torch.cat([context, chunks], dim=1))).squeeze(-1)
        cell, state, hidden = network.decoder.rnn, None, []
        for row in features:
            state = cell(row[None], state)
            hidden.append(state[0])
        out = network.decoder.decoder(torch.cat(hidden).unsqueeze(-1))
    return out.reshape(count, -1).mean(dim=1).tolist()


def speech_regions(audio: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) sample indices of speech in 16 kHz float audio."""
    from silero_vad.utils_vad import get_speech_timestamps_from_probs
    if audio.size < SAMPLE_RATE // 10:
        return []
    stamps = get_speech_timestamps_from_probs(speech_probabilities(audio), sampling_rate=SAMPLE_RATE, threshold=0.5,
                                              min_speech_duration_ms=250, min_silence_duration_ms=200,
                                              speech_pad_ms=30, audio_length_samples=audio.size)
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
