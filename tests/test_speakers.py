"""Who is speaking: the synchrony core (stages/media/active_speaker.py), the index's speaker per speech
segment (stages/footage/speakers.py) and the `speaking` / enrolled `voice` hits of a face query.

The video (tests/talking_media.py): 13.6 s at 640x360, real photos whose mouths open with real speech:
  0.0-4.4   A and B on screen; A speaks (voice 90), B's lips move to unheard speech (the hard negative)
  4.4-11.0  A and B; B speaks (voice 91), then A (voice 90), each face's lips still while the other talks
  11.0-13.6 nobody on screen; A heard (voice 90)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from apes_cli.main import app
from stages.footage.speakers import clear_split, decide
from stages.media.active_speaker import MAX_OFFSET, mouth_box, mouth_crops, speaking_scores, sync
from stages.media.video_io import ffmpeg_exe, probe

sys.path.insert(0, str(Path(__file__).parent))
from search_media import overlap_seconds, precision_recall  # noqa: E402
from talking_media import Scene, compose_talking, sample_piece, talkers  # noqa: E402

runner = CliRunner()
A, B = 0, 1
FPS = 25


@pytest.fixture(scope="session")
def talk(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The composed video indexed once, its truth, and a query photo of A."""
    root = tmp_path_factory.mktemp("talk")
    a1, a2, a3 = sample_piece(10.6, 14.45), sample_piece(18.6, 21.45), sample_piece(27.9, 30.0)
    b1, b2 = sample_piece(21.8, 24.8), sample_piece(14.5, 17.9)
    scenes = [Scene(4.4, [(A, 0.3), (B, 0.7)], [(A, a1)], {B: b2}),
              Scene(6.6, [(A, 0.3), (B, 0.7)], [(B, b1), (A, a2)], background=(100, 80, 70)),
              Scene(2.6, [], [(A, a3)], background=(30, 30, 30))]
    video = root / "talk.mp4"
    truth = compose_talking(video, "group", scenes, fps=FPS)
    photo = root / "a.jpg"
    face = cv2.flip(cv2.resize(talkers("group")[A].face, (180, 180), interpolation=cv2.INTER_AREA), 1)
    cv2.imwrite(str(photo), cv2.cvtColor(face, cv2.COLOR_RGB2BGR))
    index = root / "index"
    result = runner.invoke(app, ["index", str(video), "--index-dir", str(index)])
    assert result.exit_code == 0, result.output
    return {"root": root, "video": video, "truth": truth, "photo": photo, "index": index,
            "entry": next(index.iterdir())}


def _faces_by_side(entry: Path) -> dict[int, int]:
    """Track id -> talker: the left face is A, the right one B (both stay on their side of the frame)."""
    faces = pq.read_table(entry / "faces.parquet").to_pylist()
    return {row["track"]: A if np.mean(np.asarray(row["boxes"]).reshape(-1, 4)[:, [0, 2]]) < 0.5 else B
            for row in faces}


def _assert_speech_goes_to_the_speaker(entry: Path, truth, shift: float = 0.0) -> None:
    """Each talker gets >= 85 % of her seen-and-heard seconds (moved by `shift`), the other <= 10 %; the
    second shot's speaker change splits it; nobody gets the speech heard with no face on screen."""
    speech = pq.read_table(entry / "speech.parquet")
    assert speech.schema.field("speaker_track").type == "int32"
    assert speech.schema.field("speaker_score").type == "float"
    rows = speech.to_pylist()
    people = _faces_by_side(entry)
    for person, other in ((A, B), (B, A)):
        spoken = [(a + shift, b + shift) for a, b in truth.seen_heard[person]]
        given = [(r["start"], r["end"]) for r in rows if people.get(r["speaker_track"]) == person]
        wrong = [(r["start"], r["end"]) for r in rows if people.get(r["speaker_track"]) == other]
        seconds = sum(b - a for a, b in spoken)
        assert overlap_seconds(given, spoken) >= 0.85 * seconds, (person, rows)
        assert overlap_seconds(wrong, spoken) <= 0.1 * seconds, (person, rows)
    second = [r for r in rows if 4.4 + shift <= (r["start"] + r["end"]) / 2 < 11.0 + shift and r["speaker_track"] >= 0]
    assert {people[r["speaker_track"]] for r in second} == {A, B}
    assert all(r["speaker_track"] == -1 for r in rows if r["start"] >= 11.0 + shift)


def test_speech_goes_to_the_face_whose_lips_move_with_it(talk: dict) -> None:
    _assert_speech_goes_to_the_speaker(talk["entry"], talk["truth"])


def test_late_variable_rate_video_gives_the_speech_at_the_right_times(talk: dict) -> None:
    """The same dialogue with its video starting 2 s into the file (the sound delayed with it) and, from the
    second shot on, every other frame dropped (12.5 fps, variable rate): the speaker decode reads the frames'
    presentation timestamps, as the face pass does, so the lips still meet their own sound."""
    video = talk["root"] / "talk-late-vfr.mp4"
    command = [ffmpeg_exe(), "-y", "-hide_banner", "-loglevel", "error", "-itsoffset", "2", "-i", str(talk["video"]),
               "-i", str(talk["video"]), "-map", "0:v", "-map", "1:a",
               "-vf", "select='lt(t,6.4)+not(mod(n,2))'", "-fps_mode", "vfr", "-c:v", "libx264", "-preset", "veryfast",
               "-af", "adelay=2000:all=1", "-c:a", "aac", str(video)]
    subprocess.run(command, check=True)
    assert probe(video).fps < 24  # the average rate a frame counter would have used
    index = talk["root"] / "index-late"
    result = runner.invoke(app, ["index", str(video), "--index-dir", str(index)])
    assert result.exit_code == 0, result.output
    _assert_speech_goes_to_the_speaker(next(index.iterdir()), talk["truth"], shift=2.0)


def test_face_query_finds_her_speaking_and_her_voice_off_screen(talk: dict) -> None:
    out = talk["root"] / "face"
    result = runner.invoke(app, ["search", str(talk["video"]), "--index-dir", str(talk["index"]), "--out", str(out),
                                 "--face", str(talk["photo"])])
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    hits, truth = results["hits"], talk["truth"]
    speaking = [(h["start"], h["end"]) for h in hits if h["modality"] == "speaking" and h["match"]]
    precision, recall = precision_recall(speaking, truth.seen_heard[A])
    assert precision >= 0.9 and recall >= 0.8, (precision, recall, hits)
    assert all(h["segment"].startswith("speech-") and h["track"].startswith("face-")
               for h in hits if h["modality"] == "speaking")
    enrolment = results["query"]["enrolled_voice"]["videos"][0]
    assert enrolment["enrolled"] and enrolment["speech_seconds"] >= 3.0
    voice = [h for h in hits if h["modality"] == "voice" and h["match"]]
    assert voice and all(h["enrolled_from"] == enrolment["segments"] for h in voice)
    precision, recall = precision_recall([(h["start"], h["end"]) for h in voice], truth.heard[A])
    assert precision >= 0.9 and recall >= 0.7, (precision, recall, hits)
    assert any((h["start"] + h["end"]) / 2 >= 11.0 for h in voice)  # heard with nobody on screen, found by her face
    assert "speaking" in (out / "results.html").read_text()


def test_with_a_voice_clip_too_speaking_hits_need_the_voice(talk: dict) -> None:
    from search_media import FIXTURES, write_wav

    from stages.footage.speech import read_clip
    # A's face with another person's voice, from another recording: B shares A's telephone line in
    # sample.wav, and one line's two voices can reach the CAM++ threshold (docs/search.md, known limit)
    other = read_clip(FIXTURES / "realdev" / "voices" / "interview-3-speakers.mp3")[:int(5.5 * 16000)]
    clip = write_wav(talk["root"] / "b.wav", other)
    out = talk["root"] / "both"
    result = runner.invoke(app, ["search", str(talk["video"]), "--index-dir", str(talk["index"]), "--out", str(out),
                                 "--face", str(talk["photo"]), "--voice", str(clip)])
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    speaking = [h for h in results["hits"] if h["modality"] == "speaking"]
    assert speaking and all("voice_score" in h and "face_score" in h for h in speaking)
    assert not any(h["match"] for h in speaking)  # her face, someone else's voice
    assert "enrolled_voice" not in results["query"]


def _mouth_frames(openings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Grey frames of a plain face whose mouth opens by `openings` (0..1), and its box per frame."""
    frames = np.empty((len(openings), 120, 160), np.uint8)
    for t, amount in enumerate(openings):
        frame = np.tile(np.linspace(90, 170, 160, dtype=np.float32), (120, 1))
        cv2.ellipse(frame, (80, 86), (16, 1 + int(amount * 9)), 0, 0, 360, 30, -1)
        frames[t] = frame.astype(np.uint8)
    return frames, np.tile([40.0, 20.0, 120.0, 105.0], (len(openings), 1))


def _speech_like(seconds: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noise bursts with a syllable-rate envelope (16 kHz) and that envelope per video frame."""
    rng = np.random.default_rng(seed)
    frames = int(seconds * FPS)
    envelope = np.clip(np.convolve(rng.random(frames) > 0.6, np.ones(3) / 3, mode="same"), 0, 1)
    audio = np.repeat(envelope, 16000 // FPS) * rng.normal(0, 0.2, frames * (16000 // FPS))
    return audio.astype(np.float32), envelope


def test_sync_prefers_the_mouth_in_time_and_finds_the_offset() -> None:
    audio, envelope = _speech_like(6.0, 1)
    in_sync = mouth_crops(*_mouth_frames(envelope))
    late = mouth_crops(*_mouth_frames(np.roll(envelope, 3)))       # 3 frames behind the sound
    other = mouth_crops(*_mouth_frames(_speech_like(6.0, 2)[1]))   # another stretch of speech
    assert sync(in_sync, audio, FPS).score > 0.5
    assert sync(other, audio, FPS).score < 0.2
    assert sync(late, audio, FPS).offset == -3
    scores = speaking_scores(in_sync, np.concatenate([audio[:audio.size // 2], np.zeros(audio.size // 2,
                                                                                         np.float32)]), FPS)
    assert scores[:40].mean() > 0.3 and np.all(scores[-40:] == 0)  # silence: nobody speaks audibly


def test_a_speaker_scores_as_well_at_the_edges_of_a_span_as_inside_it() -> None:
    """At a shot start the window cannot reach back: it slides inward instead of halving, and the speaking
    mouth beats one that moves to other speech there too, not only mid-span."""
    audio, envelope = _speech_like(6.0, 3)
    speaking = sync(mouth_crops(*_mouth_frames(envelope)), audio, FPS).frame_scores
    other = sync(mouth_crops(*_mouth_frames(_speech_like(6.0, 4)[1])), audio, FPS).frame_scores
    middle = float(np.median(speaking[FPS * 2:FPS * 4]))
    reach = int(MAX_OFFSET * FPS)  # frames the offset search may leave unpaired (scored 0) at either end
    for edge in (slice(reach, FPS // 2 + reach), slice(-FPS // 2 - reach, -reach)):
        assert speaking[edge].min() >= 0.8 * middle, (speaking[edge], middle)
        assert (speaking[edge] - other[edge]).min() >= 0.1, (speaking[edge], other[edge])


def test_mouth_is_placed_in_the_lower_middle_of_the_box_or_from_landmarks() -> None:
    x1, y1, x2, y2 = mouth_box(np.array([100.0, 200.0, 200.0, 300.0]))
    assert 120 <= x1 < x2 <= 180 and 250 <= y1 < y2 <= 300
    eyes_and_nose = np.array([[170, 240], [155, 240], [130, 240], [145, 240], [150, 262]], np.float64)
    mx1, my1, mx2, my2 = mouth_box(np.zeros(4), eyes_and_nose)
    assert abs((mx1 + mx2) / 2 - 150) < 1 and 262 < (my1 + my2) / 2 < 285


def test_decisions_need_a_clear_margin_and_short_runs_join_their_neighbours() -> None:
    fps = 25
    scores = np.full((2, 100), 0.05)
    scores[0, :60] = 0.5    # track 7 clearly speaking for 2.4 s
    scores[1, 60:] = 0.5    # then track 9
    scores[0, 30:35] = 0.0  # a 0.2 s dip: too short to split
    runs = decide(scores, [7, 9], fps)
    assert [(a, b, who) for a, b, who, _ in runs] == [(0, 60, 7), (60, 100, 9)]
    close = np.array([[0.50] * 50, [0.46] * 50])
    assert decide(close, [7, 9], fps)[0][2] == -1  # under the margin: nobody


def test_a_segment_is_split_between_two_faces_only_when_each_part_is_clear() -> None:
    fps = 25
    marginal = np.full((2, 100), 0.0)
    marginal[0, :50] = 0.11   # each face passes the per-frame rule (0.10, margin 0.08) in its half...
    marginal[1, 50:] = 0.11   # ...but a split gives one voice to two faces: it needs SPLIT_SCORE per part
    runs = decide(marginal, [7, 9], fps)
    assert [who for _, _, who, _ in runs] == [7, 9]
    assert [who for _, _, who, _ in clear_split(runs)] == [-1, -1]
    clear = marginal * 3  # 0.33 either side: a real change of speaker stays split
    assert [who for _, _, who, _ in clear_split(decide(clear, [7, 9], fps))] == [7, 9]
    one = np.full((2, 100), 0.0)
    one[0] = 0.11             # one speaker over the whole segment: the whole-segment rule decides, not this one
    assert [who for _, _, who, _ in clear_split(decide(one, [7, 9], fps))] == [7]
