"""One ffmpeg pass per video: a frame about every sampling period scaled for the face detector, and shot cuts.

The same decode feeds two outputs of one filter graph: the sampled frames (RGB, `detect_height` high)
on stdout, and every frame as a 64x36 colour thumbnail on a second pipe (the child keeps the fd number),
read by a thread that finds hard cuts (a jump of the mean absolute difference between consecutive
thumbnails, over R, G and B). Every frame's time is its presentation timestamp on the file's timeline,
read from a `showinfo` filter on each branch (ffmpeg's log, parsed by a third thread), never a frame
count: streams that start late and variable frame rates keep their true times. ffmpeg applies rotation
metadata before the filters, so sizes are the displayed ones. The same log counts decoding errors and the
thumbnails' timestamps show gaps (`Timeline`). Memory stays flat: one frame at a time.
"""

from __future__ import annotations

import os
import queue
import re
import subprocess
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO

import numpy as np

from stages.core.errors import DataError
from stages.media.video_io import VideoInfo, end_process, ffmpeg_exe, ffmpeg_reason

TINY_W, TINY_H = 64, 36
CUT_ABSOLUTE = 15.0   # mean |difference| of colour levels (0..255) that may be a cut ...
CUT_RELATIVE = 4.0    # ... and that is this many times the recent typical difference
_RECENT = 12
GAP_SECONDS = 1.0     # a step between consecutive frames longer than this (and ...
GAP_RELATIVE = 10.0   # ... this many typical steps) is a gap in the timeline
_SHOWINFO = re.compile(r"\[showinfo@(\w+) @ [^\]]*\] \[info\] (?:n:\s*\d+ pts:\s*(-?\d+|NOPTS).*?duration:\s*(-?\d+)"
                       r"|config in time_base: (\d+)/(\d+))")
_LEVEL = re.compile(r"\[(error|fatal|panic)\] ")


def sample_step(fps: float, face_rate: float) -> int:
    """Frames between two face samples at the nominal rate: round(fps / face_rate), at least 1."""
    return max(1, int(round(fps / face_rate)))


def sample_period(fps: float, face_rate: float) -> float:
    """Seconds between two face samples: `sample_step` frames at the nominal rate."""
    return sample_step(fps, face_rate) / fps


def analysis_size(info: VideoInfo, height: int) -> tuple[int, int]:
    """(width, height) the detector sees: the displayed frame scaled to `height` (never up), even sizes."""
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


@dataclass
class Timeline:
    """Every decoded frame's time, and the decoding errors on the way (with the time they came near)."""

    times: list[float] = field(default_factory=list)
    last_duration: float = 0.0
    errors: int = 0
    error_times: list[float] = field(default_factory=list)
    last_error: str = ""

    def end(self) -> float:
        """Where the decoded video ends: the last frame's time plus its duration (or a typical step)."""
        if not self.times:
            return 0.0
        step = self.last_duration if self.last_duration > 0 else self.typical_step()
        return self.times[-1] + step

    def typical_step(self) -> float:
        """The median step between frames (0 with fewer than two frames)."""
        return float(np.median(np.diff(self.times))) if len(self.times) > 1 else 0.0

    def gaps(self) -> list[tuple[float, float]]:
        """Stretches with no frame: steps longer than GAP_SECONDS and GAP_RELATIVE typical steps."""
        if len(self.times) < 2:
            return []
        times = np.asarray(self.times)
        steps = np.diff(times)
        limit = max(GAP_SECONDS, GAP_RELATIVE * float(np.median(steps)))
        return [(float(times[i]), float(times[i + 1])) for i in np.flatnonzero(steps > limit)]

    def jumps_back(self) -> list[tuple[float, float]]:
        """(from, to) where the timestamps go backwards (joined recordings, a reset clock)."""
        times = np.asarray(self.times)
        return [(float(times[i]), float(times[i + 1])) for i in np.flatnonzero(np.diff(times) < 0)]


class FrameSource:
    """Iterate (time, RGB frame) about every `period` seconds; cuts and the timeline fill in as decoding goes."""

    def __init__(self, info: VideoInfo, period: float, height: int) -> None:
        self.info, self.period = info, period
        self.width, self.height = analysis_size(info, height)
        self.finder = CutFinder()
        self.timeline = Timeline()
        self._sample_times: queue.Queue[float | None] = queue.Queue()
        self._lock = threading.Lock()
        self.finished = False

    def _covered(self) -> int:
        """Thumbnails both compared and timed (call under the lock)."""
        return min(self.finder.frames, len(self.timeline.times))

    def cuts_known(self) -> tuple[list[float], float, bool]:
        """Cut times (s) found so far, the time up to which the video is covered, whether decoding has ended."""
        with self._lock:
            covered = self._covered()
            times = self.timeline.times
            return ([times[c] for c in self.finder.cuts if c < covered], times[covered - 1] if covered else 0.0,
                    self.finished)

    def cuts_until(self, moment: float) -> tuple[list[float], bool]:
        """The cut times found so far and whether the thumbnails have passed `moment`."""
        cuts, covered, finished = self.cuts_known()
        return cuts, covered > moment or finished

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

    def _read_log(self, stream: IO[bytes]) -> None:
        """Frame times from the two showinfo filters, and decoding errors, from ffmpeg's log."""
        time_base = {"sample": 0.0, "tiny": 0.0}
        try:
            for raw in stream:
                line = raw.decode(errors="replace")
                found = _SHOWINFO.search(line)
                if found is None:
                    if _LEVEL.search(line):
                        with self._lock:
                            timeline = self.timeline
                            timeline.errors += 1
                            timeline.error_times.append(timeline.times[-1] if timeline.times else 0.0)
                            timeline.last_error = ffmpeg_reason(line)
                    continue
                branch, pts, duration, num, den = found.groups()
                if num is not None:
                    time_base[branch] = int(num) / int(den)
                    continue
                moment = np.nan if pts == "NOPTS" else int(pts) * time_base[branch]
                if branch == "sample":
                    self._sample_times.put(moment)
                else:
                    with self._lock:  # one time per thumbnail, so cut indices stay aligned with times
                        times = self.timeline.times
                        times.append(moment if not np.isnan(moment) else (times[-1] if times else 0.0))
                        self.timeline.last_duration = max(0, int(duration)) * time_base[branch]
        finally:
            self._sample_times.put(None)

    def _command(self, tiny_fd: int) -> list[str]:
        half_frame = 0.5 / self.info.fps
        pick = f"isnan(prev_selected_t)+gte(t-prev_selected_t,{self.period - half_frame:.6f})"
        graph = (f"[0:v:0]split[a][b];"
                 f"[a]select='{pick}',scale={self.width}:{self.height}:flags=area,"
                 f"showinfo@sample=checksum=0,format=rgb24[sample];"
                 f"[b]scale={TINY_W}:{TINY_H}:flags=area,showinfo@tiny=checksum=0,format=rgb24[tiny]")
        return [ffmpeg_exe(), "-hide_banner", "-nostdin", "-nostats", "-loglevel", "level+info",
                "-i", str(self.info.path), "-filter_complex", graph,
                "-map", "[sample]", "-f", "rawvideo", "-fps_mode", "passthrough", "pipe:1",
                "-map", "[tiny]", "-f", "rawvideo", "-fps_mode", "passthrough", f"pipe:{tiny_fd}"]

    def __iter__(self) -> Iterator[tuple[float, np.ndarray]]:
        read_fd, write_fd = os.pipe()
        frame_bytes = self.width * self.height * 3
        process = subprocess.Popen(self._command(write_fd), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   pass_fds=(write_fd,), bufsize=0)
        os.close(write_fd)
        reader = threading.Thread(target=self._read_tiny, args=(read_fd,), daemon=True)
        log = threading.Thread(target=self._read_log, args=(process.stderr,), daemon=True)
        reader.start()
        log.start()
        try:
            count, moment = 0, -self.period
            while True:
                data = _read_exact(process.stdout, frame_bytes)
                if data is None:
                    break
                stamped = self._sample_times.get()
                # a frame without a timestamp (or a log cut short) takes the next sampling slot
                moment = moment + self.period if stamped is None or np.isnan(stamped) else stamped
                count += 1
                yield moment, np.frombuffer(data, np.uint8).reshape(self.height, self.width, 3)
            process.wait()
            reader.join()
            log.join()
            if process.returncode != 0 or count == 0:
                detail = self.timeline.last_error or f"exit code {process.returncode}"
                raise DataError(self.info.path, f"cannot decode the video stream (ffmpeg: {detail}); "
                                                "expected a video file ffmpeg can read")
        finally:
            end_process(process, (reader, log))
            with self._lock:
                self.finished = True

    def finish(self) -> None:
        """Mark decoding as over (also on errors, so nobody waits for more cuts)."""
        with self._lock:
            self.finished = True

    def all_cuts(self) -> list[float]:
        """Every cut time (once iteration is over)."""
        with self._lock:
            times = self.timeline.times
            return [times[c] for c in self.finder.cuts if c < len(times)]


def _read_exact(stream: IO[bytes], size: int) -> bytes | None:
    chunks, got = [], 0
    while got < size:
        chunk = stream.read(size - got)
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)
