"""apes-cli people on two composited videos of real faces and real voices with exact ground truth.

Video one (10 s):  0.0-2.5 A alone, speaking (voice 90) | 2.5-5.0 B and C together, silent |
                   5.0-7.5 no face, voice 90 off screen | 7.5-10.0 C alone, silent
Video two (7.5 s): 0.0-2.5 A alone, silent | 2.5-5.0 no face, voice R (never seen speaking) |
                   5.0-7.5 stranger D alone, silent
Expected: A (seen in both, heard on and off screen), B, C and D face only, voice R voice only.
Faces: the group photo's; voices: speaker 90 of fixtures/sample.wav, R = fixtures/realdev read-p260 (clean read
speech; sample.wav's two telephone voices score too close under Resemblyzer to tell apart reliably, see
docs/search.md).
"""

from __future__ import annotations

import json
import os
import re
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from apes_cli.main import app
from stages.footage.people import constrained_linkage

sys.path.insert(0, str(Path(__file__).parent))
from search_media import FIXTURES, Shot, compose, precision_recall, voice_piece  # noqa: E402

runner = CliRunner()
A, B, C, D = 0, 1, 3, 5
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def cast(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Both videos, their truth, and `apes-cli people` run over them."""
    from stages.footage.speech import read_clip
    root = tmp_path_factory.mktemp("people")
    unseen = read_clip(FIXTURES / "realdev" / "voices" / "read-p260_00000.mp3")
    one, two = root / "one.mp4", root / "two.mp4"
    truths = [
        compose(one, [Shot(2.5, [(A, 0.5, 0.45)], voice_piece("speaker90", 1), "v90"),
                      Shot(2.5, [(B, 0.28, 0.4), (C, 0.72, 0.4)], background=(120, 70, 60)),
                      Shot(2.5, [], voice_piece("speaker90", 0), "v90", (30, 110, 40)),
                      Shot(2.5, [(C, 0.5, 0.5)], background=(90, 90, 90))]),
        compose(two, [Shot(2.5, [(A, 0.4, 0.5)], background=(40, 60, 100)),
                      Shot(2.5, [], unseen, "R", (30, 110, 40)),
                      Shot(2.5, [(D, 0.5, 0.45)], background=(40, 40, 90))], seed=1),
    ]
    out, index = root / "cast", root / "index"
    result = runner.invoke(app, ["people", str(one), str(two), "--out", str(out), "--index-dir", str(index)])
    assert result.exit_code == 0, result.output
    document = json.loads((out / "people.json").read_text())
    return {"root": root, "videos": [one, two], "truths": truths, "out": out, "index": index, "doc": document}


def _spans(person: dict, kind: str, video: Path) -> list[tuple[float, float]]:
    return [(x["start"], x["end"]) for x in person[kind] if x["video"] == str(video)]


def _person_seen_with(doc: dict, video: Path, at: float) -> dict:
    matches = [p for p in doc["people"] if any(s <= at <= e for s, e in _spans(p, "seen", video))]
    assert len(matches) == 1, f"{len(matches)} people on screen at {at} s"
    return matches[0]


def test_faces_become_people_across_videos_and_voices_join_them(cast: dict) -> None:
    doc, (one, two), truths = cast["doc"], cast["videos"], cast["truths"]
    assert len(doc["people"]) == 5
    a = _person_seen_with(doc, one, 1.0)
    assert a is _person_seen_with(doc, two, 1.0)  # the same face in both videos is one person
    for video, truth in zip((one, two), truths):
        precision, recall = precision_recall(_spans(a, "seen", video), truth.on_screen[A])
        assert precision >= 0.95 and recall >= 0.9
    # heard on screen (speech given to the face) and off screen (joined by voice)
    precision, recall = precision_recall(_spans(a, "heard", one), truths[0].speaking["v90"])
    assert precision >= 0.9 and recall >= 0.7, (precision, recall)
    assert any(s < 6.0 and e > 6.5 for s, e in _spans(a, "heard", one))
    assert a["seen_heard"] and all(x["end"] <= 2.6 for x in a["seen_heard"])
    assert not a["face_only"] and not a["voice_only"]


def test_two_faces_on_screen_together_are_two_people(cast: dict) -> None:
    doc, one = cast["doc"], cast["videos"][0]
    together = [p for p in doc["people"] if any(s <= 3.75 <= e for s, e in _spans(p, "seen", one))]
    assert len(together) == 2
    assert _person_seen_with(doc, one, 9.0) in together  # C, seen with B, is the one seen alone later
    assert all(person["face_only"] and not person["heard"] for person in together)


def test_an_unseen_voice_is_a_person_of_its_own(cast: dict) -> None:
    doc, (one, two), truths = cast["doc"], cast["videos"], cast["truths"]
    voice_only = [p for p in doc["people"] if p["voice_only"]]
    assert len(voice_only) == 1
    person = voice_only[0]
    assert person["face_embedding"] is None and len(person["voice_embedding"]) == 192  # CAM++, the default
    precision, recall = precision_recall(_spans(person, "heard", two), truths[1].speaking["R"])
    assert precision >= 0.9 and recall >= 0.7
    assert not _spans(person, "heard", one)


def test_people_are_sorted_by_time_with_stable_ids(cast: dict, tmp_path: Path) -> None:
    doc = cast["doc"]
    totals = [p["screen_seconds"] + p["speaking_seconds"] for p in doc["people"]]
    assert totals == sorted(totals, reverse=True)
    assert [p["id"] for p in doc["people"]] == [f"person-{k}" for k in range(1, 6)]
    again = runner.invoke(app, ["people", *map(str, cast["videos"]), "--out", str(tmp_path),
                                "--index-dir", str(cast["index"])])
    assert again.exit_code == 0, again.output
    second = json.loads((tmp_path / "people.json").read_text())
    assert second["people"] == doc["people"]


def test_rttm_and_webvtt_name_who_speaks_when(cast: dict) -> None:
    doc, out = cast["doc"], cast["out"]
    for video in cast["videos"]:
        lines = (out / f"{video.stem}.rttm").read_text().splitlines()
        expected = sorted((h["start"], h["end"], p["id"]) for p in doc["people"] for h in p["heard"]
                          if h["video"] == str(video))
        assert len(lines) == len(expected) > 0
        for line, (start, end, who) in zip(lines, expected):
            fields = line.split(" ")
            assert fields[:3] == ["SPEAKER", video.stem, "1"] and fields[5:7] == ["<NA>", "<NA>"]
            assert fields[7] == who and fields[8:] == ["<NA>", "<NA>"]
            assert float(fields[3]) == pytest.approx(start, abs=1e-3)
            assert float(fields[4]) == pytest.approx(end - start, abs=2e-3)
        vtt = (out / f"{video.stem}.vtt").read_text()
        assert vtt.startswith("WEBVTT\n\n")
        cues = re.findall(r"(\d\d):(\d\d):(\d\d)\.(\d{3}) --> [\d:.]+\n<v ([^>]+)>", vtt)
        assert [(int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000, who) for h, m, s, ms, who in cues] == \
            [(pytest.approx(start, abs=1e-3), who) for start, _, who in expected]


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.cards: list[str] = []
        self.links: list[str] = []
        self.images: list[str] = []
        self.external: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attrs = dict(attrs)
        if tag == "section":
            self.cards.append(attrs.get("id", ""))
        if tag == "a":
            self.links.append(attrs["href"])
        if tag == "img":
            self.images.append(attrs["src"])
        if tag in ("script", "link") or (tag == "img" and not attrs["src"].startswith("data:")):
            self.external.append(tag)


def test_page_has_a_card_per_person_with_time_links(cast: dict) -> None:
    import base64

    import cv2
    page = _Page()
    page.feed((cast["out"] / "people.html").read_text())
    doc = cast["doc"]
    assert page.cards == [p["id"] for p in doc["people"]]
    spans = sum(len(p["seen"]) + len(p["heard"]) for p in doc["people"])
    assert len(page.links) == spans and all(re.search(r"\.mp4#t=\d+\.\d\d$", link) for link in page.links)
    assert not page.external and len(page.images) >= 4
    for src in page.images:
        data = np.frombuffer(base64.b64decode(src.split(",", 1)[1]), np.uint8)
        assert cv2.imdecode(data, cv2.IMREAD_COLOR) is not None


def test_names_and_search_with_a_found_person(cast: dict, tmp_path: Path) -> None:
    one, two = cast["videos"]
    a = _person_seen_with(cast["doc"], one, 1.0)
    names = tmp_path / "names.txt"
    names.write_text(f"# who is who\n{a['id']} = Alice Smith\n")
    out = tmp_path / "named"
    result = runner.invoke(app, ["people", str(one), str(two), "--out", str(out), "--index-dir", str(cast["index"]),
                                 "--names", str(names)])
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "people.json").read_text())
    assert [p.get("name") for p in doc["people"] if p["id"] == a["id"]] == ["Alice Smith"]
    assert " Alice_Smith " in (out / "one.rttm").read_text() and "<v Alice Smith>" in (out / "one.vtt").read_text()
    found = tmp_path / "found"
    result = runner.invoke(app, ["search", str(two), "--person", f"{out}/people.json:Alice Smith",
                                 "--out", str(found), "--index-dir", str(cast["index"])])
    assert result.exit_code == 0, result.output
    hits = json.loads((found / "results.json").read_text())["hits"]
    matches = [(h["modality"], h["start"], h["end"]) for h in hits if h["match"]]
    assert len(matches) == 1 and matches[0][0] == "face" and matches[0][1] < 0.5 and 2.3 < matches[0][2] < 2.7
    assert any(h["modality"] == "voice" and not h["match"] for h in hits)  # her voice is queried, R is not her


def test_bad_inputs_exit_2_with_one_line(cast: dict, tmp_path: Path) -> None:
    one = str(cast["videos"][0])
    people_json = cast["out"] / "people.json"
    names = tmp_path / "names.txt"
    names.write_text("person-1 = Ann\nperson-2 Bob\n")
    foreign = tmp_path / "people.json"
    foreign.write_text(json.dumps({**cast["doc"], "format": "apes-people-0"}))
    unknown = tmp_path / "unknown.txt"
    unknown.write_text("person-1 = Ann\nperson-99 = Bob\n")
    cases = [
        (["people", one, "--names", str(names)], f"{names}, line 2: expected 'person-N = Name'"),
        (["people", one, "--names", str(unknown)], f"{unknown}: no person-99 among the"),
        (["search", one, "--person", f"{people_json}:person-99"], f"{people_json}: no person 'person-99'"),
        (["search", one, "--person", f"{people_json}:Nobody"], f"{people_json}: no person 'Nobody'"),
        (["search", one, "--person", f"{foreign}:person-1"], f"{foreign}, field 'format': format 'apes-people-0'"),
    ]
    for args, expected in cases:
        out = tmp_path / "out"
        result = runner.invoke(app, [*args, "--out", str(out), "--index-dir", str(cast["index"])])
        assert result.exit_code == 2, result.output
        # one line, besides the progress bar of an indexing that ran before the error was known
        lines = [line for line in result.output.splitlines() if line.strip() and "it/s" not in line]
        assert len(lines) == 1 and expected in lines[0], lines
        assert not out.exists()


def test_documented_collection_reading_works_with_the_setup(cast: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Python lines of docs/search.md that read the index and people.json run as written."""
    text = (ROOT / "docs" / "search.md").read_text()
    block = re.search(r"```python\n(# read a collection.*?)```", text, re.S).group(1)
    work = cast["root"] / "docs-run"
    work.mkdir(exist_ok=True)
    for name, target in ((".apes-index", cast["index"]), ("people", cast["out"])):
        if not (work / name).exists():
            os.symlink(target, work / name)
    monkeypatch.chdir(work)
    namespace: dict = {}
    exec(compile(block, "docs/search.md", "exec"), namespace)  # noqa: S102 - the documented lines themselves
    faces, speech, seen = namespace["faces"], namespace["speech"], namespace["seen"]
    assert faces.num_rows == sum(v["tracks"] for v in cast["doc"]["videos"])
    assert speech.num_rows == sum(v["speech_segments"] for v in cast["doc"]["videos"])
    assert seen.num_rows == sum(len(p["seen"]) for p in cast["doc"]["people"])


def test_cannot_link_keeps_alike_items_apart_and_seeds_separate() -> None:
    similarity = np.array([[1.0, 0.9, 0.8, 0.1],
                           [0.9, 1.0, 0.85, 0.1],
                           [0.8, 0.85, 1.0, 0.2],
                           [0.1, 0.1, 0.2, 1.0]])
    items = np.eye(4)

    def score(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return x @ similarity @ y.T

    free = np.zeros((4, 4), bool)
    assert constrained_linkage(items, score, free, 0.5).tolist() == [0, 0, 0, 1]
    assert constrained_linkage(items, score, free, 0.86).tolist() == [0, 0, 1, 2]  # (0.8 + 0.85) / 2 < 0.86
    cannot = free.copy()
    cannot[0, 2] = cannot[2, 0] = True
    labels = constrained_linkage(items, score, cannot, 0.5)
    assert labels[0] != labels[2] and labels[1] == labels[0] and labels[3] not in labels[:3]
    seeds = np.array([-1, 0, 1, -1])  # 1 and 2 start as two separate people: 0 joins the closer (0.9)
    labels = constrained_linkage(items, score, free, 0.5, seeds=seeds)
    assert labels.tolist() == [0, 0, 1, 2]


def test_a_seed_can_be_scored_by_its_mean_vector() -> None:
    from stages.footage.people import cosine_score
    vectors = np.array([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8]])
    free = np.zeros((3, 3), bool)
    seeds = np.array([0, 0, -1])
    # item 2 against the seed {0, 1}: average of its cosines (0.6 + 0.96) / 2 = 0.78; cosine to their mean 0.82
    assert constrained_linkage(vectors, cosine_score, free, 0.8, seeds=seeds).tolist() == [0, 0, 1]
    assert constrained_linkage(vectors, cosine_score, free, 0.8, seeds=seeds, seed_mean=True).tolist() == [0, 0, 0]


def test_a_seeded_segment_in_another_voice_is_unseeded() -> None:
    from stages.footage.people import consistent_seeds
    rng = np.random.default_rng(0)
    voice, other = rng.normal(size=16), rng.normal(size=16)
    segments = np.stack([voice + 0.1 * rng.normal(size=16) for _ in range(3)] + [other])
    seeds = np.array([0, 0, 0, 0])  # a listener shown while someone else spoke: the last one
    assert consistent_seeds(seeds, segments, 0.75).tolist() == [0, 0, 0, -1]
    assert consistent_seeds(seeds[:2], segments[[0, 3]], 0.75).tolist() == [0, 0]  # two: no majority to go by


def test_seeded_speech_in_another_persons_voice_is_unseeded() -> None:
    from stages.footage.people import consistent_seeds
    rng = np.random.default_rng(1)
    first, second, third = rng.normal(size=16), rng.normal(size=16), rng.normal(size=16)
    segments = np.stack([voice + 0.1 * rng.normal(size=16) for voice in (first, first, first, second, second, third)])
    # person 1 never speaks: shown as a listener twice, while person 0 (first voice) and an unseen third spoke
    assert consistent_seeds(np.array([0, 0, 1, 2, 2, 1]), segments, 0.75).tolist() == [0, 0, -1, 2, 2, 1]
    # a person's only seeded segment is kept, and one segment is no voice profile to compare with
    assert consistent_seeds(np.array([0, 0, 1, 2, 2, -1]), segments, 0.75).tolist() == [0, 0, 1, 2, 2, -1]
    assert consistent_seeds(np.array([0, 1, -1, 2, 2, -1]), segments, 0.75).tolist() == [0, 1, -1, 2, 2, -1]
