"""Triplet loss pieces: distances, masks, miners and the mined loss, checked against brute force."""

from __future__ import annotations

import itertools

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stages.learning import losses


def test_triplet_margin_loss_matches_torch_euclidean() -> None:
    torch.manual_seed(0)
    a, p, n = torch.randn(3, 16, 8).unbind(0)
    expected = torch.nn.TripletMarginLoss(margin=1.0, p=2, eps=0.0)(a, p, n)
    assert torch.allclose(losses.TripletLoss(margin=1.0).of_embedding(torch.cat([a, p, n])), expected, atol=1e-5)


def test_pairwise_distances_match_cdist_and_have_finite_gradient_at_zero() -> None:
    torch.manual_seed(1)
    x = torch.randn(6, 4)
    x = torch.cat([x, x[:1]]).requires_grad_()  # a duplicate row: zero distance off the diagonal
    d = losses.pairwise_distances(x)
    assert torch.allclose(d, torch.cdist(x, x), atol=1e-5)
    d.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_pair_masks_follow_labels_tracks_and_groups() -> None:
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    tracks = torch.tensor([5, 5, 6, 7, 8, 9])
    groups = torch.tensor([0, 0, 0, 0, 0, 1])
    pos, neg = losses.pair_masks(labels, tracks, groups, distinct_tracks=True)
    assert not pos[0, 1]  # same tracklet is not a positive
    assert pos[0, 2] and pos[3, 4] and not pos[0, 0]
    assert neg[0, 3] and not neg[0, 5]  # the other group's row is no negative
    pos_weak, _ = losses.pair_masks(labels, tracks, None, distinct_tracks=False)
    assert pos_weak[0, 1]


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 4), st.integers(2, 3), st.integers(0, 10_000))
def test_batch_hard_equals_brute_force_maximum_violation(p: int, k: int, seed: int) -> None:
    torch.manual_seed(seed)
    labels = torch.arange(p).repeat_interleave(k)
    x = torch.randn(p * k, 3)
    d = losses.pairwise_distances(x)
    pos, neg = losses.pair_masks(labels)
    mined = losses.batch_hard_miner(d, pos, neg)
    per_anchor = []
    for i in range(p * k):
        worst = max(d[i, j] - d[i, n] + 0.5 for j, n in itertools.product(range(p * k), repeat=2)
                    if pos[i, j] and neg[i, n])
        per_anchor.append(torch.relu(worst))
    loss = losses.TripletLoss("batch_hard", margin=0.5, distinct_tracks=False)
    assert torch.allclose(loss.of_embedding(x, (pos, neg)), torch.stack(per_anchor).mean(), atol=1e-5)
    a, pp, nn = mined
    assert (labels[a] == labels[pp]).all() and (labels[a] != labels[nn]).all()


def test_semi_hard_picks_nearest_negative_beyond_the_positive_else_the_farthest() -> None:
    # 1-d points: anchor 0 at 0.0, its positive at 1.0; negatives at 0.5 (hard), 1.2 (semi-hard), 3.0 (easy)
    x = torch.tensor([[0.0], [1.0], [0.5], [1.2], [3.0]])
    labels = torch.tensor([0, 0, 1, 2, 3])
    d = losses.pairwise_distances(x)
    pos, neg = losses.pair_masks(labels)
    a, p, n = losses.semi_hard_miner(d, pos, neg)
    first = (a == 0) & (p == 1)
    assert n[first].tolist() == [3]
    # from anchor 1 (at 1.0) the positive is at distance 1.0; negatives at 0.5, 0.2, 2.0 -> 2.0 (index 4)
    second = (a == 1) & (p == 0)
    assert n[second].tolist() == [4]
    x_close = torch.tensor([[0.0], [5.0], [0.5]])  # no negative beyond the positive: take the farthest one
    d2 = losses.pairwise_distances(x_close)
    pos2, neg2 = losses.pair_masks(torch.tensor([0, 0, 1]))
    a2, _, n2 = losses.semi_hard_miner(d2, pos2, neg2)
    assert n2[(a2 == 0)].tolist() == [2]


def test_mined_loss_without_triplets_is_zero_and_differentiable() -> None:
    x = torch.randn(3, 4, requires_grad=True)
    inputs = {"labels": torch.tensor([0, 1, 2]), "tracks": torch.tensor([0, 1, 2])}  # no positives at all
    loss = losses.TripletLoss("batch_hard", margin=1.0)({"face": x}, inputs)
    loss.backward()
    assert loss.item() == 0.0 and x.grad is not None


def test_the_margin_is_bound_into_the_loss_and_normalize_bounds_the_distances() -> None:
    torch.manual_seed(2)
    rows = torch.randn(12, 5) * 10
    loose, tight = losses.TripletLoss(margin=2.0), losses.TripletLoss(margin=0.5)
    assert loose.of_embedding(rows) > tight.of_embedding(rows)  # same triplets, larger margin: larger hinge
    assert losses.TripletLoss(margin=0.5, normalize=True).of_embedding(rows) <= 2.5  # unit rows: d <= 2
    assert losses.TripletLoss("semi_hard").settings() == {"mining": "semi_hard", "margin": 1.0, "normalize": False}
