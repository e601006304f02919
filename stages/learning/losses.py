"""The triplet loss of a run, composed once from its miner, margin and normalisation (pytorch-metric-learning
style): `TripletLoss(mining, margin, normalize, distinct_tracks)`.

Distances are plain Euclidean on the (optionally L2-normalised) embeddings. Miners return index triplets
(anchor, positive, negative) of a P x K batch; without a miner the batch rows are [anchors; positives; negatives].
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from stages.core.choices import Mining


def pairwise_distances(embeddings: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Euclidean distance matrix (n x n), with a safe gradient at zero distance."""
    squared = (embeddings.unsqueeze(1) - embeddings.unsqueeze(0)).pow(2).sum(-1)
    return squared.clamp_min(eps).sqrt() * (squared > eps)


def row_distances(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Euclidean distance of each row of `first` to the same row of `second`."""
    return (first - second).pow(2).sum(-1).clamp_min(1e-12).sqrt()


def hinge(d_ap: torch.Tensor, d_an: torch.Tensor, margin: float) -> torch.Tensor:
    """mean(relu(d(a, p) - d(a, n) + margin)): the paper's triplet loss over given distances."""
    return torch.relu(d_ap - d_an + margin).mean()


def split_triplets(embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows laid out as [anchors; positives; negatives] -> the three blocks."""
    n = embeddings.shape[0] // 3
    return embeddings[:n], embeddings[n:2 * n], embeddings[2 * n:3 * n]


def pair_masks(labels: torch.Tensor, tracks: torch.Tensor | None = None, groups: torch.Tensor | None = None,
               distinct_tracks: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Valid positive and negative pairs of a PK batch.

    positive: same label, not the same row, and (distinct_tracks) from another tracklet.
    negative: different label and (groups given) the same group, e.g. the same video for Within.
    """
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    positive = same & ~eye
    if distinct_tracks and tracks is not None:
        positive &= tracks.unsqueeze(0) != tracks.unsqueeze(1)
    negative = ~same
    if groups is not None:
        negative &= groups.unsqueeze(0) == groups.unsqueeze(1)
    return positive, negative


def batch_hard_miner(distances: torch.Tensor, positive: torch.Tensor,
                     negative: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per anchor with a positive and a negative: its farthest positive and nearest negative."""
    far = torch.finfo(distances.dtype).max
    hardest_positive = distances.masked_fill(~positive, -1.0).argmax(1)
    hardest_negative = distances.masked_fill(~negative, far).argmin(1)
    anchors = torch.nonzero(positive.any(1) & negative.any(1)).squeeze(1)
    return anchors, hardest_positive[anchors], hardest_negative[anchors]


def semi_hard_miner(distances: torch.Tensor, positive: torch.Tensor,
                    negative: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per (anchor, positive) pair: the nearest negative farther than the positive (FaceNet); if none,
    the farthest negative (TensorFlow's rule)."""
    anchors, positives = torch.nonzero(positive, as_tuple=True)
    d_ap = distances[anchors, positives].unsqueeze(1)
    d_an = distances[anchors]
    valid = negative[anchors]
    outside = valid & (d_an > d_ap)
    far = torch.finfo(distances.dtype).max
    nearest_outside = d_an.masked_fill(~outside, far).argmin(1)
    farthest = d_an.masked_fill(~valid, -1.0).argmax(1)
    negatives = torch.where(outside.any(1), nearest_outside, farthest)
    keep = valid.any(1)
    return anchors[keep], positives[keep], negatives[keep]


Miner = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
MINERS: dict[Mining, Miner] = {Mining.batch_hard: batch_hard_miner, Mining.semi_hard: semi_hard_miner}


class TripletLoss:
    """A run's loss: the margin, the L2 normalisation and the miner (none: plain triplets) bound in once.

    `distinct_tracks` (the sampling strategy's rule) keeps a mined positive off its anchor's own tracklet.
    """

    def __init__(self, mining: Mining | str = Mining.none, margin: float = 1.0, normalize: bool = False,
                 distinct_tracks: bool = True) -> None:
        self.mining, self.margin, self.normalize = Mining(mining), margin, normalize
        self.distinct_tracks = distinct_tracks
        self.miner = MINERS.get(self.mining)

    @property
    def mines(self) -> bool:
        """Whether batches must be P x K with labels (a miner picks the triplets in the batch)."""
        return self.miner is not None

    def settings(self) -> dict[str, object]:
        """What the loss was built from, for the run's metrics and resume signature."""
        return {"mining": str(self.mining), "margin": self.margin, "normalize": self.normalize}

    def of_embedding(self, embedding: torch.Tensor,
                     masks: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """The loss of one output: plain triplet rows, or (masks given) the mined triplets (0 when none)."""
        embedding = embedding.float()
        if self.normalize:
            embedding = F.normalize(embedding, dim=1)
        if masks is None:
            anchors, positives, negatives = split_triplets(embedding)
            return hinge(row_distances(anchors, positives), row_distances(anchors, negatives), self.margin)
        distances = pairwise_distances(embedding)
        a, p, n = self.miner(distances, *masks)
        if len(a) == 0:
            return distances.sum() * 0.0
        return hinge(distances[a, p], distances[a, n], self.margin)

    def __call__(self, outputs: dict[str, torch.Tensor], inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Sum of the losses of every output (face, voice and, cross-modal, joint) of one batch."""
        masks = None
        if self.mines:
            masks = pair_masks(inputs["labels"], inputs["tracks"], inputs.get("groups"), self.distinct_tracks)
        total = torch.zeros((), device=next(iter(outputs.values())).device)
        for embedding in outputs.values():
            total = total + self.of_embedding(embedding, masks)
        return total
