"""Voice: voice activity (Silero VAD), speaker-change splitting and speaker embeddings.

Both models ship inside their PyPI packages (silero-vad: MIT; Resemblyzer: Apache-2.0). Audio is read as
16 kHz mono in blocks of BLOCK_SECONDS through ffmpeg, so memory does not grow with the video's length
(a speech region still open at the end of a block is carried into the next one). Sample k is at k / 16000
s of the file's timeline, the same zero as the video's frame times: a stream that starts late or loses
packets is padded with silence by ffmpeg (`_decode_command`).

A speech region is split where the voice changes: the 1.6 s window ending at a point and the one starting
there are compared (cosine of their embeddings, every 0.2 s) and a local minimum under CHANGE_SIMILARITY
is a boundary; a boundary within SNAP_SECONDS of a shot cut moves onto the cut. Each resulting segment
gets its own embedding from the chosen embedder (stages/footage/voice_embedders.py; Resemblyzer's is the
mean of 1.6 s windows over it, hop 0.8 s, renormalised).
"""

from __future__ import annotations

import subprocess
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import IO

import numpy as np

from stages.core.errors import DataError
from stages.core.progress import Progress, Silent
from stages.media.video_io import VideoInfo, end_process, ffmpeg_exe, ffmpeg_reason
from stages.media.voice_activity import speech_regions

SAMPLE_RATE = 16000
BLOCK_SECONDS = 60.0
MAX_CARRY_SECONDS = 180.0
WINDOW = 160                # mel frames (10 ms) per Resemblyzer window: 1.6 s
CHANGE_HOP = 20             # 0.2 s between the windows compared for speaker changes
EMBED_HOP = 80              # 0.8 s between the windows averaged into a segment embedding
CHANGE_SIMILARITY = 0.70    # below this, the voices either side of a point differ
CUT_CHANGE_SIMILARITY = 0.80  # at a shot cut inside speech, a looser test
SNAP_SECONDS = 0.5
MIN_SEGMENT = 0.8           # no two boundaries closer than this (seconds)
MIN_QUERY_SPEECH = 0.3      # seconds of speech a query clip needs
TARGET_RMS = 10 ** (-30 / 20)  # -30 dBFS
CutsKnown = Callable[[], tuple[list[float], float, bool]]  # (cut times so far, seconds covered, video ended)


@dataclass
class Segment:
    """One stretch of one voice: seconds from the video start, and its embedding (256-d, unit length)."""

    start: float
    end: float
    embedding: np.ndarray


@lru_cache(maxsize=1)
def _encoder():
    with warnings.catch_warnings():  # resemblyzer imports a deprecated scipy.ndimage path
        warnings.simplefilter("ignore", DeprecationWarning)
        from resemblyzer import VoiceEncoder
    return VoiceEncoder("cpu", verbose=False)


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa's default, htk=False): linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, np.float64)
    linear = hz / (200.0 / 3)
    return np.where(hz >= 1000.0, 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (np.log(6.4) / 27.0), linear)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, np.float64)
    return np.where(mel >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0)), mel * (200.0 / 3))


@lru_cache(maxsize=1)
def _mel_basis() -> np.ndarray:
    """librosa.filters.mel(sr=16000, n_fft=400, n_mels=40) (Slaney scale and area normalisation), in numpy."""
    n_fft, n_mels = 400, 40
    fft_freqs = np.fft.rfftfreq(n_fft, 1.0 / SAMPLE_RATE)
    mel_freqs = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(SAMPLE_RATE / 2), n_mels + 2))
    spacing = np.diff(mel_freqs)
    ramps = np.subtract.outer(mel_freqs, fft_freqs)
    weights = np.zeros((n_mels, len(fft_freqs)))
    for i in range(n_mels):
        weights[i] = np.maximum(0, np.minimum(-ramps[i] / spacing[i], ramps[i + 2] / spacing[i + 1]))
    weights *= (2.0 / (mel_freqs[2:n_mels + 2] - mel_freqs[:n_mels]))[:, None]
    return weights.astype(np.float32)


def _louder(audio: np.ndarray) -> tuple[np.ndarray, float]:
    """Resemblyzer's volume normalisation (quiet audio raised to -30 dBFS) and the RMS before it."""
    rms = float(np.sqrt(np.mean(np.square(audio)))) if audio.size else 0.0
    if 1e-5 < rms < TARGET_RMS:
        audio = audio * np.float32(TARGET_RMS / rms)
    return audio, rms


def _unit_mean(embeddings: np.ndarray) -> np.ndarray:
    """The mean of window embeddings, renormalised to unit length."""
    mean = embeddings.mean(axis=0)
    return mean / max(float(np.linalg.norm(mean)), 1e-9)


def _mel(audio: np.ndarray) -> np.ndarray:
    """Resemblyzer's input: 40 mel power bands, 25 ms windows every 10 ms (frames x 40).

    The same numbers as resemblyzer.audio.wav_to_mel_spectrogram (librosa.feature.melspectrogram with
    n_fft=400, hop 160, centred, zero padding; checked in tests/test_reimplementations.py), computed with numpy: the
    first librosa call in a process costs seconds of imports and JIT compilation, which a query cannot afford.
    """
    audio, _ = _louder(np.asarray(audio, np.float32))
    if audio.size < WINDOW * 160:  # pad a short clip to one window, as Resemblyzer does
        audio = np.pad(audio, (0, WINDOW * 160 - audio.size))
    n_fft, hop = 400, 160
    padded = np.pad(audio, n_fft // 2)
    count = 1 + (padded.size - n_fft) // hop
    frames = np.lib.stride_tricks.as_strided(padded, (count, n_fft), (padded.strides[0] * hop, padded.strides[0]))
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)  # periodic Hann
    power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2
    return (power.astype(np.float32) @ _mel_basis().T).astype(np.float32)


def _windows(mel: np.ndarray, hop: int, numpy: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Start frames and unit embeddings of every 1.6 s window at `hop` (the last window flush right);
    `numpy` runs the network without torch (stages/footage/voice_numpy.py)."""
    starts = list(range(0, max(1, mel.shape[0] - WINDOW + 1), hop))
    if starts[-1] + WINDOW < mel.shape[0]:
        starts.append(mel.shape[0] - WINDOW)
    batch = np.stack([mel[s:s + WINDOW] for s in starts])
    if numpy:
        from stages.footage.voice_numpy import embed_windows
        return np.asarray(starts), embed_windows(batch)
    import torch
    with torch.inference_mode():
        out = _encoder()(torch.from_numpy(batch)).numpy()
    return np.asarray(starts), out.astype(np.float32)


def embed_audio(audio: np.ndarray) -> np.ndarray:
    """One unit 256-d voice embedding of a stretch of speech."""
    _, embeddings = _windows(_mel(audio), EMBED_HOP)
    return _unit_mean(embeddings)


def _boundaries(similarity: np.ndarray, times: np.ndarray, limit: float) -> list[float]:
    order = np.argsort(similarity)
    chosen: list[float] = []
    for i in order:
        if similarity[i] >= limit:
            break
        left = similarity[i - 1] if i > 0 else np.inf
        right = similarity[i + 1] if i + 1 < len(similarity) else np.inf
        if similarity[i] <= left and similarity[i] <= right and all(abs(times[i] - c) >= MIN_SEGMENT for c in chosen):
            chosen.append(float(times[i]))
    return sorted(chosen)


def split_region(audio: np.ndarray, offset: float, cuts: np.ndarray) -> list[tuple[float, float]]:
    """Cut one speech region (audio starting at `offset` s) where the voice changes; absolute seconds."""
    duration = audio.size / SAMPLE_RATE
    end = offset + duration
    if duration < 2 * WINDOW / 100:
        return [(offset, end)]
    mel = _mel(audio)
    starts, embeddings = _windows(mel, CHANGE_HOP)
    by_start = {int(s): e for s, e in zip(starts, embeddings)}
    points, similarity = [], []
    for frame in range(WINDOW, mel.shape[0] - WINDOW + 1, CHANGE_HOP):
        if frame - WINDOW in by_start and frame in by_start:
            points.append(frame / 100)
            similarity.append(float(by_start[frame - WINDOW] @ by_start[frame]))
    found = _boundaries(np.asarray(similarity), np.asarray(points), CHANGE_SIMILARITY) if points else []
    inner = [float(c) - offset for c in cuts if offset + 1.0 < c < end - 1.0]
    snapped = []
    for point in found:
        near = [c for c in inner if abs(c - point) <= SNAP_SECONDS]
        snapped.append(min(near, key=lambda c: abs(c - point)) if near else point)
    for cut in inner:  # a cut inside speech that no change point reached: test it directly
        if any(abs(cut - p) < 1e-6 for p in snapped):
            continue
        frame = int(round(cut * 100))
        lo, hi = max(0, frame - WINDOW), min(mel.shape[0], frame + WINDOW)
        if frame - lo >= WINDOW // 2 and hi - frame >= WINDOW // 2:
            a = embed_audio(audio[lo * 160:frame * 160])
            b = embed_audio(audio[frame * 160:hi * 160])
            if float(a @ b) < CUT_CHANGE_SIMILARITY:
                snapped.append(cut)
    edges = [0.0] + sorted(p for p in set(snapped) if MIN_SEGMENT / 2 < p < duration - MIN_SEGMENT / 2) + [duration]
    return [(offset + a, offset + b) for a, b in zip(edges[:-1], edges[1:]) if b - a > 1e-3]


@dataclass
class Soundtrack:
    """What the soundtrack pass found: speech segments, seconds of speech, and how well the audio decoded."""

    segments: list[Segment]
    speech_seconds: float
    decoded_seconds: float        # where the decoded audio ends on the file's timeline
    errors: int = 0               # decoding errors ffmpeg reported
    error_times: list[float] = field(default_factory=list)
    last_error: str = ""


def _decode_command(path: str | Path, timeline: bool) -> list[str]:
    """ffmpeg writing the first audio stream as 16 kHz mono s16le to stdout, errors only on stderr.

    `timeline` pads the start and any gap with silence (aresample's `first_pts=0`, `async`), so sample k is
    at k / 16000 s of the file's timeline, whenever the audio stream starts and whatever it lost."""
    timing = ["-af", "aresample=async=1:first_pts=0"] if timeline else []
    return [ffmpeg_exe(), "-hide_banner", "-nostdin", "-nostats", "-loglevel", "level+error", "-i", str(path),
            "-map", "0:a:0", *timing, "-ac", "1", "-ar", str(SAMPLE_RATE), "-f", "s16le", "pipe:1"]


def _pcm(data: bytes) -> np.ndarray:
    """s16le bytes as float32 samples in [-1, 1)."""
    return np.frombuffer(data[:len(data) // 2 * 2], np.int16).astype(np.float32) / 32768.0


class _SoundtrackReader:
    """The soundtrack in blocks of BLOCK_SECONDS on the file's timeline, counting ffmpeg's decoding errors."""

    def __init__(self, info: VideoInfo) -> None:
        self.info = info
        self.samples = 0
        self.errors = 0
        self.error_times: list[float] = []
        self.last_error = ""

    def _read_log(self, stream: IO[bytes]) -> None:
        for raw in stream:
            line = raw.decode(errors="replace")
            if "[error]" in line or "[fatal]" in line:
                self.errors += 1
                self.error_times.append(self.samples / SAMPLE_RATE)  # about: the pipe holds a few seconds
                self.last_error = ffmpeg_reason(line)

    def blocks(self) -> Iterator[np.ndarray]:
        """Float blocks of 16 kHz mono audio; a DataError if ffmpeg fails outright."""
        size, chunk = int(BLOCK_SECONDS * SAMPLE_RATE) * 2, SAMPLE_RATE * 2
        process = subprocess.Popen(_decode_command(self.info.path, timeline=True), stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE)
        log = threading.Thread(target=self._read_log, args=(process.stderr,), daemon=True)
        log.start()
        try:
            data = bytearray()
            while True:
                piece = process.stdout.read(chunk)  # a second at a time, so errors are placed in time
                self.samples += len(piece) // 2
                data += piece
                if data and (len(data) >= size or not piece):
                    yield _pcm(bytes(data))
                    data = bytearray()
                if not piece:
                    break
            code = process.wait()
            log.join()
            if code != 0:
                raise DataError(self.info.path, f"cannot decode the audio (ffmpeg: {self.last_error or 'failed'})")
        finally:
            end_process(process, (log,))


def analyze_audio(info: VideoInfo, cuts_known: CutsKnown, progress: Progress | None = None,
                  embed: Callable[[np.ndarray], np.ndarray] | None = None) -> Soundtrack:
    """Speech segments of a video's soundtrack with their embeddings, the seconds of speech and decoding facts.

    `embed` turns a segment's audio into its embedding (default: Resemblyzer's `embed_audio`).
    `cuts_known()` returns (shot cut times so far, seconds of video they cover, whether the video pass has
    ended): this runs beside the face pass and waits for it only where it needs the cuts of a block.
    """
    progress = progress or Silent()
    if not info.has_audio:
        return Soundtrack([], 0.0, 0.0)
    embed = embed or embed_audio
    segments: list[Segment] = []
    speech = 0.0
    buffer = np.zeros(0, np.float32)
    origin = 0.0  # seconds of buffer[0]
    reader = _SoundtrackReader(info)
    blocks = reader.blocks()
    block = next(blocks, None)
    while block is not None:
        following = next(blocks, None)
        buffer = np.concatenate([buffer, block])
        regions = speech_regions(buffer)
        keep_from = max(0, buffer.size - SAMPLE_RATE // 2)
        if following is not None and regions and regions[-1][1] >= buffer.size - SAMPLE_RATE // 2 \
                and (buffer.size - regions[-1][0]) / SAMPLE_RATE < MAX_CARRY_SECONDS:
            keep_from = regions.pop()[0]
        if regions:
            cuts = _wait_for_cuts(cuts_known, origin + regions[-1][1] / SAMPLE_RATE + 1.0)
        for lo, hi in regions:
            speech += (hi - lo) / SAMPLE_RATE
            for start, end in split_region(buffer[lo:hi], origin + lo / SAMPLE_RATE, cuts):
                a = int(round((start - origin) * SAMPLE_RATE))
                b = int(round((end - origin) * SAMPLE_RATE))
                segments.append(Segment(round(start, 3), round(end, 3), embed(buffer[a:b])))
        progress.advance(int(round(block.size / SAMPLE_RATE)))
        if following is None:
            break
        buffer = buffer[keep_from:]
        origin += keep_from / SAMPLE_RATE
        block = following
    return Soundtrack(segments, speech, reader.samples / SAMPLE_RATE, reader.errors, reader.error_times,
                      reader.last_error)


def _wait_for_cuts(cuts_known: CutsKnown, until: float) -> np.ndarray:
    while True:
        cuts, covered, finished = cuts_known()
        if finished or covered >= until:
            return np.asarray(cuts, np.float64)
        time.sleep(0.05)


def read_clip(path: str | Path) -> np.ndarray:
    """Any file ffmpeg can read, as 16 kHz mono float audio; DataError if it has no audio."""
    path = Path(path)
    if path.is_dir():
        raise DataError(path, "is a folder; expected a voice clip (any audio or video file ffmpeg reads)")
    if not path.is_file():
        raise DataError(path, "voice clip not found")
    result = subprocess.run(_decode_command(path, timeline=False), capture_output=True)
    log = result.stderr.decode(errors="replace")
    if "matches no streams" in log:
        raise DataError(path, "has no audio stream; expected a recording of the person's voice")
    if result.returncode != 0 or not result.stdout:
        raise DataError(path, f"not a readable audio recording (ffmpeg: {ffmpeg_reason(log, 'no audio samples')}); "
                              "expected a voice clip in any format ffmpeg reads")
    return _pcm(result.stdout)


def embed_clip(path: str | Path, embed: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, float]:
    """The query voice: `embed` of the clip's speech, and how many seconds of speech it has.

    Resemblyzer's own preprocessing first (volume to -30 dBFS, silences trimmed by WebRTC VAD, in numpy).
    """
    from stages.footage.voice_numpy import speech_mask
    audio = read_clip(path)
    audio, rms = _louder(audio)
    speech = audio[speech_mask(audio)] if rms > 1e-5 else audio[:0]
    if speech.size < SAMPLE_RATE * MIN_QUERY_SPEECH:
        found = f"only {speech.size / SAMPLE_RATE:.1f} s of speech found" if speech.size else "no speech found"
        raise DataError(path, f"{found} (voice activity detection) "
                              f"in {audio.size / SAMPLE_RATE:.1f} s of audio; at least {MIN_QUERY_SPEECH} s "
                              "is needed, 3 s or more works best")
    return embed(speech), speech.size / SAMPLE_RATE
