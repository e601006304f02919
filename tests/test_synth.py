"""Tests of the embedded mini-APES generator: real mp4s, parseable annotations, determinism, faces, voices."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import subprocess
from collections import Counter, defaultdict
from pathlib import Path

import imageio_ffmpeg
import librosa
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from apes_cli.main import app
from stages.core.config import SynthParams, params_from_dict
from stages.core.errors import ConfigError
from stages.rawdata.annotations import iter_split, list_split_videos, read_apes_csv, read_ava_csv, read_manifest
from stages.rawdata.layout import AMBIGUOUS, SPLITS, RawLayout
from stages.synth import _job, parts_dir, run
from stages.synthetic import faces, synth_video, voices

MICRO = SynthParams(train_videos=1, val_videos=1, shots_per_video=4, shot_seconds=(1.0, 1.2), intro_seconds=0.3,
                    identities_per_video=(3, 3), width=96, height=64, fps=8, workers=1)


def _ffmpeg(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", *args], capture_output=True)


def _tree_digest(root: Path) -> dict[str, str]:
    """md5 of every file under root, by relative path."""
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _all_rows(root: Path) -> dict[str, list]:
    """Every box of every split as plain lists."""
    rows = defaultdict(list)
    for split in SPLITS:
        for _, _, table in iter_split(RawLayout(root), split):
            for key, values in table.to_pydict().items():
                rows[key].extend(values)
    return rows


def test_every_video_decodes_fully_with_audio(tiny_raw: Path, tiny_synth_params: SynthParams) -> None:
    p = tiny_synth_params
    layout = RawLayout(tiny_raw)
    for split in SPLITS:
        for video_id, csv_path in list_split_videos(layout, split):
            table = read_ava_csv(csv_path, split)
            video = layout.video_path(video_id)
            decoded = _ffmpeg("-i", str(video), "-f", "rawvideo", "-pix_fmt", "rgb24", "-")
            assert decoded.returncode == 0, decoded.stderr.decode()[-300:]
            frames = len(decoded.stdout) // (p.width * p.height * 3)
            assert len(decoded.stdout) == frames * p.width * p.height * 3
            last_box_frame = round(max(table["frame_timestamp"].to_pylist()) * p.fps)
            assert frames == last_box_frame + 1          # the last shot ends the video
            first_box = min(table["frame_timestamp"].to_pylist())
            assert first_box == pytest.approx(p.intro_seconds)   # unannotated lead-in before the first box
            info = decoded.stderr.decode()
            assert re.search(r"Stream #0:\d.*Audio: aac", info), info
            assert re.search(r"Stream #0:\d.*Video: h264", info), info
            audio = _ffmpeg("-i", str(video), "-vn", "-f", "s16le", "-ac", "1", "-ar", "16000", "-")
            samples = np.frombuffer(audio.stdout, np.int16)
            assert samples.size / 16000 == pytest.approx(frames / p.fps, abs=0.1)
            assert np.abs(samples).max() > 1000          # a real soundtrack, not silence


def test_annotations_parse_and_identities_are_per_video(tiny_raw: Path) -> None:
    layout = RawLayout(tiny_raw)
    owners: dict[str, set[str]] = defaultdict(set)
    for split in SPLITS:
        identities = read_apes_csv(layout.apes_csv(split))
        tracks = set()
        for video_id, _, table in iter_split(layout, split):
            assert set(table["video_id"].to_pylist()) == {video_id}
            tracks.update(table["entity_id"].to_pylist())
            assert all(re.fullmatch(rf"{video_id}_\d{{4}}_\d{{4}}:\d+", e) for e in table["entity_id"].to_pylist())
        assert set(identities) == tracks                 # every track has an APES row and vice versa
        for entity, ident in identities.items():
            if ident.identity != AMBIGUOUS:
                owners[ident.identity].add(ident.video_id)
                assert ident.identity.startswith(ident.video_id + "_p")
    assert owners and all(len(videos) == 1 for videos in owners.values())
    header = layout.apes_csv("val").read_text().splitlines()
    assert header[0] == "entity_id,video_id,identity"
    assert ":" not in "".join(header[1:])                # APES writes AVA's ':' as '_'


def test_manifest_md5s_match_the_videos(tiny_raw: Path) -> None:
    layout = RawLayout(tiny_raw)
    assert layout.manifest.read_text().splitlines()[0] == "file_name,md5"
    entries = read_manifest(layout.manifest)
    assert sorted(name for name, _ in entries) == sorted(p.name for p in layout.videos_dir.iterdir())
    for name, md5 in entries:
        assert hashlib.md5((layout.videos_dir / name).read_bytes()).hexdigest() == md5


def test_statistics_agree_with_the_files(tiny_raw: Path, tiny_synth_params: SynthParams) -> None:
    stats = json.loads((tiny_raw.parent / "synth.json").read_text())
    rows = _all_rows(tiny_raw)
    by_track: dict[str, list[tuple[float, str]]] = defaultdict(list)
    identity_of, video_of = {}, {}
    for ts, label, entity, identity, ambiguous, video in zip(
            rows["frame_timestamp"], rows["label"], rows["entity_id"], rows["identity"], rows["ambiguous"],
            rows["video_id"]):
        by_track[entity].append((ts, label))
        identity_of[entity] = AMBIGUOUS if ambiguous else identity
        video_of[entity] = video
    assert stats["boxes"] == len(rows["label"])
    assert stats["face_tracks"] == len(by_track)
    assert stats["ambiguous_tracks"] == sum(i == AMBIGUOUS for i in identity_of.values())
    named = {i for i in identity_of.values() if i != AMBIGUOUS}
    assert stats["identities"] == len(named)
    segments, speaking = 0, set()
    for entity, boxes in by_track.items():
        if identity_of[entity] == AMBIGUOUS:
            continue
        labels = [label for _, label in sorted(boxes)]
        segments += sum(1 for k, label in enumerate(labels) if label == "SPEAKING_AUDIBLE"
                        and (k == 0 or labels[k - 1] != "SPEAKING_AUDIBLE"))
        if any(label != "NOT_SPEAKING" for label in labels):
            speaking.add(identity_of[entity])
    assert stats["voice_segments"] == segments
    assert stats["silent_identity_share"] == pytest.approx(1 - len(speaking) / len(named), abs=1e-4)
    val_counts = defaultdict(int)
    for entity in by_track:
        if video_of[entity].startswith("synva"):
            val_counts[video_of[entity]] += 1
    assert stats["tracks_per_val_video"]["min"] == min(val_counts.values())
    assert stats["videos"] == {"train": tiny_synth_params.train_videos, "val": tiny_synth_params.val_videos}
    assert 0 < segments and 0 < len(speaking) < len(named)   # speakers and silent people both present


def _micro_run(root: Path, seed: int, p: SynthParams = MICRO) -> dict[str, str]:
    run(p, seed, root / "raw")
    return _tree_digest(root / "raw")


def test_same_seed_same_bytes_whatever_the_workers_and_other_seed_differs(tmp_path: Path) -> None:
    first = _micro_run(tmp_path / "a", 11)
    second = _micro_run(tmp_path / "b", 11, dataclasses.replace(MICRO, workers=2))
    other = _micro_run(tmp_path / "c", 12)
    assert first == second                               # CSVs and mp4 bytes alike
    csvs = [k for k in first if k.endswith(".csv")]
    assert csvs and all(first[k] != other.get(k) for k in ("APES-train.csv", "APES-val.csv"))


def test_a_killed_run_resumes_from_finished_videos(tmp_path: Path) -> None:
    fresh = _micro_run(tmp_path / "fresh", 5)
    raw = tmp_path / "resumed" / "raw"
    parts = parts_dir(raw, 5, MICRO)
    parts.mkdir(parents=True)
    _job(5, "train", 0, MICRO, parts)                    # as if killed after the first video
    metrics = run(MICRO, 5, raw)
    assert metrics["resumed_videos"] == 1
    assert _tree_digest(raw) == fresh
    assert not parts.exists()
    again = run(MICRO, 5, raw)              # re-running over a finished layout is safe
    assert again["resumed_videos"] == 0 and _tree_digest(raw) == fresh


def test_mouth_moves_only_in_the_mouth_region() -> None:
    rng = np.random.default_rng(0)
    identity = faces.draw_identity(rng)
    look = dataclasses.replace(faces.draw_look(rng, 0.0), occluder=None)
    closed, wide = faces.render_sprite(identity, look, 0), faces.render_sprite(identity, look, 3)
    x1, y1, x2, y2 = faces.FACE_BOX
    diff = np.abs(closed.astype(int) - wide.astype(int)).sum(axis=2)
    mid = y1 + (y2 - y1) // 2
    assert diff[mid:y2 + 4, x1:x2].sum() > 50 * 255      # lower face changes
    assert diff[:mid].sum() == 0                         # eyes, brows, hair do not


def test_mouth_follows_the_speech_labels() -> None:
    p = dataclasses.replace(MICRO, shots_per_video=8, identities_per_video=(2, 2), silent_share=0.0,
                            not_audible_share=0.0)
    rng = np.random.default_rng(3)
    cast = synth_video._cast(rng, rng, "vid", p)
    shots = synth_video._shots(rng, cast, p.shots_per_video, p)
    audio, segments = synth_video._speech(rng, rng, cast, shots, voices.draw_cast_voices(rng, 1, 0.0), p)
    tracks = synth_video._tracks(rng, "vid", cast, shots, segments, p)
    speaking = np.concatenate([t.mouth[np.array(t.labels) == "SPEAKING_AUDIBLE"] for t in tracks])
    quiet = np.concatenate([t.mouth[np.array(t.labels) == "NOT_SPEAKING"] for t in tracks])
    assert speaking.size > 5 and quiet.size > 5
    assert (speaking > 0).all() and (quiet == 0).all()
    assert audio.size == round((shots[-1].first_frame + shots[-1].frames) / p.fps * synth_video.SAMPLE_RATE)


def _mfcc_stats(audio: np.ndarray) -> np.ndarray:
    """Mean and spread of MFCCs 1-19: a crude timbre fingerprint of an utterance."""
    mfcc = librosa.feature.mfcc(y=audio, sr=16000, n_mfcc=20)[1:]
    return np.concatenate([mfcc.mean(axis=1), mfcc.std(axis=1)])


def test_two_identities_sound_different() -> None:
    rng = np.random.default_rng(1)
    a, b = voices.Voice("m3", 30, 50, 160), voices.Voice("f4", 75, 50, 160)
    texts = [voices.random_text(rng, 12) for _ in range(4)]
    emb_a = [_mfcc_stats(voices.speak(t, a, 16000)) for t in texts]
    emb_b = [_mfcc_stats(voices.speak(t, b, 16000)) for t in texts]
    within = np.mean([np.linalg.norm(emb_a[i] - emb_a[j]) for i in range(4) for j in range(i + 1, 4)])
    between = np.mean([np.linalg.norm(x - y) for x in emb_a for y in emb_b])
    assert between > 1.5 * within
    pitch_a = np.nanmedian(librosa.yin(voices.speak(texts[0], a, 16000), fmin=60, fmax=500, sr=16000))
    pitch_b = np.nanmedian(librosa.yin(voices.speak(texts[0], b, 16000), fmin=60, fmax=500, sr=16000))
    assert pitch_b > pitch_a * 1.2


def test_voice_similarity_draws_a_cast_closer_together() -> None:
    def spread(similarity: float) -> tuple[float, int]:
        pitches, variants = [], set()
        for seed in range(20):
            cast = voices.draw_cast_voices(np.random.default_rng(seed), 10, similarity)
            pitches.append(np.std([v.pitch for v in cast]))
            variants.update((seed, v.variant) for v in cast)
        return float(np.mean(pitches)), len(variants)
    loose, tight = spread(0.0), spread(0.9)
    assert tight[0] < loose[0] / 2 and tight[1] < loose[1] / 2
    assert len(set(voices.draw_cast_voices(np.random.default_rng(0), 12, 1.0))) == 12   # still distinct


def test_cli_writes_the_layout_and_rejects_bad_knobs(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"seed": 2, "synth": {**{k: list(v) if isinstance(v, tuple) else v
                                                              for k, v in dataclasses.asdict(MICRO).items()}}}))
    result = CliRunner().invoke(app, ["synth", "--params", str(params), "--out", str(tmp_path / "raw"),
                                      "--metrics", str(tmp_path / "m.json"), "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "m.json").read_text())["videos"] == {"train": 1, "val": 1}
    assert len(list((tmp_path / "raw" / "videos").glob("*.mp4"))) == 2
    params.write_text(yaml.safe_dump({"synth": {"nuisance": 1.5}}))
    bad = CliRunner().invoke(app, ["synth", "--params", str(params), "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "synth.nuisance" in bad.output
    assert not (tmp_path / "bad").exists()


def test_config_names_the_bad_synth_key() -> None:
    with pytest.raises(ConfigError, match="synth.shot_seconds"):
        params_from_dict({"synth": {"shot_seconds": [3.0, 1.0]}})
    with pytest.raises(ConfigError, match="synth.width"):
        params_from_dict({"synth": {"width": 101}})
    with pytest.raises(ConfigError, match="synth.colour"):
        params_from_dict({"synth": {"colour": 1}})


def test_audio_knobs_leave_faces_and_labels_alone(tmp_path: Path) -> None:
    base = _micro_run(tmp_path / "a", 4)
    harsher = _micro_run(tmp_path / "b", 4, dataclasses.replace(MICRO, snr_db=(-5.0, 0.0), music_share=1.0,
                                                                 reverb=1.0))
    csvs = [k for k in base if k.endswith(".csv")]
    assert all(base[k] == harsher[k] for k in csvs)      # same boxes, labels and identities
    videos = [k for k in base if k.endswith(".mp4")]
    assert all(base[k] != harsher[k] for k in videos)    # but another soundtrack


def test_screen_time_has_a_long_tail_and_a_quarter_of_the_cast_is_silent() -> None:
    p = SynthParams()
    for seed in range(3):
        rng = np.random.default_rng(seed)
        cast = synth_video._cast(rng, rng, "vid", p)
        shots = synth_video._shots(rng, cast, p.shots_per_video, p)
        counts = sorted(Counter(person for shot in shots for person in shot.people).values(), reverse=True)
        assert len(counts) == len(cast)                  # everyone is on screen at least once
        assert counts[0] > 3 * np.median(counts)         # main characters get most shots
        assert sum(c.silent for c in cast) == round(p.silent_share * len(cast))
        assert not cast[0].silent and not cast[1].silent


def test_val_videos_grow_evenly_over_the_scale_and_train_videos_stay_alike() -> None:
    p = dataclasses.replace(MICRO, shots_per_video=10, val_videos=3, val_shots_scale=(1.0, 3.0))
    assert [p.shots("train", i) for i in range(3)] == [10, 10, 10]
    assert [p.shots("val", i) for i in range(3)] == [10, 20, 30]
    one = dataclasses.replace(p, val_videos=1)
    assert one.shots("val", 0) == 10

