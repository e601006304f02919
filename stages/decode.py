"""Stage decode: per video, map every annotated timestamp to its nearest frame and extract the annotated
window's audio as 16 kHz mono. Frames themselves are decoded later by `crop`, straight from the video.

Outputs under <out>/: audio/<split>/<video_id>.wav and plan/<split>/<video_id>.parquet (schema FRAME_PLAN, the
validated boxes plus frame_index; written last, so a plan marks a finished video).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from stages.core.atomic import atomic_path, write_parquet
from stages.core.config import DecodeParams
from stages.core.errors import DataError
from stages.core.progress import Progress, Silent
from stages.core.schemas import FRAME_PLAN
from stages.media.shards import (
    AUDIO_DIR,
    FINGERPRINT_KEY,
    PLAN_DIR,
    STATS_KEY,
    audio_path,
    is_complete,
    plan_path,
    shard_stats,
    with_metadata,
)
from stages.media.video_io import VideoInfo, nearest_frames, probe, read_audio, write_wav
from stages.media.video_jobs import (
    file_digest,
    fingerprint,
    map_videos,
    merge_stats,
    params_digest,
    remove_orphans,
    resolve_workers,
)
from stages.rawdata.annotations import iter_split
from stages.rawdata.layout import RawLayout


@dataclasses.dataclass(frozen=True)
class _Job:
    """One video of one split, its validated boxes and the digest of its split's APES file."""

    split: str
    video_id: str
    csv_path: Path
    boxes: pa.Table
    apes_digest: str


def _check_in_video(job: _Job, info: VideoInfo, stamps: np.ndarray) -> None:
    """Every annotated timestamp must fall inside the video."""
    if info.duration is None:
        return
    beyond = np.flatnonzero(stamps > info.duration + 0.5 / info.fps)
    if beyond.size:
        i = int(beyond[0])
        line = int(job.boxes["source_line"][i].as_py())
        raise DataError(job.csv_path, f"timestamp {stamps[i]:.3f} s is after the end of {info.path.name} "
                                      f"({info.duration:.3f} s)", line, "frame_timestamp")


def _decode_video(job: _Job, layout: RawLayout, out_dir: Path, params: DecodeParams) -> dict[str, Any]:
    """Plan and extract the audio of one video (or reuse its complete plan); returns its counts."""
    video = layout.video_path(job.video_id)
    digest = fingerprint(file_digest(job.csv_path), job.apes_digest, video.name, video.stat().st_size,
                         params_digest(params))
    target, wav = plan_path(out_dir, job.split, job.video_id), audio_path(out_dir, job.split, job.video_id)
    if is_complete(target, digest) and wav.is_file():
        return {**shard_stats(target), "resumed": 1}

    info = probe(video)
    stamps = job.boxes["frame_timestamp"].to_numpy()
    _check_in_video(job, info, stamps)
    indices, _ = nearest_frames(info, stamps)
    start = max(0.0, float(stamps.min()) - params.audio_margin_seconds)
    end = float(stamps.max()) + params.audio_margin_seconds
    if info.duration is not None:
        end = min(end, info.duration)
    samples = read_audio(info, start, end - start, params.sample_rate)
    with atomic_path(wav) as tmp:
        write_wav(tmp, samples, params.sample_rate)

    stats = {"videos": 1, "boxes": job.boxes.num_rows, "frames": int(np.unique(indices).size),
             "audio_seconds": samples.size / params.sample_rate, "resumed": 0}
    plan = job.boxes.append_column(FRAME_PLAN.field("frame_index"), pa.array(indices, pa.int32()))
    schema = with_metadata(FRAME_PLAN, {
        "fps": repr(info.fps), "width": str(info.width), "height": str(info.height),
        "duration": repr(info.duration), "video": video.name, "csv": str(job.csv_path),
        "audio": f"{AUDIO_DIR}/{job.split}/{wav.name}", "audio_start": repr(start),
        "audio_samples": str(samples.size), "sample_rate": str(params.sample_rate),
        FINGERPRINT_KEY: digest, STATS_KEY: {k: v for k, v in stats.items() if k != "resumed"},
    })
    write_parquet(target, plan.cast(schema))
    return stats


def _jobs(layout: RawLayout, splits: Sequence[str], expected: dict[str, set[str]]) -> Iterator[_Job]:
    """Validated boxes of every video, one at a time, noting each video id in `expected`."""
    for split in splits:
        apes_digest = file_digest(layout.apes_csv(split)) if layout.apes_csv(split).is_file() else ""
        for video_id, csv_path, boxes in iter_split(layout, split):
            expected[split].add(video_id)
            yield _Job(split, video_id, csv_path, boxes, apes_digest)


def run(settings: DecodeParams, raw_dir: str | Path, out_dir: str | Path, splits: Sequence[str],
        progress: Progress | None = None) -> dict[str, Any]:
    """Decode every video of `splits`; returns the stage metrics."""
    progress = progress or Silent()
    layout, out_dir = RawLayout(Path(raw_dir)), Path(out_dir)
    began = time.perf_counter()
    total = sum(len(list(layout.ava_dir(s).glob("*.csv"))) for s in splits if layout.ava_dir(s).is_dir())
    progress.start(total, "decode")
    expected: dict[str, set[str]] = {split: set() for split in splits}
    per_video = map_videos(_jobs(layout, splits, expected),
                           lambda job: _decode_video(job, layout, out_dir, settings),
                           resolve_workers(settings.workers), progress)
    for split in splits:
        remove_orphans(out_dir / PLAN_DIR / split, expected[split])
        remove_orphans(out_dir / AUDIO_DIR / split, expected[split], ".wav")
    seconds = time.perf_counter() - began
    merged = merge_stats(per_video)
    merged.pop("skip_examples")
    merged.pop("skips")
    return {
        **merged,
        "splits": {split: len(expected[split]) for split in splits},
        "seconds": round(seconds, 3),
        "videos_per_second": round(merged.get("videos", 0) / seconds, 3) if seconds else 0.0,
        "boxes_per_second": round(merged.get("boxes", 0) / seconds, 1) if seconds else 0.0,
    }
