"""Triplet losses and in-batch miners as small composable pieces (pytorch-metric-learning style).

Distances are plain Euclidean on the embeddings given; L2-normalise before calling for the cosine-like
setting. Miners return index triplets (anchor, positive, negative); the loss reduces over them.
"""

from __future__ import annotations

import torch


def pairwise_distances(embeddings: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Euclidean distance matrix (n x n), with a safe gradient at zero distance."""
    squared = (embeddings.unsqueeze(1) - embeddings.unsqueeze(0)).pow(2).sum(-1)
    return squared.clamp_min(eps).sqrt() * (squared > eps)


def triplet_margin_loss(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                        margin: float) -> torch.Tensor:
    """mean(relu(d(a, p) - d(a, n) + margin)) with Euclidean d, the paper's loss."""
    d_ap = (anchor - positive).pow(2).sum(-1).clamp_min(1e-12).sqrt()
    d_an = (anchor - negative).pow(2).sum(-1).clamp_min(1e-12).sqrt()
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


def mined_triplet_loss(distances: torch.Tensor, triplets: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                       margin: float) -> torch.Tensor:
    """mean(relu(d(a, p) - d(a, n) + margin)) over mined index triplets (0 when none were mined)."""
    a, p, n = triplets
    if len(a) == 0:
        return distances.sum() * 0.0
    return torch.relu(distances[a, p] - distances[a, n] + margin).mean()


MINERS = {"batch_hard": batch_hard_miner, "semi_hard": semi_hard_miner}  # train.mining -> miner
