"""`apes-cli evaluate --pretrained`: dlib's face descriptor and CAM++ on val shards of real faces and voices,
the same embeddings on one worker or two, the Seen file reused for Seen & Heard, and their report rows."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from apes_cli.main import app
from stages.evaluation.tables import COLUMNS

sys.path.insert(0, str(Path(__file__).parent))
from search_media import group_faces, voice_piece, write_wav  # noqa: E402

runner = CliRunner()


def _report_shards(root: Path) -> tuple[Path, Path, Path]:
    """Val shards as the media stages write them: 2 videos x 3 people (real faces, two real voices and the
    first voice a third faster) x 2 tracklets, 64 px crops, snippets with their start, the decoded WAV."""
    import pyarrow as pa

    from search_media import sample_audio
    crops, mels, decoded = root / "crops", root / "mels", root / "decoded"
    rng = np.random.default_rng(1)
    voices = {0: ("speaker90", 1.0), 1: ("speaker91", 1.0), 2: ("speaker90", 1.3)}
    for v, video in enumerate(("vidA", "vidB")):
        crop_rows, mel_rows, audio = [], [], []
        for person in range(3):
            face = cv2.resize(group_faces()[person + 3 * v], (64, 64), interpolation=cv2.INTER_AREA)
            speaker, factor = voices[person]
            for track in range(2):
                entity = f"{video}_0900_0960:{person * 2 + track}"
                for _ in range(3):
                    noisy = np.clip(face + rng.normal(0, 6, face.shape), 0, 255).astype(np.uint8)
                    crop_rows.append((video, entity, f"{video}-p{person}", "SPEAKING_AUDIBLE", noisy.tobytes()))
                piece = voice_piece(speaker, track + (2 if factor != 1.0 else 0))  # no two tracks share audio
                if factor != 1.0:
                    import librosa
                    piece = librosa.resample(piece, orig_sr=16000, target_sr=int(16000 / factor))
                offset = sum(a.size for a in audio) / 16000
                audio.append(piece)
                for k in range(int(piece.size / 16000 / 0.45)):
                    mel_rows.append((video, entity, f"{video}-p{person}", 900.0 + offset + 0.45 * k))
        tables = {
            crops: pa.table({"video_id": [r[0] for r in crop_rows], "entity_id": [r[1] for r in crop_rows],
                             "identity": [r[2] for r in crop_rows], "label": [r[3] for r in crop_rows],
                             "image": pa.array([r[4] for r in crop_rows], pa.binary())}
                            ).replace_schema_metadata({"crop_size": "64"}),
            mels: pa.table({"video_id": [r[0] for r in mel_rows], "entity_id": [r[1] for r in mel_rows],
                            "identity": [r[2] for r in mel_rows], "start": [r[3] for r in mel_rows]}
                           ).replace_schema_metadata({"snippet_seconds": "0.45"}),
            decoded / "plan": pa.table({"video_id": [video]}).replace_schema_metadata({"audio_start": "900.0"}),
        }
        for folder, table in tables.items():
            (folder / "val").mkdir(parents=True, exist_ok=True)
            pq.write_table(table, folder / "val" / f"{video}.parquet")
        (decoded / "audio" / "val").mkdir(parents=True, exist_ok=True)
        write_wav(decoded / "audio" / "val" / f"{video}.wav", np.concatenate(audio))
    assert sample_audio().size > 0
    return crops, mels, decoded


def test_pretrained_embedders_become_report_rows(tmp_path: Path) -> None:
    crops, mels, decoded = _report_shards(tmp_path)
    eval_dir, out = tmp_path / "eval", tmp_path / "embeddings"
    runs = {("face", "seen_heard"): ["--workers", "2"], ("voice", "seen_heard"): ["--workers", "2"],
            ("face", "seen"): ["--workers", "1"]}
    for (modality, task), extra in runs.items():
        result = runner.invoke(app, ["evaluate", "--pretrained", "--modality", modality, "--task", task,
                                     "--crops-dir", str(crops), "--mels-dir", str(mels), "--decoded-dir", str(decoded),
                                     "--out", str(out), "--metrics", str(eval_dir / f"eval_pretrained_{modality}_{task}.json"),
                                     *extra])
        assert result.exit_code == 0, result.output
    face = json.loads((eval_dir / "eval_pretrained_face_seen_heard.json").read_text())
    voice = json.loads((eval_dir / "eval_pretrained_voice_seen_heard.json").read_text())
    assert face["tracklets"] == voice["tracklets"] == 12
    assert face["mAP"] == pytest.approx(100.0)  # six different real faces, each track its own crops
    assert voice["mAP"] > 60.0, voice  # random ranking would give about 46 here
    embedded = pq.read_table(out / "pretrained_voice_seen_heard.parquet")
    assert len(embedded["embedding"][0].as_py()) == 192  # CAM++, the default speaker embedder
    # one process or two: the same descriptors
    seen = json.loads((eval_dir / "eval_pretrained_face_seen.json").read_text())
    assert pq.read_table(out / "pretrained_face_seen.parquet")["embedding"].to_pylist() == \
        pq.read_table(out / "pretrained_face_seen_heard.parquet")["embedding"].to_pylist()
    assert seen["mAP"] == face["mAP"]
    # Seen & Heard from the Seen file (as dvc.yaml does): its rows, the same numbers, no dlib pass
    common = ["evaluate", "--pretrained", "--task", "seen_heard", "--crops-dir", str(crops), "--mels-dir", str(mels),
              "--decoded-dir", str(decoded)]
    reused = runner.invoke(app, [*common, "--modality", "face", "--out", str(tmp_path / "again"),
                                 "--reuse", str(out / "pretrained_face_seen.parquet"),
                                 "--metrics", str(tmp_path / "again.json")])
    assert reused.exit_code == 0, reused.output
    again = json.loads((tmp_path / "again.json").read_text())
    assert {k: again[k] for k in COLUMNS} == {k: face[k] for k in COLUMNS}
    assert pq.read_table(tmp_path / "again" / "pretrained_face_seen_heard.parquet")["embedding"].to_pylist() == \
        pq.read_table(out / "pretrained_face_seen_heard.parquet")["embedding"].to_pylist()
    wrong = runner.invoke(app, [*common, "--modality", "face", "--out", str(tmp_path / "wrong"),
                                "--reuse", str(out / "pretrained_voice_seen_heard.parquet"),
                                "--metrics", str(tmp_path / "wrong.json")])
    assert wrong.exit_code == 2 and "pretrained_voice_seen_heard.parquet" in wrong.output
    assert "pretrained_model" in wrong.output and not (tmp_path / "wrong.json").exists()
    # CAM++ on one thread or on two side by side: the same embeddings, in the same rows
    single = runner.invoke(app, [*common, "--modality", "voice", "--workers", "1", "--out", str(tmp_path / "single"),
                                 "--metrics", str(tmp_path / "single.json")])
    assert single.exit_code == 0, single.output
    assert pq.read_table(tmp_path / "single" / "pretrained_voice_seen_heard.parquet")["embedding"].to_pylist() == \
        pq.read_table(out / "pretrained_voice_seen_heard.parquet")["embedding"].to_pylist()

    result = runner.invoke(app, ["report", "--eval-dir", str(eval_dir), "--out", str(tmp_path / "report"),
                                 "--crops-dir", str(crops), "--metrics", str(tmp_path / "report.json")])
    assert result.exit_code == 0, result.output
    tables = json.loads((tmp_path / "report" / "benchmark.json").read_text())["tasks"]
    rows = {task: {row["key"]: row for row in rows} for task, rows in tables.items()}
    assert rows["seen_heard"]["pretrained/voice"]["cells"]["mAP"]["values"] == [voice["mAP"]]
    assert rows["seen_heard"]["pretrained/face"]["label"] == "Pretrained face"
    assert "pretrained/voice" not in rows["seen"]
    markdown = (tmp_path / "report" / "benchmark.md").read_text()
    assert f"| Pretrained voice | {voice['R@10']:.1f} |" in markdown


def test_pretrained_voice_needs_the_seen_heard_task(tmp_path: Path) -> None:
    result = runner.invoke(app, ["evaluate", "--pretrained", "--modality", "voice", "--task", "seen",
                                 "--metrics", str(tmp_path / "m.json")])
    assert result.exit_code == 2 and "--task" in result.output and "seen_heard" in result.output
    result = runner.invoke(app, ["evaluate", "--pretrained", "--modality", "crossmodal", "--task", "seen_heard",
                                 "--metrics", str(tmp_path / "m.json")])
    assert result.exit_code == 2 and "no pretrained crossmodal embedder" in result.output
    assert not (tmp_path / "m.json").exists()
