"""Active speaker detection scored as the official AVA-ActiveSpeaker evaluation does.

ActivityNet's `get_ava_active_speaker_performance.py` reads a ground-truth CSV (the 8 AVA columns) and a
predictions CSV (the same 8 columns, label SPEAKING_AUDIBLE on every row, plus `score`), matches rows on
(frame_timestamp, entity_id), requires the boxes of a match to agree within 1e-9, sorts by score and
computes the VOC average precision of SPEAKING_AUDIBLE: precision made non-increasing from the right, summed
over the recall steps. NOT_SPEAKING and SPEAKING_NOT_AUDIBLE boxes are both negatives.

Where this differs, on purpose (docs/evaluation.md): boxes with equal scores form one threshold (the
official script orders them by pandas' unstable sort, so its AP for tied scores depends on the row order
and the numpy build); a ground-truth box without a prediction is an error (the official inner join
drops it silently when the row counts still agree); a header row is accepted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from stages.core.atomic import atomic_path
from stages.core.errors import DataError
from stages.rawdata.annotations import AVA_COLUMNS, find_bad_row, first_line, parse_floats
from stages.rawdata.layout import AVA_LABELS

SPEAKING = "SPEAKING_AUDIBLE"
HARD_NEGATIVE = "SPEAKING_NOT_AUDIBLE"
SCORED_COLUMNS = AVA_COLUMNS + ("score",)
BOX_FIELDS = AVA_COLUMNS[2:6]
BOX_TOLERANCE = 1e-9  # the official script's `eq`


@dataclass(frozen=True)
class LabelledBoxes:
    """Rows of AVA-ActiveSpeaker CSVs: ground truth (labels) or predictions (label SPEAKING_AUDIBLE + score).

    `files[file_index[i]]`, line `lines[i]` is where row i came from (for error messages).
    """

    video_ids: list[str]
    timestamps: np.ndarray   # float64 seconds
    boxes: np.ndarray        # (n, 4) float64: x1, y1, x2, y2 as written
    labels: list[str]
    entity_ids: list[str]
    scores: np.ndarray | None
    files: tuple[Path, ...]
    file_index: np.ndarray
    lines: np.ndarray

    def __len__(self) -> int:
        return len(self.entity_ids)

    def where(self, row: int) -> tuple[Path, int]:
        """File and 1-based line of row `row`."""
        return self.files[int(self.file_index[row])], int(self.lines[row])


def _columns(path: Path, scored: bool) -> tuple[list[str], int, list[str]]:
    """Column names as read, header rows to skip, and the names to keep; a header names its own columns."""
    expected = list(SCORED_COLUMNS if scored else AVA_COLUMNS)
    first = first_line(path)
    if not first:
        raise DataError(path, "empty file: expected AVA-ActiveSpeaker rows")
    if first.split(",")[0].strip() != "video_id":
        return expected, 0, expected
    names = [name.strip() for name in first.split(",")]
    missing = [name for name in expected if name not in names]
    if missing:
        raise DataError(path, f"the header has no column {missing[0]!r} (expected {', '.join(expected)})", 1,
                        missing[0])
    return names, 1, expected


def _first_true(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def read_box_csv(path: str | Path, scored: bool) -> LabelledBoxes:
    """One AVA-ActiveSpeaker CSV: ground truth (`scored=False`) or predictions (`scored=True`), validated;
    every problem names the file, the 1-based line and the field."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    names, skip, keep = _columns(path, scored)
    try:
        table = pacsv.read_csv(
            path, read_options=pacsv.ReadOptions(column_names=names, skip_rows=skip),
            convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in names},
                                                 include_columns=keep, strings_can_be_null=False),
            parse_options=pacsv.ParseOptions(newlines_in_values=False))
    except pa.ArrowInvalid:
        raise find_bad_row(path, len(names), skip) from None
    if table.num_rows == 0:
        raise DataError(path, "no rows: expected AVA-ActiveSpeaker rows")
    offset = skip + 1
    for name in keep:
        column = table[name].combine_chunks()
        empty = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(column)), 0)
        if pc.any(empty).as_py():
            raise DataError(path, "empty value", _first_true(empty.to_numpy(zero_copy_only=False)) + offset, name)
    numbers = {name: parse_floats(pc.utf8_trim_whitespace(table[name].combine_chunks()), path, name, offset)
               for name in ("frame_timestamp", *BOX_FIELDS, *(("score",) if scored else ()))}
    for name, values in numbers.items():
        bad = ~np.isfinite(values) | ((values < 0) if name == "frame_timestamp" else False)
        if bad.any():
            row = _first_true(bad)
            wanted = "a finite time >= 0 seconds" if name == "frame_timestamp" else "a finite number"
            raise DataError(path, f"expected {wanted}, found {values[row]!r}", row + offset, name)
    labels = [label.strip() for label in table["label"].to_pylist()]
    allowed = (SPEAKING,) if scored else AVA_LABELS
    for row, label in enumerate(labels):
        if label not in allowed:
            expected = (f"{SPEAKING} on every prediction row (the official format)" if scored
                        else f"one of {', '.join(AVA_LABELS)}")
            raise DataError(path, f"label {label!r}: expected {expected}", row + offset, "label")
    n = table.num_rows
    return LabelledBoxes(
        video_ids=[v.strip() for v in table["video_id"].to_pylist()],
        timestamps=numbers["frame_timestamp"],
        boxes=np.stack([numbers[name] for name in BOX_FIELDS], axis=1),
        labels=labels,
        entity_ids=[e.strip() for e in table["entity_id"].to_pylist()],
        scores=numbers["score"] if scored else None,
        files=(path,), file_index=np.zeros(n, np.int32), lines=np.arange(offset, n + offset, dtype=np.int64))


def concat(parts: list[LabelledBoxes]) -> LabelledBoxes:
    """Rows of several files as one set, in order."""
    files = tuple(f for part in parts for f in part.files)
    starts = np.cumsum([0] + [len(part.files) for part in parts])
    scores = [part.scores for part in parts]
    return LabelledBoxes(
        video_ids=[v for part in parts for v in part.video_ids],
        timestamps=np.concatenate([part.timestamps for part in parts]),
        boxes=np.concatenate([part.boxes for part in parts]).reshape(-1, 4),
        labels=[label for part in parts for label in part.labels],
        entity_ids=[e for part in parts for e in part.entity_ids],
        scores=None if any(s is None for s in scores) else np.concatenate(scores),
        files=files,
        file_index=np.concatenate([part.file_index + start for part, start in zip(parts, starts)]),
        lines=np.concatenate([part.lines for part in parts]))


def read_groundtruth(path: str | Path) -> LabelledBoxes:
    """Ground truth from one CSV, or from every *.csv of a folder (AVA ships one file per video)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.csv"))
        if not files:
            raise DataError(path, "no AVA-ActiveSpeaker CSV files in this folder")
        return concat([read_box_csv(file, scored=False) for file in files])
    return read_box_csv(path, scored=False)


def _keys(rows: LabelledBoxes) -> dict[tuple[float, str], int]:
    """(frame_timestamp, entity_id) -> row, the official uid; a repeated uid is an error."""
    keys: dict[tuple[float, str], int] = {}
    for row, key in enumerate(zip(rows.timestamps.tolist(), rows.entity_ids)):
        first = keys.setdefault(key, row)
        if first != row:
            path, line = rows.where(row)
            raise DataError(path, f"box of {key[1]!r} at {key[0]} s appears twice (first at "
                                  f"{rows.where(first)[0].name} line {rows.where(first)[1]})", line, "entity_id")
    return keys


def match_scores(groundtruth: LabelledBoxes, predictions: LabelledBoxes) -> np.ndarray:
    """The predicted score of every ground-truth box, matched on (frame_timestamp, entity_id) with equal boxes."""
    assert predictions.scores is not None
    truth = _keys(groundtruth)
    predicted = _keys(predictions)
    order = np.full(len(groundtruth), -1, np.int64)
    for key, row in predicted.items():
        target = truth.get(key)
        if target is None:
            path, line = predictions.where(row)
            raise DataError(path, f"no ground-truth box of {key[1]!r} at {key[0]} s", line, "entity_id")
        order[target] = row
    missing = np.flatnonzero(order < 0)
    if missing.size:
        path, line = groundtruth.where(int(missing[0]))
        raise DataError(predictions.files[0], f"{missing.size} ground-truth boxes have no prediction, the first "
                                              f"{groundtruth.entity_ids[missing[0]]!r} at "
                                              f"{groundtruth.timestamps[missing[0]]} s ({path.name} line {line})")
    differ = np.abs(predictions.boxes[order] - groundtruth.boxes) > BOX_TOLERANCE
    if differ.any():
        target, column = (int(i) for i in np.argwhere(differ)[0])
        path, line = predictions.where(int(order[target]))
        raise DataError(path, f"box coordinate {predictions.boxes[order[target], column]!r} differs from the "
                              f"ground truth's {groundtruth.boxes[target, column]!r}", line, BOX_FIELDS[column])
    return predictions.scores[order]


def voc_average_precision(precision: np.ndarray, recall: np.ndarray) -> float:
    """VOC AP: the area under the precision-recall points with precision made non-increasing from the right."""
    recall = np.concatenate([[0.0], recall, [1.0]])
    precision = np.concatenate([[0.0], precision, [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.flatnonzero(recall[1:] != recall[:-1]) + 1
    return float(np.sum((recall[steps] - recall[steps - 1]) * precision[steps]))


def speaking_average_precision(speaking: np.ndarray, scores: np.ndarray) -> float:
    """AP (0..1) of `scores` for the boxes where `speaking` is true; equal scores are one threshold."""
    speaking = np.asarray(speaking, bool)
    positives = int(speaking.sum())
    if positives == 0:
        raise ValueError(f"no {SPEAKING} box: average precision is undefined")
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    ranked = np.asarray(scores, np.float64)[order]
    hits = np.cumsum(speaking[order])
    last_of_group = np.flatnonzero(np.append(ranked[1:] != ranked[:-1], True))
    precision = hits[last_of_group] / (last_of_group + 1)
    recall = hits[last_of_group] / positives
    return voc_average_precision(precision, recall)


def score_boxes(groundtruth: LabelledBoxes, scores: np.ndarray, source: str | Path) -> dict:
    """AP of SPEAKING_AUDIBLE (percent) and the label counts, for scores aligned with `groundtruth`."""
    labels = np.asarray(groundtruth.labels)
    speaking = labels == SPEAKING
    try:
        ap = speaking_average_precision(speaking, scores)
    except ValueError as error:
        raise DataError(source, str(error)) from None
    return {"AP": round(100 * ap, 3), "boxes": len(labels), "speaking_audible": int(speaking.sum()),
            "speaking_not_audible": int((labels == HARD_NEGATIVE).sum()),
            "positive_share": round(100 * float(speaking.mean()), 3), "videos": len(set(groundtruth.video_ids))}


def write_predictions(path: str | Path, groundtruth: LabelledBoxes, scores: np.ndarray) -> None:
    """The official predictions CSV (no header) of `scores` for the ground-truth boxes, written atomically."""
    with atomic_path(path) as tmp, tmp.open("w") as handle:
        for row in range(len(groundtruth)):
            x1, y1, x2, y2 = (repr(float(v)) for v in groundtruth.boxes[row])
            handle.write(f"{groundtruth.video_ids[row]},{float(groundtruth.timestamps[row])!r},{x1},{y1},{x2},{y2},"
                         f"{SPEAKING},{groundtruth.entity_ids[row]},{float(scores[row])!r}\n")
