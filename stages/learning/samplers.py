"""Seeded samplers that draw training batches from a tracklet table, one strategy rule each.

Every batch is a pure function of (seed, epoch, step), so a resumed or distributed run draws the
same batches. Tracklets own contiguous item rows (crops, mel snippets) in the in-memory store.

Rules (paper section 4.2, Table 2):
- within: positive = another tracklet of the anchor's identity; negative = a tracklet of another identity
  in the anchor's video.
- across: positive as within; negative = a tracklet of another identity from any video.
- weak:   positive = another item (frame/snippet) of the anchor's own tracklet; negative = any other
  tracklet (identity labels are not used, so a negative may share the anchor's identity).
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
        return self.crop_start if stream == "crops" else self.mel_start

    def count(self, stream: str) -> np.ndarray:
        return self.crop_count if stream == "crops" else self.mel_count


@dataclass(frozen=True)
class Batch:
    """Item rows per stream plus what the loss needs.

    kind 'triplets': rows are [anchors; positives; negatives]. kind 'pk': labels/tracks/groups per row.
    """

    kind: str
    items: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    tracks: np.ndarray | None = None
    groups: np.ndarray | None = None
    distinct_tracks: bool = True

    def shard(self, rank: int, world: int) -> Batch:
        """This rank's share (triplets stay whole; PK rows are split in identity-aligned blocks)."""
        if world == 1:
            return self
        n = len(next(iter(self.items.values())))
        if self.kind == "triplets":
            b = n // 3
            lo, hi = b * rank // world, b * (rank + 1) // world
            rows = np.concatenate([np.arange(lo, hi) + k * b for k in range(3)])
        else:
            rows = np.flatnonzero(self.labels % world == rank)  # whole labels, so each rank keeps its positives
        pick = (lambda a: None if a is None else a[rows])
        return Batch(self.kind, {k: v[rows] for k, v in self.items.items()}, pick(self.labels),
                     pick(self.tracks), pick(self.groups), self.distinct_tracks)


def _rng(seed: int, epoch: int, step: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, step])


def _uniform_index(rng: np.random.Generator, sizes: np.ndarray) -> np.ndarray:
    """One uniform integer in [0, size) per entry (sizes >= 1)."""
    return np.minimum((rng.random(len(sizes)) * sizes).astype(np.int64), sizes - 1)


def _groups(codes: np.ndarray, members: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CSR lists: for each code, the members carrying it (sorted)."""
    order = members[np.argsort(codes[members], kind="stable")]
    counts = np.bincount(codes[members], minlength=codes.max() + 1 if len(codes) else 0)
    return order, np.concatenate([[0], np.cumsum(counts)])


class _Base:
    """Shared setup: which tracklets carry the modality's items, and the identity/video groups."""

    def __init__(self, tracks: Tracks, strategy: str, modality: str, batch_size: int, seed: int) -> None:
        if strategy not in ("within", "across", "weak"):
            raise ValueError(f"unknown strategy {strategy!r}")
        self.tracks, self.strategy, self.streams = tracks, strategy, STREAMS[modality]
        self.batch_size, self.seed = batch_size, seed
        has_items = np.ones(len(tracks), bool)
        for stream in self.streams:
            has_items &= tracks.count(stream) > 0
        self.members = np.flatnonzero(has_items)
        self.by_identity, self.identity_ptr = _groups(tracks.identity, self.members)
        self.by_video, self.video_ptr = _groups(tracks.video, self.members)
        self.identity_size = np.diff(self.identity_ptr)
        video_size = np.diff(self.video_ptr)
        same_identity = self.identity_size[tracks.identity]
        if strategy == "weak":
            most_items = np.max([tracks.count(s) for s in self.streams], axis=0)
            ok = (most_items >= 2) & (len(self.members) >= 2)
        elif strategy == "within":
            ok = (same_identity >= 2) & (video_size[tracks.video] - self._identity_in_video() > 0)
        else:
            ok = (same_identity >= 2) & (len(self.members) - same_identity > 0)
        self.anchors = self.members[ok[self.members]]
        if len(self.anchors) == 0:
            raise ValueError(f"no tracklet can be an anchor for strategy '{strategy}' "
                             f"({len(self.members)} tracklets with {modality} items)")

    def _identity_in_video(self) -> np.ndarray:
        """Per tracklet: how many tracklets of its identity its video holds (identities live in one video)."""
        counts: dict[tuple[int, int], int] = {}
        pairs = list(zip(self.tracks.video[self.members].tolist(), self.tracks.identity[self.members].tolist()))
        for pair in pairs:
            counts[pair] = counts.get(pair, 0) + 1
        out = np.zeros(len(self.tracks), np.int64)
        for t, pair in zip(self.members, pairs):
            out[t] = counts[pair]
        return out

    def _items(self, rng: np.random.Generator, tracklets: np.ndarray, stream: str,
               avoid: np.ndarray | None = None) -> np.ndarray:
        """One random item row of each tracklet; with `avoid`, a different row when the tracklet has two."""
        start, count = self.tracks.start(stream)[tracklets], self.tracks.count(stream)[tracklets]
        if avoid is None:
            return start + _uniform_index(rng, count)
        offset = avoid - start
        shifted = _uniform_index(rng, np.maximum(count - 1, 1))
        other = np.where(count >= 2, shifted + (shifted >= offset), offset)
        return start + other

    def _pick(self, rng: np.random.Generator, ptr: np.ndarray, pool: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """A uniform member of group `key` for each key."""
        lo, size = ptr[keys], ptr[keys + 1] - ptr[keys]
        return pool[lo + _uniform_index(rng, size)]


class TripletSampler(_Base):
    """Plain triplets: `batch_size` rows per step, a third each of anchors, positives and negatives."""

    def draw(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """n (anchor, positive, negative) tracklet triples under the strategy rule."""
        tracks = self.tracks
        anchors = self.anchors[_uniform_index(rng, np.full(n, len(self.anchors)))]
        if self.strategy == "weak":
            positives = anchors.copy()
            draws = _uniform_index(rng, np.full(n, len(self.members) - 1))
            position = np.searchsorted(self.members, anchors)
            return anchors, positives, self.members[draws + (draws >= position)]
        positives = self._pick(rng, self.identity_ptr, self.by_identity, tracks.identity[anchors])
        redo = positives == anchors
        while redo.any():
            positives[redo] = self._pick(rng, self.identity_ptr, self.by_identity, tracks.identity[anchors[redo]])
            redo = positives == anchors
        if self.strategy == "within":
            pick = (lambda rows: self._pick(rng, self.video_ptr, self.by_video, tracks.video[anchors[rows]]))
        else:
            pick = (lambda rows: self.members[_uniform_index(rng, np.full(len(rows), len(self.members)))])
        negatives = pick(np.arange(n))
        redo = np.flatnonzero(tracks.identity[negatives] == tracks.identity[anchors])
        while len(redo):
            negatives[redo] = pick(redo)
            redo = redo[tracks.identity[negatives[redo]] == tracks.identity[anchors[redo]]]
        return anchors, positives, negatives

    def batch(self, epoch: int, step: int) -> Batch:
        """The step's batch: anchors, then positives, then negatives, each with one item per stream."""
        rng = _rng(self.seed, epoch, step)
        anchors, positives, negatives = self.draw(rng, max(1, self.batch_size // 3))
        items = {}
        for stream in self.streams:
            a = self._items(rng, anchors, stream)
            p = self._items(rng, positives, stream, avoid=a if self.strategy == "weak" else None)
            items[stream] = np.concatenate([a, p, self._items(rng, negatives, stream)])
        return Batch("triplets", items, tracks=np.concatenate([anchors, positives, negatives]))


class PKSampler(_Base):
    """P labels x K items per step for in-batch mining; the label is the identity (within/across) or the
    tracklet (weak). Within batches fill from whole videos and negatives are masked to the same video."""

    def __init__(self, tracks: Tracks, strategy: str, modality: str, batch_size: int, seed: int, k: int) -> None:
        super().__init__(tracks, strategy, modality, batch_size, seed)
        self.k = k
        self.p = max(2, batch_size // k)  # labels per step

    def _labels_for_step(self, rng: np.random.Generator) -> list[np.ndarray]:
        """The tracklets behind each of the step's P labels."""
        if self.strategy == "weak":
            chosen = rng.choice(self.anchors, size=min(self.p, len(self.anchors)), replace=False)
            return [np.array([t]) for t in chosen]
        identity_ids = np.flatnonzero(self.identity_size > 0)
        if self.strategy == "across":
            chosen = rng.choice(identity_ids, size=min(self.p, len(identity_ids)), replace=False)
            return [self.by_identity[self.identity_ptr[i]:self.identity_ptr[i + 1]] for i in chosen]
        groups: list[np.ndarray] = []
        for video in rng.permutation(np.flatnonzero(np.diff(self.video_ptr) > 0)):
            members = self.by_video[self.video_ptr[video]:self.video_ptr[video + 1]]
            for identity in rng.permutation(np.unique(self.tracks.identity[members])):
                if len(groups) == self.p:
                    return groups
                groups.append(self.by_identity[self.identity_ptr[identity]:self.identity_ptr[identity + 1]])
        return groups

    def batch(self, epoch: int, step: int) -> Batch:
        """The step's P x K rows, with labels, tracklets and (within) video groups."""
        rng = _rng(self.seed, epoch, step)
        rows: list[np.ndarray] = []
        labels: list[int] = []
        for label, members in enumerate(self._labels_for_step(rng)):
            order = rng.permutation(members)
            rows.append(np.resize(order, self.k))  # distinct tracklets first, cycling when fewer than K
            labels += [label] * self.k
        tracklets = np.concatenate(rows)
        items = {}
        for stream in self.streams:
            if self.strategy == "weak":
                start, count = self.tracks.start(stream)[tracklets], self.tracks.count(stream)[tracklets]
                spread = np.tile(np.arange(self.k), len(rows))
                offset = (spread + rng.integers(0, 1 << 30, len(rows)).repeat(self.k)) % count
                items[stream] = start + offset  # K different items of the tracklet when it has K
            else:
                items[stream] = self._items(rng, tracklets, stream)
        groups = self.tracks.video[tracklets] if self.strategy == "within" else None
        return Batch("pk", items, np.asarray(labels), tracklets, groups, distinct_tracks=self.strategy != "weak")
