"""Seeded samplers that draw training batches from a tracklet table under one sampling strategy.

Every batch is a pure function of (seed, epoch, step), so a resumed or distributed run draws the
same batches. The rules themselves (which anchors, positives and negatives) live in the strategy
objects of stages.learning.strategies; a sampler only lays them out as a batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stages.learning.pool import STREAMS, Pool, Tracks, uniform_index
from stages.learning.strategies import Strategy


@dataclass(frozen=True)
class Batch:
    """Item rows per stream plus what the loss needs.

    Plain triplets (no labels): rows are [anchors; positives; negatives]. P x K (labels): labels, tracks and
    groups per row, for a miner.
    """

    items: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    tracks: np.ndarray | None = None
    groups: np.ndarray | None = None

    @property
    def labelled(self) -> bool:
        """A P x K batch, whose triplets the loss mines."""
        return self.labels is not None

    def shard(self, rank: int, world: int) -> Batch:
        """This rank's share (triplets stay whole; PK rows are split in identity-aligned blocks)."""
        if world == 1:
            return self
        n = len(next(iter(self.items.values())))
        if not self.labelled:
            b = n // 3
            lo, hi = b * rank // world, b * (rank + 1) // world
            rows = np.concatenate([np.arange(lo, hi) + k * b for k in range(3)])
        else:
            rows = np.flatnonzero(self.labels % world == rank)  # whole labels, so each rank keeps its positives
        pick = (lambda a: None if a is None else a[rows])
        return Batch({k: v[rows] for k, v in self.items.items()}, pick(self.labels),
                     pick(self.tracks), pick(self.groups))


def _rng(seed: int, epoch: int, step: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, step])


class _Base:
    """Shared setup: the modality's pool of tracklets and the strategy's anchors in it."""

    def __init__(self, tracks: Tracks, strategy: Strategy, modality: str, batch_size: int, seed: int) -> None:
        self.strategy, self.streams = strategy, STREAMS[modality]
        self.pool = Pool(tracks, self.streams)
        self.batch_size, self.seed = batch_size, seed
        self.anchors = strategy.anchors(self.pool)
        if len(self.anchors) == 0:
            raise ValueError(f"no tracklet can be an anchor for strategy '{strategy.name}' "
                             f"({len(self.pool.members)} tracklets with {modality} items)")


class TripletSampler(_Base):
    """Plain triplets: `batch_size` rows per step, a third each of anchors, positives and negatives."""

    def draw(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """n (anchor, positive, negative) tracklet triples under the strategy rule."""
        anchors = self.anchors[uniform_index(rng, np.full(n, len(self.anchors)))]
        positives = self.strategy.positives(rng, self.pool, anchors)
        return anchors, positives, self.strategy.negatives(rng, self.pool, anchors)

    def batch(self, epoch: int, step: int) -> Batch:
        """The step's batch: anchors, then positives, then negatives, each with one item per stream."""
        rng = _rng(self.seed, epoch, step)
        anchors, positives, negatives = self.draw(rng, max(1, self.batch_size // 3))
        items = {}
        for stream in self.streams:
            a = self.pool.items(rng, anchors, stream)
            p = self.strategy.positive_items(rng, self.pool, positives, stream, a)
            items[stream] = np.concatenate([a, p, self.pool.items(rng, negatives, stream)])
        return Batch(items, tracks=np.concatenate([anchors, positives, negatives]))


class PKSampler(_Base):
    """P labels x K items per step for in-batch mining; the strategy says what stands behind a label and
    which rows a negative must share a group with."""

    def __init__(self, tracks: Tracks, strategy: Strategy, modality: str, batch_size: int, seed: int,
                 k: int) -> None:
        super().__init__(tracks, strategy, modality, batch_size, seed)
        self.k = k
        self.p = max(2, batch_size // k)  # labels per step

    def batch(self, epoch: int, step: int) -> Batch:
        """The step's P x K rows, with labels, tracklets and (within) video groups."""
        rng = _rng(self.seed, epoch, step)
        rows = [np.resize(rng.permutation(members), self.k)  # distinct tracklets first, cycling when fewer than K
                for members in self.strategy.label_members(rng, self.pool, self.anchors, self.p)]
        tracklets = np.concatenate(rows)
        items = {stream: self.strategy.label_items(rng, self.pool, tracklets, stream, self.k)
                 for stream in self.streams}
        labels = np.repeat(np.arange(len(rows)), self.k)
        return Batch(items, labels, tracklets, self.strategy.negative_groups(self.pool, tracklets))
