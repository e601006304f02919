"""What the project re-implements gives what the original gives: Resemblyzer's mel and network in numpy,
dlib's face network in numpy, and dlib's detector copied by unpickling."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from search_media import FIXTURES, voice_piece  # noqa: E402


@pytest.mark.filterwarnings("ignore:Please import `binary_dilation`:DeprecationWarning")  # resemblyzer's import
def test_numpy_mel_equals_resemblyzers_librosa_mel() -> None:
    from resemblyzer.audio import wav_to_mel_spectrogram

    from search_media import sample_audio
    from stages.footage.speech import _mel
    speech = sample_audio()[16000 * 10:16000 * 14] * np.float32(3.0)  # loud enough: no volume change
    ours, theirs = _mel(speech), wav_to_mel_spectrogram(speech)
    assert ours.shape == theirs.shape == (401, 40)
    assert np.allclose(ours, theirs, rtol=1e-4, atol=1e-6)


def test_numpy_face_network_equals_dlibs_own_descriptor() -> None:
    import dlib

    from stages.footage.detection import RESNET, detect_faces, face_chip, model_file
    from stages.footage.face_embedding import DlibFaceEmbedder
    photo = cv2.cvtColor(cv2.imread(str(FIXTURES / "group-photo-6-faces.jpg")), cv2.COLOR_BGR2RGB)
    chips = [face_chip(photo, face) for face in detect_faces(photo, 1)]
    theirs = dlib.face_recognition_model_v1(str(model_file(RESNET))).compute_face_descriptor(chips)
    theirs = np.asarray([np.asarray(d) for d in theirs], np.float32)
    ours = DlibFaceEmbedder().embed(chips)
    assert len(chips) == 6 and ours.shape == (6, 128)
    assert np.allclose(ours, theirs, atol=1e-5)
    assert np.allclose(DlibFaceEmbedder().embed(chips[2:3]), theirs[2:3], atol=1e-5)  # alone as in a batch


def test_copied_detector_finds_what_dlibs_own_finds() -> None:
    import dlib

    from stages.footage.detection import _new_detector
    grey = cv2.imread(str(FIXTURES / "group-photo-6-faces.jpg"), cv2.IMREAD_GRAYSCALE)
    found = [detector.run(grey, 1, -0.5) for detector in (dlib.get_frontal_face_detector(), _new_detector())]
    boxes = [[(r.left(), r.top(), r.right(), r.bottom()) for r in rects] for rects, _, _ in found]
    assert len(boxes[0]) >= 6 and boxes[0] == boxes[1]
    assert found[0][1] == found[1][1] and found[0][2] == found[1][2]  # scores and which of its 5 filters


def test_numpy_voice_encoder_equals_resemblyzers_torch_model() -> None:
    import torch
    from resemblyzer import preprocess_wav

    from stages.footage.speech import _encoder, _mel
    from stages.footage.voice_numpy import embed_windows, speech_mask
    clip = voice_piece("speaker91", 1)
    mel = _mel(clip)
    batch = np.stack([mel[s:s + 160] for s in range(0, mel.shape[0] - 160 + 1, 80)])
    with torch.inference_mode():
        theirs = _encoder()(torch.from_numpy(batch)).numpy()
    assert np.allclose(embed_windows(batch), theirs, atol=1e-5)
    padded = np.concatenate([np.zeros(16000, np.float32), clip * np.float32(4), np.zeros(16000, np.float32)])
    assert speech_mask(padded).sum() == preprocess_wav(padded, source_sr=16000).size  # the same trimming
