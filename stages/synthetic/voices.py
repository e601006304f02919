"""Synthetic voices: espeak-ng (bundled by espeakng-loader, driven through ctypes) speaking random syllables.

espeak-ng is GPL-3; it is used only to generate the embedded data set (docs/synth.md).
"""

from __future__ import annotations

import _ctypes
import ctypes
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import espeakng_loader
import numpy as np
from scipy.signal import resample_poly

_OUTPUT_SYNCHRONOUS = 2
_PARAM_RATE, _PARAM_VOLUME, _PARAM_PITCH, _PARAM_RANGE = 1, 2, 3, 4
_CHARS_AUTO = 0
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

_ONSETS = ("b", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z", "ch", "sh",
           "br", "st", "pl", "gr", "tr", "")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou", "ee", "oo", "ea")
_CODAS = ("", "", "", "n", "m", "s", "t", "k", "l", "r", "nd", "st")


def variant_names() -> tuple[str, ...]:
    """The bundled voice variants (espeak-ng-data/voices/!v), sorted."""
    folder = Path(espeakng_loader.get_data_path()) / "voices" / "!v"
    return tuple(sorted(p.name for p in folder.iterdir() if p.is_file() and " " not in p.name))


@dataclass(frozen=True)
class Voice:
    """One speaker: an espeak variant plus pitch (0-99), pitch range (0-99) and rate (words/min)."""

    variant: str
    pitch: int
    pitch_range: int
    rate: int


class _Engine:
    """One loaded copy of libespeak-ng.

    The library carries state from one utterance to the next (the same call twice gives different
    samples), and espeak_Terminate does not reset it; unloading and loading it again does, which is
    what `reset` does (and seeds espeak's noise generator) so that every video's speech is repeatable.
    """

    def __init__(self) -> None:
        self.lib = ctypes.CDLL(espeakng_loader.get_library_path(), mode=os.RTLD_LOCAL)
        self.lib.espeak_Initialize.restype = ctypes.c_int
        self.lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self.lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self.lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                          ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        self.sample_rate = self.lib.espeak_Initialize(
            _OUTPUT_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), 0)
        if self.sample_rate <= 0:
            raise RuntimeError("espeak-ng failed to initialise")
        self._chunks: list[np.ndarray] = []
        self._callback = _CALLBACK(self._collect)  # keep a reference: ctypes must not free it
        self.lib.espeak_SetSynthCallback(self._callback)
        self.lock = threading.Lock()

    def _collect(self, wav: ctypes.POINTER(ctypes.c_short), count: int, events: ctypes.c_void_p) -> int:
        if count > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
        return 0

    def speak(self, text: str, voice: Voice) -> np.ndarray:
        """Synthesize `text` as int16 samples at the engine's rate."""
        with self.lock:
            if self.lib.espeak_SetVoiceByName(f"en+{voice.variant}".encode()) != 0:
                raise RuntimeError(f"espeak-ng has no voice variant {voice.variant!r}")
            self.lib.espeak_SetParameter(_PARAM_RATE, int(voice.rate), 0)
            self.lib.espeak_SetParameter(_PARAM_PITCH, int(voice.pitch), 0)
            self.lib.espeak_SetParameter(_PARAM_RANGE, int(voice.pitch_range), 0)
            self.lib.espeak_SetParameter(_PARAM_VOLUME, 100, 0)
            self._chunks = []
            data = text.encode() + b"\0"
            self.lib.espeak_Synth(data, len(data), 0, 0, 0, _CHARS_AUTO, None, None)
            chunks, self._chunks = self._chunks, []
        return np.concatenate(chunks) if chunks else np.zeros(0, np.int16)


_engine: _Engine | None = None
_engine_pid = -1


def reset(seed: int = 0) -> None:
    """Start a fresh espeak-ng state, so what follows depends only on `seed`, not on what was spoken before."""
    global _engine, _engine_pid
    if _engine is not None and _engine_pid == os.getpid():
        _engine.lib.espeak_Terminate()
        _ctypes.dlclose(_engine.lib._handle)
    _engine, _engine_pid = _Engine(), os.getpid()
    _engine.lib.espeak_ng_SetRandSeed(ctypes.c_long(seed))   # breathy variants add noise from this generator


def _get_engine() -> _Engine:
    if _engine is None or _engine_pid != os.getpid():
        reset()
    assert _engine is not None
    return _engine


def random_text(rng: np.random.Generator, syllables: int) -> str:
    """Pseudo-words of random syllables (no language content to learn from)."""
    words, left = [], max(1, syllables)
    while left > 0:
        n = min(left, int(rng.integers(1, 4)))
        left -= n
        words.append("".join(_ONSETS[rng.integers(len(_ONSETS))] + _VOWELS[rng.integers(len(_VOWELS))]
                             + _CODAS[rng.integers(len(_CODAS))] for _ in range(n)))
    return " ".join(words)


def speak(text: str, voice: Voice, sample_rate: int) -> np.ndarray:
    """Float32 speech in [-1, 1] at `sample_rate`, leading and trailing silence trimmed."""
    engine = _get_engine()
    raw = engine.speak(text, voice).astype(np.float32) / 32768.0
    if raw.size and engine.sample_rate != sample_rate:
        g = np.gcd(engine.sample_rate, sample_rate)
        raw = resample_poly(raw, sample_rate // g, engine.sample_rate // g).astype(np.float32)
    loud = np.flatnonzero(np.abs(raw) > 0.02)
    if loud.size == 0:
        return np.zeros(0, np.float32)
    return raw[loud[0]: loud[-1] + 1]


def draw_cast_voices(rng: np.random.Generator, count: int, similarity: float) -> list[Voice]:
    """Distinct voices for one video's cast; `similarity` in [0, 1] pulls them towards a shared centre.

    The variant pool shrinks and pitch/rate spreads narrow as similarity grows, so at 1.0 every
    voice of a video differs only slightly in pitch and rate.
    """
    names = variant_names()
    spread = 1.0 - similarity
    pool_size = max(1, int(round(1 + spread * (count - 1))))
    pool = [names[i] for i in rng.choice(len(names), size=min(pool_size, len(names)), replace=False)]
    centre_pitch, centre_rate = rng.uniform(30, 70), rng.uniform(150, 185)
    voices: list[Voice] = []
    used: set[Voice] = set()
    for index in range(count):
        for _ in range(50):
            voice = Voice(
                variant=pool[index % len(pool)] if index < len(pool) else pool[int(rng.integers(len(pool)))],
                pitch=int(np.clip(round(centre_pitch + rng.uniform(-1, 1) * (5 + 35 * spread)), 0, 99)),
                pitch_range=int(np.clip(round(rng.uniform(30, 70)), 0, 99)),
                rate=int(np.clip(round(centre_rate + rng.uniform(-1, 1) * (8 + 40 * spread)), 80, 400)),
            )
            if voice not in used:
                break
        used.add(voice)
        voices.append(voice)
    return voices
