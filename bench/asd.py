"""Who is speaking: active speaker detection in `apes-cli index` and the `speaking` / enrolled `voice` hits
of a face query, on composed 1280x720 videos of real photos that talk (tests/talking_media.py).

Two casts: "group" (the group photo's faces, fixtures/sample.wav and realdev's interview voices) is the
one the thresholds were chosen on; "realdev" (realdev's four portraits, its speaker T and read speech) is
the check. Each video: the target person T and three others in nine shots: T speaking beside a face whose
lips move to unheard speech (the hard negative), the reverse, T heard off screen over another face, three
faces with T speaking, T alone and silent, another person alone speaking, T heard with nobody on screen,
a shot where the other person speaks and then T, and two others with the silent one's lips moving to T's
speech.

Figures (time overlap with the exact truth):
- lips: of the speech seconds in shots where two faces move their lips, the share given to the face in
  sync and the share given to the other;
- speaking hits of a face query of T (a mirrored, rescaled copy of the photo): precision and recall
  against T on screen and heard (Seen & Heard);
- enrolled voice hits of the same query: precision and recall against everything T says, off screen too;
- speed: index seconds per video minute, and the active speaker pass's share of it (baseline: the same
  index without that pass, i.e. its total minus the pass).
Run: .venv/bin/python -m bench.asd [--cast realdev] [--keep DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from search_media import merged, overlap_seconds, precision_recall  # noqa: E402
from talking_media import Scene, TalkTruth, compose_talking, realdev_voice, sample_piece, talkers  # noqa: E402

WIDTH, HEIGHT, FPS = 1280, 720, 25
TARGET = 0


def voices(cast: str) -> dict[int, list[np.ndarray]]:
    """Speech pieces per person of the cast (person -> pieces); -1 is a voice never on screen."""
    rate = 16000
    if cast == "group":
        interview = realdev_voice("interview-3-speakers")
        cut = lambda a, b: interview[int(a * rate):int(b * rate)]  # noqa: E731
        return {0: [sample_piece(10.6, 14.45), sample_piece(18.6, 21.45), sample_piece(27.9, 30.0),
                    sample_piece(8.35, 9.9), sample_piece(10.6, 13.0)],
                1: [sample_piece(21.8, 25.8), sample_piece(14.5, 17.9)],
                2: [cut(0.0, 5.5)], 3: [cut(6.5, 12.0)], -1: [cut(17.0, 25.0)]}
    t = [realdev_voice(f"speaker-T-{name}") for name in ("4glfwiMXgwQ", "F2PiuixG0NY", "dpJE5qd9CRM")]
    return {0: [t[0][5 * rate:9 * rate], t[1][5 * rate:9 * rate], t[2][5 * rate:8 * rate], t[0][20 * rate:23 * rate],
                t[1][20 * rate:24 * rate]],
            1: [realdev_voice("read-p240_00000")], 2: [realdev_voice("read-p260_00000")],
            3: [realdev_voice("read-3575_00000")], -1: [realdev_voice("read-6829_00000")]}


def plan(cast: str) -> list[Scene]:
    """The nine shots (module docstring); T = person 0, others 1-3."""
    v = voices(cast)
    rate = 16000

    def length(*pieces: np.ndarray) -> float:
        return round(sum(p.size for p in pieces) / rate + 0.6, 1)

    t0, t1, t2, t3, t4 = v[0]
    return [
        Scene(length(t0), [(0, 0.3), (1, 0.7)], [(0, t0)], {1: v[1][0]}, background=(70, 90, 110)),
        Scene(length(v[1][0]), [(0, 0.3), (1, 0.7)], [(1, v[1][0])], {0: t1}, background=(100, 80, 70)),
        Scene(length(t1), [(2, 0.5)], [(0, t1)], background=(60, 100, 60)),
        Scene(length(t2), [(2, 0.2), (3, 0.5), (0, 0.8)], [(0, t2)], {3: v[3][0]}, size=0.4,
              background=(90, 90, 90)),
        Scene(3.0, [(0, 0.5)], background=(50, 60, 100)),
        Scene(length(v[3][0]), [(3, 0.5)], [(3, v[3][0])], background=(110, 70, 90)),
        Scene(length(t3), [], [(0, t3)], background=(30, 30, 30)),
        Scene(length(v[2][0][:3 * rate], t4), [(0, 0.3), (2, 0.7)], [(2, v[2][0][:3 * rate]), (0, t4)],
              background=(80, 110, 100)),
        Scene(length(v[2][0]), [(1, 0.3), (2, 0.7)], [(2, v[2][0])], {1: t0}, background=(100, 100, 60)),
    ]


def query_photo(cast: str, folder: Path) -> Path:
    """A mirrored, rescaled copy of T's photo (mouth closed)."""
    face = cv2.flip(cv2.resize(talkers(cast)[TARGET].face, (200, 200), interpolation=cv2.INTER_AREA), 1)
    path = folder / "target.jpg"
    cv2.imwrite(str(path), cv2.cvtColor(face, cv2.COLOR_RGB2BGR))
    return path


def track_people(entry: Path, scenes: list[Scene]) -> dict[int, int]:
    """Track id -> person, by the box centre at the track's middle against the shot's layout."""
    import pyarrow.parquet as pq
    bounds = np.cumsum([0.0] + [round(s.seconds * FPS) / FPS for s in scenes])
    out = {}
    for row in pq.read_table(entry / "faces.parquet").to_pylist():
        middle = (row["start"] + row["end"]) / 2
        shot = scenes[int(np.searchsorted(bounds, middle, side="right")) - 1]
        boxes = np.asarray(row["boxes"]).reshape(-1, 4)
        x = float(np.mean((boxes[:, 0] + boxes[:, 2]) / 2))
        if shot.faces:
            out[row["track"]] = min(shot.faces, key=lambda f: abs(f[1] - x))[0]
    return out


def lips_figure(entry: Path, scenes: list[Scene], truth: TalkTruth) -> dict[str, float]:
    """Of the speech seconds in shots with two faces whose lips move: shares to the face in sync / the other."""
    import pyarrow.parquet as pq
    people = track_people(entry, scenes)
    rows = pq.read_table(entry / "speech.parquet").to_pylist()
    bounds = np.cumsum([0.0] + [round(s.seconds * FPS) / FPS for s in scenes])
    speech = in_sync = other = 0.0
    for number, scene in enumerate(scenes):
        moving = set(scene.lips) | {speaker for speaker, _ in scene.turns if any(f == speaker for f, _ in scene.faces)}
        if len(scene.faces) < 2 or len(moving) < 2:
            continue
        shot = [(bounds[number], bounds[number + 1])]
        for person in {speaker for speaker, _ in scene.turns}:
            spoken = [(max(a, shot[0][0]), min(b, shot[0][1])) for a, b in truth.seen_heard.get(person, [])
                      if min(b, shot[0][1]) > max(a, shot[0][0])]
            speech += sum(b - a for a, b in spoken)
            given = [(r["start"], r["end"]) for r in rows if people.get(r["speaker_track"]) == person]
            taken = [(r["start"], r["end"]) for r in rows
                     if r["speaker_track"] >= 0 and people.get(r["speaker_track"]) not in (person, None)]
            in_sync += overlap_seconds(given, spoken)
            other += overlap_seconds(taken, spoken)
    return {"speech_seconds": round(speech, 2), "to_face_in_sync": round(in_sync / speech, 3),
            "to_other_face": round(other / speech, 3)}


def run(cast: str, work: Path) -> dict:
    """Compose, index, search; the figures of the module docstring."""
    from stages.footage.indexing import index_videos
    from stages.footage.search import search
    from stages.footage.settings import IndexSettings
    scenes = plan(cast)
    video = work / f"talk-{cast}.mp4"
    saved = work / f"truth-{cast}.json"
    if video.is_file() and saved.is_file():  # a kept folder: the same video again (composing takes minutes)
        fields = json.loads(saved.read_text())
        truth = TalkTruth(fields.pop("duration"), *({int(k): [tuple(x) for x in v] for k, v in fields[name].items()}
                                                    for name in ("on_screen", "heard", "seen_heard", "out_of_sync")),
                          fields["cuts"])
    else:
        truth = compose_talking(video, cast, scenes, WIDTH, HEIGHT, FPS)
        saved.write_text(json.dumps(dataclasses.asdict(truth)))
    index_dir = work / "index"
    started = time.perf_counter()
    entries, summary = index_videos([video], IndexSettings(), index_dir)
    wall = time.perf_counter() - started
    timings = entries[0].meta["timings"]
    results = search([video], work / "out", IndexSettings(), index_dir, face=query_photo(cast, work))
    hits = results["hits"]
    speaking = [(h["start"], h["end"]) for h in hits if h["modality"] == "speaking" and h["match"]]
    voice = [(h["start"], h["end"]) for h in hits if h["modality"] == "voice" and h["match"]]
    sp, sr = precision_recall(speaking, truth.seen_heard.get(TARGET, []))
    vp, vr = precision_recall(voice, truth.heard.get(TARGET, []))
    minutes = truth.duration / 60
    return {
        "cast": cast, "duration": truth.duration, "lips": lips_figure(entries[0].path, scenes, truth),
        "speaking": {"precision": round(sp, 3), "recall": round(sr, 3),
                     "truth_seconds": round(sum(b - a for a, b in merged(truth.seen_heard.get(TARGET, []))), 2)},
        "enrolled_voice": {"precision": round(vp, 3), "recall": round(vr, 3),
                           "truth_seconds": round(sum(b - a for a, b in merged(truth.heard.get(TARGET, []))), 2),
                           "enrolment": results["query"].get("enrolled_voice")},
        "index_seconds": round(wall, 2), "index_seconds_per_minute": round(wall / minutes, 2),
        "realtime_factor": round(truth.duration / wall, 2), "asd_seconds": timings.get("asd_seconds"),
        "asd_share": round(timings.get("asd_seconds", 0.0) / max(timings["total_seconds"], 1e-9), 3),
        "timings": timings,
    }


def rows(cast: str = "realdev", keep: Path | None = None) -> list[tuple[str, str, float]]:
    """The bench table rows (python -m bench asd)."""
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        report = run(cast, keep)
        (keep / f"report-{cast}.json").write_text(json.dumps(report, indent=1, default=str))
    else:
        with tempfile.TemporaryDirectory(prefix="apes-bench-asd-") as folder:
            report = run(cast, Path(folder))
    print(json.dumps(report, indent=1, default=str), file=sys.stderr)
    lips, speaking, voice = report["lips"], report["speaking"], report["enrolled_voice"]
    without = report["index_seconds"] - report["asd_seconds"]
    return [
        (f"{cast}: speech seconds to the face in sync: {lips['to_face_in_sync']:.3f}",
         f"to the other moving face: {lips['to_other_face']:.3f}",
         lips["to_face_in_sync"] / max(lips["to_other_face"], 1e-3)),
        (f"{cast}: speaking hits precision {speaking['precision']:.3f}, recall {speaking['recall']:.3f}",
         "goal 0.90 / 0.80", min(speaking["precision"] / 0.9, speaking["recall"] / 0.8)),
        (f"{cast}: enrolled voice hits precision {voice['precision']:.3f}, recall {voice['recall']:.3f}",
         "goal 0.90 / 0.70", min(voice["precision"] / 0.9, voice["recall"] / 0.7)),
        (f"{cast}: index 1280x720, two or three faces talking: {report['realtime_factor']:.2f}x real time, "
         f"active speaker pass {100 * report['asd_share']:.0f} % of it",
         f"same index without the pass: {report['duration'] / max(without, 1e-9):.2f}x real time",
         without / report["index_seconds"]),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cast", choices=("group", "realdev"), default="realdev")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep the video, results and report")
    args = parser.parse_args()
    for figure, baseline, ratio in rows(args.cast, args.keep):
        print(f"| {figure} | {baseline} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
