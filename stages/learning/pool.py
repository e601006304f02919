"""The tracklets a modality can train on: their item rows per stream and their identity and video groups.

Tracklets own contiguous item rows (crops, mel snippets) in the in-memory store; a `Pool` keeps the
tracklets that carry every stream of the modality and indexes them by identity and by video, which is
all the sampling strategies (stages.learning.strategies) need to draw from.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STREAMS = {"face": ("crops",), "voice": ("mels",), "crossmodal": ("crops", "mels")}


@dataclass(frozen=True)
class Tracks:
    """Per tracklet: video and identity codes, and its item rows (start, count) per stream."""

    video: np.ndarray
    identity: np.ndarray
    crop_start: np.ndarray
    crop_count: np.ndarray
    mel_start: np.ndarray
    mel_count: np.ndarray

    def __len__(self) -> int:
        return len(self.video)

    def start(self, stream: str) -> np.ndarray:
        """First item row of each tracklet in the stream."""
        return self.crop_start if stream == "crops" else self.mel_start

    def count(self, stream: str) -> np.ndarray:
        """Item rows of each tracklet in the stream."""
        return self.crop_count if stream == "crops" else self.mel_count


def uniform_index(rng: np.random.Generator, sizes: np.ndarray) -> np.ndarray:
    """One uniform integer in [0, size) per entry (sizes >= 1)."""
    return np.minimum((rng.random(len(sizes)) * sizes).astype(np.int64), sizes - 1)


def _groups(codes: np.ndarray, members: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CSR lists: for each code, the members carrying it (sorted)."""
    order = members[np.argsort(codes[members], kind="stable")]
    counts = np.bincount(codes[members], minlength=codes.max() + 1 if len(codes) else 0)
    return order, np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


class Pool:
    """The members (tracklets with items in every stream) grouped by identity and by video."""

    def __init__(self, tracks: Tracks, streams: tuple[str, ...]) -> None:
        self.tracks, self.streams = tracks, streams
        has_items = np.ones(len(tracks), bool)
        for stream in streams:
            has_items &= tracks.count(stream) > 0
        self.members = np.flatnonzero(has_items)
        self.by_identity, self.identity_ptr = _groups(tracks.identity, self.members)
        self.by_video, self.video_ptr = _groups(tracks.video, self.members)
        self.identity_size = np.diff(self.identity_ptr)
        self.video_size = np.diff(self.video_ptr)

    def identity_members(self, identity: int) -> np.ndarray:
        """The members of one identity."""
        return self.by_identity[self.identity_ptr[identity]:self.identity_ptr[identity + 1]]

    def video_members(self, video: int) -> np.ndarray:
        """The members of one video."""
        return self.by_video[self.video_ptr[video]:self.video_ptr[video + 1]]

    def same_identity(self, rng: np.random.Generator, tracklets: np.ndarray) -> np.ndarray:
        """A uniform member of each tracklet's identity (possibly the tracklet itself)."""
        return self._pick(rng, self.identity_ptr, self.by_identity, self.tracks.identity[tracklets])

    def same_video(self, rng: np.random.Generator, tracklets: np.ndarray) -> np.ndarray:
        """A uniform member of each tracklet's video (possibly the tracklet itself)."""
        return self._pick(rng, self.video_ptr, self.by_video, self.tracks.video[tracklets])

    def any_member(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """n uniform members."""
        return self.members[uniform_index(rng, np.full(n, len(self.members)))]

    def items(self, rng: np.random.Generator, tracklets: np.ndarray, stream: str,
              avoid: np.ndarray | None = None) -> np.ndarray:
        """One random item row of each tracklet; with `avoid`, a different row when the tracklet has two."""
        start, count = self.tracks.start(stream)[tracklets], self.tracks.count(stream)[tracklets]
        if avoid is None:
            return start + uniform_index(rng, count)
        offset = avoid - start
        shifted = uniform_index(rng, np.maximum(count - 1, 1))
        other = np.where(count >= 2, shifted + (shifted >= offset), offset)
        return start + other

    @staticmethod
    def _pick(rng: np.random.Generator, ptr: np.ndarray, grouped: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """A uniform member of group `key` for each key."""
        lo, size = ptr[keys], ptr[keys + 1] - ptr[keys]
        return grouped[lo + uniform_index(rng, size)]
