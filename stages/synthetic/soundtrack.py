"""Background beds (noise, music), room reverberation and mixing at a target SNR for synthetic soundtracks."""

from __future__ import annotations

import numpy as np
from scipy.signal import fftconvolve, lfilter

SPEECH_RMS = 0.1   # every speech segment is normalised to this RMS before mixing
NOISE_KINDS = ("white", "pink", "brown", "hum", "crowd")


def normalise_speech(audio: np.ndarray) -> np.ndarray:
    """Scale a speech segment to SPEECH_RMS."""
    rms = float(np.sqrt(np.mean(audio.astype(np.float64) ** 2))) if audio.size else 0.0
    return (audio * (SPEECH_RMS / rms)).astype(np.float32) if rms > 0 else audio.astype(np.float32)


def _unit(x: np.ndarray) -> np.ndarray:
    rms = float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))
    return (x / rms).astype(np.float32) if rms > 0 else x.astype(np.float32)


def noise_bed(rng: np.random.Generator, samples: int, sample_rate: int) -> np.ndarray:
    """Unit-RMS noise of a random colour: white, pink, brown, mains hum or crowd-like modulated noise."""
    kind = NOISE_KINDS[int(rng.integers(len(NOISE_KINDS)))]
    white = rng.standard_normal(samples).astype(np.float32)
    if kind == "white":
        return _unit(white)
    if kind == "pink":
        # Paul Kellet's economy pink filter
        return _unit(lfilter([0.049922035, -0.095993537, 0.050612699, -0.004408786],
                             [1, -2.494956002, 2.017265875, -0.522189400], white))
    if kind == "brown":
        return _unit(lfilter([1.0], [1.0, -0.995], white))
    t = np.arange(samples) / sample_rate
    if kind == "hum":
        base = rng.choice([50.0, 60.0])
        tone = sum(np.sin(2 * np.pi * base * k * t + rng.uniform(0, 6.3)) / k for k in range(1, 6))
        return _unit(tone + 0.3 * white)
    # crowd: band-limited noise with a slow syllable-rate envelope
    band = lfilter([1.0, 0.0, -1.0], [1.0, -1.6, 0.7], white)
    envelope = 1.0 + 0.8 * np.sin(2 * np.pi * rng.uniform(2, 5) * t + rng.uniform(0, 6.3))
    return _unit(band * envelope)


def music_bed(rng: np.random.Generator, samples: int, sample_rate: int) -> np.ndarray:
    """Unit-RMS music: chords of harmonic tones changing every beat, a melody line and a kick drum."""
    out = np.zeros(samples, np.float32)
    beat = int(sample_rate * 60 / rng.uniform(80, 140))
    root = rng.uniform(110, 220)
    scale = np.array([0, 2, 4, 5, 7, 9, 11, 12])
    t_beat = np.arange(beat) / sample_rate
    decay = np.exp(-t_beat * rng.uniform(1.5, 5.0)).astype(np.float32)
    kick = (np.sin(2 * np.pi * 55 * t_beat * np.exp(-t_beat * 8)) * np.exp(-t_beat * 20)).astype(np.float32)
    for start in range(0, samples, beat):
        length = min(beat, samples - start)
        degree = int(rng.integers(len(scale) - 4))
        chord = [root * 2 ** (scale[degree + k] / 12) for k in (0, 2, 4)]
        melody = root * 2 * 2 ** (scale[int(rng.integers(len(scale)))] / 12)
        tone = np.zeros(length, np.float32)
        for freq, level in [(f, 0.5) for f in chord] + [(melody, 0.8)]:
            for harmonic in (1, 2, 3):
                tone += level / harmonic * np.sin(2 * np.pi * freq * harmonic * t_beat[:length])
        out[start: start + length] += tone * decay[:length] + 1.5 * kick[:length]
    return _unit(out)


def reverberate(rng: np.random.Generator, audio: np.ndarray, sample_rate: int, amount: float) -> np.ndarray:
    """Convolve with a random exponentially decaying room response; `amount` in [0, 1] sets the wet share."""
    if amount <= 0 or audio.size == 0:
        return audio
    rt60 = rng.uniform(0.2, 0.2 + 0.8 * amount)
    taps = int(rt60 * sample_rate)
    t = np.arange(taps) / sample_rate
    response = (rng.standard_normal(taps) * np.exp(-6.9 * t / rt60)).astype(np.float32)
    response[0] = 0.0
    wet = fftconvolve(audio, response)[: audio.size]
    wet_rms = float(np.sqrt(np.mean(wet ** 2))) or 1.0
    dry_rms = float(np.sqrt(np.mean(audio ** 2))) or 1.0
    share = amount * rng.uniform(0.4, 1.0)
    return ((1 - share) * audio + share * wet * (dry_rms / wet_rms)).astype(np.float32)


def bed_gain(snr_db: float) -> float:
    """Scale of a unit-RMS bed so that speech at SPEECH_RMS sits `snr_db` above it."""
    return SPEECH_RMS / (10 ** (snr_db / 20))
