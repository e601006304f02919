"""Footage as people have it (issue 16): rotation metadata, late stream starts, variable frame rate, damaged
files, unwritable or full disks. Each case is built with ffmpeg from one composited video of a real face and a
real voice, and the hits' times are checked against the truth (not just the exit code).

The base video (8 s, 480x270, 25 fps): no face 0-2 s; person A on screen 2-6 s, speaking (voice 90) from 2 s
for 2.85 s; no face 6-8 s.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from apes_cli.main import app
from stages.core.errors import DataError
from stages.footage.index_store import FACES, SPEECH, write_entry
from stages.media.video_io import ffmpeg_exe, probe

sys.path.insert(0, str(Path(__file__).parent))
from search_media import Shot, compose, group_faces, voice_piece, write_wav  # noqa: E402

runner = CliRunner()
A = 0
FACE = (2.0, 6.0)
VOICE_START = 2.0
TOLERANCE = 0.3  # the bound on every hit's time


def ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_exe(), "-y", "-hide_banner", "-loglevel", "error", *args], check=True)


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The base video, the query photo and voice clip."""
    import cv2
    root = tmp_path_factory.mktemp("timeline")
    shots = [Shot(2.0, []), Shot(4.0, [(A, 0.5, 0.55)], voice_piece("speaker90", 1), "speaker90", (30, 110, 40)),
             Shot(2.0, [], background=(90, 40, 40))]
    base = root / "base.mp4"
    compose(base, shots, width=480, height=270)
    photo = root / "a.jpg"
    cv2.imwrite(str(photo), cv2.cvtColor(cv2.resize(group_faces()[A], (180, 180)), cv2.COLOR_RGB2BGR))
    clip = write_wav(root / "voice90.wav", voice_piece("speaker90", 0))
    return {"root": root, "base": base, "photo": photo, "clip": clip}


def search(media: dict, video: Path, *extra: str) -> tuple[dict, str]:
    out = media["root"] / f"out-{video.stem}"
    result = runner.invoke(app, ["search", str(video), "--face", str(media["photo"]), "--voice", str(media["clip"]),
                                 "--index-dir", str(media["root"] / "index"), "--out", str(out), *extra])
    assert result.exit_code == 0, result.output
    return json.loads((out / "results.json").read_text()), result.output


def matched(results: dict, modality: str) -> list[tuple[float, float]]:
    return sorted((h["start"], h["end"]) for h in results["hits"] if h["match"] and h["modality"] == modality)


def assert_times(results: dict, face: tuple[float, float], voice_start: float) -> None:
    faces, voices = matched(results, "face"), matched(results, "voice")
    assert len(faces) == 1, results["hits"]
    assert abs(faces[0][0] - face[0]) <= TOLERANCE and abs(faces[0][1] - face[1]) <= TOLERANCE, faces
    assert voices and abs(voices[0][0] - voice_start) <= TOLERANCE, voices
    both = matched(results, "speaking")  # Seen & Heard: the voice given to the face on screen
    assert both and abs(both[0][0] - max(face[0], voice_start)) <= TOLERANCE, both


@pytest.mark.parametrize("rotation", [90, 270])
def test_phone_rotation_is_applied_before_scaling(media: dict, rotation: int) -> None:
    stored = media["root"] / f"stored{rotation}.mp4"
    turn = "transpose=clock" if rotation == 90 else "transpose=cclock"  # stored sideways ...
    ffmpeg("-i", str(media["base"]), "-vf", turn, "-c:v", "libx264", "-preset", "veryfast", "-c:a", "copy",
           str(stored))
    video = media["root"] / f"rot{rotation}.mp4"
    ffmpeg("-display_rotation", str(rotation), "-i", str(stored), "-c", "copy", str(video))  # ... shown upright
    assert (probe(video).width, probe(video).height, probe(video).rotation) == (480, 270, rotation)
    results, _ = search(media, video)
    assert (results["videos"][0]["width"], results["videos"][0]["height"]) == (480, 270)
    assert_times(results, FACE, VOICE_START)


def test_a_video_stream_starting_late_keeps_the_files_timeline(media: dict) -> None:
    video = media["root"] / "video-late.mp4"
    ffmpeg("-itsoffset", "2", "-i", str(media["base"]), "-i", str(media["base"]), "-map", "0:v", "-map", "1:a",
           "-c", "copy", str(video))
    results, _ = search(media, video)
    assert_times(results, (FACE[0] + 2, FACE[1] + 2), VOICE_START)
    assert results["videos"][0]["complete"] is True


def test_an_audio_stream_starting_late_keeps_the_files_timeline(media: dict) -> None:
    video = media["root"] / "audio-late.mp4"
    ffmpeg("-i", str(media["base"]), "-itsoffset", "3", "-i", str(media["base"]), "-map", "0:v", "-map", "1:a",
           "-c", "copy", str(video))
    results, _ = search(media, video)
    assert_times(results, FACE, VOICE_START + 3)


def test_variable_frame_rate_places_frames_by_their_timestamps(media: dict) -> None:
    video = media["root"] / "vfr.mp4"  # 25 fps for 1 s, then every third frame (8.3 fps)
    ffmpeg("-i", str(media["base"]), "-vf", "select='lt(t,1)+not(mod(n,3))'", "-fps_mode", "vfr",
           "-c:v", "libx264", "-preset", "veryfast", "-c:a", "copy", str(video))
    assert probe(video).fps < 20  # the average rate a frame counter would have used
    results, _ = search(media, video)
    assert_times(results, FACE, VOICE_START)


def test_a_truncated_file_is_reported_not_passed_as_whole(media: dict) -> None:
    whole = media["root"] / "faststart.mp4"
    ffmpeg("-i", str(media["base"]), "-c", "copy", "-movflags", "+faststart", str(whole))
    data = whole.read_bytes()
    video = media["root"] / "truncated.mp4"
    video.write_bytes(data[:int(len(data) * 0.6)])  # the index at the front survives, the end does not
    results, output = search(media, video)
    row = results["videos"][0]
    assert row["complete"] is False and row["damage"]["truncated"] is True
    assert FACE[0] < row["duration"] < 7.9 and row["damage"]["container_seconds"] == pytest.approx(8.0, abs=0.1)
    page = (media["root"] / "out-truncated" / "results.html").read_text()
    assert "truncated.mp4: damaged:" in page  # the page says so too
    warnings = [line for line in output.splitlines() if line.startswith("note:") and "damaged" in line]
    assert len(warnings) == 1 and "truncated.mp4" in warnings[0] and f"of {8.0:.1f} s" in warnings[0]
    faces = matched(results, "face")
    assert faces and abs(faces[0][0] - FACE[0]) <= TOLERANCE and faces[-1][1] <= row["duration"] + 1e-6
    again = runner.invoke(app, ["index", str(video), "--index-dir", str(media["root"] / "index")])
    assert again.exit_code == 0 and "already indexed" in again.output and "damaged" in again.output


def test_garbage_in_the_middle_is_counted_and_later_times_do_not_move(media: dict) -> None:
    data = bytearray(media["base"].read_bytes())
    middle, span = len(data) // 2, len(data) // 10
    data[middle:middle + span] = np.random.default_rng(0).integers(0, 256, span, dtype=np.uint8).tobytes()
    video = media["root"] / "garbage.mp4"
    video.write_bytes(bytes(data))
    results, output = search(media, video)
    damage = results["videos"][0]["damage"]
    assert damage["decode_errors"] > 0 and damage["error_seconds"] and "garbage.mp4" in output
    lo, hi = damage["error_seconds"][0]
    assert 0 < lo < hi < 8.0
    faces = matched(results, "face")  # on either side of the damage, at the true times
    assert faces and abs(faces[0][0] - FACE[0]) <= TOLERANCE and faces[-1][1] <= FACE[1] + TOLERANCE


def _fails_with_one_line(result, *words: str) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and all(word in lines[0] for word in words), result.output
    assert "Traceback" not in result.output and "@ 0x" not in lines[0]
    return lines[0]


def test_smaller_cases_say_clearly_what_is_wrong(media: dict, tmp_path: Path) -> None:
    index, out = ["--index-dir", str(tmp_path / "ix")], ["--out", str(tmp_path / "out")]
    _fails_with_one_line(runner.invoke(app, ["index", str(media["photo"]), *index]), "a.jpg", "still image")
    _fails_with_one_line(runner.invoke(app, ["index", str(tmp_path), *index]), "is a folder")
    mute = tmp_path / "mute.mp4"
    ffmpeg("-i", str(media["base"]), "-an", "-c", "copy", str(mute))
    _fails_with_one_line(runner.invoke(app, ["search", str(mute), "--voice", str(media["clip"]), *index, *out]),
                         "mute.mp4", "no audio")
    short = write_wav(tmp_path / "short.wav", voice_piece("speaker90", 0, 0.2))
    _fails_with_one_line(runner.invoke(app, ["search", str(mute), "--voice", str(short), "--face",
                                             str(media["photo"]), *index, *out]),
                         "short.wav", "speech found", "in 0.2 s of audio", "at least 0.3 s is needed")
    broken = tmp_path / "broken.m4a"  # an AAC file cut before its index: ffmpeg cannot open it
    ffmpeg("-i", str(media["clip"]), "-c:a", "aac", str(tmp_path / "whole.m4a"))
    broken.write_bytes((tmp_path / "whole.m4a").read_bytes()[:2000])
    _fails_with_one_line(runner.invoke(app, ["search", str(media["base"]), "--voice", str(broken), *index, *out]),
                         "broken.m4a")
    assert not (tmp_path / "out").exists() and not (tmp_path / "ix").exists()


@pytest.fixture()
def mount(tmp_path: Path):
    """Mount a tmpfs with the given options (the suite runs as root; skipped where mounting is not allowed)."""
    mounted = []

    def make(name: str, options: str) -> Path:
        target = tmp_path / name
        target.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounted.append(target)
        return target

    yield make
    for target in mounted:
        subprocess.run(["umount", str(target)], check=False)


def test_unwritable_or_full_places_stop_before_any_work(media: dict, mount) -> None:
    readonly, full = mount("ro", "ro,size=1m"), mount("full", "size=64k")
    video, photo = str(media["base"]), str(media["photo"])
    line = _fails_with_one_line(runner.invoke(app, ["index", video, "--index-dir", str(readonly / "ix")]),
                                str(readonly / "ix"), "cannot write")
    assert "Read-only" in line
    _fails_with_one_line(runner.invoke(app, ["index", video, "--index-dir", str(full / "ix")]),
                         str(full / "ix"), "MB free")
    _fails_with_one_line(runner.invoke(app, ["search", video, "--face", photo, "--out", str(readonly / "out"),
                                             "--index-dir", str(media["root"] / "index")]),
                         str(readonly / "out"), "cannot write")
    assert list(full.iterdir()) == [] and list(readonly.iterdir()) == []


def test_a_disk_filling_during_the_write_leaves_nothing_behind(mount) -> None:
    full = mount("small", "size=64k")
    faces = pa.table({name: pa.array([], field.type) for name, field in zip(FACES.names, FACES)}, schema=FACES)
    speech = pa.table({name: pa.array([], field.type) for name, field in zip(SPEECH.names, SPEECH)}, schema=SPEECH)
    meta = {"padding": "x" * 200_000}  # more than the disk holds
    with pytest.raises(DataError, match="cannot write") as caught:
        write_entry(full / "entry", meta, faces, speech)
    assert str(full) in str(caught.value) and list(full.iterdir()) == []


def test_the_damage_report_names_gaps_jumps_and_a_short_end() -> None:
    from stages.footage.frames import Timeline
    from stages.footage.indexing import damage_report
    from stages.footage.speech import Soundtrack
    from stages.media.video_io import VideoInfo
    steady = list(np.arange(0, 4, 0.04))
    info = VideoInfo(Path("v.mp4"), 25.0, 640, 360, 10.0, True)
    whole = Timeline(steady + list(np.arange(4, 10, 0.04)), 0.04)
    assert damage_report(info, whole, Soundtrack([], 0.0, 10.0), whole.end()) is None
    broken = Timeline(steady + list(np.arange(6, 8, 0.04)) + list(np.arange(1, 2, 0.04)), 0.04)
    report = damage_report(info, broken, Soundtrack([], 0.0, 8.0), 8.0)
    assert report["gaps"] == [[4.0, 6.0]] and report["jumps_back"] == [[8.0, 1.0]] and report["truncated"]
    assert "no video frames 4.0-6.0 s" in report["message"] and "from 8.0 to 1.0 s" in report["message"]
    assert "only 8.0 s of 10.0 s" in report["message"]
