"""Stage 'download': fetch the real AVA-ActiveSpeaker videos and annotations and the APES labels into the raw layout.

Order: the video list, both annotation archives and both APES files go to `<raw>/archives/` first; the archives
are extracted (safely) into temporary directories, the videos to keep are chosen, then the videos are fetched.
The annotation directories, the APES files and the manifest are moved into place together only after every
video has verified, so a failed run leaves the previous layout (or none) plus resumable `.part` files.
"""

from __future__ import annotations

import contextlib
import csv
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from stages.core.atomic import atomic_dir, atomic_path, remove_stale_temporaries
from stages.core.config import DownloadParams
from stages.core.errors import DataError
from stages.core.progress import Progress, Silent
from stages.rawdata.annotations import read_manifest
from stages.rawdata.archives import ACTIVESPEAKER_SUFFIX, extract_activespeaker
from stages.rawdata.http_fetch import Cancelled, Fetcher, part_path
from stages.rawdata.layout import SPLITS, VIDEO_EXTENSIONS, RawLayout

ARCHIVES_DIR = "archives"
T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Job:
    """One file to fetch: where from, where to, and its md5 ('' = cannot be verified)."""

    url: str
    dest: Path
    md5: str


def archive_name(split: str) -> str:
    """File name of a split's AVA-ActiveSpeaker annotation archive."""
    return f"ava_activespeaker_{split}_v1.0.tar.bz2"


def join_url(base: str, *parts: str) -> str:
    """`base/part/...` with each part percent-encoded."""
    return "/".join([base.rstrip("/"), *(quote(part) for part in parts)])


def run_parallel(func: Callable[[T], R], items: Sequence[T], workers: int, fetcher: Fetcher) -> list[R]:
    """Map `func` over `items` on a thread pool; the first failure stops the rest and is raised."""
    if not items:
        return []
    results: dict[int, R] = {}
    errors: list[BaseException] = []
    with ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
        futures = {pool.submit(func, item): index for index, item in enumerate(items)}
        try:
            for future in as_completed(futures):
                if future.cancelled():
                    continue
                error = future.exception()
                if error is None:
                    results[futures[future]] = future.result()
                    continue
                if not isinstance(error, Cancelled):
                    errors.append(error)
                fetcher.stop.set()
                for other in futures:
                    other.cancel()
        except BaseException:
            fetcher.stop.set()
            for other in futures:
                other.cancel()
            raise
    if errors:
        raise errors[0]
    return [results[index] for index in range(len(items))]


def fetch_all(fetcher: Fetcher, jobs: Sequence[Job], workers: int, progress: Progress, what: str) -> None:
    """Skip jobs whose file is already present and verified, then download the rest in parallel."""
    to_verify = sum(job.dest.stat().st_size for job in jobs if job.md5 and job.dest.is_file())
    if to_verify:
        progress.start(to_verify, f"verifying {what} already present (bytes)")
    present = run_parallel(lambda job: fetcher.present(job.dest, job.md5), jobs, workers, fetcher)
    todo = [job for job, done in zip(jobs, present) if not done]
    fetcher.count(skipped_present=len(jobs) - len(todo))
    if not todo:
        return
    sizes = run_parallel(lambda job: fetcher.remote_size(job.url), todo, workers, fetcher)
    remaining = 0
    for job, size in zip(todo, sizes):
        part = part_path(job.dest)
        remaining += max((size or 0) - (part.stat().st_size if part.exists() else 0), 0)
    progress.start(remaining, f"downloading {what} (bytes)")
    run_parallel(lambda job: fetcher.fetch(job.url, job.dest, job.md5), todo, workers, fetcher)


def listed_videos(manifest: Path) -> dict[str, tuple[str, str]]:
    """video id -> (file name, md5) of the AVA video list; two files for one video id are an error."""
    listed: dict[str, tuple[str, str]] = {}
    for name, md5 in read_manifest(manifest):
        stem, dot, _ = name.rpartition(".")
        video_id = stem if dot else name
        if video_id in listed:
            raise DataError(manifest, f"video {video_id!r} listed twice ({listed[video_id][0]!r} and {name!r})",
                            field="file_name")
        listed[video_id] = (name, md5)
    return listed


def choose_videos(annotated: dict[str, list[str]], listed: dict[str, Any], limit: int,
                  manifest: Path) -> tuple[dict[str, list[str]], list[str], int]:
    """Videos to fetch per split: annotated and listed, train and val alternating, the first `limit` (0 = all).

    Videos missing from the list are dropped before alternating, so any limit >= 2 gives each split a video.
    Returns (chosen per split, annotated videos missing from the list, videos left out by the limit).
    """
    ordered = {split: sorted(annotated[split]) for split in SPLITS}
    missing = [video_id for split in SPLITS for video_id in ordered[split] if video_id not in listed]
    available = [(split, video_id)
                 for pair in zip_longest(*([v for v in ordered[split] if v in listed] for split in SPLITS))
                 for split, video_id in zip(SPLITS, pair) if video_id is not None]
    kept = available[:limit] if limit else available
    if not kept:
        example = next(iter(missing), "")
        raise DataError(manifest, f"none of the annotated videos is in the video list (e.g. {example!r})")
    chosen = {split: [video_id for s, video_id in kept if s == split] for split in SPLITS}
    return chosen, missing, len(available) - len(kept)


def prune(directory: Path, keep: set[str]) -> None:
    """Delete the per-video CSVs of videos that are not kept."""
    for path in directory.glob(f"*{ACTIVESPEAKER_SUFFIX}"):
        if path.name[: -len(ACTIVESPEAKER_SUFFIX)] not in keep:
            path.unlink()


def filter_apes(source: Path, dest: Path, keep: set[str]) -> tuple[int, int]:
    """Copy the header and the APES rows of kept videos (column 2 = video_id); returns (kept, dropped)."""
    with source.open("r", newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        raise DataError(source, "empty APES file: expected a header, then entity_id,video_id,identity rows", 1)
    out, dropped = [rows[0]], 0
    for number, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != 3:
            raise DataError(source, f"expected 3 columns (entity_id,video_id,identity), found {len(row)}", number)
        if row[1].strip() in keep:
            out.append(row)
        else:
            dropped += 1
    with dest.open("w", newline="") as handle:
        csv.writer(handle, lineterminator="\n").writerows(out)
    return len(out) - 1, dropped


def video_jobs(layout: RawLayout, base_url: str, chosen: dict[str, list[str]],
               listed: dict[str, tuple[str, str]], manifest: Path) -> list[Job]:
    """One job per chosen video: `<base_url>/trainval/<file_name>` to videos/<file_name>."""
    jobs = []
    for split in SPLITS:
        for video_id in chosen[split]:
            name, md5 = listed[video_id]
            if not name.lower().endswith(VIDEO_EXTENSIONS):
                raise DataError(manifest, f"file name {name!r} of video {video_id!r} has no video extension "
                                          f"(expected one of {', '.join(VIDEO_EXTENSIONS)})", field="file_name")
            jobs.append(Job(join_url(base_url, "trainval", name), layout.videos_dir / name, md5))
    return jobs


def run(settings: DownloadParams, out_dir: str | Path, progress: Progress | None = None) -> dict[str, Any]:
    """Fill the raw layout at `out_dir` with real AVA + APES data; returns the stage metrics."""
    started = time.monotonic()
    progress = progress or Silent()
    layout = RawLayout(Path(out_dir))
    fetcher = Fetcher(settings.retries, settings.timeout_s, settings.backoff_s, progress)
    stale = remove_stale_temporaries(layout.root)
    archives = layout.root / ARCHIVES_DIR
    archive_md5 = {"train": settings.train_archive_md5, "val": settings.val_archive_md5}
    file_list = Job(join_url(settings.base_url, "annotations", settings.file_list), archives / settings.file_list, "")
    annotation_jobs = {split: Job(join_url(settings.base_url, "annotations", archive_name(split)),
                                  archives / archive_name(split), archive_md5[split]) for split in SPLITS}
    apes_jobs = {split: Job(join_url(settings.apes_url, f"APES-{split}.csv"), archives / f"APES-{split}.csv", "")
                 for split in SPLITS}
    fetch_all(fetcher, [file_list, *annotation_jobs.values(), *apes_jobs.values()], settings.workers, progress,
              "video list, annotations and APES labels")
    listed = listed_videos(file_list.dest)

    apes_rows: dict[str, tuple[int, int]] = {}
    with contextlib.ExitStack() as stack:
        staged = {split: stack.enter_context(atomic_dir(layout.ava_dir(split))) for split in SPLITS}
        annotated = {split: extract_activespeaker(annotation_jobs[split].dest, staged[split]) for split in SPLITS}
        chosen, not_listed, over_limit = choose_videos(annotated, listed, settings.limit, file_list.dest)
        for split in SPLITS:
            prune(staged[split], set(chosen[split]))
            apes_tmp = stack.enter_context(atomic_path(layout.apes_csv(split)))
            apes_rows[split] = filter_apes(apes_jobs[split].dest, apes_tmp, set(chosen[split]))
        jobs = video_jobs(layout, settings.base_url, chosen, listed, file_list.dest)
        fetch_all(fetcher, jobs, settings.workers, progress, f"{len(jobs)} videos")
        with stack.enter_context(atomic_path(layout.manifest)).open("w", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(["file_name", "md5"])
            writer.writerows([job.dest.name, job.md5] for job in jobs)

    seconds = time.monotonic() - started
    stats = fetcher.metrics()
    return {
        "videos": {split: len(chosen[split]) for split in SPLITS},
        "videos_annotated": {split: len(annotated[split]) for split in SPLITS},
        "videos_skipped": {"not_in_video_list": len(not_listed), "over_limit": over_limit},
        "videos_not_in_video_list": not_listed[:20],
        "videos_without_md5": sum(1 for job in jobs if not job.md5),
        "apes_rows_kept": {split: apes_rows[split][0] for split in SPLITS},
        "apes_rows_dropped_other_videos": {split: apes_rows[split][1] for split in SPLITS},
        "files_fetched": stats["fetched"],
        "files_skipped_present": stats["skipped_present"],
        "bytes_downloaded": stats["bytes"],
        "retries": stats["retries"],
        "resumed": stats["resumed"],
        "restarted": stats["restarted"],
        "stale_temporaries_removed": stale,
        "limit": settings.limit,
        "seconds": round(seconds, 3),
        "mb_per_s": round(stats["bytes"] / 1e6 / seconds, 3) if seconds > 0 else 0.0,
    }
