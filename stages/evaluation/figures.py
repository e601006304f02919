"""The paper's Fig. 6: easy and hard queries with their top-5 retrieved face crops (wrong ones framed red)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from matplotlib.figure import Figure

from stages.core.atomic import atomic_path
from stages.core.errors import DataError
from stages.evaluation.ranking import per_video_queries, squared_distances
from stages.media.crop_codec import decode_crops
from stages.media.shards import metadata

TOP = 5
RIGHT, WRONG, QUERY = "#2ca02c", "#d62728", "#1f77b4"


def _read_embeddings(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Video ids, entity ids, identities and vectors of an embeddings file written by `evaluate`."""
    if not path.is_file():
        raise DataError(path, "embeddings file not found (run `apes-cli evaluate` for this run)")
    table = pq.read_table(path)
    vectors = np.stack([np.asarray(v, np.float32) for v in table["embedding"].to_pylist()])
    return (np.asarray(table["video_id"].to_pylist()), np.asarray(table["entity_id"].to_pylist()),
            np.asarray(table["identity"].to_pylist()), vectors)


def pick_queries(video_ids: np.ndarray, identities: np.ndarray, vectors: np.ndarray, entity_ids: np.ndarray,
                 easy: int, hard: int) -> list[tuple[int, list[int], float]]:
    """(query row, top-5 rows, AP) of the `easy` best and `hard` worst queries, one per identity."""
    scored = []
    for video in per_video_queries(video_ids, identities, vectors, entity_ids):
        distances = squared_distances(vectors[video.rows])
        for i, q in enumerate(video.queries):
            gallery = np.delete(np.arange(len(video.rows)), q)
            order = gallery[np.argsort(distances[q, gallery], kind="stable")[:TOP]]
            scored.append((float(video.metrics["mAP"][i]), int(video.rows[q]), [int(video.rows[j]) for j in order]))
    scored.sort(key=lambda s: -s[0])
    chosen: list[tuple[int, list[int], float]] = []
    for candidates, count in ((scored, easy), (scored[::-1], hard)):
        used: set[str] = set()
        for ap, query, top in candidates:
            if len(used) == count:
                break
            if identities[query] not in used and all(query != c[0] for c in chosen):
                used.add(identities[query])
                chosen.append((query, top, ap))
    return chosen


def middle_crops(crops_dir: str | Path, video_ids: np.ndarray, entity_ids: np.ndarray,
                 rows: list[int]) -> dict[int, np.ndarray]:
    """The middle crop (by timestamp) of each wanted tracklet, read from the val crop shards."""
    crops: dict[int, np.ndarray] = {}
    for video in sorted({video_ids[r] for r in rows}):
        wanted = {entity_ids[r]: r for r in rows if video_ids[r] == video}
        path = Path(crops_dir) / "val" / f"{video}.parquet"
        if not path.is_file():
            raise DataError(path, "crop shard not found (run `apes-cli crop`)")
        table = pq.read_table(path, columns=["entity_id", "frame_timestamp", "image"],
                              filters=[("entity_id", "in", list(wanted))])
        table = table.sort_by([("entity_id", "ascending"), ("frame_timestamp", "ascending")])
        images = decode_crops(table["image"], metadata(pq.read_schema(path)), path)
        entities = np.asarray(table["entity_id"].to_pylist())
        for entity, row in wanted.items():
            where = np.flatnonzero(entities == entity)
            if len(where):
                crops[row] = images[where[len(where) // 2]]
    return crops


def retrieval_examples(embeddings_path: str | Path, crops_dir: str | Path, out_png: str | Path, title: str,
                       easy: int = 2, hard: int = 2) -> None:
    """Draw `easy` + `hard` query rows: the query crop, then its top-5 (green = same identity, red = not)."""
    video_ids, entity_ids, identities, vectors = _read_embeddings(Path(embeddings_path))
    chosen = pick_queries(video_ids, identities, vectors, entity_ids, easy, hard)
    if not chosen:
        raise DataError(embeddings_path, "no query has a positive in its video")
    crops = middle_crops(crops_dir, video_ids, entity_ids, [r for q, top, _ in chosen for r in [q, *top]])
    fig = Figure(figsize=(1.6 * (TOP + 1), 1.8 * len(chosen)))
    axes = fig.subplots(len(chosen), TOP + 1, squeeze=False)
    for line, (query, top, ap) in enumerate(chosen):
        panels = [(query, QUERY, f"query  AP {100 * ap:.0f}")]
        panels += [(r, RIGHT if identities[r] == identities[query] else WRONG, f"#{k + 1}") for k, r in enumerate(top)]
        for col, axis in enumerate(axes[line]):
            axis.set_xticks([])
            axis.set_yticks([])
            if col >= len(panels):
                axis.axis("off")
                continue
            row, colour, label = panels[col]
            axis.imshow(crops.get(row, np.zeros((8, 8, 3), np.uint8)))
            axis.set_title(label, fontsize=8)
            for spine in axis.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(4)
    fig.suptitle(f"{title}: top-{TOP} retrievals, easy (top) and hard (bottom) queries; red = wrong identity",
                 fontsize=9)
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
