"""Stage crop: cut every labelled face box out of its frame, streamed from ffmpeg, into per-video Parquet shards.

A box becomes pixels, is clipped to the frame, squared around its centre with a margin (the part of the
square outside the frame is black) and resized to size x size. Rows go out in frame order.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from stages.config import CropParams
from stages.errors import DataError
from stages.layout import RawLayout
from stages.progress import Progress, Silent
from stages.schemas import CROPS
from stages.shards import (FINGERPRINT_KEY, ShardWriter, is_complete, metadata, plan_paths, shard_path, shard_stats,
                           with_metadata)
from stages.video_io import VideoInfo, iter_frames
from stages.video_jobs import (MAX_SKIP_EXAMPLES, fingerprint, map_videos, merge_stats, remove_orphans,
                              resolve_workers)

ROWS_PER_GROUP = 2048
IMAGE_FORMAT = "raw_rgb_uint8"


def square_box(box: Sequence[float], width: int, height: int, margin: float) -> tuple[int, int, int] | None:
    """(left, top, side) in pixels of the square crop of a normalised box; None when the box has no area."""
    x1, y1, x2, y2 = (min(max(v, 0.0), 1.0) for v in box)
    left, right, top, bottom = x1 * width, x2 * width, y1 * height, y2 * height
    if right - left < 1.0 or bottom - top < 1.0:
        return None
    side = max(right - left, bottom - top) * (1.0 + 2.0 * margin)
    cx, cy = (left + right) / 2.0, (top + bottom) / 2.0
    whole = max(1, int(round(side)))
    return int(round(cx - whole / 2.0)), int(round(cy - whole / 2.0)), whole


def cut(frame: np.ndarray, left: int, top: int, side: int, size: int) -> np.ndarray:
    """The square [left, left+side) x [top, top+side) of `frame`, black outside it, resized to size x size."""
    height, width = frame.shape[:2]
    x0, y0, x1, y1 = max(left, 0), max(top, 0), min(left + side, width), min(top + side, height)
    if x0 == left and y0 == top and x1 == left + side and y1 == top + side:
        region = frame[top:top + side, left:left + side]
    else:
        region = np.zeros((side, side, 3), np.uint8)
        if x1 > x0 and y1 > y0:
            region[y0 - top:y1 - top, x0 - left:x1 - left] = frame[y0:y1, x0:x1]
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(region, (size, size), interpolation=interpolation)


def _crop_video(plan_file: Path, split: str, layout: RawLayout, out_dir: Path,
                params: CropParams) -> dict[str, Any]:
    plan = pq.read_table(plan_file)
    meta = metadata(plan.schema)
    video_id = plan_file.stem
    digest = fingerprint(meta.get(FINGERPRINT_KEY), params.size, params.margin, IMAGE_FORMAT)
    target = shard_path(out_dir, split, video_id)
    if is_complete(target, digest):
        return {**shard_stats(target), "resumed": 1}

    width, height, fps = int(meta["width"]), int(meta["height"]), float(meta["fps"])
    identity = plan["identity"].to_numpy(zero_copy_only=False)
    ambiguous = plan["ambiguous"].to_numpy()
    labelled = np.array([value is not None for value in identity])
    boxes = np.stack([plan[c].to_numpy() for c in ("x1", "y1", "x2", "y2")], axis=1)
    squares = [square_box(box, width, height, params.margin) if keep else None
               for box, keep in zip(boxes, labelled)]
    zero_area = [i for i, keep in enumerate(labelled) if keep and squares[i] is None]
    csv_name, lines = meta.get("csv", plan_file.name), plan["source_line"].to_pylist()
    stats: dict[str, Any] = {
        "videos": 1, "boxes": plan.num_rows,
        "skips": {"ambiguous": int(ambiguous.sum()), "no_identity": int((~labelled & ~ambiguous).sum()),
                  "zero_area": len(zero_area)},
        "skip_examples": [{"file": csv_name, "line": lines[i], "reason": "zero_area"}
                          for i in zero_area[:MAX_SKIP_EXAMPLES]],
    }
    rows = [i for i in np.argsort(plan["frame_index"].to_numpy(), kind="stable") if squares[i] is not None]
    stats["crops"] = len(rows)

    video = layout.video_path(video_id)
    info = VideoInfo(video, fps, width, height, None, True)
    frame_of = plan["frame_index"].to_numpy()
    keys = plan.select(["video_id", "split", "entity_id", "identity", "frame_timestamp", "label",
                        "x1", "y1", "x2", "y2"])
    schema = with_metadata(CROPS, {"crop_size": str(params.size), "crop_margin": repr(params.margin),
                                   "image_format": IMAGE_FORMAT, FINGERPRINT_KEY: digest})
    writer = ShardWriter(target, schema)
    try:
        group: list[int] = []
        images: list[bytes] = []
        position = 0
        for index, frame in iter_frames(info, np.unique(frame_of[rows]) if rows else []):
            while position < len(rows) and frame_of[rows[position]] == index:
                left, top, side = squares[rows[position]]
                images.append(cut(frame, left, top, side, params.size).tobytes())
                group.append(rows[position])
                position += 1
            if len(group) >= ROWS_PER_GROUP:
                _flush(writer, keys, group, images)
        if position != len(rows):
            raise DataError(video, f"decoded {position} of {len(rows)} planned crops")
        _flush(writer, keys, group, images)
        writer.close(stats)
    except BaseException as error:
        writer.abort(error)
        raise
    return {**stats, "resumed": 0}


def _flush(writer: ShardWriter, keys: pa.Table, group: list[int], images: list[bytes]) -> None:
    """Write the crops gathered so far as one row group."""
    if not group:
        return
    writer.write(keys.take(group).append_column("image", pa.array(images, pa.binary())))
    group.clear()
    images.clear()


def crop(raw_dir: str | Path, decoded_dir: str | Path, out_dir: str | Path, params: CropParams,
         splits: Sequence[str], progress: Progress | None = None) -> dict[str, Any]:
    """Crop every video planned by `decode`; returns the metrics written to metrics/crop.json."""
    progress = progress or Silent()
    layout, out_dir = RawLayout(Path(raw_dir)), Path(out_dir)
    began = time.perf_counter()
    jobs = []
    for split in splits:
        plans = plan_paths(decoded_dir, split)
        jobs.extend((split, plan) for plan in plans)
        remove_orphans(out_dir / split, {plan.stem for plan in plans})
    progress.start(len(jobs), "crop")
    per_video = map_videos(jobs, lambda job: _crop_video(job[1], job[0], layout, out_dir, params),
                           resolve_workers(params.workers), progress)
    seconds = time.perf_counter() - began
    merged = merge_stats(per_video)
    return {
        **merged,
        "splits": {split: sum(1 for s, _ in jobs if s == split) for split in splits},
        "crop_size": params.size,
        "seconds": round(seconds, 3),
        "crops_per_second": round(merged.get("crops", 0) / seconds, 1) if seconds else 0.0,
    }
