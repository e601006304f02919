"""Stage mel: torchaudio log-mels against librosa on the real sample.wav, snippets lined up with the
sample.rttm speech turns, resumability and a clear error for missing audio."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import librosa
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torchaudio
from media_data import (
    BOX_RATE,
    SAMPLE_WAV,
    cli,
    leftovers,
    read_shards,
    rttm_turns,
    standard_videos,
    write_params,
    write_raw,
)

from stages.core.config import MelParams
from stages.media.audio_features import LogMel, log_mel_at, log_mel_batches, snippet_frames, snippet_samples
from stages.media.shards import metadata
from stages.media.video_io import read_wav
from stages.mel import Segment, snippet_starts, speech_segments
from stages.rawdata.annotations import load_split
from stages.rawdata.layout import RawLayout

PARAMS = MelParams()


def librosa_log_mel(snippet: np.ndarray, rate: int, params: MelParams = PARAMS) -> np.ndarray:
    """The same features, one snippet at a time, with librosa's defaults (zero padding, Slaney mels)."""
    power = librosa.feature.melspectrogram(
        y=snippet, sr=rate, n_fft=params.n_fft, hop_length=params.hop_length, win_length=params.win_length,
        n_mels=params.n_mels, center=True, pad_mode="constant", power=2.0, htk=False, norm="slaney")
    return np.log(power + 1e-6)


def turn_snippets(audio: np.ndarray, rate: int) -> np.ndarray:
    """One snippet at the start of every sample.rttm turn (real speech)."""
    length = snippet_samples(PARAMS, rate)
    starts = [int(start * rate) for speaker in ("speaker90", "speaker91") for start, _ in rttm_turns(speaker)]
    return np.stack([audio[s:s + length] for s in starts])


def test_torchaudio_log_mel_matches_librosa_on_real_speech() -> None:
    audio, rate = read_wav(SAMPLE_WAV)
    snippets = turn_snippets(audio, rate)
    ours = log_mel_batches(LogMel(PARAMS, rate), snippets, batch_size=4)
    theirs = np.stack([librosa_log_mel(s, rate) for s in snippets])
    assert ours.shape == theirs.shape == (len(snippets), 64, snippet_frames(PARAMS, rate)) == (10, 64, 46)
    assert np.abs(ours - theirs).max() < 1e-3
    # torchaudio's own defaults (reflect padding, HTK mels, no norm) are a different feature.
    default = torchaudio.transforms.MelSpectrogram(rate, n_fft=512, win_length=400, hop_length=160, n_mels=64)
    with torch.inference_mode():
        plain = torch.log(default(torch.from_numpy(snippets)) + 1e-6).numpy()
    assert np.abs(plain - theirs).max() > 0.5


@pytest.mark.parametrize("params", [
    PARAMS,
    MelParams(n_fft=400, win_length=400, hop_length=100, snippet_hop_seconds=0.1),
    MelParams(snippet_seconds=0.1),
])
def test_shared_frame_grid_gives_the_same_log_mels_as_one_snippet_at_a_time(params: MelParams) -> None:
    audio, rate = read_wav(SAMPLE_WAV)
    length, step = snippet_samples(params, rate), int(params.snippet_hop_seconds * rate)
    rng = np.random.default_rng(0)
    offsets = [int(start) + k * step for start in rng.integers(0, audio.size - 3 * rate, 30)
               for k in range(rng.integers(1, 8))]
    offsets = np.array(offsets + [0, audio.size - length, 12345, 12345, 12346])  # edges, duplicates, off-grid
    transform = LogMel(params, rate)
    alone = log_mel_batches(transform, np.stack([audio[o:o + length] for o in offsets]), batch_size=64)
    np.testing.assert_allclose(log_mel_at(transform, audio, offsets, length), alone, atol=1e-5)


def test_speech_runs_become_segments_one_box_interval_long_past_the_last_box() -> None:
    labels = ["NOT_SPEAKING", "SPEAKING_AUDIBLE", "SPEAKING_AUDIBLE", "SPEAKING_AUDIBLE", "SPEAKING_NOT_AUDIBLE",
              "SPEAKING_AUDIBLE", "NOT_SPEAKING"]
    stamps = [10.0 + i / BOX_RATE for i in range(len(labels))]
    other = ["SPEAKING_AUDIBLE"]
    plan = pa.table({
        "entity_id": ["a"] * len(labels) + ["b"],
        "identity": ["p"] * len(labels) + [None],
        "frame_timestamp": stamps + [12.0],
        "label": labels + other,
    })
    segments = speech_segments(plan)
    assert segments == [Segment("a", "p", 10.05, pytest.approx(10.2)), Segment("a", "p", 10.25, pytest.approx(10.3)),
                        Segment("b", None, 12.0, 12.05)]


def test_snippets_step_through_long_segments_and_centre_on_short_ones() -> None:
    assert snippet_starts(Segment("a", "p", 1.0, 1.75), 0.45, 0.15) == pytest.approx([1.0, 1.15, 1.3])
    assert snippet_starts(Segment("a", "p", 1.0, 1.2), 0.45, 0.15) == pytest.approx([0.875])


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """decode + mel of the standard generated layout (soundtrack = sample.wav)."""
    work = tmp_path_factory.mktemp("mel")
    raw = write_raw(work / "raw", standard_videos())
    params = write_params(work / "params.yaml")
    result = cli("decode", "--params", params, "--raw", raw, "--out", work / "decoded", "--metrics",
                 work / "decode.json")
    assert result.exit_code == 0, result.output
    result = cli("mel", "--params", params, "--decoded", work / "decoded", "--out", work / "mels", "--metrics",
                 work / "mel.json")
    assert result.exit_code == 0, result.output
    return work


def expected_snippets() -> set[tuple[str, str, float]]:
    """(entity, identity, start) from the RTTM turns, worked out from the track definitions alone."""
    expected = set()
    for video in standard_videos():
        for track in video.tracks:
            if track.identity in (None, "EXTRA_OR_AMBIGUOUS") or track.speaker is None:
                continue
            stamps = track.stamps()
            for begin, end in rttm_turns(track.speaker):
                inside = stamps[(stamps >= begin) & (stamps <= end)]
                if inside.size == 0:
                    continue
                start, stop = inside[0], inside[-1] + 1 / BOX_RATE
                if stop - start < PARAMS.snippet_seconds:
                    starts = [(start + stop - PARAMS.snippet_seconds) / 2]
                else:
                    starts = np.arange(start, stop - PARAMS.snippet_seconds + 1e-6, PARAMS.snippet_hop_seconds)
                expected |= {(video.entity(track), track.identity, round(float(s), 3)) for s in starts}
    return expected


def test_mel_rows_line_up_with_the_speech_turns(work: Path) -> None:
    mels, keys = read_shards(work / "mels", "train", "mel")
    rows = {(e, i, round(s, 3)) for e, i, s in zip(keys["entity_id"].to_pylist(), keys["identity"].to_pylist(),
                                                    keys["start"].to_pylist())}
    assert len(rows) == keys.num_rows == len(mels)
    assert rows == expected_snippets()
    assert set(keys["label"].to_pylist()) == {"SPEAKING_AUDIBLE"}
    assert json.loads((work / "mel.json").read_text())["snippets"] == keys.num_rows
    val, _ = read_shards(work / "mels", "val", "mel")
    assert val.shape == (0, 64, 46)  # vidB's 1-3 s hold no speech turn


def test_mel_values_are_the_decoded_audio_under_each_snippet(work: Path) -> None:
    mels, keys = read_shards(work / "mels", "train", "mel")
    meta = metadata(pq.read_schema(work / "mels" / "train" / "vidA.parquet"))
    assert (int(meta["n_mels"]), int(meta["frames"]), int(meta["sample_rate"])) == (64, 46, 16000)
    audio, rate = read_wav(work / "decoded" / "audio" / "train" / "vidA.wav")
    audio_start = float(metadata(pq.read_schema(work / "decoded" / "plan" / "train" / "vidA.parquet"))["audio_start"])
    for row in range(0, keys.num_rows, 7):
        offset = int(round((keys["start"][row].as_py() - audio_start) * rate))
        snippet = audio[offset: offset + snippet_samples(PARAMS, rate)]
        assert np.abs(mels[row] - librosa_log_mel(snippet, rate)).max() < 1e-3


def test_rerun_resumes_and_equals_an_uninterrupted_run(work: Path, tmp_path: Path) -> None:
    shutil.copytree(work / "mels", tmp_path / "mels")
    (tmp_path / "mels" / "train" / "vidA.parquet").unlink()
    (tmp_path / "mels" / "train" / ".vidA.parquet.x.tmp").write_bytes(b"PAR1 partial")
    result = cli("mel", "--params", write_params(tmp_path / "p.yaml"), "--decoded", work / "decoded",
                 "--out", tmp_path / "mels", "--metrics", tmp_path / "mel.json", "--workers", "1")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "mel.json").read_text())["resumed"] == 1
    assert leftovers(tmp_path) == []
    for path in sorted((work / "mels").rglob("*.parquet")):
        assert path.read_bytes() == (tmp_path / "mels" / path.relative_to(work / "mels")).read_bytes()


def test_missing_audio_is_an_error_naming_it(work: Path, tmp_path: Path) -> None:
    decoded = tmp_path / "decoded"
    shutil.copytree(work / "decoded", decoded)
    (decoded / "audio" / "train" / "vidA.wav").unlink()
    result = cli("mel", "--params", write_params(tmp_path / "p.yaml"), "--decoded", decoded, "--out",
                 tmp_path / "mels", "--metrics", tmp_path / "mel.json", "--split", "train")
    assert result.exit_code == 2, result.output
    assert "vidA.wav" in result.output
    assert not (tmp_path / "mels" / "train" / "vidA.parquet").exists() and leftovers(tmp_path) == []


def test_every_seen_and_heard_track_of_the_tiny_data_set_gets_snippets(tiny_raw: Path, tmp_path: Path) -> None:
    params = write_params(tmp_path / "params.yaml")
    for stage, args in (("decode", ["--raw", tiny_raw, "--out", tmp_path / "decoded"]),
                        ("mel", ["--decoded", tmp_path / "decoded", "--out", tmp_path / "mels"])):
        result = cli(stage, "--params", params, *args, "--metrics", tmp_path / f"{stage}.json")
        assert result.exit_code == 0, result.output
    for split in ("train", "val"):
        boxes = load_split(RawLayout(tiny_raw), split)
        heard = {(e, i) for e, i, label in zip(boxes["entity_id"].to_pylist(), boxes["identity"].to_pylist(),
                                               boxes["label"].to_pylist())
                 if i is not None and label == "SPEAKING_AUDIBLE"}
        mels, keys = read_shards(tmp_path / "mels", split, "mel")
        assert set(zip(keys["entity_id"].to_pylist(), keys["identity"].to_pylist())) == heard
        assert len(heard) > 0 and np.isfinite(mels).all()
