"""Ranking metrics against scikit-learn and a naive per-query loop, including ties and edge cases."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score

from stages.evaluation.ranking import METRIC_KEYS, query_metrics, random_metrics, ranking_metrics


def _naive_query(relevant_in_rank_order: np.ndarray, positives: int) -> dict[str, float]:
    """P@K and R@K of one ranked list, the textbook way."""
    out = {}
    for k in (1, 5, 10):
        out[f"P@{k}"] = relevant_in_rank_order[:k].sum() / k
    for k in (10, 50, 100):
        out[f"R@{k}"] = relevant_in_rank_order[:k].sum() / positives
    return out


def naive_metrics(video_ids, identities, embeddings, entity_ids):
    """One query at a time: scikit-learn AP on negated distances, P@K/R@K from a sorted list."""
    per_video, queries, skipped = [], 0, 0
    for video in sorted(set(video_ids)):
        rows = [i for i, v in enumerate(video_ids) if v == video]
        scores = []
        for q in rows:
            gallery = [i for i in rows if i != q]
            rel = np.array([identities[i] == identities[q] for i in gallery], dtype=int)
            if rel.sum() == 0:
                skipped += 1
                continue
            dist = [float(((np.asarray(embeddings[i], float) - np.asarray(embeddings[q], float)) ** 2).sum())
                    for i in gallery]
            ranked = sorted(range(len(gallery)), key=lambda j: (dist[j], entity_ids[gallery[j]]))
            metrics = _naive_query(rel[ranked], int(rel.sum()))
            metrics["mAP"] = average_precision_score(rel, -np.array(dist))
            scores.append(metrics)
        if scores:
            queries += len(scores)
            per_video.append({k: 100 * np.mean([s[k] for s in scores]) for k in METRIC_KEYS})
    return ({k: np.mean([v[k] for v in per_video]) for k in METRIC_KEYS}, len(per_video), queries, skipped)


def _assert_matches_naive(video_ids, identities, embeddings, entity_ids):
    got = ranking_metrics(video_ids, identities, embeddings, entity_ids)
    want, videos, queries, skipped = naive_metrics(video_ids, identities, embeddings, entity_ids)
    for key in METRIC_KEYS:
        assert got[key] == pytest.approx(want[key], abs=1e-9), key
    assert (got["videos"], got["queries"], got["skipped_queries"]) == (videos, queries, skipped)


@st.composite
def tracklet_sets(draw, integer: bool):
    """Several videos of tracklets; small integer embeddings make exact distance ties common."""
    n = draw(st.integers(2, 40))
    dim = draw(st.integers(1, 4))
    video_ids = draw(st.lists(st.sampled_from(["v0", "v1", "v2"]), min_size=n, max_size=n))
    identities = [f"{v}-p{draw(st.integers(0, 3))}" for v in video_ids]
    if integer:
        values = draw(st.lists(st.integers(0, 2), min_size=n * dim, max_size=n * dim))
    else:
        values = draw(st.lists(st.floats(-3, 3, allow_nan=False, width=32), min_size=n * dim, max_size=n * dim))
    embeddings = np.array(values, dtype=np.float32).reshape(n, dim)
    entity_ids = draw(st.permutations([f"e{i:03d}" for i in range(n)]))
    return video_ids, identities, embeddings, entity_ids


@settings(max_examples=40, deadline=None)
@given(tracklet_sets(integer=True))
def test_matches_sklearn_and_naive_loop_with_ties(case):
    video_ids, identities, _, _ = case
    if not any(identities.count(x) > 1 for x in identities):
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _assert_matches_naive(*case)


@settings(max_examples=25, deadline=None)
@given(tracklet_sets(integer=False))
def test_matches_sklearn_and_naive_loop_on_floats(case):
    video_ids, identities, _, _ = case
    if not any(identities.count(x) > 1 for x in identities):
        return
    _assert_matches_naive(*case)


@pytest.mark.parametrize("embeddings", [
    [[0.0], [2.0], [1.04e-16]],  # Gram product: 4 - 4.4e-16 vs 4; direct: both round to 4, a tie
    [[1e8, 0.0], [1e8, 1.0], [1e8, -1.0], [1e8, 1.0 + 2 ** -20]],  # large norms, tiny distances
])
def test_near_ties_rank_as_the_direct_distances(embeddings):
    embeddings = np.array(embeddings, dtype=np.float32)
    n = len(embeddings)
    for identities in itertools.product("ab", repeat=n):
        if len(set(identities)) == 2 or n < 4:
            _assert_matches_naive(["v"] * n, list(identities), embeddings, [f"e{i}" for i in range(n)])


def test_larger_random_video_matches_naive():
    rng = np.random.default_rng(3)
    n = 300  # crosses the 256-row block and K = 100
    video_ids = ["a"] * 180 + ["b"] * 120
    identities = [f"{v}{rng.integers(0, 6)}" for v in video_ids]
    centres = {x: rng.normal(size=16) for x in set(identities)}
    embeddings = np.stack([centres[x] + rng.normal(size=16) for x in identities])
    _assert_matches_naive(video_ids, identities, embeddings, [f"t{i}" for i in range(n)])


def test_reference_ap_check_cases():
    # REFERENCE.md section 5; a distance is a negated score.
    check = query_metrics(-np.array([[0.2, 0.3, 0.5]]), np.array([[1, 0, 1]]))["mAP"][0]
    assert check == pytest.approx(0.8333, abs=1e-4)
    assert query_metrics(-np.array([[0.5, 0.5]]), np.array([[1, 0]]))["mAP"][0] == 0.5
    assert query_metrics(-np.array([[0.5, 0.5]]), np.array([[0, 1]]))["mAP"][0] == 0.5


def test_ties_break_by_entity_id_for_precision():
    # Query "q0" sees two tracklets at the same distance; the entity id decides which is first.
    emb = np.array([[0.0], [1.0], [-1.0]])
    first_positive = ranking_metrics(["v"] * 3, ["a", "a", "b"], emb, ["q0", "e1", "e2"])
    first_negative = ranking_metrics(["v"] * 3, ["a", "a", "b"], emb, ["q0", "e2", "e1"])
    # Only q0 and its positive are queries; the positive's own query is identical in both.
    assert first_positive["P@1"] - first_negative["P@1"] == pytest.approx(50.0)
    assert first_positive["mAP"] == first_negative["mAP"]


def test_precision_divides_by_k_when_gallery_is_smaller():
    got = ranking_metrics(["v"] * 3, ["a"] * 3, np.zeros((3, 2)))
    assert got["P@1"] == 100.0
    assert got["P@5"] == pytest.approx(100 * 2 / 5)
    assert got["P@10"] == pytest.approx(100 * 2 / 10)
    assert got["R@10"] == 100.0


def test_skips_queries_without_positive_and_single_tracklet_videos():
    video_ids = ["solo", "v", "v", "v", "w", "w"]
    identities = ["s", "a", "a", "b", "c", "d"]
    got = ranking_metrics(video_ids, identities, np.array([[0.0], [0.0], [0.1], [5.0], [0.0], [1.0]]))
    assert got["skipped_queries"] == 1 + 1 + 2
    assert got["queries"] == 2
    assert got["videos"] == 1
    assert got["skipped_videos"] == 2
    assert got["mAP"] == 100.0


def test_no_query_with_positive_is_an_error():
    with pytest.raises(ValueError, match="no query tracklet has a positive"):
        ranking_metrics(["v", "v"], ["a", "b"], np.zeros((2, 3)))


def test_mean_per_video_then_over_videos():
    # Video "big" has many perfect queries, "small" one pair in the wrong order: videos weigh equally.
    big = ranking_metrics(["big"] * 4, ["a", "a", "b", "b"], np.array([[0.0], [0.1], [5.0], [5.1]]))
    small = ranking_metrics(["s"] * 3, ["a", "b", "a"], np.array([[0.0], [1.0], [2.0]]))
    both = ranking_metrics(["big"] * 4 + ["s"] * 3, ["a", "a", "b", "b", "a", "b", "a"],
                           np.array([[0.0], [0.1], [5.0], [5.1], [0.0], [1.0], [2.0]]))
    assert both["mAP"] == pytest.approx((big["mAP"] + small["mAP"]) / 2)


def _exhaustive_random(identities: list[str]) -> dict[str, float]:
    """Expected metrics of one video under every permutation of each query's gallery."""
    sums = dict.fromkeys(METRIC_KEYS, 0.0)
    valid = 0
    for q, ident in enumerate(identities):
        rel = np.array([identities[i] == ident for i in range(len(identities)) if i != q], dtype=int)
        if rel.sum() == 0:
            continue
        valid += 1
        perms = list(itertools.permutations(range(len(rel))))
        for perm in perms:
            ranked = rel[list(perm)]
            metrics = _naive_query(ranked, int(rel.sum()))
            metrics["mAP"] = average_precision_score(ranked, -np.arange(len(ranked)))
            for key in METRIC_KEYS:
                sums[key] += metrics[key] / len(perms)
    return {key: 100 * value / valid for key, value in sums.items()}


@pytest.mark.parametrize("identities", [["a", "a"], ["a", "a", "b"], ["a", "a", "a", "b", "b", "c"]])
def test_random_baseline_equals_exhaustive_expectation(identities):
    got = random_metrics(["v"] * len(identities), identities)
    want = _exhaustive_random(identities)
    for key in METRIC_KEYS:
        assert got[key] == pytest.approx(want[key], abs=1e-9), key


def test_random_baseline_with_large_gallery_matches_sampled_rankings():
    rng = np.random.default_rng(0)
    identities = [f"p{rng.integers(0, 5)}" for _ in range(150)]
    exact = random_metrics(["v"] * 150, identities)
    draws = [ranking_metrics(["v"] * 150, identities, rng.normal(size=(150, 8))) for _ in range(40)]
    for key in ("mAP", "P@10", "R@100"):
        sampled = np.mean([d[key] for d in draws])
        assert sampled == pytest.approx(exact[key], abs=1.5), key
    assert exact["R@100"] == pytest.approx(100 * 100 / 149)
