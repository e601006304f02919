"""Stage decode: timestamp -> frame mapping on videos whose frames encode their own index, audio window
extraction against the real sample.wav, resumability, and clear errors for bad inputs."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from media_data import (
    FPS,
    SAMPLE_WAV,
    Track,
    Video,
    cli,
    index_band,
    leftovers,
    render_frame,
    standard_videos,
    write_params,
    write_raw,
)

from stages.media import video_io
from stages.media.shards import metadata
from stages.media.video_io import ffmpeg_exe, frame_indices, iter_frames, probe, read_wav


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The standard generated raw layout (vidA train, vidB val)."""
    return write_raw(tmp_path_factory.mktemp("media") / "raw", standard_videos())


@pytest.fixture(scope="module")
def decoded(raw: Path) -> Path:
    """`apes-cli decode` of the standard layout."""
    out = raw.parent / "decoded"
    result = cli("decode", "--params", write_params(raw.parent / "params.yaml"), "--raw", raw, "--out", out,
                 "--metrics", raw.parent / "decode.json", "--workers", "2")
    assert result.exit_code == 0, result.output
    return out


def small_raw(root: Path, **video_options) -> Path:
    """A one-video train layout (4 s, one labelled track, one second of annotations)."""
    track = Track(1, (0.2, 0.2, 0.4, 0.5), 1.0, 2.0, "v_p1", "speaker90")
    video = Video("v", "train", 4.0, [track], **video_options)
    return write_raw(root, [video])


def test_frames_arrive_with_their_own_index_across_seeks(raw: Path) -> None:
    info = probe(raw / "videos" / "vidA.mp4")
    wanted = [0, 3, 4, 100, 101, 399, 440, 449]  # 101 -> 399 is longer than SEEK_GAP_SECONDS: a second seek
    seen = [(index, index_band(frame.y)) for index, frame in iter_frames(info, wanted)]
    assert seen == [(i, i) for i in wanted]


@pytest.mark.parametrize(("name", "codec", "rate"), [
    ("v.mkv", ["-c:v", "mpeg4", "-bf", "2", "-q:v", "2"], "30000/1001"),  # B-frames, NTSC rate
    ("v.webm", ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "2M"], "24"),
])
def test_frames_are_indexed_right_in_other_containers_and_codecs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, codec: list[str], rate: str) -> None:
    monkeypatch.setattr(video_io, "SEEK_GAP_SECONDS", 0.5)  # several seeks within a short video
    path = tmp_path / name
    process = subprocess.Popen([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-f", "rawvideo",
                                "-pix_fmt", "rgb24", "-s", "320x180", "-r", rate, "-i", "-", *codec, str(path)],
                               stdin=subprocess.PIPE)
    for index in range(100):
        process.stdin.write(render_frame(index, []).tobytes())
    process.stdin.close()
    assert process.wait() == 0
    info = probe(path)
    numerator, _, denominator = rate.partition("/")
    assert info.fps == pytest.approx(int(numerator) / int(denominator or 1), abs=1e-9)
    wanted = [0, 1, 17, 18, 19, 40, 75, 99]
    assert [(i, index_band(frame.y)) for i, frame in iter_frames(info, wanted)] == [(i, i) for i in wanted]


def nearest_frame(stamp: float, fps: float) -> int:
    """The frame closest in time; at a tie the earlier one (on screen at that instant)."""
    distance = np.abs(np.arange(int(stamp * fps) + 3) / fps - stamp)
    return int(np.flatnonzero(distance <= distance.min() + 1e-9)[0])


def test_timestamps_map_to_the_nearest_frame() -> None:
    stamps = np.round(np.arange(0, 30, 0.05) + 900.0, 3)[::7]
    for fps in (25.0, 30000 / 1001, 24.0, 20.0):
        assert frame_indices(stamps, fps).tolist() == [nearest_frame(t, fps) for t in stamps]


def test_probe_recovers_exact_ntsc_rate(tmp_path: Path) -> None:
    path = tmp_path / "ntsc.mp4"
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i",
                    "testsrc2=size=96x64:rate=30000/1001", "-t", "1", "-c:v", "libx264", str(path)], check=True)
    info = probe(path)
    assert info.fps == pytest.approx(30000 / 1001, abs=1e-9)
    assert (info.width, info.height, info.has_audio) == (96, 64, False)


def test_plan_maps_every_box_to_its_nearest_frame(raw: Path, decoded: Path) -> None:
    plan = pq.read_table(decoded / "plan" / "train" / "vidA.parquet")
    lines = (raw / "annotations" / "ava_activespeaker_train_v1.0" / "vidA-activespeaker.csv").read_text().split()
    assert plan.num_rows == len(lines)
    stamps = plan["frame_timestamp"].to_numpy()
    assert plan["frame_index"].to_numpy().tolist() == [nearest_frame(t, FPS) for t in stamps]
    meta = metadata(plan.schema)
    assert (float(meta["fps"]), int(meta["width"]), int(meta["height"])) == (FPS, 320, 180)


def test_audio_is_the_annotated_window_at_16k_aligned_with_the_source(decoded: Path) -> None:
    meta = metadata(pq.read_schema(decoded / "plan" / "train" / "vidA.parquet"))
    audio, rate = read_wav(decoded / "audio" / "train" / "vidA.wav")
    source, source_rate = read_wav(SAMPLE_WAV)
    start = float(meta["audio_start"])
    assert rate == source_rate == 16000
    assert start == pytest.approx(2.0 - 1.0)  # first box at 2.0 s, margin 1.0 s
    assert audio.size == pytest.approx((16.6 + 1.0 - start) * rate, abs=2)
    # The soundtrack went through 48 kHz AAC; decode resampled it back: find the lag against the original.
    segment = audio[rate * 5: rate * 9]
    lags = range(-80, 81)
    offset = int(round(start * rate)) + rate * 5
    scores = [float(np.dot(segment, source[offset + lag: offset + lag + segment.size])) for lag in lags]
    best = list(lags)[int(np.argmax(scores))]
    assert abs(best) <= 2
    correlation = np.corrcoef(segment, source[offset + best: offset + best + segment.size])[0, 1]
    assert correlation > 0.95


def test_rerun_resumes_and_equals_an_uninterrupted_run(raw: Path, decoded: Path, tmp_path: Path) -> None:
    out = tmp_path / "decoded"
    shutil.copytree(decoded, out)
    (out / "plan" / "val" / "vidB.parquet").unlink()  # as if killed before vidB finished
    (out / "plan" / "train" / ".vidA.parquet.abc.tmp").write_bytes(b"partial")
    result = cli("decode", "--params", write_params(tmp_path / "p.yaml"), "--raw", raw, "--out", out,
                 "--metrics", tmp_path / "m.json")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert (metrics["resumed"], metrics["videos"], metrics["boxes"]) == (1, 2, 528)
    assert leftovers(out) == []
    for path in sorted(decoded.rglob("*.*")):
        assert path.read_bytes() == (out / path.relative_to(decoded)).read_bytes(), path


def _decode_fails(raw: Path, tmp_path: Path) -> tuple[str, Path]:
    out = tmp_path / "decoded"
    result = cli("decode", "--params", write_params(tmp_path / "p.yaml"), "--raw", raw, "--out", out,
                 "--metrics", tmp_path / "m.json", "--split", "train")
    assert result.exit_code == 2, result.output
    assert not (out / "plan" / "train" / "v.parquet").exists()
    assert leftovers(out) == []
    assert not (tmp_path / "m.json").exists()
    return result.output, out


def test_unreadable_video_is_an_error_naming_it(tmp_path: Path) -> None:
    raw = small_raw(tmp_path / "raw")
    (raw / "videos" / "v.mp4").write_bytes(b"\x00not a video\x00" * 100)
    output, _ = _decode_fails(raw, tmp_path)
    assert "v.mp4" in output and "unreadable video" in output


def test_truncated_video_is_an_error_naming_it(tmp_path: Path) -> None:
    raw = small_raw(tmp_path / "raw")
    video = raw / "videos" / "v.mp4"
    video.write_bytes(video.read_bytes()[: video.stat().st_size // 2])  # moov atom at the end is lost
    output, _ = _decode_fails(raw, tmp_path)
    assert "v.mp4" in output


@pytest.mark.parametrize(("field", "bad", "expected"), [
    ("entity_box_y2", "nan", "field 'entity_box_y2'"),
    ("label", "WHISPERING", "unknown label 'WHISPERING'"),
])
def test_bad_csv_row_is_an_error_naming_file_and_line(tmp_path: Path, field: str, bad: str, expected: str) -> None:
    raw = small_raw(tmp_path / "raw")
    csv = raw / "annotations" / "ava_activespeaker_train_v1.0" / "v-activespeaker.csv"
    rows = csv.read_text().splitlines()
    column = {"entity_box_y2": 5, "label": 6}[field]
    cells = rows[6].split(",")
    cells[column] = bad
    rows[6] = ",".join(cells)
    csv.write_text("\n".join(rows) + "\n")
    output, _ = _decode_fails(raw, tmp_path)
    assert "v-activespeaker.csv, line 7" in output and expected in output


def test_video_without_audio_is_an_error_naming_it(tmp_path: Path) -> None:
    output, _ = _decode_fails(small_raw(tmp_path / "raw", audio="none"), tmp_path)
    assert "v.mp4" in output and "no audio stream" in output


def test_zero_length_audio_is_an_error_naming_it(tmp_path: Path) -> None:
    output, _ = _decode_fails(small_raw(tmp_path / "raw", audio="empty", container="mkv"), tmp_path)
    assert "v.mkv" in output and "zero-length audio" in output


def test_timestamp_after_the_end_of_the_video_is_an_error(tmp_path: Path) -> None:
    raw = small_raw(tmp_path / "raw")
    csv = raw / "annotations" / "ava_activespeaker_train_v1.0" / "v-activespeaker.csv"
    late = "v,9.000,0.2,0.2,0.4,0.5,NOT_SPEAKING,v_0000_0030:1"
    csv.write_text(csv.read_text() + late + "\n")
    output, _ = _decode_fails(raw, tmp_path)
    assert "line 22" in output and "after the end of v.mp4" in output


def test_timestamps_are_seconds_of_the_files_timeline_for_late_and_variable_rate_streams(tmp_path: Path) -> None:
    source = tmp_path / "cfr.mp4"  # 100 frames at 25 fps, each showing its own index
    process = subprocess.Popen([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt",
                                "rgb24", "-s", "320x180", "-r", "25", "-i", "-", "-c:v", "libx264", "-qp", "0",
                                str(source)], stdin=subprocess.PIPE)
    for index in range(100):
        process.stdin.write(render_frame(index, []).tobytes())
    process.stdin.close()
    assert process.wait() == 0
    path = tmp_path / "vfr-late.mp4"  # every frame for 1 s, then every third; 1.5 s after the sound starts
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-itsoffset", "1.5", "-i", str(source),
                    "-f", "lavfi", "-t", "6", "-i", "anullsrc=r=16000:cl=mono", "-map", "0:v", "-map", "1:a",
                    "-vf", "select='lt(n,25)+not(mod(n,3))'", "-fps_mode", "passthrough", "-c:v", "libx264",
                    "-qp", "0", "-c:a", "aac", str(path)], check=True)
    info = probe(path)
    times = video_io.frame_times(info)
    start = times[0]  # about 1.5 (AAC priming moves the file's zero by a few hundredths)
    assert times is not None and start == pytest.approx(1.5, abs=0.07) and times.size == 25 + 25
    stamps = start + np.array([0.0, 0.48, 1.0 + 0.12 * 10, 1.0 + 0.12 * 20 + 0.05])
    kept = np.array([n for n in range(100) if n < 25 or n % 3 == 0])  # source frame n is at start + n / 25
    truth = [int(kept[np.argmin(np.abs(kept / 25 - (t - start)))]) for t in stamps]  # nearest kept frame
    assert truth == [0, 12, 54, 87]
    indices = video_io.frame_indices_at(stamps, times)
    seen = [index_band(frame.y) for _, frame in iter_frames(info, sorted(set(indices.tolist())), times)]
    assert seen == truth
    assert video_io.frame_times(probe(source)) is None  # constant rate from 0: the plain k / fps path
