"""Person-search ranking metrics (paper section 4.2), vectorised per video, and their random baseline.

Every query tracklet ranks the other tracklets of its own video by squared Euclidean distance
(the same order as Euclidean distance); relevant = same identity. Per query: P@K, R@K and AP; the
mean over a video's queries, then the mean over videos. Conventions (docs/evaluation.md):

- a query with no positive in its video is skipped and counted (`skipped_queries`); a video with no
  evaluated query (e.g. a single tracklet) is left out of the mean and counted (`skipped_videos`);
- AP treats tied distances as one threshold, exactly as scikit-learn's `average_precision_score`;
- P@K and R@K read a stable sort on distance, ties broken by entity id (input order without ids);
- distances come from the Gram product; a query row where two distances lie within its rounding
  bound is recomputed as a direct sum of squared differences, so near-ties order as the exact values;
- P@K always divides by K, also when the gallery holds fewer than K tracklets (as trec_eval does).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from threadpoolctl import ThreadpoolController

KS_PRECISION = (1, 5, 10)
KS_RECALL = (10, 50, 100)
METRIC_KEYS = ("mAP", "P@1", "P@5", "P@10", "R@10", "R@50", "R@100")
_ROW_BLOCK = 256  # query rows per block: bounds memory on long videos


@functools.cache
def _blas_controller() -> ThreadpoolController:
    """Inspect the loaded BLAS libraries once (each inspection reads /proc)."""
    return ThreadpoolController()


def squared_distances(embeddings: np.ndarray) -> np.ndarray:
    """All pairwise squared Euclidean distances of one video's embeddings, in float64."""
    e = np.asarray(embeddings, dtype=np.float64)
    norms = np.einsum("ij,ij->i", e, e)
    # One BLAS thread: these matrices are small, and threads thrash badly on a shared CPU (20x measured).
    with _blas_controller().limit(limits=1, user_api="blas"):
        gram = e @ e.T
    d = norms[:, None] + norms[None, :] - 2.0 * gram
    np.maximum(d, 0.0, out=d)
    return _settle_near_ties(d, e, norms)


def _settle_near_ties(d: np.ndarray, e: np.ndarray, norms: np.ndarray) -> np.ndarray:
    """Recompute directly the rows whose order the Gram product's rounding could have changed.

    |d~ - d| <= 2 (dim + 2) eps (|a|^2 + |b|^2) for the Gram form, so two entries of row i closer
    than twice that bound may be swapped (or falsely tied). Those rows, rare outside exact ties,
    get sum((a - b)^2) in float64, the textbook value, so the ranking is that of the exact distances.
    """
    if len(d) < 2:
        return d
    bound = 4.0 * (e.shape[1] + 2) * np.finfo(np.float64).eps * (norms + norms.max())
    gaps = np.diff(np.sort(d, axis=1), axis=1)
    for row in np.flatnonzero((gaps <= bound[:, None]).any(axis=1)):
        d[row] = np.square(e - e[row]).sum(axis=1)
    return d


def query_metrics(distances: np.ndarray, relevant: np.ndarray) -> dict[str, np.ndarray]:
    """Per-query metrics as fractions, one row per query over its gallery (self already excluded)."""
    gallery = distances.shape[1]
    order = np.argsort(distances, axis=1, kind="stable")
    hits = np.take_along_axis(relevant, order, axis=1)
    sorted_d = np.take_along_axis(distances, order, axis=1)
    cum = np.cumsum(hits, axis=1, dtype=np.float64)
    positives = cum[:, -1]
    out: dict[str, np.ndarray] = {}
    for k in KS_PRECISION:
        out[f"P@{k}"] = cum[:, min(k, gallery) - 1] / k
    for k in KS_RECALL:
        out[f"R@{k}"] = cum[:, min(k, gallery) - 1] / positives
    # Tied distances form one threshold: every positive in a tie group gets the precision at the
    # group's last rank (scikit-learn's average_precision_score).
    position = np.arange(gallery)
    is_end = np.ones_like(hits, dtype=bool)
    is_end[:, :-1] = sorted_d[:, 1:] != sorted_d[:, :-1]
    end = np.where(is_end, position, gallery)
    end = np.minimum.accumulate(end[:, ::-1], axis=1)[:, ::-1]
    precision_at_end = np.take_along_axis(cum, end, axis=1) / (end + 1)
    out["mAP"] = (hits * precision_at_end).sum(axis=1) / positives
    return out


def _video_groups(video_ids: Sequence[str], entity_ids: Sequence[str] | None) -> list[np.ndarray]:
    """Row indices of each video, each sorted by entity id (the tie-break), videos in sorted order."""
    videos = np.asarray(video_ids, dtype=str)
    n = len(videos)
    if entity_ids is None:
        order = np.lexsort((np.arange(n), videos))
    else:
        entities = np.asarray(entity_ids, dtype=str)
        if len(entities) != n:
            raise ValueError(f"{len(entities)} entity ids for {n} tracklets")
        order = np.lexsort((np.arange(n), entities, videos))
    sorted_videos = videos[order]
    cuts = np.flatnonzero(sorted_videos[1:] != sorted_videos[:-1]) + 1
    return np.split(order, cuts) if n else []


def _identity_codes(identities: Sequence[str], n: int) -> np.ndarray:
    if len(identities) != n:
        raise ValueError(f"{len(identities)} identities for {n} tracklets")
    return np.unique(np.asarray(identities, dtype=str), return_inverse=True)[1].ravel()


def _aggregate(per_video: list[dict[str, float]], queries: int, skipped: int, skipped_videos: int) -> dict:
    if not per_video:
        raise ValueError("no query tracklet has a positive (another tracklet of its identity in its video)")
    result: dict = {key: float(np.mean([v[key] for v in per_video])) for key in METRIC_KEYS}
    result.update(videos=len(per_video), queries=queries, skipped_queries=skipped,
                  skipped_videos=skipped_videos)
    return result


@dataclass(frozen=True)
class VideoResult:
    """One video's evaluated queries: tracklet rows (in entity-id order) and per-query fractions."""

    rows: np.ndarray
    queries: np.ndarray
    metrics: dict[str, np.ndarray]


def per_video_queries(
    video_ids: Sequence[str],
    identities: Sequence[str],
    embeddings: np.ndarray,
    entity_ids: Sequence[str] | None = None,
) -> Iterator[VideoResult]:
    """Per-query metrics of every video; `queries` indexes `rows` and excludes queries without a positive."""
    embeddings = np.asarray(embeddings)
    n = len(video_ids)
    if embeddings.ndim != 2 or embeddings.shape[0] != n:
        raise ValueError(f"expected embeddings of shape ({n}, dim), got {embeddings.shape}")
    codes = _identity_codes(identities, n)
    for rows in _video_groups(video_ids, entity_ids):
        ident = codes[rows]
        same = ident[:, None] == ident[None, :]
        np.fill_diagonal(same, False)
        valid = np.flatnonzero(same.any(axis=1))
        metrics: dict[str, list[np.ndarray]] = {key: [] for key in METRIC_KEYS}
        if len(valid):
            distances = squared_distances(embeddings[rows])
            gallery_mask = ~np.eye(len(rows), dtype=bool)
            for start in range(0, len(valid), _ROW_BLOCK):
                block = valid[start:start + _ROW_BLOCK]
                mask = gallery_mask[block]
                gallery_d = distances[block][mask].reshape(len(block), -1)
                gallery_rel = same[block][mask].reshape(len(block), -1)
                for key, values in query_metrics(gallery_d, gallery_rel).items():
                    metrics[key].append(values)
        yield VideoResult(rows, valid, {key: np.concatenate(parts) if parts else np.zeros(0)
                                        for key, parts in metrics.items()})


def ranking_metrics(
    video_ids: Sequence[str],
    identities: Sequence[str],
    embeddings: np.ndarray,
    entity_ids: Sequence[str] | None = None,
) -> dict:
    """mAP, P@1/5/10 and R@10/50/100 in percent (mean per video, then over videos), with counts."""
    per_video: list[dict[str, float]] = []
    queries = skipped = skipped_videos = 0
    for video in per_video_queries(video_ids, identities, embeddings, entity_ids):
        skipped += len(video.rows) - len(video.queries)
        if len(video.queries) == 0:
            skipped_videos += 1
            continue
        queries += len(video.queries)
        per_video.append({key: 100.0 * float(values.mean()) for key, values in video.metrics.items()})
    return _aggregate(per_video, queries, skipped, skipped_videos)


def _expected_ap(gallery: np.ndarray, positives: np.ndarray) -> np.ndarray:
    """Expected AP of a uniformly random ranking of `gallery` items holding `positives` relevant ones.

    With rel_r the relevance at rank r: E[AP] = (1/P) sum_r E[rel_r * hits_r] / r
    = (1/g) * (H_g + (P-1)/(g-1) * (g - H_g)), H_g the g-th harmonic number (1 when g = 1).
    """
    g = gallery.astype(np.float64)
    p = positives.astype(np.float64)
    harmonic = np.array([np.sum(1.0 / np.arange(1, int(x) + 1)) for x in gallery])
    with np.errstate(divide="ignore", invalid="ignore"):
        value = (harmonic + (p - 1.0) / (g - 1.0) * (g - harmonic)) / g
    return np.where(g == 1, 1.0, value)


def random_metrics(video_ids: Sequence[str], identities: Sequence[str]) -> dict:
    """Exact expected metrics of a uniformly random ranking, aggregated like `ranking_metrics`."""
    n = len(video_ids)
    codes = _identity_codes(identities, n)
    per_video: list[dict[str, float]] = []
    queries = skipped = skipped_videos = 0
    for rows in _video_groups(video_ids, None):
        counts = np.bincount(codes[rows])[codes[rows]] - 1
        valid = counts > 0
        skipped += int((~valid).sum())
        if not valid.any():
            skipped_videos += 1
            continue
        queries += int(valid.sum())
        positives = counts[valid]
        gallery = np.full(len(positives), len(rows) - 1)
        values: dict[str, np.ndarray] = {"mAP": _expected_ap(gallery, positives)}
        for k in KS_PRECISION:
            values[f"P@{k}"] = positives * np.minimum(k, gallery) / (gallery * k)
        for k in KS_RECALL:
            values[f"R@{k}"] = np.minimum(k, gallery) / gallery
        per_video.append({key: 100.0 * float(v.mean()) for key, v in values.items()})
    return _aggregate(per_video, queries, skipped, skipped_videos)
