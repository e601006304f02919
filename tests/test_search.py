"""apes-cli index / search on a composited video of real faces and real voices with exact ground truth.

The video (tests/search_media.py): 12.5 s at 640x360, five shots cut hard:
  0.00-2.48  person A alone, silent             7.96-10.44  person A alone, speaking with voice 90
  2.48-4.96  no face, voice 90 off screen       10.44-12.44 stranger D alone, silent
  4.96-7.96  persons B and C, voice 91
A = face 0 of the group photo (queried with a mirrored, rescaled copy); voices = the two real speakers of
fixtures/sample.wav (the query clip is another stretch of speaker 90 than any the video uses).
"""

from __future__ import annotations

import json
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from apes_cli.main import app
from stages.footage.association import associate
from stages.footage.frames import CutFinder
from stages.footage.tracking import Detection, Tracker

sys.path.insert(0, str(Path(__file__).parent))
from search_media import (Shot, compose, group_faces, precision_recall, voice_piece,  # noqa: E402
                          write_wav)

runner = CliRunner()
A, B, C, D = 0, 1, 3, 5
FPS = 25


@pytest.fixture(scope="session")
def footage(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The composited video, the query photo and clip, and the truth."""
    root = tmp_path_factory.mktemp("search")
    shots = [
        Shot(2.5, [(A, 0.5, 0.45)]),
        Shot(2.5, [], voice_piece("speaker90", 1), "speaker90", (30, 110, 40)),
        Shot(3.0, [(B, 0.3, 0.4), (C, 0.7, 0.4)], voice_piece("speaker91", 1), "speaker91", (120, 70, 60)),
        Shot(2.5, [(A, 0.45, 0.5)], voice_piece("speaker90", 2), "speaker90", (90, 90, 90)),
        Shot(2.0, [(D, 0.5, 0.45)], background=(40, 40, 90)),
    ]
    video = root / "clip.mp4"
    truth = compose(video, shots, fps=FPS)
    photo = root / "a.jpg"
    face = cv2.flip(cv2.resize(group_faces()[A], (180, 180), interpolation=cv2.INTER_AREA), 1)
    cv2.imwrite(str(photo), cv2.cvtColor(face, cv2.COLOR_RGB2BGR))
    clip = root / "voice90.wav"
    write_wav(clip, voice_piece("speaker90", 0))
    index_dir = root / "index"
    result = runner.invoke(app, ["index", str(video), "--index-dir", str(index_dir)])
    assert result.exit_code == 0, result.output
    return {"root": root, "video": video, "truth": truth, "photo": photo, "clip": clip, "index": index_dir}


def run_search(footage: dict, out: Path, *args: str):
    return runner.invoke(app, ["search", str(footage["video"]), "--index-dir", str(footage["index"]),
                               "--out", str(out), *args])


@pytest.fixture(scope="session")
def face_results(footage: dict) -> dict:
    out = footage["root"] / "face"
    result = run_search(footage, out, "--face", str(footage["photo"]))
    assert result.exit_code == 0, result.output
    return {"json": json.loads((out / "results.json").read_text()), "html": (out / "results.html").read_text(),
            "output": result.output}


def ranges(hits: list[dict], modality: str) -> list[tuple[float, float]]:
    return [(h["start"], h["end"]) for h in hits if h["match"] and h["modality"] == modality]


def test_face_query_finds_the_person_exactly_between_the_shot_cuts(footage: dict, face_results: dict) -> None:
    hits = face_results["json"]["hits"]
    precision, recall = precision_recall(ranges(hits, "face"), footage["truth"].on_screen[A])
    assert precision >= 0.97 and recall >= 0.97, (precision, recall, hits)
    cuts = footage["truth"].cuts
    for start, end in ranges(hits, "face"):  # boundaries on the cuts (or the video ends), to a frame
        assert min(abs(start - c) for c in [0.0, *cuts]) <= 1.0 / FPS
        assert min(abs(end - c) for c in [*cuts, footage["truth"].duration]) <= 1.0 / FPS
    # B, C and the stranger D are on screen too, and are scored but not matched
    others = [h for h in hits if h["modality"] == "face" and not h["match"]]
    assert len(others) == 3 and max(h["score"] for h in others) < min(h["score"] for h in hits if h["match"])
    assert "clip.mp4" in face_results["output"] and "face" in face_results["output"]


def test_results_json_follows_the_contract(footage: dict, face_results: dict) -> None:
    results = face_results["json"]
    assert set(results) >= {"query", "videos", "hits"}
    assert results["query"]["face"]["faces_found"] == 1 and results["query"]["face"]["face_index"] == 1
    assert results["videos"][0]["path"] == str(footage["video"]) and results["videos"][0]["cuts"] == 4
    scores = [h["score"] for h in results["hits"]]
    assert scores == sorted(scores, reverse=True)
    threshold = {"face": results["query"]["face"]["threshold"], "speaking": results["query"]["face"]["threshold"],
                 "voice": results["query"]["enrolled_voice"]["threshold"]}
    for hit in results["hits"]:
        assert {"video", "start", "end", "score", "match", "modality", "track"} <= set(hit)
        assert isinstance(hit["start"], float) and isinstance(hit["end"], float) and hit["start"] < hit["end"]
        assert hit["match"] == (hit["score"] >= threshold[hit["modality"]])
        assert hit["modality"] != "voice" or hit["enrolled_from"]  # a face query's voice hits: her enrolled voice


def test_threshold_option_moves_the_decision(footage: dict, face_results: dict) -> None:
    scores = sorted(h["score"] for h in face_results["json"]["hits"])
    middle = (scores[0] + scores[1]) / 2  # only the lowest-scoring track falls under it
    result = run_search(footage, footage["root"] / "low", "--face", str(footage["photo"]), "--threshold", f"{middle}")
    assert result.exit_code == 0, result.output
    hits = json.loads((footage["root"] / "low" / "results.json").read_text())["hits"]
    assert sum(h["match"] for h in hits) == len(hits) - 1


def test_voice_query_finds_the_speaker_on_and_off_screen(footage: dict) -> None:
    out = footage["root"] / "voice"
    result = run_search(footage, out, "--voice", str(footage["clip"]))
    assert result.exit_code == 0, result.output
    hits = json.loads((out / "results.json").read_text())["hits"]
    precision, recall = precision_recall(ranges(hits, "voice"), footage["truth"].speaking["speaker90"])
    assert precision >= 0.9 and recall >= 0.85, (precision, recall, hits)
    off_screen = [h for h in hits if h["match"] and h["end"] <= 4.96 + 0.05]
    assert off_screen and all(h["faces"] == [] for h in off_screen)  # heard, nobody on screen
    on_screen = [h for h in hits if h["match"] and h["start"] >= 7.9]
    # the only face on screen speaks: a still photo's lips contradict nothing (docs/search.md, Who is speaking)
    assert on_screen and on_screen[0]["speaker_face"] is not None


def test_both_queries_give_seen_and_heard_hits(footage: dict) -> None:
    out = footage["root"] / "both"
    result = run_search(footage, out, "--face", str(footage["photo"]), "--voice", str(footage["clip"]))
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    hits = results["hits"]
    assert {h["modality"] for h in hits} <= {"face", "voice", "speaking"}
    # A is seen and heard only in the fourth shot (7.96-10.44, voice until its piece ends)
    precision, recall = precision_recall(ranges(hits, "speaking"), [(7.96, 7.96 + 2.1)])
    assert precision >= 0.95 and recall >= 0.9, hits
    assert all("voice_score" in h for h in hits if h["modality"] == "speaking")
    assert "enrolled_voice" not in results["query"]  # a voice clip was given: nothing to enrol


def test_second_query_reuses_the_index_and_takes_under_a_second(footage: dict, face_results: dict) -> None:
    summary = face_results["json"]["summary"]
    assert summary["index_built"] == 0 and summary["index_reused"] == 1
    assert summary["query_seconds"] < 1.0
    entries = list(footage["index"].iterdir())
    assert len(entries) == 1
    faces = pq.read_table(entries[0] / "faces.parquet")
    speech = pq.read_table(entries[0] / "speech.parquet")
    assert faces.num_rows == 5 and speech.num_rows >= 3  # A twice, B, C, D; three stretches of voice
    assert json.loads((entries[0] / "meta.json").read_text())["sha256"].startswith(entries[0].name.split("-")[0])


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.rows, self.images, self.links, self.external = [], [], [], []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attrs = dict(attrs)
        if tag == "tr" and "hit" in attrs.get("class", ""):
            self.rows.append(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        if tag == "a":
            self.links.append(attrs["href"])
        for key in ("src", "href"):
            if attrs.get(key, "").startswith(("http:", "https:", "//")):
                self.external.append(attrs[key])
        if tag in ("script", "link"):
            self.external.append(tag)


def test_results_page_is_self_contained_with_thumbnails_and_time_links(footage: dict, face_results: dict) -> None:
    page = _Page()
    page.feed(face_results["html"])
    hits = face_results["json"]["hits"]
    assert len(page.rows) == len(hits) and page.external == []
    assert [float(r["data-score"]) for r in page.rows] == pytest.approx([h["score"] for h in hits], abs=1e-4)
    video_uri = footage["video"].resolve().as_uri()
    assert page.links == [f"{video_uri}#t={h['start']:.2f}" for h in hits]
    assert len(page.images) == len(hits) + 1  # the query face, then one face per face hit
    for src in page.images:
        assert src.startswith("data:image/jpeg;base64,")
        import base64
        data = np.frombuffer(base64.b64decode(src.split(",", 1)[1]), np.uint8)
        assert cv2.imdecode(data, cv2.IMREAD_COLOR) is not None


def test_a_photo_with_several_faces_says_which_one_was_used(footage: dict) -> None:
    group = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "group-photo-6-faces.jpg"
    out = footage["root"] / "group"
    result = run_search(footage, out, "--face", str(group))
    assert result.exit_code == 0, result.output
    assert "faces found; using face" in result.output and "--face-index" in result.output
    chosen = run_search(footage, footage["root"] / "g1", "--face", str(group), "--face-index", "1")
    assert chosen.exit_code == 0, chosen.output
    results = json.loads((footage["root"] / "g1" / "results.json").read_text())
    assert results["query"]["face"]["face_index"] == 1 and results["query"]["face"]["faces_found"] == 6
    # face 1 of the photo (numbered left to right) is person A of the video
    assert ranges(results["hits"], "face") and precision_recall(
        ranges(results["hits"], "face"), footage["truth"].on_screen[A])[1] >= 0.97


def _fails_cleanly(result, *words: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and all(word in lines[0] for word in words), result.output


def test_bad_inputs_exit_2_naming_the_file_and_write_nothing(footage: dict, tmp_path: Path) -> None:
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("this is not a video\n")
    out = tmp_path / "out"
    _fails_cleanly(runner.invoke(app, ["search", str(not_video), "--face", str(footage["photo"]), "--out", str(out),
                                       "--index-dir", str(tmp_path / "ix")]), "notes.mp4", "video")
    blank = tmp_path / "wall.png"
    cv2.imwrite(str(blank), np.full((200, 200, 3), 128, np.uint8))
    _fails_cleanly(run_search(footage, out, "--face", str(blank)), "wall.png", "no face")
    _fails_cleanly(run_search(footage, out, "--face", str(footage["clip"])), "voice90.wav", "not a readable image")
    silence = write_wav(tmp_path / "quiet.wav", np.zeros(16000 * 3, np.float32))
    _fails_cleanly(run_search(footage, out, "--voice", str(silence)), "quiet.wav", "no speech")
    _fails_cleanly(run_search(footage, out, "--voice", str(blank)), "wall.png", "audio")
    _fails_cleanly(run_search(footage, out, "--face", str(footage["photo"]), "--face-index", "2"),
                   "a.jpg", "--face-index 2", "1 face")
    assert not out.exists() and not (tmp_path / "ix").exists()


def test_a_damaged_index_is_a_clear_error(footage: dict, tmp_path: Path) -> None:
    index = tmp_path / "index"
    subprocess.run(["cp", "-r", str(footage["index"]), str(index)], check=True)
    entry = next(index.iterdir())
    (entry / "speech.parquet").write_bytes(b"PAR1 truncated")
    out = tmp_path / "out"
    result = runner.invoke(app, ["search", str(footage["video"]), "--face", str(footage["photo"]),
                                 "--index-dir", str(index), "--out", str(out)])
    _fails_cleanly(result, "speech.parquet", "index")
    assert not out.exists()


def test_detection_threads_give_the_one_threads_index(footage: dict, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from stages.footage import face_pass
    monkeypatch.setattr(face_pass, "DETECT_THREADS", 1)
    result = runner.invoke(app, ["index", str(footage["video"]), "--index-dir", str(tmp_path / "one")])
    assert result.exit_code == 0, result.output
    tables = [pq.read_table(next(Path(root).glob("*/faces.parquet"))) for root in (footage["index"], tmp_path / "one")]
    assert tables[0].num_rows >= 4 and tables[0].equals(tables[1])


def test_tracker_bounds_tracks_by_cuts_and_bridges_short_gaps() -> None:
    step = 0.32
    tracker = Tracker(step, max_gap=0.7)
    box = np.array([0.4, 0.3, 0.6, 0.6], np.float32)
    blank = np.zeros((2, 2, 3), np.uint8)
    closed = []
    for k in range(10):  # seen on samples 0-3, missed on 4 and 5 (bridged), seen 6-9
        t = k * step
        seen = [] if k in (4, 5) else [Detection(t, box + 0.002 * k, 1.0, blank, blank)]
        closed += tracker.update(t, seen)
    assert closed == []
    closed += tracker.cut(3.1)  # a cut between samples 9 and 10
    closed += tracker.update(10 * step, [Detection(10 * step, box + 0.3, 1.0, blank, blank)])
    for k in range(11, 14):
        closed += tracker.update(k * step, [])  # gone for three samples: more than max_gap
    closed += tracker.finish(5.0)
    assert [(round(t.start, 3), round(t.end, 3), len(t.times)) for t in closed] == [
        (0.0, 3.1, 8),                      # from the video start to the cut, gap bridged
        (3.1, round(10 * step + step / 2, 3), 1),  # from the cut, ends half a step after its last sample
    ]


def test_cut_finder_ignores_motion_and_finds_hard_cuts() -> None:
    finder = CutFinder()
    rng = np.random.default_rng(0)
    smooth = cv2.GaussianBlur(rng.integers(0, 255, (36, 64, 3)).astype(np.uint8), (0, 0), 4)
    scene = cv2.normalize(smooth, None, 20, 235, cv2.NORM_MINMAX)  # a scene with shapes, not pixel noise
    for k in range(30):  # panning one pixel every third frame, then a cut to another picture
        frame = np.roll(scene, k // 3, axis=1) if k < 20 else 255 - scene
        finder.add(np.clip(frame.astype(int) + rng.integers(-3, 4, frame.shape), 0, 255).astype(np.uint8))
    assert finder.cuts == [20]


def test_speech_lists_the_faces_on_screen_during_it() -> None:
    tracks = [(0, 0.0, 5.0), (1, 4.0, 9.0), (2, 4.5, 9.0)]
    visible = associate([(0.5, 3.5), (4.0, 8.0), (9.5, 11.0), (2.0, 4.1)], tracks)
    assert visible[0] == [0]
    assert visible[1] == [1, 2, 0]        # longest overlap first
    assert visible[2] == []               # off screen
    assert visible[3] == [0]              # a sliver of track 1 at the start counts for nothing


def test_a_network_trained_by_the_pipeline_replaces_the_face_descriptor(footage: dict, tmp_path: Path) -> None:
    import torch

    from stages.learning.models import build_model, checkpoint_payload
    model = build_model("face", normalize=True)
    meta = {"run": "face_within_seen_heard_s0", "crop_size": 64, "crop_margin": 0.1, "crop_fill": "black"}
    torch.manual_seed(0)
    path = tmp_path / "face_within_seen_heard_s0" / "model.pt"
    path.parent.mkdir()
    torch.save(checkpoint_payload(model, meta), path)
    index = tmp_path / "index"
    result = runner.invoke(app, ["search", str(footage["video"]), "--face", str(footage["photo"]), "--model", str(path),
                                 "--index-dir", str(index), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["query"]["face"]["embedder"] == "apes-model-face_within_seen_heard_s0"
    faces = [h for h in results["hits"] if h["modality"] == "face"]
    assert len(faces) == 5 and all(-1.0 <= h["score"] <= 1.0 for h in faces)  # cosine scores, same 5 tracks
    entry = next(index.iterdir())
    assert entry.name.split("-")[1] != next(footage["index"].iterdir()).name.split("-")[1]  # its own index key
    assert json.loads((entry / "meta.json").read_text())["face_dim"] == 512
    voice = runner.invoke(app, ["search", str(footage["video"]), "--face", str(footage["photo"]), "--model",
                                str(footage["clip"]), "--index-dir", str(index), "--out", str(tmp_path / "bad")])
    _fails_cleanly(voice, "voice90.wav", "checkpoint")
