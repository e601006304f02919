"""One ffmpeg pass per video: every N-th frame scaled for the face detector, and shot cuts.

The same decode feeds two outputs of one filter graph: the sampled frames (RGB, `detect_height` high)
on stdout, and every frame as a 64x36 colour thumbnail on a second pipe (the child keeps the fd number),
read by a thread that finds hard cuts (a jump of the mean absolute difference between consecutive
thumbnails, over R, G and B). Frame `k` is at time k / fps (constant frame rate, as the other stages
assume). Memory stays flat: one frame at a time.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import ffmpeg
import numpy as np

from stages.core.errors import DataError
from stages.media.video_io import VideoInfo, ffmpeg_exe

TINY_W, TINY_H = 64, 36
CUT_ABSOLUTE = 15.0   # mean |difference| of colour levels (0..255) that may be a cut ...
CUT_RELATIVE = 4.0    # ... and that is this many times the recent typical difference
_RECENT = 12


def sample_step(fps: float, face_rate: float) -> int:
    """Frames between two face samples: round(fps / face_rate), at least 1."""
    return max(1, int(round(fps / face_rate)))


def analysis_size(info: VideoInfo, height: int) -> tuple[int, int]:
    """(width, height) the detector sees: the frame scaled to `height` (never up), even sizes."""
    if info.height <= height:
        width, out_h = info.width, info.height
    else:
        out_h = height
        width = info.width * height / info.height
    return max(2, int(round(width / 2)) * 2), max(2, int(round(out_h / 2)) * 2)


@dataclass
class CutFinder:
    """Consumes colour thumbnails in frame order; `cuts` are the frame indices that start a new shot."""

    cuts: list[int] = field(default_factory=list)
    frames: int = 0
    _previous: np.ndarray | None = None
    _recent: deque = field(default_factory=lambda: deque(maxlen=_RECENT))

    def add(self, thumbnail: np.ndarray) -> None:
        """One more frame."""
        current = thumbnail.astype(np.int16)
        if self._previous is not None:
            diff = float(np.abs(current - self._previous).mean())
            typical = float(np.median(self._recent)) if self._recent else 0.0
            if diff >= CUT_ABSOLUTE and diff >= CUT_RELATIVE * typical:
                self.cuts.append(self.frames)
            else:
                self._recent.append(diff)
        self._previous = current
        self.frames += 1


class FrameSource:
    """Iterate (frame index, time, RGB frame) every `step` frames; `cuts` fills in as the decode goes."""

    def __init__(self, info: VideoInfo, step: int, height: int) -> None:
        self.info, self.step = info, step
        self.width, self.height = analysis_size(info, height)
        self.finder = CutFinder()
        self._lock = threading.Lock()
        self.finished = False

    def cuts_known(self) -> tuple[list[float], float, bool]:
        """Cut times (s) found so far, the seconds of video they cover, whether decoding has ended."""
        with self._lock:
            return ([c / self.info.fps for c in self.finder.cuts], self.finder.frames / self.info.fps,
                    self.finished)

    def cuts_until(self, frame: int) -> tuple[list[int], bool]:
        """The cut frames found so far and whether the thumbnails have reached `frame`."""
        with self._lock:
            return list(self.finder.cuts), self.finder.frames > frame

    def _read_tiny(self, fd: int) -> None:
        size = TINY_W * TINY_H * 3
        with os.fdopen(fd, "rb", buffering=0) as pipe:
            buffer = bytearray(size)
            view = memoryview(buffer)
            while True:
                filled = 0
                while filled < size:
                    count = pipe.readinto(view[filled:])
                    if not count:
                        return
                    filled += count
                thumbnail = np.frombuffer(buffer, np.uint8).reshape(TINY_H, TINY_W, 3)
                with self._lock:
                    self.finder.add(thumbnail)

    def _command(self, tiny_fd: int) -> list[str]:
        source = ffmpeg.input(str(self.info.path))["v:0"].filter_multi_output("split")
        sampled = (source[0].filter("select", f"not(mod(n,{self.step}))")
                   .filter("scale", self.width, self.height, flags="area").filter("format", "rgb24"))
        tiny = source[1].filter("scale", TINY_W, TINY_H, flags="area").filter("format", "rgb24")
        out1 = ffmpeg.output(sampled, "pipe:1", format="rawvideo", fps_mode="passthrough")
        out2 = ffmpeg.output(tiny, f"pipe:{tiny_fd}", format="rawvideo", fps_mode="passthrough")
        return ffmpeg.merge_outputs(out1, out2).global_args(
            "-hide_banner", "-nostdin", "-loglevel", "error").compile(cmd=ffmpeg_exe())

    def __iter__(self) -> Iterator[tuple[int, float, np.ndarray]]:
        read_fd, write_fd = os.pipe()
        frame_bytes = self.width * self.height * 3
        with tempfile.TemporaryFile() as errors:
            process = subprocess.Popen(self._command(write_fd), stdout=subprocess.PIPE, stderr=errors,
                                       pass_fds=(write_fd,), bufsize=0)
            os.close(write_fd)
            reader = threading.Thread(target=self._read_tiny, args=(read_fd,), daemon=True)
            reader.start()
            try:
                count = 0
                while True:
                    data = _read_exact(process.stdout, frame_bytes)
                    if data is None:
                        break
                    frame = np.frombuffer(data, np.uint8).reshape(self.height, self.width, 3)
                    index = count * self.step
                    count += 1
                    yield index, index / self.info.fps, frame
                process.wait()
                reader.join()
                if process.returncode != 0 or count == 0:
                    errors.seek(0)
                    lines = errors.read().decode(errors="replace").strip().splitlines()
                    detail = lines[-1] if lines else f"exit code {process.returncode}"
                    raise DataError(self.info.path, f"cannot decode the video stream (ffmpeg: {detail}); "
                                                    "expected a video file ffmpeg can read")
            finally:
                process.stdout.close()
                if process.poll() is None:
                    process.kill()
                process.wait()
                reader.join(timeout=5)
                with self._lock:
                    self.finished = True

    def finish(self) -> None:
        """Mark decoding as over (also on errors, so nobody waits for more cuts)."""
        with self._lock:
            self.finished = True

    @property
    def frames_seen(self) -> int:
        """Frames decoded so far (all of them once iteration is over)."""
        with self._lock:
            return self.finder.frames


def _read_exact(stream, size: int) -> bytes | None:
    chunks, got = [], 0
    while got < size:
        chunk = stream.read(size - got)
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)
