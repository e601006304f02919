"""Stage crop: cut every labelled face box out of its frame, streamed from ffmpeg, into per-video Parquet shards.

A box becomes pixels, is clipped to the frame, squared around its centre with a margin (the part of the
square outside the frame is black) and resized to size x size. Rows go out in frame order.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from stages.core.config import CropParams
from stages.core.errors import DataError
from stages.core.progress import Progress, Silent
from stages.core.schemas import CROPS
from stages.media.crop_codec import IMAGE_FORMATS, JPEG, encode_crops
from stages.media.face_crop import BLACK_YUV, resize_square, square_boxes, square_of
from stages.media.shards import (
    FINGERPRINT_KEY,
    ShardWriter,
    is_complete,
    metadata,
    shard_path,
    shard_stats,
    with_metadata,
)
from stages.media.video_io import Planes, VideoInfo, frame_times, iter_frames
from stages.media.video_jobs import (
    MAX_SKIP_EXAMPLES,
    fingerprint,
    map_videos,
    merge_stats,
    planned_jobs,
    resolve_workers,
)
from stages.rawdata.layout import RawLayout

ROWS_PER_GROUP = 2048


def cut(frame: Planes, left: int, top: int, side: int, size: int, out: np.ndarray | None = None) -> np.ndarray:
    """The RGB crop size x size of the square (even left, top, side), black outside the frame."""
    half = size // 2
    y = resize_square(square_of(frame.y, left, top, side, BLACK_YUV[0]), size)
    u = resize_square(square_of(frame.u, left // 2, top // 2, side // 2, BLACK_YUV[1]), half)
    v = resize_square(square_of(frame.v, left // 2, top // 2, side // 2, BLACK_YUV[2]), half)
    i420 = np.concatenate([y.reshape(-1), u.reshape(-1), v.reshape(-1)]).reshape(size * 3 // 2, size)
    return cv2.cvtColor(i420, cv2.COLOR_YUV2RGB_I420, dst=out)


class _Batch:
    """Crops gathered into one preallocated array, written as a row group when full."""

    def __init__(self, writer: ShardWriter, keys: pa.Table, size: int, image_format: str, quality: int) -> None:
        self.writer, self.keys, self.size = writer, keys, size
        self.image_format, self.quality = image_format, quality
        self.images = np.empty((ROWS_PER_GROUP, size, size, 3), np.uint8)
        self.rows: list[int] = []

    def add(self, row: int, frame: Planes, square: np.ndarray) -> None:
        """Cut one crop into the next slot; flush when the batch is full."""
        cut(frame, int(square[0]), int(square[1]), int(square[2]), self.size, self.images[len(self.rows)])
        self.rows.append(row)
        if len(self.rows) == ROWS_PER_GROUP:
            self.flush()

    def flush(self) -> None:
        """Write the gathered crops (one binary value per crop, raw or JPEG) as one row group."""
        count = len(self.rows)
        if not count:
            return
        images = encode_crops(self.images[:count].copy(), self.image_format, self.quality)
        self.writer.write(self.keys.take(self.rows).append_column("image", images))
        self.rows = []


def _crop_video(plan_file: Path, split: str, layout: RawLayout, out_dir: Path,
                params: CropParams) -> dict[str, Any]:
    """Crop one video (or reuse its complete shard); returns its counts."""
    plan = pq.read_table(plan_file)
    meta = metadata(plan.schema)
    video_id = plan_file.stem
    image_format = IMAGE_FORMATS[params.format]
    quality = params.quality if image_format == JPEG else 0
    digest = fingerprint(meta.get(FINGERPRINT_KEY), params.size, params.margin, image_format, quality, "yuv420 area v2")
    target = shard_path(out_dir, split, video_id)
    if is_complete(target, digest):
        return {**shard_stats(target), "resumed": 1}

    width, height, fps = int(meta["width"]), int(meta["height"]), float(meta["fps"])
    labelled = plan["identity"].is_valid().to_numpy(zero_copy_only=False)
    ambiguous = plan["ambiguous"].to_numpy(zero_copy_only=False)
    boxes = np.stack([plan[c].to_numpy() for c in ("x1", "y1", "x2", "y2")], axis=1)
    squares, has_area = square_boxes(boxes, width, height, params.margin)
    zero_area = np.flatnonzero(labelled & ~has_area)
    csv_name, lines = meta.get("csv", plan_file.name), plan["source_line"].to_numpy()
    stats: dict[str, Any] = {
        "videos": 1, "boxes": plan.num_rows,
        "skips": {"ambiguous": int(ambiguous.sum()), "no_identity": int((~labelled & ~ambiguous).sum()),
                  "zero_area": int(zero_area.size)},
        "skip_examples": [{"file": csv_name, "line": int(lines[i]), "reason": "zero_area"}
                          for i in zero_area[:MAX_SKIP_EXAMPLES]],
    }
    frame_of = plan["frame_index"].to_numpy()
    rows = [int(i) for i in np.argsort(frame_of, kind="stable") if labelled[i] and has_area[i]]
    stats["crops"] = len(rows)

    video = layout.video_path(video_id)
    info = VideoInfo(video, fps, width, height, None, True)
    keys = plan.select([name for name in CROPS.names if name != "image"])
    format_keys = {"image_format": image_format, **({"jpeg_quality": str(quality)} if quality else {})}
    schema = with_metadata(CROPS, {"crop_size": str(params.size), "crop_margin": repr(params.margin),
                                   **format_keys, FINGERPRINT_KEY: digest})
    writer = ShardWriter(target, schema)
    try:
        batch = _Batch(writer, keys, params.size, image_format, quality)
        position = 0
        for index, frame in iter_frames(info, np.unique(frame_of[rows]), frame_times(info)):
            while position < len(rows) and frame_of[rows[position]] == index:
                batch.add(rows[position], frame, squares[rows[position]])
                position += 1
        if position != len(rows):
            raise DataError(video, f"decoded {position} of {len(rows)} planned crops")
        batch.flush()
        writer.close(stats)
    except BaseException as error:
        writer.abort(error)
        raise
    return {**stats, "resumed": 0}


def run(settings: CropParams, raw_dir: str | Path, decoded_dir: str | Path, out_dir: str | Path,
        splits: Sequence[str], progress: Progress | None = None) -> dict[str, Any]:
    """Crop every video planned by `decode`; returns the stage metrics."""
    progress = progress or Silent()
    layout, out_dir = RawLayout(Path(raw_dir)), Path(out_dir)
    began = time.perf_counter()
    jobs = planned_jobs(decoded_dir, out_dir, splits)
    progress.start(len(jobs), "crop")
    opencv_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # OpenCV's threads cost more than they save on small crops; videos run in parallel
    try:
        per_video = map_videos(jobs, lambda job: _crop_video(job[1], job[0], layout, out_dir, settings),
                               resolve_workers(settings.workers), progress)
    finally:
        cv2.setNumThreads(opencv_threads)
    seconds = time.perf_counter() - began
    merged = merge_stats(per_video)
    return {
        **merged,
        "splits": {split: sum(1 for s, _ in jobs if s == split) for split in splits},
        "crop_size": settings.size,
        "crop_format": settings.format,
        "seconds": round(seconds, 3),
        "crops_per_second": round(merged.get("crops", 0) / seconds, 1) if seconds else 0.0,
    }
