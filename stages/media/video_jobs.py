"""Running a stage one video at a time: bounded parallel map, input fingerprints, resume bookkeeping, counts."""

from __future__ import annotations

import concurrent.futures as futures
import dataclasses
import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from stages.core.atomic import remove_stale_temporaries
from stages.core.progress import Progress
from stages.media.shards import plan_paths

T = TypeVar("T")
R = TypeVar("R")
MAX_SKIP_EXAMPLES = 50


def resolve_workers(workers: int) -> int:
    """0 means one worker per core."""
    return workers if workers > 0 else max(1, os.cpu_count() or 1)


def fingerprint(*parts: Any) -> str:
    """A stable digest of inputs and params (bytes are hashed as they are, anything else as sorted JSON)."""
    digest = hashlib.sha1()
    for part in parts:
        data = part if isinstance(part, bytes) else json.dumps(part, sort_keys=True, default=str).encode()
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def params_digest(params: Any) -> dict[str, Any]:
    """A stage's params as they bear on its output (worker counts do not)."""
    return {k: v for k, v in dataclasses.asdict(params).items() if k != "workers"}


def file_digest(path: Path) -> str:
    """sha1 of a (small) file's bytes."""
    return hashlib.sha1(path.read_bytes()).hexdigest()


def map_videos(items: Iterable[T], job: Callable[[T], R], workers: int, progress: Progress) -> list[R]:
    """Run `job` on every item with up to `workers` threads (jobs drive ffmpeg/torch, which release the GIL).

    Items are pulled lazily, so at most 2 x workers are held at once; results come back in item order.
    The first error cancels what has not started and is re-raised once running jobs have finished
    (their shards are complete; nothing partial is left).
    """
    results: dict[int, R] = {}
    with futures.ThreadPoolExecutor(max_workers=workers) as pool:
        pending: dict[futures.Future, int] = {}
        source = enumerate(items)
        exhausted = False
        try:
            while pending or not exhausted:
                while not exhausted and len(pending) < 2 * workers:
                    entry = next(source, None)
                    if entry is None:
                        exhausted = True
                    else:
                        pending[pool.submit(job, entry[1])] = entry[0]
                if not pending:
                    break
                done, _ = futures.wait(pending, return_when=futures.FIRST_COMPLETED)
                for future in done:
                    results[pending.pop(future)] = future.result()
                    progress.advance()
        except BaseException:
            for future in pending:
                future.cancel()
            raise
    return [results[i] for i in sorted(results)]


def remove_orphans(directory: Path, keep: set[str], suffix: str = ".parquet") -> int:
    """Delete shards of videos no longer in the input and leftovers of killed runs; returns how many."""
    removed = remove_stale_temporaries(directory)
    if directory.is_dir():
        for path in directory.glob(f"*{suffix}"):
            if path.name[: -len(suffix)] not in keep:
                path.unlink()
                removed += 1
    return removed


def planned_jobs(decoded_dir: str | Path, out_dir: Path, splits: Iterable[str]) -> list[tuple[str, Path]]:
    """(split, frame plan) of every video `decode` planned; output shards of videos no longer planned go."""
    jobs = []
    for split in splits:
        plans = plan_paths(decoded_dir, split)
        jobs.extend((split, plan) for plan in plans)
        remove_orphans(out_dir / split, {plan.stem for plan in plans})
    return jobs


def merge_stats(per_video: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum the numeric counts of every video; concatenate skip examples (capped)."""
    totals: Counter = Counter()
    skips: Counter = Counter()
    examples: list[dict[str, Any]] = []
    for stats in per_video:
        for key, value in stats.items():
            if key == "skips":
                skips.update(value)
            elif key == "skip_examples":
                examples.extend(value)
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                totals[key] += value
    merged: dict[str, Any] = {key: round(value, 3) if isinstance(value, float) else value
                              for key, value in sorted(totals.items())}
    merged["skips"] = dict(sorted(skips.items()))
    merged["skip_examples"] = examples[:MAX_SKIP_EXAMPLES]
    return merged
