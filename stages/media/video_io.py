"""ffmpeg helpers: probe a video, read 16 kHz mono audio of a window, stream chosen frames as YUV planes.

ffmpeg is the imageio-ffmpeg binary, driven through ffmpeg-python. Frame `k` is the k-th frame of the
video stream in presentation order. Times are seconds of the file's timeline (ffmpeg's: the container's
start is 0): a constant-rate stream that starts at 0 has frame k at k / fps; any other stream (a later
start, a variable frame rate) is mapped through its packets' timestamps (`frame_times`). Sizes are as
displayed: rotation metadata is applied by ffmpeg before any filter, so a portrait phone video is tall.
See docs/media.md.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
import threading
import wave
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import ffmpeg
import imageio_ffmpeg
import numpy as np

from stages.core.errors import DataError

# Decoding through a gap this long costs more than seeking again (seek = decode from the last keyframe).
SEEK_GAP_SECONDS = 10.0
# ffmpeg prints frame rates rounded to 2 decimals; these are the exact NTSC rates behind the rounded ones.
_NTSC_RATES = tuple(n * 1000 / 1001 for n in (24, 30, 48, 60, 120))
_GLOBAL_ARGS = ("-hide_banner", "-nostdin", "-loglevel", "error")


@lru_cache(maxsize=1)
def ffmpeg_exe() -> str:
    """Path of the static ffmpeg shipped in the imageio-ffmpeg wheel."""
    return imageio_ffmpeg.get_ffmpeg_exe()


@dataclass(frozen=True)
class VideoInfo:
    """What `ffmpeg -i` says about a file's first video stream and its audio."""

    path: Path
    fps: float
    width: int                # as displayed (after rotation metadata)
    height: int
    duration: float | None
    has_audio: bool
    rotation: int = 0         # degrees of the display matrix, counter-clockwise (0, 90, 180, 270)

    @property
    def frame_count(self) -> int | None:
        """Frames in the stream (from the container duration; None when the container does not say)."""
        return None if self.duration is None else int(round(self.duration * self.fps))


def _exact_fps(value: float) -> float:
    for rate in _NTSC_RATES:
        if abs(round(rate, 2) - value) < 0.006:
            return rate
    return value


def _rate(text: str) -> float:
    return float(text[:-1]) * 1000 if text.endswith("k") else float(text)


def end_process(process: subprocess.Popen, threads: Sequence[threading.Thread] = ()) -> None:
    """Stop an ffmpeg child however its reading ended (killed if still running) and join its reader threads."""
    process.stdout.close()
    if process.poll() is None:
        process.kill()
    process.wait()
    for thread in threads:
        thread.join(timeout=5)
    if process.stderr is not None:
        process.stderr.close()


def ffmpeg_reason(log: str, fallback: str = "failed") -> str:
    """The last message of an ffmpeg log, without its `[decoder @ 0x...]` and `[level]` prefixes."""
    for line in reversed(log.strip().splitlines()):
        text = re.sub(r"^(\s*\[[^\]]*\]\s*)+", "", line).strip()
        if text and not text.startswith("Last message repeated"):
            return text
    return fallback


def _rotation(block: str) -> int:
    """Display-matrix rotation of a stream's block of `ffmpeg -i` text, as 0, 90, 180 or 270."""
    found = re.search(r"rotation of (-?[\d.]+) degrees", block)
    return int(round(float(found.group(1)) / 90.0)) % 4 * 90 if found else 0


def probe(path: str | Path) -> VideoInfo:
    """Parse `ffmpeg -i` (there is no ffprobe) for size, frame rate, duration, rotation and audio presence."""
    path = Path(path)
    if path.is_dir():
        raise DataError(path, "is a folder; expected a video file")
    if not path.is_file():
        raise DataError(path, "video file not found")
    result = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path)],
                            capture_output=True, text=True, errors="replace")
    text = result.stderr
    if "Input #0" not in text:
        raise DataError(path, f"unreadable video (ffmpeg: {ffmpeg_reason(text, 'no output')}); "
                              "expected a video file ffmpeg can read")
    container = re.search(r"Input #0, ([^ ]+), from", text)
    if container and (container.group(1).endswith("_pipe") or container.group(1) == "image2"):
        raise DataError(path, f"is a still image ({container.group(1)}); expected a video file")
    lines = text.splitlines()
    video = [i for i, line in enumerate(lines)
             if re.search(r"Stream #\d+:\d+.*: Video: ", line) and "attached pic" not in line]
    if not video:
        raise DataError(path, "no video stream; expected a video file")
    block_end = next((i for i in range(video[0] + 1, len(lines)) if "Stream #" in lines[i]), len(lines))
    rotation = _rotation("\n".join(lines[video[0]:block_end]))
    video = [lines[video[0]]]
    size = re.search(r", (\d{2,5})x(\d{2,5})[\s,\[]", video[0] + " ")
    rate = re.search(r"([\d.]+k?) fps", video[0]) or re.search(r"([\d.]+k?) tbr", video[0])
    if size is None or rate is None or _rate(rate.group(1)) <= 0:
        raise DataError(path, f"cannot read frame size and rate from: {video[0].strip()}")
    duration = re.search(r"Duration: (\d+):(\d+):([\d.]+)", text)
    seconds = None
    if duration is not None:
        h, m, s = duration.groups()
        seconds = int(h) * 3600 + int(m) * 60 + float(s)
    width, height = int(size.group(1)), int(size.group(2))
    if rotation in (90, 270):
        width, height = height, width
    return VideoInfo(
        path=path,
        fps=_exact_fps(_rate(rate.group(1))),
        width=width,
        height=height,
        duration=seconds,
        has_audio=re.search(r"Stream #\d+:\d+.*: Audio: ", text) is not None,
        rotation=rotation,
    )


def frame_times(info: VideoInfo) -> np.ndarray | None:
    """Presentation time (s of the file's timeline) of every frame of the first video stream, in order.

    Read from the stream's packets without decoding (`-c copy -f framecrc`: one line per packet). None when
    the stream is constant-rate from 0 (frame k at k / fps), where the plain arithmetic is exact."""
    command = [ffmpeg_exe(), *_GLOBAL_ARGS, "-i", str(info.path), "-map", "0:v:0", "-c", "copy",
               "-avoid_negative_ts", "disabled", "-f", "framecrc", "pipe:1"]
    result = subprocess.run(command, capture_output=True, text=True, errors="replace")
    base = re.search(r"^#tb 0: (\d+)/(\d+)", result.stdout, re.MULTILINE)
    if result.returncode != 0 or base is None:
        raise DataError(info.path, f"cannot read the video's timestamps (ffmpeg: {ffmpeg_reason(result.stderr)})")
    pts = [int(line.split(",")[2]) for line in result.stdout.splitlines()
           if line.startswith("0,") and line.split(",")[2].strip().lstrip("-").isdigit()]
    times = np.sort(np.asarray(pts, np.float64)) * int(base.group(1)) / int(base.group(2))
    if times.size and np.abs(times - np.arange(times.size) / info.fps).max() < 1e-6:
        return None
    return times


def frame_indices_at(timestamps: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Index of the frame (presented at `times`) nearest to each timestamp; a tie goes to the earlier frame,
    as in `frame_indices`."""
    middles = (times[:-1] + times[1:]) / 2
    return np.searchsorted(middles, np.asarray(timestamps, np.float64) - 1e-6, side="left").astype(np.int64)


def frame_indices(timestamps: np.ndarray, fps: float) -> np.ndarray:
    """Index of the frame nearest to each timestamp (seconds from the start of the file).

    At an exact tie (20 boxes/s on 25 fps video: every 4th box) the earlier frame wins: it is the one
    on screen at that instant. The epsilon keeps float noise from flipping ties.
    """
    return np.maximum(np.ceil(np.asarray(timestamps, np.float64) * fps - 0.5 - 1e-6), 0).astype(np.int64)


def nearest_frames(info: VideoInfo, timestamps: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """The frame nearest to each timestamp, and the frames' presentation times (None: frame k at k / fps)."""
    times = frame_times(info)  # None for a constant-rate stream from 0, the usual case
    if times is not None:
        return frame_indices_at(timestamps, times), times
    indices = frame_indices(timestamps, info.fps)
    return (np.minimum(indices, info.frame_count - 1) if info.frame_count else indices), None


def read_audio(info: VideoInfo, start: float, duration: float, sample_rate: int) -> np.ndarray:
    """Decode [start, start + duration) of the first audio stream as mono int16 at `sample_rate`."""
    if not info.has_audio:
        raise DataError(info.path, "no audio stream: the voice snippets need the soundtrack")
    stream = (
        ffmpeg.input(str(info.path), ss=f"{start:.6f}", t=f"{duration:.6f}")["a:0"]
        .filter("aresample", **{"async": 1, "first_pts": 0})  # a stream starting late: silence before it
        .output("pipe:", format="s16le", acodec="pcm_s16le", ac=1, ar=sample_rate)
        .global_args(*_GLOBAL_ARGS)
    )
    try:
        out, _ = stream.run(cmd=ffmpeg_exe(), capture_stdout=True, capture_stderr=True)
    except ffmpeg.Error as error:
        reason = ffmpeg_reason(error.stderr.decode(errors="replace"), "ffmpeg failed")
        raise DataError(info.path, f"cannot decode audio ({reason})") from None
    samples = np.frombuffer(out, np.int16)
    if samples.size == 0:
        raise DataError(info.path, f"zero-length audio in the annotated window {start:.2f}-{start + duration:.2f} s")
    return samples


def write_wav(path: str | Path, samples: np.ndarray, sample_rate: int) -> None:
    """Write mono int16 PCM (the caller makes it atomic)."""
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(sample_rate)
        handle.writeframes(np.ascontiguousarray(samples, np.int16).tobytes())


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Read a mono int16 WAV as float32 in [-1, 1) and its sample rate."""
    if not Path(path).is_file():
        raise DataError(path, "audio file not found (run `apes-cli decode` first)")
    try:
        with wave.open(str(path), "rb") as handle:
            if handle.getnchannels() != 1 or handle.getsampwidth() != 2:
                raise DataError(path, "expected mono 16-bit PCM (written by `apes-cli decode`)")
            rate = handle.getframerate()
            data = handle.readframes(handle.getnframes())
    except (wave.Error, EOFError) as error:
        raise DataError(path, f"unreadable WAV ({error})") from None
    return np.frombuffer(data, np.int16).astype(np.float32) / 32768.0, rate


def _segments(indices: Sequence[int], gap: int) -> list[tuple[int, int]]:
    """Split sorted frame indices into [first, last] runs, starting a new run after a long gap."""
    runs: list[tuple[int, int]] = []
    for index in indices:
        if runs and index - runs[-1][1] <= gap:
            runs[-1] = (runs[-1][0], index)
        else:
            runs.append((index, index))
    return runs


def _read_exact(stream, view: memoryview) -> bool:
    """Fill `view` from the pipe; False at end of stream."""
    filled = 0
    while filled < len(view):
        count = stream.readinto(view[filled:])
        if not count:
            return False
        filled += count
    return True


@dataclass(frozen=True)
class Planes:
    """One decoded frame as its YUV 4:2:0 planes (what H.264 stores; no RGB conversion of whole frames)."""

    y: np.ndarray  # height x width
    u: np.ndarray  # ceil(height / 2) x ceil(width / 2)
    v: np.ndarray

    @classmethod
    def in_buffer(cls, buffer: np.ndarray, width: int, height: int) -> Planes:
        """Views of the three planes of a flat yuv420p buffer."""
        cw, ch = (width + 1) // 2, (height + 1) // 2
        y_end, u_end = width * height, width * height + cw * ch
        return cls(buffer[:y_end].reshape(height, width), buffer[y_end:u_end].reshape(ch, cw),
                   buffer[u_end:u_end + cw * ch].reshape(ch, cw))


def yuv420_bytes(width: int, height: int) -> int:
    """Bytes of one yuv420p frame."""
    return width * height + 2 * ((width + 1) // 2) * ((height + 1) // 2)


def seek_time(index: int, fps: float, times: np.ndarray | None) -> float:
    """Half a frame before frame `index`: an accurate seek there makes it the first frame out."""
    if times is None:
        return max(0.0, (index - 0.5) / fps)
    return max(0.0, (times[index] + times[index - 1]) / 2 if index > 0 else times[0] - 0.5 / fps)


def iter_frames(info: VideoInfo, indices: Sequence[int], times: np.ndarray | None = None
                ) -> Iterator[tuple[int, Planes]]:
    """Yield (frame index, YUV planes) for sorted unique `indices`, seeking to each run of them.

    `times` (from `frame_times`) places the frames of a stream that is not constant-rate from 0. The
    yielded planes are reused: they are valid until the next iteration. YUV rather than RGB halves
    the bytes through the pipe and leaves the colour conversion to the small crops.
    """
    indices = np.asarray(indices, np.int64)
    buffer = np.empty(yuv420_bytes(info.width, info.height), np.uint8)
    frame = Planes.in_buffer(buffer, info.width, info.height)
    view = memoryview(buffer)
    gap = max(1, int(SEEK_GAP_SECONDS * info.fps))
    for first, last in _segments(indices, gap):
        # Accurate input seek: ffmpeg decodes from the previous keyframe and drops frames before
        # `ss`; seeking half a frame early makes frame `first` the first one out.
        seek = seek_time(int(first), info.fps, times)
        stream = (
            ffmpeg.input(str(info.path), ss=f"{seek:.6f}")["v:0"]
            .output("pipe:", format="rawvideo", pix_fmt="yuv420p", vframes=last - first + 1,
                    fps_mode="passthrough")
            .global_args(*_GLOBAL_ARGS)
        )
        with tempfile.TemporaryFile() as errors:
            process = subprocess.Popen(stream.compile(cmd=ffmpeg_exe()), stdout=subprocess.PIPE, stderr=errors)
            try:
                wanted = iter(indices[np.searchsorted(indices, first):np.searchsorted(indices, last, "right")])
                target = next(wanted)
                for current in range(first, last + 1):
                    if not _read_exact(process.stdout, view):
                        errors.seek(0)
                        log = errors.read().decode(errors="replace")
                        detail = f" (ffmpeg: {ffmpeg_reason(log)})" if log.strip() else ""
                        raise DataError(info.path, f"video ended before frame {current} "
                                                   f"(t={current / info.fps:.3f} s) that the annotations need: "
                                                   f"truncated or unreadable{detail}")
                    if current == target:
                        yield int(current), frame
                        target = next(wanted, -1)
            finally:
                end_process(process)
