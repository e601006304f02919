"""Paths of the raw data layout (what the real AVA/APES archives unpack to) and of stage outputs."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from stages.core.errors import DataError

SPLITS = ("train", "val")
AVA_LABELS = ("NOT_SPEAKING", "SPEAKING_AUDIBLE", "SPEAKING_NOT_AUDIBLE")
AMBIGUOUS = "EXTRA_OR_AMBIGUOUS"
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov")
MANIFEST_NAME = "ava_speech_file_names_v1.txt"
_SAFE_ID = re.compile(r"^[A-Za-z0-9_\-][A-Za-z0-9_\-.]*$")


def check_video_id(video_id: str, file: str | Path, line: int | None = None) -> str:
    """A video id becomes a file name: refuse `/`, `..` and anything but [A-Za-z0-9_.-]."""
    if not video_id or not _SAFE_ID.match(video_id) or ".." in video_id:
        raise DataError(file, f"unsafe video id {video_id!r}: expected letters, digits, '_', '-', '.'",
                        line, "video_id")
    return video_id


@dataclass(frozen=True)
class RawLayout:
    """The raw layout both `synth` and `download` write.

    root/
      videos/<video_id>.<ext>
      annotations/ava_activespeaker_<split>_v1.0/<video_id>-activespeaker.csv
      APES-<split>.csv
      ava_speech_file_names_v1.txt   (file_name,md5 of every video)
    """

    root: Path

    @property
    def videos_dir(self) -> Path:
        return self.root / "videos"

    @property
    def annotations_dir(self) -> Path:
        return self.root / "annotations"

    def ava_dir(self, split: str) -> Path:
        return self.annotations_dir / f"ava_activespeaker_{split}_v1.0"

    def ava_csv(self, split: str, video_id: str) -> Path:
        return self.ava_dir(split) / f"{video_id}-activespeaker.csv"

    def apes_csv(self, split: str) -> Path:
        return self.root / f"APES-{split}.csv"

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST_NAME

    def video_path(self, video_id: str) -> Path:
        """The one file videos/<video_id>.<ext>, whatever its extension."""
        for ext in VIDEO_EXTENSIONS:
            candidate = self.videos_dir / f"{video_id}{ext}"
            if candidate.exists():
                return candidate
        raise DataError(self.videos_dir / f"{video_id}.*",
                        f"no video file for video id {video_id!r} (looked for {', '.join(VIDEO_EXTENSIONS)})")
