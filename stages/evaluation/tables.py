"""The benchmark's tables (the paper's Tables 3 and 4): their rows and cells, the paper's own numbers, and the
`apes-cli evaluate` metrics files read into them (mean and sample std over the seeds found)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np

from stages.core.choices import Method, Modality, Sampling, Task
from stages.core.errors import DataError

COLUMNS = ("R@10", "R@50", "R@100", "P@1", "P@5", "P@10", "mAP")
MODALITY_TITLES = {Modality.face: "Facial Matching", Modality.voice: "Voice Matching",
                   Modality.crossmodal: "Cross-modal Matching"}
PAPER_MODALITIES = {Task.seen_heard: tuple(Modality), Task.seen: (Modality.face,)}

# The paper's Tables 3 and 4 (val split), in COLUMNS order, by task and row key (Row.key).
PAPER: dict[str, dict[str, tuple[float, ...]]] = {
    "seen_heard": {
        "random": (12.0, 52.9, 87.3, 18.1, 18.7, 18.4, 19.1),
        "face/weak": (38.2, 74.5, 94.2, 80.0, 62.3, 49.9, 45.4),
        "face/within": (48.1, 86.5, 98.1, 87.5, 74.0, 62.8, 64.1),
        "face/across": (48.2, 86.3, 98.2, 88.0, 73.6, 62.6, 63.4),
        "voice/weak": (17.4, 59.1, 89.4, 29.2, 26.9, 23.2, 20.5),
        "voice/within": (18.2, 59.7, 89.9, 30.0, 26.7, 24.8, 21.8),
        "voice/across": (17.7, 58.9, 89.5, 29.3, 26.6, 24.5, 22.0),
        "crossmodal/weak": (38.2, 74.2, 94.3, 80.1, 62.0, 49.4, 47.9),
        "crossmodal/within": (47.9, 87.1, 98.5, 85.9, 72.4, 61.2, 64.8),
        "crossmodal/across": (48.1, 86.8, 98.3, 86.7, 73.3, 62.2, 63.6),
    },
    "seen": {
        "random": (5.1, 26.0, 52.7, 17.2, 17.1, 16.9, 17.1),
        "face/weak": (26.9, 54.5, 74.5, 82.2, 66.0, 54.6, 39.3),
        "face/within": (33.1, 70.5, 87.4, 87.8, 77.3, 68.7, 58.8),
        "face/across": (33.8, 70.4, 87.6, 88.2, 77.6, 68.6, 59.4),
    },
}


@dataclass(frozen=True)
class Row:
    """A row of the tables: a method, and the modality (and, trained, the sampling) it is for."""

    method: Method
    modality: Modality | None = None
    sampling: Sampling | None = None

    @property
    def key(self) -> str:
        """'random', 'untrained/<modality>', 'pretrained/<modality>' or '<modality>/<sampling>' (benchmark.json)."""
        if self.method == Method.random:
            return "random"
        if self.method == Method.trained:
            return f"{self.modality}/{self.sampling}"
        return f"{self.method}/{self.modality}"

    @property
    def label(self) -> str:
        """The row's name in the Markdown tables."""
        if self.method == Method.random:
            return "Random"
        if self.method == Method.untrained:
            return f"Untrained ({MODALITY_TITLES[self.modality].split()[0].lower()})"
        if self.method == Method.pretrained:
            return f"Pretrained {self.modality}"
        return f"{MODALITY_TITLES[self.modality]}: {self.sampling.capitalize()}"


RANDOM = Row(Method.random)


def trained(modality: Modality, sampling: Sampling) -> Row:
    """The row of a trained modality x sampling cell."""
    return Row(Method.trained, modality, sampling)


@dataclass(frozen=True)
class Cell:
    """One row of one task's table."""

    task: Task
    row: Row

    def __str__(self) -> str:
        return f"{self.task}:{self.row.key}"


@dataclass(frozen=True)
class Record:
    """One metrics file of `apes-cli evaluate`, keyed by its place in the tables."""

    path: Path
    task: Task
    row: Row
    seed: int | None
    metrics: dict


def _choice(kind: type[StrEnum], value: object) -> StrEnum | None:
    """The member of `kind` named by a metrics field, or None for anything else."""
    return kind(value) if isinstance(value, str) and value in kind._value2member_map_ else None


def row_of(metrics: dict) -> Row | None:
    """The table row a metrics file fills; None for files of other methods."""
    method, modality = _choice(Method, metrics.get("method")), _choice(Modality, metrics.get("modality"))
    if method == Method.random:
        return RANDOM
    if method is None or modality is None:
        return None
    if method != Method.trained:
        return Row(method, modality)
    sampling = _choice(Sampling, metrics.get("sampling"))
    return None if sampling is None else trained(modality, sampling)


def read_records(metrics_dir: str | Path) -> tuple[list[Record], list[dict]]:
    """Every benchmark metrics file in `metrics_dir`, and the files left out with the reason."""
    records, ignored = [], []
    for path in sorted(Path(metrics_dir).glob("eval_*.json")):
        try:
            metrics = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise DataError(path, f"not a readable JSON metrics file: {error}") from None
        row = row_of(metrics) if isinstance(metrics, dict) else None
        task = _choice(Task, metrics.get("task")) if row is not None else None
        if row is None or task is None:
            ignored.append({"file": str(path), "reason": "not a benchmark run (no method/modality/sampling/task)"})
            continue
        for column in COLUMNS:
            value = metrics.get(column)
            if not isinstance(value, (int, float)) or not np.isfinite(value):
                raise DataError(path, f"expected a finite number, found {value!r}", field=column)
        seed = metrics.get("seed")
        records.append(Record(path, task, row, seed if isinstance(seed, int) else None, metrics))
    return records, ignored


def row_layout(task: Task, present: set[Row]) -> list[Row]:
    """The rows in table order: the paper's, plus rows of other modalities that have files."""
    modalities = [m for m in Modality if m in PAPER_MODALITIES[task]
                  or any(row.method == Method.trained and row.modality == m for row in present)]
    rows = [RANDOM, *(Row(Method.untrained, m) for m in modalities)]
    rows += [Row(Method.pretrained, m) for m in Modality if Row(Method.pretrained, m) in present]
    return rows + [trained(m, s) for m in modalities for s in Sampling]


def _cell(values: list[float], paper: float | None) -> dict:
    cell: dict = {"values": values, "paper": paper}
    if values:
        cell.update(mean=float(np.mean(values)), min=float(min(values)), max=float(max(values)),
                    std=float(np.std(values, ddof=1)) if len(values) > 1 else 0.0)
    return cell


@dataclass(frozen=True)
class TableRow:
    """One row of a task's table: the seeds and files found, and per column the cell's values and spread."""

    row: Row
    seeds: list[int | None]
    files: list[str]
    cells: dict[str, dict]

    def as_json(self) -> dict:
        """The row as benchmark.json holds it."""
        return {"key": self.row.key, "label": self.row.label, "seeds": self.seeds, "files": self.files,
                "cells": self.cells}


Tables = dict[Task, list[TableRow]]


def build_tables(records: list[Record], seeds: tuple[int, ...]) -> tuple[Tables, list[str]]:
    """Per task, the rows with their cells; and notes on duplicate or out-of-seed files."""
    notes: list[str] = []
    chosen: dict[tuple[Task, Row, int | None], Record] = {}
    for record in records:
        seedless = record.row.method.seedless
        if not seedless and record.seed not in seeds:
            notes.append(f"{record.path.name}: seed {record.seed} is not in report.seeds {list(seeds)}; left out")
            continue
        key = (record.task, record.row, None if seedless else record.seed)
        if key in chosen:
            notes.append(f"{record.path.name} replaces {chosen[key].path.name} (same task, row and seed)")
        chosen[key] = record
    tables: Tables = {}
    for task in Task:
        present = {row for (t, row, _) in chosen if t == task}
        tables[task] = []
        for row in row_layout(task, present):
            found = sorted((r for (t, placed, _), r in chosen.items() if t == task and placed == row),
                           key=lambda r: r.seed if r.seed is not None else -1)
            paper = PAPER[task].get(row.key)
            cells = {column: _cell([float(r.metrics[column]) for r in found],
                                   paper[i] if paper else None) for i, column in enumerate(COLUMNS)}
            tables[task].append(TableRow(row, [r.seed for r in found], [r.path.name for r in found], cells))
    return tables, notes
