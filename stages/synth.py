"""Stage synth: generate the embedded mini-APES (videos, AVA-ActiveSpeaker CSVs, APES CSVs, manifest).

Each video is rendered by stages.synthetic.synth_video from its own random stream (seed, split, index), so the
output does not depend on the number of workers. Finished videos are kept in a parts folder keyed by
the params, so a killed run resumes; the raw layout appears in one atomic rename at the end.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import multiprocessing
import os
import shutil
import time
from collections import Counter
from pathlib import Path

from stages.core.atomic import atomic_dir, atomic_path
from stages.core.config import SynthParams
from stages.core.progress import Progress, Silent
from stages.rawdata.layout import AMBIGUOUS, SPLITS, RawLayout
from stages.synthetic import synth_video

GENERATOR_VERSION = 2   # bump when the generator changes, so stale parts are not reused


def parts_dir(raw_dir: Path, seed: int, p: SynthParams) -> Path:
    """The resumable work folder beside the raw layout, keyed by everything that changes the output."""
    settings = dataclasses.asdict(p)
    settings.pop("workers")
    key = json.dumps({"seed": seed, "synth": settings, "version": GENERATOR_VERSION}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return raw_dir.parent / f".{raw_dir.name}.parts-{digest}"


def _job(seed: int, split: str, index: int, p: SynthParams, directory: Path) -> str:
    """Render one video into the parts folder and record its summary last (the completion marker)."""
    summary = synth_video.generate_video(seed, split, index, p, directory)
    with atomic_path(directory / f"{split}-{index:03d}.json") as tmp:
        tmp.write_text(json.dumps(summary))
    return summary["video_id"]


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _speech_runs(labels: list[str], fps: int) -> list[float]:
    """Durations of the runs of SPEAKING_AUDIBLE boxes of one track (the voice segments)."""
    runs, length = [], 0
    for label in labels + [""]:
        if label == "SPEAKING_AUDIBLE":
            length += 1
        elif length:
            runs.append(length / fps)
            length = 0
    return runs


def statistics(summaries: list[dict], fps: int) -> dict:
    """The paper's section 3.2 statistics of the generated data, computed from the written rows."""
    stats: dict = {"videos": {split: 0 for split in SPLITS}}
    tracks_per_val_video: list[int] = []
    identities, speaking = set(), set()
    totals = Counter()
    for summary in summaries:
        stats["videos"][summary["split"]] += 1
        totals["video_seconds"] += summary["seconds"]
        labels: dict[str, list[str]] = {}
        for row in summary["ava_rows"]:
            fields = row.split(",")
            labels.setdefault(fields[7], []).append(fields[6])
        totals["boxes"] += len(summary["ava_rows"])
        totals["face_tracks"] += len(labels)
        if summary["split"] == "val":
            tracks_per_val_video.append(len(labels))
        for row in summary["apes_rows"]:
            entity, _, identity = row.split(",")
            head, _, tail = entity.rpartition("_")
            track_labels = labels[f"{head}:{tail}"]
            if identity == AMBIGUOUS:
                totals["ambiguous_tracks"] += 1
                continue
            identities.add(identity)
            if any(label != "NOT_SPEAKING" for label in track_labels):
                speaking.add(identity)
            runs = _speech_runs(track_labels, fps)
            totals["voice_segments"] += len(runs)
            totals["speech_seconds"] += sum(runs)
    stats.update({
        "hours": round(totals["video_seconds"] / 3600, 4),
        "identities": len(identities),
        "face_tracks": totals["face_tracks"],
        "boxes": totals["boxes"],
        "ambiguous_tracks": totals["ambiguous_tracks"],
        "ambiguous_share": round(totals["ambiguous_tracks"] / max(1, totals["face_tracks"]), 4),
        "voice_segments": totals["voice_segments"],
        "hours_of_speech": round(totals["speech_seconds"] / 3600, 4),
        "silent_identity_share": round(1 - len(speaking) / max(1, len(identities)), 4),
        "tracks_per_val_video": {"min": min(tracks_per_val_video, default=0),
                                 "mean": round(sum(tracks_per_val_video) / max(1, len(tracks_per_val_video)), 2)},
    })
    return stats


def _assemble(raw_dir: Path, parts: Path, summaries: list[dict]) -> None:
    """Write the raw layout from the finished parts in one atomic directory swap."""
    with atomic_dir(raw_dir) as tmp:
        layout = RawLayout(tmp)
        layout.videos_dir.mkdir()
        manifest = ["file_name,md5"]
        apes: dict[str, list[str]] = {split: ["entity_id,video_id,identity"] for split in SPLITS}
        for summary in summaries:
            video_id, split = summary["video_id"], summary["split"]
            name = f"{video_id}.mp4"
            _link_or_copy(parts / name, layout.videos_dir / name)
            manifest.append(f"{name},{_md5(layout.videos_dir / name)}")
            layout.ava_dir(split).mkdir(parents=True, exist_ok=True)
            layout.ava_csv(split, video_id).write_text("\n".join(summary["ava_rows"]) + "\n")
            apes[split].extend(summary["apes_rows"])
        for split, rows in apes.items():
            layout.apes_csv(split).write_text("\n".join(rows) + "\n")
        layout.manifest.write_text("\n".join(manifest) + "\n")


def run(settings: SynthParams, seed: int, out_dir: str | Path, progress: Progress | None = None) -> dict:
    """Generate the raw layout under `out_dir`; returns its statistics as the stage metrics."""
    started = time.perf_counter()
    progress = progress or Silent()
    raw_dir = Path(out_dir)
    raw_dir.parent.mkdir(parents=True, exist_ok=True)
    parts = parts_dir(raw_dir, seed, settings)
    for stale in raw_dir.parent.glob(f".{raw_dir.name}.parts-*"):
        if stale != parts:
            shutil.rmtree(stale, ignore_errors=True)
    parts.mkdir(exist_ok=True)
    jobs = [(split, index) for split, count in (("train", settings.train_videos), ("val", settings.val_videos))
            for index in range(count)]
    todo = [job for job in jobs if not (parts / f"{job[0]}-{job[1]:03d}.json").exists()]
    progress.start(len(todo), "synth videos")
    workers = min(settings.workers or os.cpu_count() or 1, max(1, len(todo)))
    if workers == 1:
        for split, index in todo:
            _job(seed, split, index, settings, parts)
            progress.advance()
    elif todo:
        context = multiprocessing.get_context("spawn")   # no fork: the parent may hold threads (torch, tqdm)
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
            futures = [pool.submit(_job, seed, split, index, settings, parts) for split, index in todo]
            for future in concurrent.futures.as_completed(futures):
                future.result()
                progress.advance()
    summaries = [json.loads((parts / f"{split}-{index:03d}.json").read_text()) for split, index in jobs]
    _assemble(raw_dir, parts, summaries)
    shutil.rmtree(parts, ignore_errors=True)
    metrics = statistics(summaries, settings.fps)
    elapsed = time.perf_counter() - started
    metrics.update({"seconds": round(elapsed, 2), "resumed_videos": len(jobs) - len(todo),
                    "videos_per_second": round(len(todo) / elapsed, 3) if elapsed > 0 else 0.0,
                    "seed": seed, "workers": workers})
    return metrics
