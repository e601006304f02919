"""Composited test videos with known ground truth for `apes-cli search` (tests and bench/search.py).

Faces: the six real faces of fixtures/group-photo-6-faces.jpg, cut out and numbered left to right.
Voices: the two real speakers of fixtures/sample.wav, cut at their RTTM turns. A video is a list of shots,
each with the faces on screen and the voice heard (or silence); frames are drawn with OpenCV and encoded
with the ffmpeg of imageio-ffmpeg (H.264 + AAC), so the truth is exact to the frame.
"""

from __future__ import annotations

import subprocess
import wave
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from stages.media.video_io import ffmpeg_exe

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
GROUP_PHOTO = FIXTURES / "group-photo-6-faces.jpg"
SAMPLE_WAV = FIXTURES / "sample.wav"
SAMPLE_RTTM = FIXTURES / "sample.rttm"
RATE = 16000

# Clean stretches of one speaker in sample.wav (inside an RTTM turn, clear of the other speaker).
VOICE_PIECES = {
    "speaker90": [(10.60, 14.45), (18.60, 21.45), (27.90, 30.00), (8.35, 9.90)],
    "speaker91": [(21.80, 27.80), (14.50, 17.90)],
}


@lru_cache(maxsize=1)
def group_faces() -> tuple[np.ndarray, ...]:
    """The six faces of the group photo, RGB squares with a wide margin, left to right."""
    from stages.footage.detection import detect_faces
    from stages.media.face_crop import crop_rgb
    photo = cv2.cvtColor(cv2.imread(str(GROUP_PHOTO)), cv2.COLOR_BGR2RGB)
    faces = sorted(detect_faces(photo, upsample=1), key=lambda f: f.box[0])
    return tuple(crop_rgb(photo, f.box, 220, 0.45) for f in faces)


@lru_cache(maxsize=1)
def sample_audio() -> np.ndarray:
    """fixtures/sample.wav as float32."""
    with wave.open(str(SAMPLE_WAV)) as handle:
        return np.frombuffer(handle.readframes(handle.getnframes()), np.int16).astype(np.float32) / 32768.0


def voice_piece(speaker: str, index: int, seconds: float | None = None) -> np.ndarray:
    """One clean stretch of a real speaker (optionally cut to `seconds`)."""
    start, end = VOICE_PIECES[speaker][index]
    if seconds is not None:
        end = min(end, start + seconds)
    return sample_audio()[int(start * RATE):int(end * RATE)]


def write_wav(path: Path, audio: np.ndarray) -> Path:
    """float audio -> 16-bit mono WAV."""
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(RATE)
        handle.writeframes((np.clip(audio, -1, 1) * 32767).astype(np.int16).tobytes())
    return path


@dataclass
class Shot:
    """seconds on screen; faces: (face number, x centre 0..1, size as a share of the height); voice heard."""

    seconds: float
    faces: list[tuple[int, float, float]] = field(default_factory=list)
    voice: np.ndarray | None = None   # float audio, placed at the shot start (cut to the shot)
    speaker: str | None = None        # ground-truth name of the voice
    background: tuple[int, int, int] = (60, 90, 120)
    drift: float = 0.04               # faces move this share of the width over the shot
    gain: float = 1.0                 # brightness of the faces in this shot
    angle: float = 0.0                # in-plane rotation of the faces (degrees)


@dataclass
class Truth:
    """Exact ground truth of a composited video."""

    duration: float
    on_screen: dict[int, list[tuple[float, float]]]
    speaking: dict[str, list[tuple[float, float]]]
    cuts: list[float]


def _shot_faces(shot: Shot, height: int, faces: tuple[np.ndarray, ...]) -> list[np.ndarray]:
    out = []
    for number, _, size in shot.faces:
        side = int(size * height)
        face = cv2.resize(faces[number], (side, side), interpolation=cv2.INTER_AREA)
        if shot.angle:
            turn = cv2.getRotationMatrix2D((side / 2, side / 2), shot.angle, 1.0)
            face = cv2.warpAffine(face, turn, (side, side), borderMode=cv2.BORDER_REPLICATE)
        if shot.gain != 1.0:
            face = np.clip(face.astype(np.float32) * shot.gain, 0, 255).astype(np.uint8)
        out.append(face)
    return out


def _draw(shot: Shot, progress: float, width: int, height: int, faces: list[np.ndarray],
          noise: np.ndarray) -> np.ndarray:
    frame = np.empty((height, width, 3), np.uint8)
    ramp = np.linspace(0.7, 1.2, height)[:, None, None]
    frame[:] = np.clip(np.array(shot.background)[None, None, :] * ramp, 0, 255).astype(np.uint8)
    for (number, x, size), face in zip(shot.faces, faces):
        side = face.shape[0]
        cx = int((x + shot.drift * (progress - 0.5)) * width)
        cy = height // 2
        left, top = max(0, cx - side // 2), max(0, cy - side // 2)
        right, bottom = min(width, left + side), min(height, top + side)
        frame[top:bottom, left:right] = face[:bottom - top, :right - left]
    return cv2.add(frame, noise[:height, :width], dtype=cv2.CV_8U) if noise is not None else frame


def compose(path: Path, shots: list[Shot], width: int = 640, height: int = 360, fps: int = 25,
            seed: int = 0, crf: int = 26, noise: float = 0.0005, grain: int = 6, grain_frames: int = 4,
            faces: tuple[np.ndarray, ...] | None = None) -> Truth:
    """Encode the shots into `path` (H.264 + AAC) and return the exact truth. `grain` (levels) and
    `grain_frames` (distinct grain patterns, cycled) set the sensor noise, and so the bitrate; `faces` are the
    RGB squares the shots' face numbers index (default: the group photo's six)."""
    faces = group_faces() if faces is None else faces
    rng = np.random.default_rng(seed)
    total_frames = sum(int(round(s.seconds * fps)) for s in shots)
    audio = np.zeros(int(round(total_frames / fps * RATE)), np.float32)
    audio += rng.normal(0, noise, audio.size).astype(np.float32)  # a quiet room, not digital silence
    on_screen: dict[int, list[tuple[float, float]]] = {}
    speaking: dict[str, list[tuple[float, float]]] = {}
    cuts, frame_index = [], 0
    frames_per_shot = [int(round(s.seconds * fps)) for s in shots]
    for shot, count in zip(shots, frames_per_shot):
        start, end = frame_index / fps, (frame_index + count) / fps
        if frame_index:
            cuts.append(start)
        for number, _, _ in shot.faces:
            on_screen.setdefault(number, []).append((start, end))
        if shot.voice is not None:
            piece = shot.voice[:int((end - start) * RATE)]
            lo = int(round(start * RATE))
            audio[lo:lo + piece.size] += piece
            speaking.setdefault(shot.speaker or "voice", []).append((start, start + piece.size / RATE))
        frame_index += count
    grains = [rng.integers(0, grain, (height, width, 3), dtype=np.uint8) for _ in range(grain_frames)]

    def frames() -> Iterator[np.ndarray]:
        for shot, count in zip(shots, frames_per_shot):
            shown = _shot_faces(shot, height, faces)
            for k in range(count):
                yield _draw(shot, k / max(1, count - 1), width, height, shown, grains[k % grain_frames])

    encode(path, frames(), audio, width, height, fps, crf)
    return Truth(total_frames / fps, on_screen, speaking, cuts)


def encode(path: Path, frames: Iterable[np.ndarray], audio: np.ndarray, width: int, height: int, fps: int,
           crf: int) -> None:
    """RGB frames and float audio (16 kHz) into `path`: H.264 + AAC, a keyframe every 4 s."""
    wav = write_wav(path.with_suffix(".tmp.wav"), audio)
    command = [ffmpeg_exe(), "-y", "-hide_banner", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
               "-s", f"{width}x{height}", "-r", str(fps), "-i", "pipe:0", "-i", str(wav), "-map", "0:v",
               "-map", "1:a", "-c:v", "libx264", "-preset", "veryfast", "-crf", str(crf), "-pix_fmt", "yuv420p",
               "-g", str(fps * 4), "-c:a", "aac", "-b:a", "96k", "-shortest", str(path)]
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for frame in frames:
            process.stdin.write(np.ascontiguousarray(frame).tobytes())
        process.stdin.close()
        if process.wait() != 0:
            raise RuntimeError(process.stderr.read().decode())
    finally:
        if process.poll() is None:
            process.kill()
        wav.unlink(missing_ok=True)


def merged(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Union of intervals, sorted."""
    out: list[list[float]] = []
    for start, end in sorted(intervals):
        if out and start <= out[-1][1] + 1e-9:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return [(a, b) for a, b in out]


def overlap_seconds(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> float:
    """Seconds shared by two interval sets."""
    return sum(max(0.0, min(x1, y1) - max(x0, y0)) for x0, x1 in merged(a) for y0, y1 in merged(b))


def precision_recall(found: list[tuple[float, float]], truth: list[tuple[float, float]]) -> tuple[float, float]:
    """Time-overlap precision and recall of found intervals against the truth."""
    hit = overlap_seconds(found, truth)
    found_total = sum(b - a for a, b in merged(found))
    truth_total = sum(b - a for a, b in merged(truth))
    precision = hit / found_total if found_total > 0 else (1.0 if truth_total == 0 else 0.0)
    recall = hit / truth_total if truth_total > 0 else 1.0
    return precision, recall
