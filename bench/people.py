"""Benchmark `apes-cli people` on videos composed from real faces and voices with exact truth.

Two parts, never mixed: thresholds are chosen on CHOOSE and reported on CHECK.
  choose: faces 0-4 of fixtures/group-photo-6-faces.jpg (face 5: the stranger); voices: the two speakers of
          fixtures/sample.wav and speakers A, B, C of realdev/voices/interview-3-speakers.mp3 (its reference
          stretches); a voice never on screen: realdev read-p260.
  check:  faces: the four realdev portraits and the first face of realdev/faces/multiface.jpg (its second: the
          stranger); voices: speaker T (realdev speaker-T-*, a different recording in each video), read-3575,
          read-6829, read-8230; person 4 never speaks; a voice never on screen: read-p240.
Each part: two videos of random shots of 2.5-6 s (one person silent, one speaking, a voice off screen, two
people with one speaking, the stranger silent, the unseen voice off screen, one person silent on screen while
another speaks off screen), 640x360, 25 fps.
Measured per reference person, as pyannote.metrics defines them: coverage (share of a person's on-screen or
speaking time found under one found person) and purity (share of a found person's time that is one reference
person's), means over people; merged = a found person holding most of the time of two reference people.
Also the DER of the RTTM of fixtures/sample.wav alone against fixtures/sample.rttm, and the people step's
seconds per indexed hour (the index tables of the check videos repeated to an hour).
Run: .venv/bin/python -m bench.people [--keep DIR] [--sweep]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from search_media import (FIXTURES, RATE, SAMPLE_RTTM, Shot, Truth, compose, group_faces,  # noqa: E402
                          merged, overlap_seconds, voice_piece)

from stages.footage.settings import IndexSettings  # noqa: E402

REALDEV = FIXTURES / "realdev"
PEOPLE = 5


@lru_cache(maxsize=None)
def photo_faces(name: str) -> tuple[np.ndarray, ...]:
    """The faces of one realdev photo, left to right, as RGB squares with a wide margin."""
    from stages.footage.detection import detect_faces
    from stages.media.face_crop import crop_rgb
    photo = cv2.cvtColor(cv2.imread(str(REALDEV / "faces" / name)), cv2.COLOR_BGR2RGB)
    faces = sorted(detect_faces(photo, upsample=1), key=lambda f: f.box[0])
    return tuple(crop_rgb(photo, f.box, 220, 0.45) for f in faces)


@lru_cache(maxsize=None)
def clip(name: str) -> np.ndarray:
    """A realdev recording, 16 kHz mono float."""
    from stages.footage.speech import read_clip
    return read_clip(REALDEV / "voices" / name)


def pieces(audio: np.ndarray, count: int) -> list[np.ndarray]:
    """`count` consecutive equal pieces."""
    return [part for part in np.array_split(audio, count)]


def part(name: str) -> tuple[tuple[np.ndarray, ...], list[list[list[np.ndarray]]], list[list[np.ndarray]]]:
    """Faces (5 people + stranger), voice pieces per video per person ([] = silent), unseen-voice pieces."""
    if name == "choose":
        faces = group_faces()
        interview = clip("interview-3-speakers.mp3")
        stretch = {"A": (0.0, 5.5), "B": (6.5, 12.0), "C": (17.0, 25.0)}
        inter = {k: interview[int(a * RATE):int(b * RATE)] for k, (a, b) in stretch.items()}
        voices = [[voice_piece("speaker90", i) for i in range(4)],
                  [voice_piece("speaker91", 0), voice_piece("speaker91", 1)],
                  pieces(inter["A"], 2), pieces(inter["B"], 2), pieces(inter["C"], 3)]
        per_video = [voices, voices]
        unseen = pieces(clip("read-p260_00000.mp3"), 2)
    else:
        faces = tuple(photo_faces(f)[0] for f in ("angelina_jolie.jpg", "kate_siegel.jpg", "paul_rudd.jpg",
                                                    "shea_whigham.jpg")) + photo_faces("multiface.jpg")[:2]
        reads = [pieces(clip(f"read-{n}_00000.mp3"), 2) for n in ("3575", "6829", "8230")]
        per_video = [[pieces(clip(f"speaker-T-{rec}.mp3")[:20 * RATE], 5), *reads, []]
                     for rec in ("4glfwiMXgwQ", "F2PiuixG0NY")]
        unseen = pieces(clip("read-p240_00000.mp3"), 2)
    return faces, per_video, unseen


def plan(seconds: float, seed: int, voices: list[list[np.ndarray]], unseen: list[np.ndarray]) -> list[Shot]:
    """A random sequence of the seven shot kinds, about `seconds` long (face 5 = the stranger)."""
    rng = np.random.default_rng(seed)
    kinds = ["silent", "speaking", "off_screen", "two", "stranger", "speaking", "two", "unseen", "listener"]
    shots, total = [], 0.0
    while total < seconds:
        kind = kinds[int(rng.integers(len(kinds)))]
        person = int(rng.integers(PEOPLE))
        length = float(rng.uniform(2.5, 6.0))
        look = dict(background=tuple(int(v) for v in rng.integers(20, 200, 3)), gain=float(rng.uniform(0.85, 1.1)),
                    angle=float(rng.uniform(-6, 6)), drift=float(rng.uniform(-0.06, 0.06)))
        size = float(rng.uniform(0.4, 0.6))
        said = voices[person][int(rng.integers(len(voices[person])))] if voices[person] else None
        who = f"p{person}" if said is not None else None
        if kind == "silent":
            shot = Shot(length, [(person, float(rng.uniform(0.3, 0.7)), size)], **look)
        elif kind == "speaking":
            shot = Shot(length, [(person, float(rng.uniform(0.3, 0.7)), size)], said, who, **look)
        elif kind == "off_screen" and said is not None:
            shot = Shot(length, [], said, who, **look)
        elif kind == "two":
            other = int((person + 1 + rng.integers(PEOPLE - 1)) % PEOPLE)
            pair = [(person, 0.27, size * 0.75), (other, 0.73, size * 0.75)]
            shot = Shot(length, pair if rng.random() < 0.5 else pair[::-1], said, who, **look)
        elif kind == "listener":  # one person on screen, silent, while another one speaks off screen
            speaker = int((person + 1 + rng.integers(PEOPLE - 1)) % PEOPLE)
            heard = voices[speaker][int(rng.integers(len(voices[speaker])))] if voices[speaker] else None
            shot = Shot(length, [(person, float(rng.uniform(0.3, 0.7)), size)], heard,
                        f"p{speaker}" if heard is not None else None, **look)
        elif kind == "unseen":
            shot = Shot(length, [], unseen[int(rng.integers(len(unseen)))], "unseen", **look)
        else:
            shot = Shot(length, [(5, float(rng.uniform(0.3, 0.7)), size)], **look)
        shots.append(shot)
        total += length
    return shots


def compose_part(name: str, folder: Path, seconds: float) -> tuple[list[Path], list[Truth]]:
    """Two videos of the part, with their truth."""
    faces, per_video, unseen = part(name)
    videos, truths = [], []
    for number, voices in enumerate(per_video):
        path = folder / f"{name}-{number}.mp4"
        seed = (0 if name == "choose" else 100) + number
        truths.append(compose(path, plan(seconds, seed, voices, unseen), seed=seed, faces=faces))
        videos.append(path)
    return videos, truths


def reference(truths: list[Truth], videos: list[Path]) -> dict[str, dict[tuple[str, str], list]]:
    """Per modality, per (video, reference person): the true intervals."""
    seen, heard = {}, {}
    for video, truth in zip(videos, truths):
        for face, spans in truth.on_screen.items():
            seen[(str(video), f"p{face}" if face < PEOPLE else "stranger")] = merged(spans)
        for voice, spans in truth.speaking.items():
            heard[(str(video), voice)] = merged(spans)
    return {"seen": seen, "heard": heard}


def coverage_purity(found: dict[tuple[str, str], list], truth: dict[tuple[str, str], list]) -> dict:
    """pyannote-style coverage per reference person and purity per found person (videos pooled)."""
    videos = sorted({v for v, _ in truth} | {v for v, _ in found})
    refs, hyps = sorted({r for _, r in truth}), sorted({h for _, h in found})
    shared = {(r, h): sum(overlap_seconds(truth.get((v, r), []), found.get((v, h), [])) for v in videos)
              for r in refs for h in hyps}
    ref_total = {r: sum(b - a for v in videos for a, b in truth.get((v, r), [])) for r in refs}
    hyp_total = {h: sum(b - a for v in videos for a, b in merged(found.get((v, h), []))) for h in hyps}
    coverage = {r: max([shared[r, h] for h in hyps], default=0.0) / ref_total[r] for r in refs if ref_total[r]}
    purity = {h: max([shared[r, h] for r in refs], default=0.0) / hyp_total[h] for h in hyps if hyp_total[h]}
    merged_people = [h for h in hyps if sum(shared[r, h] > 0.5 * ref_total[r] for r in refs if ref_total[r]) > 1]
    anyone = {v: merged([span for (w, _), spans in found.items() if w == v for span in spans]) for v in videos}
    reachable = sum(overlap_seconds(spans, anyone[v]) for (v, _), spans in truth.items())
    return {"coverage": float(np.mean(list(coverage.values()))) if coverage else 0.0,
            "purity": float(np.mean(list(purity.values()))) if purity else 0.0,
            "per_person_coverage": {r: round(c, 3) for r, c in coverage.items()},
            "per_found_purity": {h: round(p, 3) for h, p in purity.items()}, "merged": merged_people,
            "found_by_anyone": reachable / max(sum(ref_total.values()), 1e-9)}


def joined(document: dict, truth: dict[str, dict[tuple[str, str], list]]) -> list[int]:
    """[people whose face and voice were found as one person, people both on screen and speaking]: the found
    person holding most of their screen time also holds most of their speaking time."""
    def holder(kind: str, ref: str) -> str | None:
        shared = {p["id"]: sum(overlap_seconds(truth[kind].get((x["video"], ref), []), [(x["start"], x["end"])])
                               for x in p[kind]) for p in document["people"]}
        best = max(shared, key=shared.get, default=None)
        return best if best is not None and shared[best] > 0 else None

    refs = {r for _, r in truth["seen"]} & {r for _, r in truth["heard"]}
    return [sum(holder("seen", r) is not None and holder("seen", r) == holder("heard", r) for r in refs), len(refs)]


def score(document: dict, truths: list[Truth], videos: list[Path]) -> dict:
    """Seen and heard coverage / purity of a people.json document against the truth."""
    truth = reference(truths, videos)
    out = {}
    for kind in ("seen", "heard"):
        found: dict = {}
        for person in document["people"]:
            for item in person[kind]:
                found.setdefault((item["video"], person["id"]), []).append((item["start"], item["end"]))
        out[kind] = coverage_purity(found, truth[kind])
    both = {key: merged(truth["seen"].get(key, []) + truth["heard"].get(key, []))
            for key in set(truth["seen"]) | set(truth["heard"])}  # a person's time: on screen or speaking
    found_all: dict = {}
    for person in document["people"]:
        for item in person["seen"] + person["heard"]:
            found_all.setdefault((item["video"], person["id"]), []).append((item["start"], item["end"]))
    out["merged"] = coverage_purity(found_all, both)["merged"]
    out["joined"] = joined(document, truth)
    out["people_found"] = len(document["people"])
    return out


def der(hypothesis: str, reference_rttm: Path, step: float = 0.01) -> float:
    """Diarization error rate (missed + false alarm + confusion over reference speech), no collar, overlaps
    scored, speakers mapped one-to-one to maximise overlap (as pyannote.metrics does)."""
    from scipy.optimize import linear_sum_assignment

    def turns(text: str) -> dict[str, list[tuple[float, float]]]:
        out: dict = {}
        for line in text.splitlines():
            fields = line.split()
            if fields and fields[0] == "SPEAKER":
                out.setdefault(fields[7], []).append((float(fields[3]), float(fields[3]) + float(fields[4])))
        return out

    ref, hyp = turns(reference_rttm.read_text()), turns(hypothesis)
    end = max([b for spans in list(ref.values()) + list(hyp.values()) for _, b in spans], default=0.0)
    frames = int(np.ceil(end / step)) + 1

    def grid(spans_by: dict) -> tuple[list[str], np.ndarray]:
        names = sorted(spans_by)
        out = np.zeros((len(names), frames), bool)
        for i, name in enumerate(names):
            for a, b in spans_by[name]:
                out[i, int(round(a / step)):int(round(b / step))] = True
        return names, out

    _, r = grid(ref)
    _, h = grid(hyp)
    together = r.astype(np.int64) @ h.T.astype(np.int64) if len(h) else np.zeros((len(r), 0))
    rows, cols = linear_sum_assignment(-together) if together.size else ([], [])
    correct = np.zeros(frames, np.int64)
    for i, j in zip(rows, cols):
        correct += r[i] & h[j]
    n_ref, n_hyp = r.sum(0), h.sum(0) if len(h) else np.zeros(frames, np.int64)
    return float((np.maximum(n_ref, n_hyp) - correct).sum() / max(n_ref.sum(), 1))


def audio_only_der(folder: Path, index_dir: Path) -> float:
    """The people RTTM of fixtures/sample.wav alone (a faceless video) against fixtures/sample.rttm."""
    from stages.footage.people_outputs import people
    from search_media import sample_audio
    audio = sample_audio()
    video = folder / "sample.mp4"
    compose(video, [Shot(audio.size / RATE, [], audio, "sample")], noise=0.0)
    people([video], folder / "sample-people", IndexSettings(), index_dir)
    return der((folder / "sample-people" / "sample.rttm").read_text(), SAMPLE_RTTM)


def people_seconds_per_hour(index_paths: list[Path]) -> tuple[float, int, int]:
    """Seconds of find_people + describe on the given indexes repeated to about an hour of video."""
    from stages.footage.index_store import read_entry
    from stages.footage.people import describe, find_people
    indexes = [read_entry(p) for p in index_paths]
    hour = sum(i.meta["duration"] for i in indexes)
    copies = int(np.ceil(3600 / hour))
    many = [i for _ in range(copies) for i in indexes]
    started = time.perf_counter()
    describe(find_people(many), many, [f"v{k}" for k in range(len(many))])
    seconds = time.perf_counter() - started
    return seconds * 3600 / (hour * copies), sum(i.faces.num_rows for i in many), sum(i.speech.num_rows for i in many)


def run(folder: Path, seconds: float, sweep: bool) -> dict:
    """Compose, index, find people and score both parts; the DER and the speed row."""
    from stages.footage.index_store import read_entry
    from stages.footage.indexing import index_videos
    from stages.footage.people import FACE_LINK, VOICE_LINK, describe, find_people, voice_link_for
    from stages.footage.people_outputs import people
    index_dir = folder / "index"
    report: dict = {}
    for name in ("choose", "check"):
        videos, truths = compose_part(name, folder, seconds)
        document = people(videos, folder / f"{name}-people", IndexSettings(), index_dir)
        report[name] = score(document, truths, videos)
        entries, _ = index_videos(videos, IndexSettings(), index_dir)
        indexes = [read_entry(e.path) for e in entries]
        report[f"{name}_alone"] = []  # each video on its own: fewer faces given speech to seed voices
        for index, video, truth in zip(indexes, videos, truths):
            alone = score({"people": describe(find_people([index]), [index], [str(video)])}, [truth], [video])
            report[f"{name}_alone"].append({k: (round(alone[k]["coverage"], 3), round(alone[k]["purity"], 3))
                                            for k in ("seen", "heard")} | {"merged": len(alone["merged"]),
                                                                           "joined": alone["joined"]})
        if sweep and name == "choose":  # the rules are chosen on the choose part only; check is reported
            grid = {}
            links = (0.60, 0.65, 0.70, 0.75, 0.80, 0.85) if voice_link_for(indexes) == VOICE_LINK else \
                (0.25, 0.30, 0.35, 0.40, 0.45, 0.50, 0.55)
            for face in (0.40, FACE_LINK):
                for mean, check in ((False, False), (True, False), (True, True)):
                    for voice in links:
                        found = describe(find_people(indexes, face, voice, mean, check), indexes,
                                         [str(v) for v in videos])
                        result = score({"people": found}, truths, videos)
                        rule = ("mean" if mean else "average") + ("+checked" if check else "")
                        grid[f"{face:.2f}/{rule} {voice:.2f}"] = {
                            k: (round(result[k]["coverage"], 3), round(result[k]["purity"], 3))
                            for k in ("seen", "heard")} | {"merged": len(result["merged"]), "people": len(found),
                                                                 "joined": result["joined"]}
            report[f"{name}_sweep"] = grid
        report[f"{name}_index"] = [document["videos"][i]["index"] for i in range(len(videos))]
    report["sample_der"] = audio_only_der(folder, index_dir)
    per_hour, tracks, segments = people_seconds_per_hour([Path(p) for p in report["check_index"] + report["choose_index"]])
    report["people_seconds_per_indexed_hour"] = {"seconds": round(per_hour, 3), "tracks": tracks, "segments": segments}
    return report


def rows(seconds: float = 90.0) -> list[tuple[str, str, float]]:
    """The bench table rows (python -m bench people)."""
    with tempfile.TemporaryDirectory(prefix="apes-bench-people-") as folder:
        report = run(Path(folder), seconds, sweep=False)
    print(json.dumps(report, indent=1), file=sys.stderr)
    check = report["check"]
    hour = report["people_seconds_per_indexed_hour"]
    return [(f"people, check part: seen coverage {check['seen']['coverage']:.3f} / purity {check['seen']['purity']:.3f}",
             "goal 0.90 / 0.95", min(check["seen"]["coverage"] / 0.90, check["seen"]["purity"] / 0.95)),
            (f"people, check part: heard coverage {check['heard']['coverage']:.3f} / purity "
             f"{check['heard']['purity']:.3f}", "goal 0.80 / 0.90",
             min(check["heard"]["coverage"] / 0.80, check["heard"]["purity"] / 0.90)),
            (f"people seconds per indexed hour: {hour['seconds']:.2f} s ({hour['tracks']} tracks, "
             f"{hour['segments']} segments)", "goal 5 s", 5.0 / max(hour["seconds"], 1e-9))]


def main() -> None:
    """Command line: run and print the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="keep the videos, indexes and outputs here")
    parser.add_argument("--seconds", type=float, default=90.0, help="length of each video")
    parser.add_argument("--sweep", action="store_true", help="also score a grid of link thresholds")
    args = parser.parse_args()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        report = run(args.keep, args.seconds, args.sweep)
    else:
        with tempfile.TemporaryDirectory(prefix="apes-bench-people-") as folder:
            report = run(Path(folder), args.seconds, args.sweep)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
