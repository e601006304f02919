"""Stage mel: log-mel spectrograms of short voice snippets under each face track's audible speech.

Only SPEAKING_AUDIBLE runs get snippets: the cross-modal model is trained and evaluated on Seen & Heard
(in the paper, Seen is face-only). A run covers its first timestamp to its last plus one box interval;
snippets start every `snippet_hop_seconds`; a run shorter than one snippet gets one snippet centred on it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from stages.core.config import MelParams
from stages.core.errors import DataError
from stages.core.progress import Progress, Silent
from stages.core.schemas import MELS
from stages.core.threads import torch_threads
from stages.media.audio_features import LogMel, log_mel_at, snippet_frames, snippet_samples
from stages.media.shards import (
    FINGERPRINT_KEY,
    ShardWriter,
    is_complete,
    metadata,
    shard_path,
    shard_stats,
    with_metadata,
)
from stages.media.video_io import read_wav
from stages.media.video_jobs import fingerprint, map_videos, merge_stats, params_digest, planned_jobs, resolve_workers

SPEECH = "SPEAKING_AUDIBLE"
DEFAULT_BOX_INTERVAL = 0.05  # AVA annotates about 20 boxes per second


@dataclass(frozen=True)
class Segment:
    """One run of audible speech of a face track, in seconds from the start of the video."""

    entity_id: str
    identity: str | None
    start: float
    end: float


def speech_segments(plan: pa.Table) -> list[Segment]:
    """SPEAKING_AUDIBLE runs of every track, tracks in order of first appearance, runs in time order."""
    entities = plan["entity_id"].to_pylist()
    identities = plan["identity"].to_pylist()
    stamps = plan["frame_timestamp"].to_numpy()
    speaking = np.asarray(plan["label"].to_pylist(), dtype=object) == SPEECH
    rows_of: dict[str, list[int]] = {}
    for row, entity in enumerate(entities):
        rows_of.setdefault(entity, []).append(row)
    segments = []
    for entity, rows in rows_of.items():
        rows = sorted(rows, key=lambda r: stamps[r])
        times = stamps[rows]
        interval = float(np.median(np.diff(times))) if len(rows) > 1 else DEFAULT_BOX_INTERVAL
        run_start = None
        for position, row in enumerate(rows):
            if speaking[row] and run_start is None:
                run_start = position
            if run_start is not None and (position == len(rows) - 1 or not speaking[rows[position + 1]]):
                segments.append(Segment(entity, identities[row], float(times[run_start]),
                                        float(times[position]) + interval))
                run_start = None
    return segments


def snippet_starts(segment: Segment, length: float, hop: float) -> list[float]:
    """Start times of the snippets of one segment (one centred snippet when the segment is shorter)."""
    span = segment.end - segment.start
    if span < length:
        return [(segment.start + segment.end) / 2.0 - length / 2.0]
    count = int(np.floor((span - length) / hop + 1e-9)) + 1
    return [segment.start + k * hop for k in range(count)]


@lru_cache(maxsize=4)
def _log_mel(params: MelParams, sample_rate: int) -> LogMel:
    """One transform per setting, shared by every video (its forward pass keeps no state)."""
    return LogMel(params, sample_rate)


def _mel_video(plan_file: Path, split: str, decoded_dir: Path, out_dir: Path,
               params: MelParams) -> dict[str, Any]:
    """Snippets and log-mels of one video (or reuse its complete shard); returns its counts."""
    plan = pq.read_table(plan_file)
    meta = metadata(plan.schema)
    video_id = plan_file.stem
    digest = fingerprint(meta.get(FINGERPRINT_KEY), params_digest(params), "log-mel v2")
    target = shard_path(out_dir, split, video_id)
    if is_complete(target, digest):
        return {**shard_stats(target), "resumed": 1}

    wav = decoded_dir / meta["audio"]
    audio, rate = read_wav(wav)
    if audio.size == 0:
        raise DataError(wav, "zero-length audio")
    audio_start = float(meta["audio_start"])
    length = snippet_samples(params, rate)

    segments = speech_segments(plan)
    kept = [s for s in segments if s.identity is not None]
    starts, owners = [], []
    short = shifted = 0
    for index, segment in enumerate(kept):
        times = snippet_starts(segment, params.snippet_seconds, params.snippet_hop_seconds)
        short += segment.end - segment.start < params.snippet_seconds
        for start in times:
            offset = int(round((start - audio_start) * rate))
            fitted = min(max(offset, 0), max(audio.size - length, 0))
            shifted += fitted != offset
            starts.append(fitted)
            owners.append(index)
    tracks = {e for e, i in zip(plan["entity_id"].to_pylist(), plan["identity"].to_pylist()) if i is not None}
    stats: dict[str, Any] = {
        "videos": 1, "tracks": len(tracks), "heard_tracks": len({s.entity_id for s in kept}),
        "segments": len(kept), "short_segments": short, "snippets": len(starts), "shifted_into_audio": shifted,
        "skips": {"segments_without_identity": len(segments) - len(kept)},
    }

    schema = with_metadata(MELS, {
        "n_mels": str(params.n_mels), "frames": str(snippet_frames(params, rate)), "sample_rate": str(rate),
        "snippet_seconds": repr(params.snippet_seconds), "hop_length": str(params.hop_length),
        FINGERPRINT_KEY: digest,
    })
    transform = _log_mel(params, rate)
    padded = np.concatenate([audio, np.zeros(max(0, length - audio.size), np.float32)])
    writer = ShardWriter(target, schema)
    try:
        for first in range(0, len(starts), params.batch_size):
            batch = starts[first:first + params.batch_size]
            mels = log_mel_at(transform, padded, np.asarray(batch), length)
            rows = [kept[owner] for owner in owners[first:first + params.batch_size]]
            writer.write(pa.table({
                "video_id": [video_id] * len(batch),
                "split": [split] * len(batch),
                "entity_id": [r.entity_id for r in rows],
                "identity": [r.identity for r in rows],
                "start": [audio_start + s / rate for s in batch],
                "label": [SPEECH] * len(batch),
                "mel": [m.tobytes() for m in mels],
            }))
        writer.close(stats)
    except BaseException as error:
        writer.abort(error)
        raise
    return {**stats, "resumed": 0}


def run(settings: MelParams, decoded_dir: str | Path, out_dir: str | Path, splits: Sequence[str],
        progress: Progress | None = None) -> dict[str, Any]:
    """Snippets and log-mels for every video decoded by `decode`; returns the stage metrics."""
    progress = progress or Silent()
    decoded_dir, out_dir = Path(decoded_dir), Path(out_dir)
    began = time.perf_counter()
    jobs = planned_jobs(decoded_dir, out_dir, splits)
    progress.start(len(jobs), "mel")
    # One torch thread per worker: on these small FFTs OpenMP threads lose more to waiting than they
    # gain (2 threads ran 2-5x slower than 1 on a busy 2-core machine); videos give the parallelism.
    with torch_threads(1):
        per_video = map_videos(jobs, lambda job: _mel_video(job[1], job[0], decoded_dir, out_dir, settings),
                               resolve_workers(settings.workers), progress)
    seconds = time.perf_counter() - began
    merged = merge_stats(per_video)
    merged.pop("skip_examples")
    return {
        **merged,
        "splits": {split: sum(1 for s, _ in jobs if s == split) for split in splits},
        "seconds": round(seconds, 3),
        "snippets_per_second": round(merged.get("snippets", 0) / seconds, 1) if seconds else 0.0,
    }
