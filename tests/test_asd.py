"""Active speaker detection: the official AVA-ActiveSpeaker AP, its CSV format and errors, the asd stage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from apes_cli.main import app
from stages import asd
from stages.core.config import AsdParams
from stages.core.errors import DataError
from stages.evaluation.active_speaker import read_box_csv, read_groundtruth, speaking_average_precision
from stages.media.voice_activity import SAMPLE_RATE, speech_at, speech_regions, speech_regions_by_block
from stages.report import asd_markdown

runner = CliRunner()

GROUNDTRUTH = [  # video, time, x1, y1, x2, y2, label, entity; two faces over three frames
    ("vidA", "900.0", "0.1", "0.2", "0.3", "0.4", "SPEAKING_AUDIBLE", "vidA_0900_0903:1"),
    ("vidA", "900.05", "0.1", "0.2", "0.3", "0.4", "NOT_SPEAKING", "vidA_0900_0903:1"),
    ("vidA", "900.1", "0.11", "0.2", "0.31", "0.4", "SPEAKING_AUDIBLE", "vidA_0900_0903:1"),
    ("vidA", "900.0", "0.5", "0.2", "0.7", "0.4", "SPEAKING_NOT_AUDIBLE", "vidA_0900_0903:2"),
    ("vidA", "900.05", "0.5", "0.2", "0.7", "0.4", "NOT_SPEAKING", "vidA_0900_0903:2"),
]


def _csv(path: Path, rows: list[tuple[str, ...]], header: str | None = None) -> Path:
    lines = ([header] if header else []) + [",".join(row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def _predictions(scores: list[str], rows=GROUNDTRUTH) -> list[tuple[str, ...]]:
    return [(*row[:6], "SPEAKING_AUDIBLE", row[7], score) for row, score in zip(rows, scores)]


def official_rowwise_ap(speaking: list[bool], scores: list[float]) -> float:
    """The official computation, one row at a time: rank by score, precision and recall after each row, VOC AP."""
    ranked = sorted(zip(scores, speaking), key=lambda pair: -pair[0])
    positives, hits, points = sum(speaking), 0, []
    for rank, (_, is_speaking) in enumerate(ranked, start=1):
        hits += is_speaking
        points.append((hits / rank, hits / positives))
    recall = [0.0] + [r for _, r in points] + [1.0]
    precision = [0.0] + [p for p, _ in points] + [0.0]
    for i in range(len(precision) - 2, -1, -1):
        precision[i] = max(precision[i], precision[i + 1])
    return sum((recall[i] - recall[i - 1]) * precision[i] for i in range(1, len(recall)) if recall[i] != recall[i - 1])


# --- the average precision -------------------------------------------------------------------------------

@pytest.mark.parametrize("speaking, scores, expected", [
    ([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.6], 0.5 * 1 + 0.5 * 2 / 3),
    ([0, 1, 1], [0.9, 0.8, 0.7], 2 / 3),            # VOC keeps 2/3 at recall 0.5; scikit-learn's AP says 7/12
    ([1, 1, 0], [0.3, 0.2, 0.1], 1.0),
    ([0, 0, 1], [0.3, 0.2, 0.1], 1 / 3),
    ([1, 0], [0.5, 0.5], 0.5),                      # a tie is one threshold, whatever the row order
    ([0, 1], [0.5, 0.5], 0.5),
    ([1, 0, 0, 1, 0], [0.0] * 5, 0.4),              # one score for all: the share of positives (chance)
])
def test_average_precision_by_hand(speaking, scores, expected):
    assert speaking_average_precision(np.array(speaking, bool), np.array(scores)) == pytest.approx(expected)


def test_distinct_scores_give_the_official_row_by_row_ap():
    rng = np.random.default_rng(3)
    for _ in range(20):
        speaking = rng.random(60) < 0.3
        speaking[0] = True
        scores = rng.random(60) + 0.5 * speaking
        assert speaking_average_precision(speaking, scores) == pytest.approx(
            official_rowwise_ap(speaking.tolist(), scores.tolist()), abs=1e-12)


def test_no_speaking_box_has_no_average_precision():
    with pytest.raises(ValueError, match="no SPEAKING_AUDIBLE box"):
        speaking_average_precision(np.zeros(3, bool), np.arange(3.0))


# --- the CSV format and its errors -------------------------------------------------------------------------

def test_official_files_scored_through_the_command(tmp_path):
    truth = _csv(tmp_path / "gt.csv", GROUNDTRUTH)
    predictions = _csv(tmp_path / "pred.csv", _predictions(["0.9", "0.2", "0.8", "0.95", "0.1"]))
    out = tmp_path / "asd.json"
    result = runner.invoke(app, ["evaluate", "--asd", str(predictions), "--asd-groundtruth", str(truth),
                                 "--metrics", str(out)])
    assert result.exit_code == 0, result.output
    metrics = json.loads(out.read_text())
    # ranked: NOT_AUDIBLE 0.95, AUDIBLE 0.9, AUDIBLE 0.8, ...: precision 1/2 then 2/3 at recall 1/2 and 1
    assert metrics["AP"] == pytest.approx(100 * (0.5 * 2 / 3 + 0.5 * 2 / 3), abs=1e-3)
    assert (metrics["boxes"], metrics["speaking_audible"], metrics["speaking_not_audible"]) == (5, 2, 1)


def test_a_header_with_extra_columns_and_another_row_order_are_accepted(tmp_path):
    header = "video_id,frame_timestamp,entity_box_x1,entity_box_y1,entity_box_x2,entity_box_y2,label,entity_id," \
             "label_id,score"
    rows = [(*row[:8], "1", score) for row, score in
            zip(_predictions(["0.9", "0.2", "0.8", "0.95", "0.1"]), ["0.9", "0.2", "0.8", "0.95", "0.1"])]
    predictions = _csv(tmp_path / "talknet.csv", rows[::-1], header)
    folder = tmp_path / "truth"
    folder.mkdir()
    _csv(folder / "vidA-activespeaker.csv", GROUNDTRUTH)
    metrics = asd.run_predictions_file(predictions, folder, None)
    assert metrics["AP"] == pytest.approx(100 * 2 / 3, abs=1e-3)


@pytest.mark.parametrize("edit, line, field, message", [
    (lambda rows: rows[:1] + [(*rows[1][:8], "high")] + rows[2:], 2, "score", "expected a number"),
    (lambda rows: rows[:2] + [(*rows[2][:8], "nan")] + rows[3:], 3, "score", "expected a finite number"),
    (lambda rows: rows[:3] + [(*rows[3][:6], "NOT_SPEAKING", *rows[3][7:])] + rows[4:], 4, "label",
     "expected SPEAKING_AUDIBLE on every prediction row"),
    (lambda rows: rows[:1] + [rows[1][:8]] + rows[2:], 2, None, "expected 9 columns, found 8"),
    (lambda rows: rows[:4] + [(*rows[4][:2], "0.55", *rows[4][3:])], 5, "entity_box_x1", "differs from the ground"),
    (lambda rows: rows[:4] + [(*rows[4][:7], "vidA_0900_0903:9", rows[4][8])], 5, "entity_id",
     "no ground-truth box"),
    (lambda rows: rows[:4] + [rows[0]], 5, "entity_id", "appears twice"),
    (lambda rows: rows[:1] + [(rows[1][0], "-1", *rows[1][2:])] + rows[2:], 2, "frame_timestamp", ">= 0 seconds"),
    (lambda rows: rows[:1] + [("", *rows[1][1:])] + rows[2:], 2, "video_id", "empty value"),
])
def test_a_bad_predictions_file_names_its_line_and_field(tmp_path, edit, line, field, message):
    truth = _csv(tmp_path / "gt.csv", GROUNDTRUTH)
    predictions = _csv(tmp_path / "bad.csv", edit(_predictions(["0.9", "0.2", "0.8", "0.95", "0.1"])))
    with pytest.raises(DataError) as caught:
        asd.run_predictions_file(predictions, truth, None)
    assert (caught.value.file, caught.value.line, caught.value.field) == (str(predictions), line, field)
    assert message in str(caught.value)


def test_a_ground_truth_box_without_prediction_is_an_error(tmp_path):
    truth = _csv(tmp_path / "gt.csv", GROUNDTRUTH)
    predictions = _csv(tmp_path / "short.csv", _predictions(["0.9", "0.2", "0.8", "0.95"]))
    with pytest.raises(DataError, match=r"1 ground-truth boxes have no prediction.*gt.csv line 5"):
        asd.run_predictions_file(predictions, truth, None)


def test_a_bad_ground_truth_label_names_the_file(tmp_path):
    truth = _csv(tmp_path / "gt.csv", GROUNDTRUTH[:2] + [(*GROUNDTRUTH[2][:6], "TALKING", GROUNDTRUTH[2][7])])
    with pytest.raises(DataError) as caught:
        read_groundtruth(truth)
    assert (caught.value.line, caught.value.field) == (3, "label")


def test_the_command_rejects_a_bad_file_in_one_line_with_exit_2(tmp_path):
    truth = _csv(tmp_path / "gt.csv", GROUNDTRUTH)
    rows = _predictions(["0.9", "0.2", "oops", "0.95", "0.1"])
    predictions = _csv(tmp_path / "bad.csv", rows)
    out = tmp_path / "asd.json"
    result = runner.invoke(app, ["evaluate", "--asd", str(predictions), "--asd-groundtruth", str(truth),
                                 "--metrics", str(out)])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0 and "Traceback" not in result.output
    assert "bad.csv, line 3, field 'score'" in result.output
    assert not out.exists()


# --- the stage on generated videos ---------------------------------------------------------------------

def test_the_vad_in_blocks_places_each_block_at_its_own_time():
    from search_media import sample_audio   # 30 s of real speech by two people (fixtures/sample.wav)
    audio = sample_audio()
    whole = speech_regions(audio)
    blocks = speech_regions_by_block(audio, 7.0)
    assert all(0 <= start < end <= audio.size for start, end in blocks)
    assert any(start >= 21 * SAMPLE_RATE for start, _ in blocks)   # the last block's regions are not at its start
    times = np.arange(0, audio.size / SAMPLE_RATE, 0.05)
    agree = (speech_at(whole, times) == speech_at(blocks, times)).mean()
    assert agree > 0.9, agree


def test_batched_vad_equals_silero_chunk_by_chunk():
    import torch
    from silero_vad import get_speech_timestamps

    from search_media import sample_audio
    from stages.media.voice_activity import _vad_model, speech_probabilities
    audio = sample_audio()[:12 * SAMPLE_RATE + 300]  # not a whole number of chunks: the last one is padded
    model = _vad_model()
    model.reset_states()
    theirs = [model(torch.from_numpy(np.pad(audio[s:s + 512], (0, max(0, s + 512 - audio.size)))), SAMPLE_RATE).item()
              for s in range(0, audio.size, 512)]
    ours = speech_probabilities(audio)
    assert len(ours) == len(theirs) and np.abs(np.subtract(ours, theirs)).max() < 1e-5
    stamps = get_speech_timestamps(torch.from_numpy(audio), model, sampling_rate=SAMPLE_RATE, threshold=0.5,
                                   min_speech_duration_ms=250, min_silence_duration_ms=200, speech_pad_ms=30)
    assert speech_regions(audio) == [(s["start"], s["end"]) for s in stamps] and stamps


def test_rule_baselines_on_hand_made_frames():
    frames = np.array([0, 0, 1, 2, 2, 2])
    boxes = np.array([[0, 0, .2, .2], [0, 0, .3, .3], [0, 0, .1, .1], [0, 0, .1, .1], [0, 0, .1, .1],
                      [.5, .5, .55, .55]])
    only, largest = asd.frame_rules(frames, boxes)
    assert only.tolist() == [False, False, True, False, False, False]
    assert largest.tolist() == [False, True, True, True, True, False]


def test_the_stage_scores_each_method_and_its_files_score_the_same(tiny_raw, tmp_path):
    metrics = asd.run(AsdParams(workers=2), tiny_raw, tmp_path / "asd")
    truth = read_groundtruth(tiny_raw / "annotations" / "ava_activespeaker_val_v1.0")
    speaking = np.array(truth.labels) == "SPEAKING_AUDIBLE"
    assert metrics["boxes"] == len(truth) and metrics["speaking_audible"] == speaking.sum()
    assert metrics["methods"]["chance"]["AP"] == pytest.approx(100 * speaking.mean(), abs=1e-3)
    for method, result in metrics["methods"].items():
        again = asd.run_predictions_file(tmp_path / "asd" / f"{method}.csv", None, tiny_raw)
        assert again["AP"] == result["AP"], method
    rules = {method: read_box_csv(tmp_path / "asd" / f"{method}.csv", scored=True).scores
             for method in ("only_face", "largest_face")}
    assert set(np.unique(np.concatenate(list(rules.values())))) <= {0.0, 1.0}
    assert (rules["only_face"] <= rules["largest_face"]).all()   # the only face is the largest one
    assert metrics["methods"]["synchrony"]["AP"] > metrics["methods"]["chance"]["AP"]


def test_the_report_section_lists_every_method_and_the_published_scale():
    lines = "\n".join(asd_markdown({"boxes": 1200, "videos": 2, "split": "val", "positive_share": 30.0,
                                    "speaking_not_audible": 40, "methods": {"chance": {"AP": 30.0},
                                                                             "synchrony": {"AP": 55.25}},
                                    "vad_speech_share": {"speaking_audible": 60.0, "other_boxes": 20.0}}))
    assert "## Active speaker detection" in lines and "| 55.2 |" in lines and "| 30.0 |" in lines
    assert "(92.3)" in lines and "(94.1)" in lines and "1,200 labelled face boxes" in lines
    assert "not evaluated yet" in "\n".join(asd_markdown(None))


def test_the_report_stage_reads_the_asd_metrics_and_rejects_a_bad_one(tmp_path):
    asd_metrics = tmp_path / "asd.json"
    payload = {"boxes": 10, "videos": 1, "split": "val", "positive_share": 40.0, "speaking_not_audible": 1,
               "methods": {"chance": {"AP": 40.0}, "synchrony": {"AP": 71.5}}}
    asd_metrics.write_text(json.dumps(payload))
    arguments = ["report", "--eval-dir", str(tmp_path / "eval"), "--out", str(tmp_path / "out"),
                 "--crops-dir", str(tmp_path / "crops"), "--asd-metrics", str(asd_metrics),
                 "--metrics", str(tmp_path / "out" / "report.json")]
    (tmp_path / "eval").mkdir()
    result = runner.invoke(app, arguments)
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "out" / "benchmark.json").read_text())["active_speaker"] == payload["methods"]
    assert "| 71.5 |" in (tmp_path / "out" / "benchmark.md").read_text()
    payload["methods"]["synchrony"]["AP"] = None
    asd_metrics.write_text(json.dumps(payload))
    result = runner.invoke(app, arguments)
    assert result.exit_code == 2 and "field 'methods.synchrony.AP'" in result.output
