"""Benchmark the media stages (decode, crop, mel) against named baselines measured in the same run.

1. decode + crop of a generated 60 s 640x360 25 fps H.264+AAC video annotated at 20 boxes/s (2 faces
   per timestamp), against a bare `ffmpeg -i f -vf fps=20 -f null -` of the same file (goal >= 0.7).
2. The mel stage (read plan and audio, cut snippets, batched torchaudio log-mels, write Parquet), in
   snippets per second, against librosa computing the same snippets one at a time (goal >= 10x).
3. Peak RSS of a fresh process running decode + crop + mel on 1 video and on N videos (goal: flat).
4. JPEG crops (crop.format: jpeg, q90) at 64 and 124 px: bytes per crop and crops/s read back (Parquet read +
   batched decode_jpeg on the CPU), against raw uint8 crops of the same boxes read back the same way.
Each timing is the best of REPEATS; decode + crop also prints CPU time (process + ffmpeg children), which a
shared machine disturbs less than wall time. Run: .venv/bin/python -m bench.media
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import librosa
import numpy as np
import pyarrow.parquet as pq
from threadpoolctl import threadpool_limits

from stages import crop, decode, mel
from stages.core.config import CropParams, DecodeParams, MelParams
from stages.core.threads import torch_threads
from stages.media.audio_features import LogMel, log_mel_at, snippet_samples
from stages.media.crop_codec import decode_crops
from stages.media.shards import metadata
from stages.media.video_io import ffmpeg_exe, read_wav

SECONDS, WIDTH, HEIGHT, FPS, BOX_RATE = 60, 640, 360, 25, 20
REPEATS = 3
MEMORY_VIDEOS = 6


def make_raw(root: Path, videos: int, seconds: float) -> Path:
    """A raw layout (docs/data.md) of `videos` generated videos, two speaking faces per timestamp."""
    (root / "videos").mkdir(parents=True, exist_ok=True)
    folder = root / "annotations" / "ava_activespeaker_train_v1.0"
    folder.mkdir(parents=True, exist_ok=True)
    apes = ["entity_id,video_id,identity"]
    for v in range(videos):
        vid = f"bench{v:02d}"
        subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
                        "-f", "lavfi", "-i", f"testsrc2=size={WIDTH}x{HEIGHT}:rate={FPS}",
                        "-f", "lavfi", "-i", "anoisesrc=color=pink:sample_rate=48000:amplitude=0.3",
                        "-t", str(seconds), "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac",
                        str(root / "videos" / f"{vid}.mp4")], check=True)
        rows = []
        for k in range(int(seconds * BOX_RATE)):
            t = k / BOX_RATE
            for track, (x1, y1) in enumerate(((0.1, 0.2), (0.55, 0.3)), start=1):
                wobble = 0.05 * np.sin(t + track)
                rows.append(f"{vid},{t:.3f},{x1 + wobble:.4f},{y1:.4f},{x1 + wobble + 0.2:.4f},{y1 + 0.35:.4f},"
                            f"SPEAKING_AUDIBLE,{vid}_0000_0060:{track}")
        (folder / f"{vid}-activespeaker.csv").write_text("\n".join(rows) + "\n")
        apes += [f"{vid}_0000_0060_{track},{vid},{vid}_p{track}" for track in (1, 2)]
    (root / "APES-train.csv").write_text("\n".join(apes) + "\n")
    return root


def cpu_seconds() -> float:
    """User + system time of this process and its finished children (ffmpeg)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def best_of(*runs: Callable[[], object]) -> list[tuple[float, float]]:
    """Fastest (wall, CPU) time of REPEATS runs of each callable, interleaved so that load on a shared
    machine hits them alike."""
    times: list[list[tuple[float, float]]] = [[] for _ in runs]
    for _ in range(REPEATS):
        for run, samples in zip(runs, times):
            started, cpu = time.perf_counter(), cpu_seconds()
            run()
            samples.append((time.perf_counter() - started, cpu_seconds() - cpu))
    return [(min(w for w, _ in samples), min(c for _, c in samples)) for samples in times]


def decode_crop_rows(work: Path) -> list[tuple[str, str, float]]:
    """decode + crop frames/s against a bare ffmpeg decode at 20 fps."""
    raw = make_raw(work / "raw", 1, SECONDS)
    video = raw / "videos" / "bench00.mp4"
    outcome: dict[str, dict] = {}

    def stages() -> None:
        for folder in ("decoded", "crops"):
            shutil.rmtree(work / folder, ignore_errors=True)
        outcome["decode"] = decode.run(DecodeParams(workers=1), raw, work / "decoded", ["train"])
        outcome["crop"] = crop.run(CropParams(workers=1), raw, work / "decoded", work / "crops", ["train"])

    def bare_ffmpeg() -> None:
        subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-i", str(video),
                        "-vf", "fps=20", "-f", "null", "-"], check=True)

    (ours, ours_cpu), (bare, bare_cpu) = best_of(stages, bare_ffmpeg)
    frames = SECONDS * BOX_RATE
    crops = outcome["crop"]["crops"]
    figure = (f"decode+crop {SECONDS} s {WIDTH}x{HEIGHT} {FPS} fps, {crops} crops of {CropParams().size} px: "
              f"{ours:.2f} s = {frames / ours:.0f} annotated frames/s")
    baseline = f"bare `ffmpeg -vf fps=20 -f null -`: {bare:.2f} s = {frames / bare:.0f} frames/s"
    cpu_figure = f"decode+crop CPU time (process + ffmpeg children): {ours_cpu:.2f} s"
    cpu_baseline = f"bare ffmpeg CPU time: {bare_cpu:.2f} s"
    return [(figure, baseline, bare / ours), (cpu_figure, cpu_baseline, bare_cpu / ours_cpu)]


def mel_rows(work: Path) -> list[tuple[str, str, float]]:
    """mel snippets/s (whole stage, and features alone) against librosa one snippet at a time.

    Needs the decoded bench video of decode_crop_rows in `work`.
    """
    params = MelParams(workers=1)
    result: dict[str, dict] = {}

    def stage() -> None:
        shutil.rmtree(work / "mels", ignore_errors=True)
        result["mel"] = mel.run(params, work / "decoded", work / "mels", ["train"])

    stage()
    starts = pq.read_table(work / "mels" / "train" / "bench00.parquet", columns=["start"])["start"].to_numpy()
    plan_meta = metadata(pq.read_schema(work / "decoded" / "plan" / "train" / "bench00.parquet"))
    audio, rate = read_wav(work / "decoded" / plan_meta["audio"])
    length = snippet_samples(params, rate)
    offsets = np.round((starts - float(plan_meta["audio_start"])) * rate).astype(int)
    transform = LogMel(params, rate)

    def librosa_loop() -> None:
        # numpy's BLAS threads make librosa's small mel products several times slower on a busy machine;
        # one thread is its fastest setting here, so the baseline gets it.
        with threadpool_limits(limits=1):
            librosa_snippets()

    def librosa_snippets() -> None:
        for offset in offsets:
            power = librosa.feature.melspectrogram(
                y=audio[offset:offset + length], sr=rate, n_fft=params.n_fft, hop_length=params.hop_length,
                win_length=params.win_length, n_mels=params.n_mels, center=True, pad_mode="constant", power=2.0)
            np.log(power + 1e-6)

    def features_alone() -> None:
        with torch_threads(1):  # as the mel stage runs it
            log_mel_at(transform, audio, offsets, length)

    (ours, _), (features, _), (baseline_s, _) = best_of(stage, features_alone, librosa_loop)
    count = len(offsets)
    baseline = f"librosa one snippet at a time, BLAS on 1 thread: {count / baseline_s:.0f} snippets/s"
    return [
        (f"mel stage (plan + wav in, Parquet out), {count} snippets: {count / ours:.0f} snippets/s", baseline,
         baseline_s / ours),
        (f"mel features alone (torchaudio, shared frame grid): {count / features:.0f} snippets/s", baseline,
         baseline_s / features),
    ]


def read_back(shard: Path) -> int:
    """Read a crop shard and decode its crops to (N, S, S, 3) uint8 on the CPU, as load_store does; returns N."""
    table = pq.read_table(shard, columns=["image"])
    return len(decode_crops(table["image"], metadata(table.schema), shard, device="cpu"))


def crop_format_rows(work: Path) -> list[tuple[str, str, float]]:
    """JPEG against raw crops: bytes per crop and read-back speed, at 64 and 124 px.

    Needs the decoded bench video of decode_crop_rows in `work`.
    """
    out = []
    for size in (64, 124):
        shards = {}
        for fmt in ("raw", "jpeg"):
            folder = work / f"crops_{fmt}_{size}"
            crop.run(CropParams(size=size, format=fmt, workers=1), work / "raw", work / "decoded", folder, ["train"])
            shards[fmt] = folder / "train" / "bench00.parquet"
        count = read_back(shards["raw"])
        per_crop = {fmt: shards[fmt].stat().st_size / count for fmt in shards}
        (jpeg_s, _), (raw_s, _) = best_of(lambda jpeg=shards["jpeg"]: read_back(jpeg),
                                          lambda raw=shards["raw"]: read_back(raw))
        figure = (f"JPEG q90 crops, {size} px: {per_crop['jpeg']:,.0f} B/crop; read + decode_jpeg (CPU, 1 batch "
                  f"call per 4,096): {count / jpeg_s:,.0f} crops/s")
        baseline = (f"raw uint8 crops (zstd Parquet): {per_crop['raw']:,.0f} B/crop ({size * size * 3:,} B "
                    f"uncompressed); read back: {count / raw_s:,.0f} crops/s")
        out += [(figure, baseline, raw_s / jpeg_s),
                (f"JPEG q90 bytes per crop, {size} px", "raw uint8 bytes per crop", per_crop["raw"] / per_crop["jpeg"])]
    return out


_MEMORY_SCRIPT = """
import json, resource, sys
from pathlib import Path
from stages.media.audio_features import LogMel, log_mel_at, snippet_samples
from stages import crop, decode, mel
from stages.core.config import CropParams, DecodeParams, MelParams
raw, work = Path(sys.argv[1]), Path(sys.argv[2])
decode.run(DecodeParams(workers=1), raw, work / "decoded", ["train"])
crop.run(CropParams(workers=1), raw, work / "decoded", work / "crops", ["train"])
mel.run(MelParams(workers=1), work / "decoded", work / "mels", ["train"])
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def memory_rows(work: Path) -> list[tuple[str, str, float]]:
    """Peak RSS of decode + crop + mel in a fresh process: N videos against 1 (1.0 = flat)."""
    peaks = {}
    for count in (1, MEMORY_VIDEOS):
        raw = make_raw(work / f"raw{count}", count, 20)
        out = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, str(raw), str(work / f"out{count}")],
                             check=True, capture_output=True, text=True).stdout
        peaks[count] = json.loads(out.strip().splitlines()[-1])["peak_rss_mb"]
    figure = f"peak RSS, decode+crop+mel of {MEMORY_VIDEOS} videos (20 s each): {peaks[MEMORY_VIDEOS]:.0f} MB"
    baseline = f"same for 1 video: {peaks[1]:.0f} MB (ratio 1.0 = flat in the number of videos)"
    return [(figure, baseline, peaks[MEMORY_VIDEOS] / peaks[1])]


def rows() -> list[tuple[str, str, float]]:
    """(figure, baseline, ratio) rows for `python -m bench`."""
    with tempfile.TemporaryDirectory(prefix="bench-media-") as tmp:
        work = Path(tmp)
        return decode_crop_rows(work) + mel_rows(work) + crop_format_rows(work) + memory_rows(work)


if __name__ == "__main__":
    for figure, baseline, ratio in rows():
        print(f"{figure}\n  vs {baseline}\n  ratio: {ratio:.2f}x")
