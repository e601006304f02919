"""Benchmark `apes-cli search` against the obvious peer, on composited 1280x720 videos with exact truth.

Data (tests/search_media.py): five people = faces 0-4 of fixtures/group-photo-6-faces.jpg, face 5 the
stranger; voices = the two real speakers of fixtures/sample.wav plus three voices derived from them by
resampling (x1.3, x0.77 speed and pitch; not real people, see docs/search.md). Shots of 2.5-6 s: one person
silent, one person speaking, a voice off screen (no face), two people with one of them speaking, the
stranger. Faces vary per shot in size, brightness and in-plane rotation; each query photo is a mirrored,
rescaled copy; each query clip is a stretch of speech the videos never use.

Peer (what a new user would write): dlib as face_recognition runs it (HOG upsample 1, 5-point landmarks,
ResNet descriptor, tolerance 0.6) on every frame at 4 fps, 640x360, a matched face counting for the 0.25 s
around its frame; Resemblyzer on 1.6 s windows every 0.8 s of the soundtrack, a window matching when its
cosine with the query is >= the same voice threshold apes uses.

Measured for both, per person, in time overlap with the truth: precision and recall of faces (on screen)
and voices (heard). Speed: index seconds per video minute, against bare ffmpeg decoding the same video at
the same sampling rate; query time on an indexed video; peak RSS indexing a short and a 4x longer video.
Run: .venv/bin/python -m bench.search [--seconds 83] [--videos 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from search_media import (RATE, Shot, Truth, compose, group_faces, merged, precision_recall,  # noqa: E402
                          voice_piece, write_wav)

from stages.footage.decision import voice_rule  # noqa: E402
from stages.footage.settings import FACE_THRESHOLD, VOICE_THRESHOLD, IndexSettings  # noqa: E402
from stages.media.video_io import ffmpeg_exe  # noqa: E402

PEOPLE = 5
STRANGER = 5
WIDTH, HEIGHT, FPS = 1280, 720, 25
PEER_FPS = 4
# voice of person i: (speaker of sample.wav, speed factor: resampling that scales pitch, formants and tempo
# together, like a different vocal tract; a phase-vocoder pitch shift sounds so unnatural that the VAD
# rejects it)
# (factors picked as the most separable set of derived voices under Resemblyzer; see docs/search.md)
VOICES = [("speaker90", 1.0), ("speaker91", 1.0), ("speaker90", 1.3), ("speaker91", 0.77), ("speaker91", 1.3)]


def voice_bank() -> tuple[list[np.ndarray], list[list[np.ndarray]]]:
    """Per person: the query clip and the pieces the videos may use (never the query)."""
    import librosa
    queries, pieces = [], []
    for speaker, factor in VOICES:
        if speaker == "speaker90":
            raw = [voice_piece(speaker, i) for i in range(4)]
        else:  # split the long turn in two: one half is the query
            long = voice_piece(speaker, 0)
            raw = [long[:long.size // 2], long[long.size // 2:], voice_piece(speaker, 1)]
        if factor != 1.0:
            raw = [librosa.resample(r, orig_sr=RATE, target_sr=int(round(RATE / factor))) for r in raw]
        queries.append(raw[0])
        pieces.append(raw[1:])
    return queries, pieces


def plan(seconds: float, seed: int, pieces: list[list[np.ndarray]]) -> list[Shot]:
    """A random sequence of the five shot kinds, about `seconds` long."""
    rng = np.random.default_rng(seed)
    shots, total = [], 0.0
    kinds = ["silent", "speaking", "off_screen", "two", "stranger", "speaking", "two"]
    while total < seconds:
        kind = kinds[int(rng.integers(len(kinds)))]
        person = int(rng.integers(PEOPLE))
        length = float(rng.uniform(2.5, 6.0))
        voice = pieces[person][int(rng.integers(len(pieces[person])))]
        look = dict(background=tuple(int(v) for v in rng.integers(20, 200, 3)), gain=float(rng.uniform(0.8, 1.15)),
                    angle=float(rng.uniform(-8, 8)), drift=float(rng.uniform(-0.08, 0.08)))
        size = float(rng.uniform(0.3, 0.55))
        if kind == "silent":
            shot = Shot(length, [(person, float(rng.uniform(0.3, 0.7)), size)], **look)
        elif kind == "speaking":
            shot = Shot(length, [(person, float(rng.uniform(0.3, 0.7)), size)], voice, f"p{person}", **look)
        elif kind == "off_screen":
            shot = Shot(length, [], voice, f"p{person}", **look)
        elif kind == "two":
            other = int((person + 1 + rng.integers(PEOPLE - 1)) % PEOPLE)
            pair = [(person, 0.28, size * 0.8), (other, 0.72, size * 0.8)]
            shot = Shot(length, pair if rng.random() < 0.5 else pair[::-1], voice, f"p{person}", **look)
        else:
            shot = Shot(length, [(STRANGER, float(rng.uniform(0.3, 0.7)), size)], **look)
        shots.append(shot)
        total += length
    return shots


def query_photos(folder: Path) -> list[Path]:
    """Mirrored, rescaled copies of the five faces."""
    paths = []
    for person in range(PEOPLE):
        face = cv2.flip(cv2.resize(group_faces()[person], (200, 200), interpolation=cv2.INTER_AREA), 1)
        path = folder / f"person{person}.jpg"
        cv2.imwrite(str(path), cv2.cvtColor(face, cv2.COLOR_RGB2BGR))
        paths.append(path)
    return paths


def cpu_seconds() -> float:
    """CPU time of this process and its finished children."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def peer(videos: list[Path], photos: list[Path], clips: list[Path]) -> tuple[dict, float, float]:
    """The peer's found intervals per (video, person, modality), its wall and CPU seconds."""
    import dlib

    from stages.footage.detection import FIVE_POINT, RESNET, model_file
    from stages.footage.speech import _encoder, _mel, read_clip
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(model_file(FIVE_POINT)))
    encoder = dlib.face_recognition_model_v1(str(model_file(RESNET)))
    started, cpu = time.perf_counter(), cpu_seconds()

    def encode(image: np.ndarray) -> list[np.ndarray]:
        return [np.asarray(encoder.compute_face_descriptor(image, predictor(image, r), 1)) for r in detector(image, 1)]

    known = []
    for photo in photos:
        image = cv2.cvtColor(cv2.imread(str(photo)), cv2.COLOR_BGR2RGB)
        known.append(encode(image)[0])
    voice_queries = []
    for clip in clips:
        import torch
        mel = _mel(read_clip(clip))
        windows = np.stack([mel[s:s + 160] for s in range(0, mel.shape[0] - 160 + 1, 80)])
        with torch.inference_mode():
            embedding = _encoder()(torch.from_numpy(windows)).numpy().mean(axis=0)
        voice_queries.append(embedding / np.linalg.norm(embedding))
    found: dict = {}
    for video in videos:
        command = [ffmpeg_exe(), "-loglevel", "error", "-i", str(video), "-vf", f"fps={PEER_FPS},scale=640:360",
                   "-pix_fmt", "rgb24", "-f", "rawvideo", "pipe:1"]
        process = subprocess.Popen(command, stdout=subprocess.PIPE)
        size, k = 640 * 360 * 3, 0
        while True:
            data = process.stdout.read(size)
            if len(data) < size:
                break
            image = np.frombuffer(data, np.uint8).reshape(360, 640, 3)
            t = (k + 0.5) / PEER_FPS
            for descriptor in encode(image):
                for person, query in enumerate(known):
                    if np.linalg.norm(descriptor - query) <= 0.6:
                        found.setdefault((video, person, "face"), []).append((t - 0.5 / PEER_FPS, t + 0.5 / PEER_FPS))
            k += 1
        process.wait()
        import torch
        audio = read_clip(video)
        mel = _mel(audio)
        starts = list(range(0, max(1, mel.shape[0] - 160 + 1), 80))
        windows = np.stack([mel[s:s + 160] for s in starts])
        with torch.inference_mode():
            embeddings = _encoder()(torch.from_numpy(windows)).numpy()
        for person, query in enumerate(voice_queries):
            for start, score in zip(starts, embeddings @ query):
                if score >= VOICE_THRESHOLD:
                    found.setdefault((video, person, "voice"), []).append((start / 100, start / 100 + 1.6))
    return found, time.perf_counter() - started, cpu_seconds() - cpu


def truth_of(truth: Truth, person: int, modality: str) -> list[tuple[float, float]]:
    return truth.on_screen.get(person, []) if modality == "face" else truth.speaking.get(f"p{person}", [])


def score_table(found: dict, videos: list[Path], truths: list[Truth]) -> dict:
    """Mean over people of time-overlap precision and recall, per modality (videos pooled per person; a
    person absent from the truth and from the hits is left out, one absent from the truth but found scores
    precision 0)."""
    out = {}
    for modality in ("face", "voice"):
        precisions, recalls = [], []
        for person in range(PEOPLE):
            hit = found_total = truth_total = 0.0
            for video, truth in zip(videos, truths):
                got = merged(found.get((video, person, modality), []))
                want = merged(truth_of(truth, person, modality))
                p, r = precision_recall(got, want)
                found_total += sum(b - a for a, b in got)
                truth_total += sum(b - a for a, b in want)
                hit += p * sum(b - a for a, b in got)
            if not truth_total and not found_total:
                continue  # never in these videos, never found: nothing to score
            precisions.append(hit / found_total if found_total else 0.0)
            recalls.append(hit / truth_total if truth_total else 1.0)
        out[modality] = {"precision": float(np.mean(precisions)), "recall": float(np.mean(recalls)),
                         "per_person": [(round(p, 3), round(r, 3)) for p, r in zip(precisions, recalls)]}
    return out


def sweep(work: Path, videos: list[Path], truths: list[Truth]) -> dict:
    """Mean precision / recall over people at other thresholds on the raw scores of results.json (voice: the
    CAM++ cosine, whose default rule asks 0.40 of segments of 1.5 s and more)."""
    out: dict = {}
    grids = {"face": [0.35, 0.40, 0.45, 0.50, 0.55], "voice": [0.30, 0.35, 0.40, 0.45, 0.50, 0.55, 0.60]}
    for modality, grid in grids.items():
        hits = {person: json.loads((work / f"out{person}{modality}" / "results.json").read_text())["hits"]
                for person in range(PEOPLE)}
        rows_ = []
        for threshold in grid:
            found: dict = {}
            for person, listed in hits.items():
                for hit in listed:
                    if hit["modality"] == modality and hit["raw"] >= threshold:
                        found.setdefault((Path(hit["video"]), person, modality), []).append((hit["start"], hit["end"]))
            table = score_table(found, videos, truths)[modality]
            rows_.append((threshold, round(table["precision"], 3), round(table["recall"], 3)))
        out[modality] = rows_
    return out


def peak_rss(video: Path, index_dir: Path) -> float:
    """Peak RSS (MiB) of a fresh process indexing one video."""
    code = ("import resource, sys; from stages.footage.indexing import index_videos; from stages.footage.settings import "
            "IndexSettings; index_videos([sys.argv[1]], IndexSettings(), sys.argv[2]); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    result = subprocess.run([sys.executable, "-c", code, str(video), str(index_dir)], capture_output=True, text=True,
                            check=True, cwd=ROOT)
    return int(result.stdout.strip().splitlines()[-1]) / 1024


def run(seconds: float, count: int, work: Path, face_rate: float = 2.0) -> dict:
    from stages.footage.indexing import index_videos
    from stages.footage.search import search
    queries, pieces = voice_bank()
    photos = query_photos(work)
    clips = [write_wav(work / f"voice{p}.wav", q) for p, q in enumerate(queries)]
    videos, truths = [], []
    started = time.perf_counter()
    for v in range(count):
        path = work / f"video{v}.mp4"
        # fresh grain on every frame: a few Mbit/s, so decoding costs what real 720p footage costs
        truths.append(compose(path, plan(seconds, 100 + v, pieces), WIDTH, HEIGHT, FPS, seed=v, crf=23,
                              grain=25, grain_frames=25))
        videos.append(path)
    compose_seconds = time.perf_counter() - started
    total = sum(t.duration for t in truths)

    settings = IndexSettings(face_rate=face_rate)
    step = max(1, round(FPS / settings.face_rate))
    started = time.perf_counter()
    for video in videos:
        subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-i", str(video), "-vf",
                        f"select=not(mod(n\\,{step})),scale=-2:{settings.detect_height}", "-fps_mode", "passthrough",
                        "-f", "null", "-"], check=True)
    ffmpeg_seconds = time.perf_counter() - started

    index_dir = work / "index"
    cpu = cpu_seconds()
    started = time.perf_counter()
    entries, summary = index_videos(videos, settings, index_dir, workers=1)
    index_seconds = time.perf_counter() - started
    index_cpu = cpu_seconds() - cpu
    started = time.perf_counter()
    index_videos(videos, settings, work / "index2", workers=2)
    parallel_seconds = time.perf_counter() - started

    ours: dict = {}
    scores: dict = {"face": {"match": [], "other": []}, "voice": {"match": [], "other": []}}
    query_times = []
    samples: list = []
    for person in range(PEOPLE):
        for modality, flag, query in (("face", "face", photos[person]), ("voice", "voice", clips[person])):
            started = time.perf_counter()
            results = search(videos, work / f"out{person}{modality}", settings, index_dir, **{flag: query})
            query_times.append(time.perf_counter() - started)
            for hit in results["hits"]:
                # a face query's `speaking` and enrolled `voice` hits are scored by bench.asd, not here
                if hit["modality"] != modality:
                    continue
                video = Path(hit["video"])
                truth = truths[videos.index(video)]
                share = precision_recall([(hit["start"], hit["end"])], truth_of(truth, person, modality))[0]
                scores[modality]["match" if share > 0.5 else "other"].append(hit["score"])
                samples.append((modality, person, hit["score"], round(share, 3), hit["end"] - hit["start"]))
                if hit["match"]:
                    ours.setdefault((video, person, modality), []).append((hit["start"], hit["end"]))
    peer_found, peer_seconds, peer_cpu = peer(videos, photos, clips)
    thresholds = sweep(work, videos, truths)

    short = work / "short.mp4"
    subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-y", "-i", str(videos[0]), "-t", str(seconds / 4), "-c",
                    "copy", str(short)], check=True)
    rss_short, rss_long = peak_rss(short, work / "rss1"), peak_rss(videos[0], work / "rss2")
    return {
        "machine": f"{os.cpu_count()} cores", "videos": count, "video_seconds": round(total, 1),
        "video_mbit_per_s": round(sum(v.stat().st_size for v in videos) * 8 / total / 1e6, 2),
        "compose_seconds": round(compose_seconds, 1),
        "ours": score_table(ours, videos, truths), "peer": score_table(peer_found, videos, truths),
        "index_seconds": round(index_seconds, 2), "index_cpu_seconds": round(index_cpu, 2),
        "index_parallel_seconds": round(parallel_seconds, 2),
        "index_seconds_per_minute": round(index_seconds / total * 60, 2),
        "realtime_factor": round(total / index_seconds, 2),
        "ffmpeg_seconds": round(ffmpeg_seconds, 2), "ffmpeg_seconds_per_minute": round(ffmpeg_seconds / total * 60, 2),
        "peer_seconds": round(peer_seconds, 2), "peer_cpu_seconds": round(peer_cpu, 2),
        "query_seconds_max": round(max(query_times), 3),
        "query_seconds_median": round(float(np.median(query_times)), 3),
        "peak_rss_mib": {f"{seconds / 4:.0f} s": round(rss_short, 1), f"{seconds:.0f} s": round(rss_long, 1)},
        "scores": {m: {k: {"n": len(v), "min": round(min(v), 3) if v else None, "max": round(max(v), 3) if v else None}
                       for k, v in d.items()} for m, d in scores.items()},
        "thresholds": {"face": FACE_THRESHOLD, "voice": voice_rule("campplus"), "peer_voice": VOICE_THRESHOLD},
        "face_rate": face_rate,
        "sweep": thresholds,
        "samples": samples,
        "breakdown": [e.meta["timings"] for e in entries],
        "truth": [{"on_screen": t.on_screen, "speaking": t.speaking, "cuts": t.cuts} for t in truths],
        "summary": summary,
    }


def rows(seconds: float = 83.0, count: int = 2, keep: Path | None = None, face_rate: float = 2.0
         ) -> list[tuple[str, str, float]]:
    """The bench table rows (python -m bench search)."""
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        report = run(seconds, count, keep, face_rate)
        (keep / "report.json").write_text(json.dumps(report, indent=1, default=str))
    else:
        with tempfile.TemporaryDirectory(prefix="apes-bench-search-") as folder:
            report = run(seconds, count, Path(folder), face_rate)
    print(json.dumps({k: v for k, v in report.items() if k not in ("samples", "truth")}, indent=1), file=sys.stderr)
    ours, theirs = report["ours"], report["peer"]
    out = []
    for modality in ("face", "voice"):
        for measure in ("precision", "recall"):
            value, base = ours[modality][measure], theirs[modality][measure]
            out.append((f"{modality} {measure}, mean over 5 people: {value:.3f}", f"peer: {base:.3f}",
                        value / base if base else float("inf")))
    out.append((f"index 1280x720: {report['index_seconds_per_minute']:.1f} s per video minute "
                f"({report['realtime_factor']:.1f}x real time)",
                f"bare ffmpeg decode at the same rate: {report['ffmpeg_seconds_per_minute']:.1f} s/min",
                report["ffmpeg_seconds_per_minute"] / report["index_seconds_per_minute"]))
    out.append((f"index wall time: {report['index_seconds']:.1f} s", f"peer: {report['peer_seconds']:.1f} s",
                report["peer_seconds"] / report["index_seconds"]))
    out.append((f"query on indexed videos, max: {report['query_seconds_max']:.2f} s", "goal 1 s",
                1.0 / max(report["query_seconds_max"], 1e-6)))
    rss = list(report["peak_rss_mib"].items())
    out.append((f"peak RSS indexing {rss[1][0]}: {rss[1][1]:.0f} MiB", f"{rss[0][0]}: {rss[0][1]:.0f} MiB",
                rss[1][1] / rss[0][1]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=83.0, help="length of each composited video")
    parser.add_argument("--videos", type=int, default=2, help="how many videos")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep videos, results and report.json")
    parser.add_argument("--face-rate", type=float, default=2.0, help="apes face samples per second")
    args = parser.parse_args()
    for figure, baseline, ratio in rows(args.seconds, args.videos, args.keep, args.face_rate):
        print(f"| {figure} | {baseline} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
