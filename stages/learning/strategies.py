"""The sampling strategies of paper 4.2 (Table 2) as small objects, one rule each.

Each strategy owns which tracklets can anchor, how a positive and a negative are drawn, which
tracklets stand behind the labels of a P x K batch, and whether positives must come from another
tracklet. The samplers (stages.learning.samplers) and the Table 2 statistics
(stages.learning.tracklets.sampling_statistics) both ask these objects, so they cannot disagree.

- within: positive = another tracklet of the anchor's identity; negative = a tracklet of another identity
  in the anchor's video.
- across: positive as within; negative = a tracklet of another identity from any video.
- weak:   positive = another item (frame/snippet) of the anchor's own tracklet; negative = any other
  tracklet (identity labels are not used, so a negative may share the anchor's identity).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from stages.core.choices import Sampling
from stages.learning.pool import Pool, uniform_index


class Strategy:
    """A sampling rule; subclasses fill in the bags and the draws."""

    name: ClassVar[Sampling]
    clean: ClassVar[bool] = True  # negatives never share the anchor's identity
    distinct_tracks: ClassVar[bool] = True  # a positive comes from another tracklet than its anchor

    def bag_sizes(self, pool: Pool) -> tuple[np.ndarray, np.ndarray]:
        """Per tracklet: how many positive and negative tracklets the rule gives it."""
        raise NotImplementedError

    def anchors(self, pool: Pool) -> np.ndarray:
        """The members with at least one positive and one negative."""
        positives, negatives = self.bag_sizes(pool)
        eligible = (positives > 0) & (negatives > 0)
        return pool.members[eligible[pool.members]]

    def positives(self, rng: np.random.Generator, pool: Pool, anchors: np.ndarray) -> np.ndarray:
        """One positive tracklet per anchor."""
        raise NotImplementedError

    def negatives(self, rng: np.random.Generator, pool: Pool, anchors: np.ndarray) -> np.ndarray:
        """One negative tracklet per anchor."""
        raise NotImplementedError

    def positive_items(self, rng: np.random.Generator, pool: Pool, positives: np.ndarray, stream: str,
                       anchor_items: np.ndarray) -> np.ndarray:
        """The positives' item rows of a plain triplet batch."""
        return pool.items(rng, positives, stream)

    def label_members(self, rng: np.random.Generator, pool: Pool, anchors: np.ndarray, p: int) -> list[np.ndarray]:
        """The tracklets behind each of a P x K batch's (at most) P labels."""
        raise NotImplementedError

    def label_items(self, rng: np.random.Generator, pool: Pool, tracklets: np.ndarray, stream: str,
                    k: int) -> np.ndarray:
        """The item rows of a P x K batch's tracklets (K rows per label)."""
        return pool.items(rng, tracklets, stream)

    def negative_groups(self, pool: Pool, tracklets: np.ndarray) -> np.ndarray | None:
        """Per row of a P x K batch, the group a negative must share (None: any row of another label)."""
        return None


class Weak(Strategy):
    """Another frame of the anchor's own tracklet against any other tracklet; no identity labels."""

    name = Sampling.weak
    clean = False
    distinct_tracks = False

    def bag_sizes(self, pool: Pool) -> tuple[np.ndarray, np.ndarray]:
        most_items = np.max([pool.tracks.count(stream) for stream in pool.streams], axis=0)
        return (most_items >= 2).astype(np.int64), np.full(len(pool.tracks), len(pool.members) - 1)

    def positives(self, rng: np.random.Generator, pool: Pool, anchors: np.ndarray) -> np.ndarray:
        return anchors.copy()

    def negatives(self, rng: np.random.Generator, pool: Pool, anchors: np.ndarray) -> np.ndarray:
        draws = uniform_index(rng, np.full(len(anchors), len(pool.members) - 1))
        return pool.members[draws + (draws >= np.searchsorted(pool.members, anchors))]

    def positive_items(self, rng: np.random.Generator, pool: Pool, positives: np.ndarray, stream: str,
                       anchor_items: np.ndarray) -> np.ndarray:
        return pool.items(rng, positives, stream, avoid=anchor_items)

    def label_members(self, rng: np.random.Generator, pool: Pool, anchors: np.ndarray, p: int) -> list[np.ndarray]:
        """Each label is one anchor tracklet."""
        return [np.array([t]) for t in rng.choice(anchors, size=min(p, len(anchors)), replace=False)]

    def label_items(self, rng: np.random.Generator, pool: Pool, tracklets: np.ndarray, stream: str,
                    k: int) -> np.ndarray:
        """K different items of the tracklet when it has K, from a random offset."""
        start, count = pool.tracks.start(stream)[tracklets], pool.tracks.count(stream)[tracklets]
        labels = len(tracklets) // k
        spread = np.tile(np.arange(k), labels)
        return start + (spread + rng.integers(0, 1 << 30, labels).repeat(k)) % count


class _Labelled(Strategy):
    """Positives are other tracklets of the anchor's identity; negatives are of another identity."""

    def positives(self, rng: np.random.Generator, pool: Pool, anchors: np.ndarray) -> np.ndarray:
        positives = pool.same_identity(rng, anchors)
        redo = positives == anchors
        while redo.any():
            positives[redo] = pool.same_identity(rng, anchors[redo])
            redo = positives == anchors
        return positives

    def negatives(self, rng: np.random.Generator, pool: Pool, anchors: np.ndarray) -> np.ndarray:
        identity = pool.tracks.identity
        negatives = self._candidates(rng, pool, anchors)
        redo = np.flatnonzero(identity[negatives] == identity[anchors])
        while len(redo):
            negatives[redo] = self._candidates(rng, pool, anchors[redo])
            redo = redo[identity[negatives[redo]] == identity[anchors[redo]]]
        return negatives

    def _candidates(self, rng: np.random.Generator, pool: Pool, anchors: np.ndarray) -> np.ndarray:
        """One negative candidate per anchor, redrawn while it shares the anchor's identity."""
        raise NotImplementedError

    def _positive_count(self, pool: Pool) -> np.ndarray:
        return pool.identity_size[pool.tracks.identity] - 1


class Within(_Labelled):
    """Negatives from the anchor's own video; P x K batches fill video by video, negatives masked to it."""

    name = Sampling.within

    def bag_sizes(self, pool: Pool) -> tuple[np.ndarray, np.ndarray]:
        tracks = pool.tracks
        counts: dict[tuple[int, int], int] = {}
        pairs = list(zip(tracks.video[pool.members].tolist(), tracks.identity[pool.members].tolist()))
        for pair in pairs:
            counts[pair] = counts.get(pair, 0) + 1
        identity_in_video = np.zeros(len(tracks), np.int64)
        for t, pair in zip(pool.members, pairs):
            identity_in_video[t] = counts[pair]
        return self._positive_count(pool), pool.video_size[tracks.video] - identity_in_video

    def _candidates(self, rng: np.random.Generator, pool: Pool, anchors: np.ndarray) -> np.ndarray:
        return pool.same_video(rng, anchors)

    def label_members(self, rng: np.random.Generator, pool: Pool, anchors: np.ndarray, p: int) -> list[np.ndarray]:
        """Identities of whole videos, in random order, until P labels."""
        groups: list[np.ndarray] = []
        for video in rng.permutation(np.flatnonzero(pool.video_size > 0)):
            for identity in rng.permutation(np.unique(pool.tracks.identity[pool.video_members(video)])):
                if len(groups) == p:
                    return groups
                groups.append(pool.identity_members(identity))
        return groups

    def negative_groups(self, pool: Pool, tracklets: np.ndarray) -> np.ndarray | None:
        return pool.tracks.video[tracklets]


class Across(_Labelled):
    """Negatives from any video."""

    name = Sampling.across

    def bag_sizes(self, pool: Pool) -> tuple[np.ndarray, np.ndarray]:
        same_identity = pool.identity_size[pool.tracks.identity]
        return same_identity - 1, len(pool.members) - same_identity

    def _candidates(self, rng: np.random.Generator, pool: Pool, anchors: np.ndarray) -> np.ndarray:
        return pool.any_member(rng, len(anchors))

    def label_members(self, rng: np.random.Generator, pool: Pool, anchors: np.ndarray, p: int) -> list[np.ndarray]:
        """P random identities."""
        identities = np.flatnonzero(pool.identity_size > 0)
        return [pool.identity_members(i) for i in rng.choice(identities, size=min(p, len(identities)), replace=False)]


STRATEGY_RULES: dict[Sampling, Strategy] = {rules.name: rules for rules in (Weak(), Within(), Across())}


def strategy_named(name: Sampling | str) -> Strategy:
    """The rules of a sampling choice (weak, within, across)."""
    if name not in STRATEGY_RULES:
        raise ValueError(f"unknown strategy {name!r}, expected one of {', '.join(STRATEGY_RULES)}")
    return STRATEGY_RULES[Sampling(name)]
