"""APES at full scale, rehearsed: crop and mel shards with the real counts, then triplets, one paper-profile
epoch slice of training and the full val evaluation, each in a fresh process, with its seconds and peak RSS.

Counts (paper section 3): 144 movies, 3.1 M face boxes, Seen 23,679 train / 7,989 val tracklets, Seen & Heard
11,862 / 3,582, 1,913 identities. Crops are small (`--size`, default 16 px) to spare the disk; a one-movie slice
is also written at 124 px to measure the real crop cost. Not a CI test (minutes, gigabytes):
    .venv/bin/python -m bench.rehearsal [--size 16] [--steps 20] [--work DIR] [--keep]
The table it prints is in docs/rehearsal.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from stages.core.config import (
    CropParams,
    EvaluateParams,
    MelParams,
    TrainParams,
    TripletParams,
)
from stages.core.runs import Run
from stages.core.schemas import CROPS, MELS
from stages.media.audio_features import snippet_samples
from stages.media.crop_codec import IMAGE_FORMATS, JPEG, decode_crops, encode_crops
from stages.media.shards import metadata, shard_path, with_metadata

MOVIES = {"train": 108, "val": 36}           # 144 movies, split in the ratio of the Seen tracklets (3:1)
SEEN = {"train": 23_679, "val": 7_989}
HEARD = {"train": 11_862, "val": 3_582}
BOXES = 3_100_000
IDENTITIES = 1_913
SNIPPETS_PER_HEARD = (4, 28)                 # snippets of a Seen & Heard tracklet, drawn uniformly (about 16)
BOX_RATE = 20.0
RUN = Run("face", "within", "seen", 0)       # the largest training store: every Seen train tracklet
ROWS_PER_GROUP = 2048


def _split_counts(total: int, parts: int) -> np.ndarray:
    """`total` spread as evenly as possible over `parts`."""
    return np.diff(np.linspace(0, total, parts + 1).round().astype(np.int64))


def _track_lengths(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Boxes per Seen tracklet of each split, about 98 each, summing to BOXES over both splits."""
    lengths = {split: rng.integers(20, 177, SEEN[split]) for split in SEEN}
    scale = BOXES / sum(int(v.sum()) for v in lengths.values())
    return {split: np.maximum(1, np.round(v * scale)).astype(np.int64) for split, v in lengths.items()}


def _write(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="zstd", row_group_size=ROWS_PER_GROUP)


def write_video(work: Path, split: str, video: int, lengths: np.ndarray, heard: np.ndarray, identities: int,
                size: int, image_format: str, rng: np.random.Generator) -> tuple[int, int]:
    """One movie's crop shard and mel shard; returns (crops, snippets)."""
    video_id = f"{split}{video:03d}"
    tracks = len(lengths)
    owner = np.repeat(np.arange(tracks), lengths)
    identity = rng.integers(0, identities, tracks)
    first = 900.0 + rng.uniform(0, 600, tracks)
    step = np.concatenate([np.arange(n) for n in lengths])
    audible = heard[owner] & (step < lengths[owner] // 2)
    names = np.array([f"{video_id}_0900_1800:{t}" for t in range(tracks)], dtype=object)
    people = np.array([f"{video_id}_p{i}" for i in range(identities)], dtype=object)
    base = rng.integers(40, 216, (identities, 1, 1, 3)).astype(np.float32)
    quality = CropParams().quality
    columns = {"video_id": [video_id] * len(owner), "split": [split] * len(owner), "entity_id": names[owner],
               "identity": people[identity[owner]], "frame_timestamp": first[owner] + step / BOX_RATE,
               "label": np.where(audible, "SPEAKING_AUDIBLE", "NOT_SPEAKING"),
               "x1": np.full(len(owner), 0.3, np.float32), "y1": np.full(len(owner), 0.2, np.float32),
               "x2": np.full(len(owner), 0.5, np.float32), "y2": np.full(len(owner), 0.6, np.float32)}
    keys = pa.table({name: columns[name] for name in CROPS.names if name != "image"},
                    schema=pa.schema([field for field in CROPS if field.name != "image"]))
    parts = []
    for lo in range(0, len(owner), ROWS_PER_GROUP):
        people_here = identity[owner[lo:lo + ROWS_PER_GROUP]]
        coarse = torch.from_numpy(rng.normal(0.0, 16.0, (len(people_here), 3, 4, 4)).astype(np.float32))
        texture = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)  # face-like: smooth
        noise = texture.permute(0, 2, 3, 1).numpy() + rng.normal(0.0, 1.0, (len(people_here), size, size, 3))
        images = np.clip(base[people_here] + noise, 0, 255).astype(np.uint8)
        parts.append(encode_crops(images, image_format, quality))
    meta = {"crop_size": str(size), "crop_margin": "0.1", "image_format": image_format,
            **({"jpeg_quality": str(quality)} if image_format == JPEG else {})}
    _write(keys.append_column("image", pa.chunked_array(parts, pa.binary())).cast(with_metadata(CROPS, meta)),
           shard_path(work / "crops", split, video_id))

    params = MelParams()
    frames = 1 + snippet_samples(params, 16_000) // params.hop_length
    spoken = np.flatnonzero(heard)
    counts = rng.integers(SNIPPETS_PER_HEARD[0], SNIPPETS_PER_HEARD[1] + 1, len(spoken))
    speaker = np.repeat(spoken, counts)
    pattern = rng.normal(-6.0, 2.0, (identities, params.n_mels, frames)).astype(np.float32)
    mels = np.round((pattern[identity[speaker]] + rng.normal(0, 0.5, (len(speaker), params.n_mels, frames))) * 16)
    mels = (mels / 16).astype(np.float32)
    item = params.n_mels * frames * 4
    offsets = pa.py_buffer(np.arange(len(speaker) + 1, dtype=np.int32) * item)
    mel_column = pa.Array.from_buffers(pa.binary(), len(speaker), [None, offsets, pa.py_buffer(mels)])
    mel_meta = {"n_mels": str(params.n_mels), "frames": str(frames), "sample_rate": "16000",
                "snippet_seconds": str(params.snippet_seconds), "hop_length": str(params.hop_length)}
    mel_table = pa.table({"video_id": [video_id] * len(speaker), "split": [split] * len(speaker),
                          "entity_id": names[speaker], "identity": people[identity[speaker]],
                          "start": first[speaker] + 0.15 * (np.arange(len(speaker)) - np.repeat(counts.cumsum() - counts, counts)),
                          "label": ["SPEAKING_AUDIBLE"] * len(speaker), "mel": mel_column})
    _write(mel_table.cast(with_metadata(MELS, mel_meta)), shard_path(work / "mels", split, video_id))
    return len(owner), len(speaker)


def generate(work: Path, size: int, image_format: str) -> dict[str, Any]:
    """Every movie's shards at the APES counts; returns what was written."""
    rng = np.random.default_rng(0)
    lengths = _track_lengths(rng)
    identities = _split_counts(IDENTITIES, sum(MOVIES.values()))
    crops = snippets = 0
    movie = 0
    for split in MOVIES:
        heard = np.zeros(SEEN[split], bool)
        heard[rng.choice(SEEN[split], HEARD[split], replace=False)] = True
        bounds = np.concatenate([[0], np.cumsum(_split_counts(SEEN[split], MOVIES[split]))])
        for video in range(MOVIES[split]):
            lo, hi = bounds[video], bounds[video + 1]
            made = write_video(work, split, video, lengths[split][lo:hi], heard[lo:hi], int(identities[movie]), size,
                               image_format, rng)
            crops, snippets, movie = crops + made[0], snippets + made[1], movie + 1
    disk = {name: sum(p.stat().st_size for p in (work / name).rglob("*.parquet")) for name in ("crops", "mels")}
    return {"crops": crops, "snippets": snippets, "crop_bytes": disk["crops"], "mel_bytes": disk["mels"]}


def _stage(name: str, work: Path, steps: int) -> dict[str, Any]:
    """One stage as the pipeline runs it; returns its metrics."""
    if name == "triplets":
        from stages import triplets
        return triplets.run(TripletParams(), work / "crops", work / "mels", work / "triplets")
    if name == "train":
        from stages import train
        real = train.resolve_schedule

        def one_slice(settings: TrainParams, modality: str, anchors: int) -> Any:
            schedule = real(settings, modality, anchors)
            print(json.dumps({"epoch_steps": schedule.steps_per_epoch}), flush=True)
            return dataclasses.replace(schedule, epochs=1, steps_per_epoch=min(steps, schedule.steps_per_epoch))

        train.resolve_schedule = one_slice
        settings = dataclasses.replace(TrainParams(), profile="paper")
        return train.run(settings, RUN, work / "crops", work / "mels", work / "triplets", work / "models",
                         work / "history.tsv", eval_batch_size=EvaluateParams().batch_size, device="cpu")
    from stages import evaluate
    trained = Run(RUN.modality, RUN.sampling, RUN.task, RUN.seed)
    return evaluate.run(EvaluateParams(), trained, work / "crops", work / "mels", work / "models", work / "emb",
                        precision=TrainParams().precision, untrained_normalize=False)


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss it does not carry the forking parent's)."""
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 1024


def measure(name: str, work: Path, steps: int) -> dict[str, Any]:
    """Run one stage in a fresh process; its seconds, peak RSS and metrics."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "bench.rehearsal", "--stage", name, "--work", str(work),
                           "--steps", str(steps)], check=True, capture_output=True, text=True)
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    result = {k: v for line in lines for k, v in line.items()}
    return {"seconds": round(time.perf_counter() - started, 1), **result}


def slice_at(size: int, work: Path, image_format: str) -> dict[str, Any]:
    """One train movie's crops at `size` px: seconds to generate and write them, bytes per crop, seconds to read
    and decode them back (as load_store does)."""
    rng = np.random.default_rng(1)
    lengths = _track_lengths(rng)["train"][:SEEN["train"] // MOVIES["train"]]
    started = time.perf_counter()
    crops, _ = write_video(work, "train", 0, lengths, np.zeros(len(lengths), bool), 13, size, image_format, rng)
    seconds = time.perf_counter() - started
    path = shard_path(work / "crops", "train", "train000")
    started = time.perf_counter()
    table = pq.read_table(path, columns=["image"])
    decode_crops(table["image"], metadata(table.schema), path)
    return {"crops": crops, "write_s": round(seconds, 1), "bytes_per_crop": round(path.stat().st_size / crops),
            "read_decode_s": round(time.perf_counter() - started, 2)}


def main(argv: list[str]) -> int:
    """Generate, run every stage, print the table (or, with --stage, run one stage and print its metrics)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20, help="training steps of the epoch slice")
    parser.add_argument("--format", choices=list(IMAGE_FORMATS), default=CropParams().format)
    parser.add_argument("--work", type=Path)
    parser.add_argument("--keep", action="store_true", help="keep the shards (default: deleted at the end)")
    parser.add_argument("--stage", choices=["imports", "triplets", "train", "evaluate"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.stage == "imports":
        print(json.dumps({"peak_rss_mb": round(peak_rss_mb())}))
        return 0
    if args.stage:
        metrics = _stage(args.stage, args.work, args.steps)
        print(json.dumps({"peak_rss_mb": round(peak_rss_mb()), "metrics": metrics}, default=str))
        return 0
    work = args.work or Path(tempfile.mkdtemp(prefix="apes-rehearsal-"))
    try:
        rows = []
        started = time.perf_counter()
        written = generate(work, args.size, IMAGE_FORMATS[args.format])
        rows.append(("write shards", round(time.perf_counter() - started, 1), round(peak_rss_mb()), written))
        for name in ("imports", "triplets", "train", "evaluate"):
            result = measure(name, work, args.steps)
            rows.append((name, result["seconds"], result["peak_rss_mb"], result))
        for size in (args.size, 124):
            sliced = slice_at(size, work / f"slice{size}", IMAGE_FORMATS[args.format])
            rows.append((f"one movie's crops at {size} px", sliced["write_s"], None, sliced))
        print("| stage | seconds | peak RSS (MB) | notes |\n|---|---:|---:|---|")
        for name, seconds, peak, notes in rows:
            print(f"| {name} | {seconds} | {peak if peak is not None else ''} | {json.dumps(notes, default=str)} |")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def rows() -> list[tuple[str, str, float]]:
    """`python -m bench rehearsal` runs the rehearsal and prints its own table; it adds no ratio rows."""
    main([])
    return []


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
