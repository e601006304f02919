"""Benchmark: ranking evaluation at the real APES scale against a scikit-learn per-query loop.

Data: 31,000 tracklets over 144 videos (60-450 per video), 512-d float32 embeddings drawn as an
identity centre plus noise, 6-40 identities per video with a skewed (Zipf-like) share of tracklets.
Baseline: for each query, NumPy distances to the other tracklets of its video, scikit-learn's
average_precision_score for AP and a stable sort for P@K / R@K. It runs on a seeded subsample of
queries and its time is scaled by (all queries / sampled queries); the per-query values of the
subsample must equal the vectorised ones (max abs difference printed).
Run: .venv/bin/python -m bench.evaluate
"""

from __future__ import annotations

import time

import numpy as np
from sklearn.metrics import average_precision_score

from stages.evaluation.ranking import METRIC_KEYS, per_video_queries, ranking_metrics

TRACKLETS = 31_000
VIDEOS = 144
DIM = 512
SAMPLED_QUERIES = 1_500


def synthetic_dataset(seed: int = 0) -> tuple[list[str], list[str], list[str], np.ndarray]:
    """Video ids, entity ids, identities and embeddings with a realistic identity structure."""
    rng = np.random.default_rng(seed)
    weights = rng.uniform(60, 450, VIDEOS)
    sizes = np.maximum(2, np.round(weights / weights.sum() * TRACKLETS)).astype(int)
    sizes[-1] += TRACKLETS - sizes.sum()
    video_ids, entity_ids, identities, blocks = [], [], [], []
    for v, size in enumerate(sizes):
        people = int(rng.integers(6, 41))
        share = 1.0 / np.arange(1, people + 1) ** 1.1
        who = rng.choice(people, size=size, p=share / share.sum())
        centres = rng.uniform(0.1, 0.3) * rng.normal(size=(people, DIM)).astype(np.float32)
        blocks.append(centres[who] + rng.normal(size=(size, DIM)).astype(np.float32))
        video_ids += [f"video{v:03d}"] * size
        entity_ids += [f"video{v:03d}_{i:04d}" for i in range(size)]
        identities += [f"video{v:03d}:p{p}" for p in who]
    return video_ids, entity_ids, identities, np.concatenate(blocks)


def sklearn_query(vectors: np.ndarray, identities: np.ndarray, entities: np.ndarray, q: int) -> dict[str, float]:
    """One query against the other tracklets of its video, the plain way."""
    gallery = np.delete(np.arange(len(vectors)), q)
    distances = ((vectors[gallery].astype(np.float64) - vectors[q].astype(np.float64)) ** 2).sum(axis=1)
    relevant = (identities[gallery] == identities[q]).astype(int)
    order = np.lexsort((entities[gallery], distances))
    ranked = relevant[order]
    out = {"mAP": average_precision_score(relevant, -distances)}
    for k in (1, 5, 10):
        out[f"P@{k}"] = ranked[:k].sum() / k
    for k in (10, 50, 100):
        out[f"R@{k}"] = ranked[:k].sum() / relevant.sum()
    return out


def rows() -> list[tuple[str, str, float]]:
    """(figure, baseline, ratio) rows for `python -m bench`."""
    video_ids, entity_ids, identities, vectors = synthetic_dataset()
    started = time.perf_counter()
    metrics = ranking_metrics(video_ids, identities, vectors, entity_ids)
    fast_s = time.perf_counter() - started

    fast_per_query: dict[int, dict[str, float]] = {}
    for video in per_video_queries(video_ids, identities, vectors, entity_ids):
        for i, q in enumerate(video.queries):
            fast_per_query[int(video.rows[q])] = {k: float(v[i]) for k, v in video.metrics.items()}
    all_queries = np.array(sorted(fast_per_query))
    sample = np.random.default_rng(1).choice(all_queries, size=SAMPLED_QUERIES, replace=False)
    videos = np.asarray(video_ids)
    ident, ents = np.asarray(identities), np.asarray(entity_ids)
    members = {v: np.flatnonzero(videos == v) for v in np.unique(videos)}
    max_diff = 0.0
    started = time.perf_counter()
    for q in sample:
        rows_v = members[videos[q]]
        local = int(np.searchsorted(rows_v, q))
        slow = sklearn_query(vectors[rows_v], ident[rows_v], ents[rows_v], local)
        max_diff = max(max_diff, max(abs(slow[k] - fast_per_query[int(q)][k]) for k in METRIC_KEYS))
    slow_s = (time.perf_counter() - started) * len(all_queries) / SAMPLED_QUERIES
    if max_diff > 1e-12:
        raise AssertionError(f"vectorised and scikit-learn per-query metrics differ by {max_diff}")
    figure = (f"evaluate {TRACKLETS} tracklets / {VIDEOS} videos / {DIM}-d ({metrics['queries']} queries, "
              f"mAP {metrics['mAP']:.2f}): {fast_s:.2f} s")
    baseline = (f"scikit-learn per-query loop: {slow_s:.1f} s (scaled from {SAMPLED_QUERIES} sampled queries; "
                f"max per-query difference {max_diff:.1e})")
    return [(figure, baseline, slow_s / fast_s)]


if __name__ == "__main__":
    for figure, baseline, ratio in rows():
        print(f"{figure}\n  vs {baseline}\n  ratio: {ratio:.1f}x")
