"""Stage 'report': gather every metrics/eval_*.json into the paper's Tables 3 and 4 (Markdown + JSON).

Rows: Random (exact expectation), Untrained (random weights) per modality, Pretrained (dlib face, CAM++
voice) where evaluated, then modality x sampling.
Each cell is the mean over the seeds in `report.seeds` that have a metrics file, with the sample
standard deviation when there are several; a cell with no file is shown as '—'. The paper's own
numbers are printed alongside for reference. Then the paper's claims, each checked on these numbers
with a verdict, and the machines the runs were trained on. See docs/evaluation.md.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np

from stages.core.atomic import atomic_path, write_json
from stages.core.choices import Method, Modality, Sampling, Task
from stages.core.config import ReportParams
from stages.core.errors import DataError
from stages.core.progress import Progress, Silent
from stages.evaluation.figures import retrieval_examples

COLUMNS = ("R@10", "R@50", "R@100", "P@1", "P@5", "P@10", "mAP")
MISSING = "—"
FIGURE_NAME = "benchmark_examples.png"
TASK_TITLES = {Task.seen_heard: "Seen & Heard (paper Table 3)", Task.seen: "Seen (paper Table 4)"}
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


class Verdict(StrEnum):
    """How a claim fares on these numbers."""

    holds = "holds"
    holds_within_noise = "holds (within noise)"
    within_noise = "within noise"
    does_not_hold = "does not hold"
    one_seed = "one seed: not judged"
    not_evaluated = "not evaluated"

    @property
    def holding(self) -> bool:
        """Holds, beyond noise or (an "at least" claim) within it."""
        return self in (Verdict.holds, Verdict.holds_within_noise)

    @property
    def judged(self) -> bool:
        """Both cells were there with several seeds."""
        return self not in (Verdict.one_seed, Verdict.not_evaluated)


@dataclass(frozen=True)
class Claim:
    """A finding of the paper: the first cell's mAP above the second's (strict=False: at least as good, failing
    only when below beyond noise)."""

    text: str
    higher: Cell
    lower: Cell
    strict: bool = True


SH, SEEN = Task.seen_heard, Task.seen
CLAIMS: tuple[Claim, ...] = (
    Claim("Face beats Random", Cell(SH, trained(Modality.face, Sampling.within)), Cell(SH, RANDOM)),
    Claim("Face beats Random (Seen)", Cell(SEEN, trained(Modality.face, Sampling.within)), Cell(SEEN, RANDOM)),
    Claim("Voice beats Random", Cell(SH, trained(Modality.voice, Sampling.within)), Cell(SH, RANDOM)),
    *(Claim(f"{MODALITY_TITLES[m].split()[0]}: Weak below {s.capitalize()}", Cell(SH, trained(m, s)),
            Cell(SH, trained(m, Sampling.weak))) for m in Modality for s in (Sampling.within, Sampling.across)),
    *(Claim(f"Facial: Weak below {s.capitalize()} (Seen)", Cell(SEEN, trained(Modality.face, s)),
            Cell(SEEN, trained(Modality.face, Sampling.weak))) for s in (Sampling.within, Sampling.across)),
    *(Claim(f"Cross-modal at least Face: {s.capitalize()}", Cell(SH, trained(Modality.crossmodal, s)),
            Cell(SH, trained(Modality.face, s)), strict=False) for s in Sampling),
    *(Claim(f"Seen harder than Seen & Heard: Face {s.capitalize()}", Cell(SH, trained(Modality.face, s)),
            Cell(SEEN, trained(Modality.face, s))) for s in Sampling),
)
NOISE_FACTOR = 2.0  # a gap counts only beyond twice the pooled seed std


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


def _mean_std(tables: Tables, cell: Cell) -> tuple[float, float, int] | None:
    """mAP mean, seed std (0 for the seedless rows) and number of runs of one cell; None when empty."""
    for entry in tables[cell.task]:
        if entry.row == cell.row and entry.cells["mAP"]["values"]:
            found = entry.cells["mAP"]
            return found["mean"], found["std"], 0 if cell.row.method.seedless else len(found["values"])
    return None


def check_claims(tables: Tables) -> list[dict]:
    """Each paper claim with both cells, the gap, the noise threshold and a verdict."""
    checked = []
    for claim in CLAIMS:
        a, b = _mean_std(tables, claim.higher), _mean_std(tables, claim.lower)
        entry = {"claim": claim.text, "higher": str(claim.higher), "lower": str(claim.lower)}
        if a is None or b is None:
            checked.append(entry | {"verdict": Verdict.not_evaluated})
            continue
        gap = a[0] - b[0]
        noise = NOISE_FACTOR * float(np.sqrt((a[1] ** 2 + b[1] ** 2) / 2))
        runs = [n for n in (a[2], b[2]) if n]  # seedless rows (Random, Pretrained) have no seeds
        if not runs or min(runs) < 2:
            verdict, noise = Verdict.one_seed, None
        elif gap > noise:
            verdict = Verdict.holds
        elif gap < -noise:
            verdict = Verdict.does_not_hold
        else:
            verdict = Verdict.within_noise if claim.strict else Verdict.holds_within_noise
        checked.append(entry | {"a": a[0], "b": b[0], "gap": gap, "noise": noise, "verdict": verdict})
    return checked


def machines(train_dir: str | Path | None) -> list[str]:
    """One line per distinct (device, precision, CPU/GPU) the trained runs record, with their count."""
    seen: dict[str, int] = {}
    for path in sorted(Path(train_dir).glob("train_*.json")) if train_dir else []:
        try:
            metrics = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise DataError(path, f"not a readable JSON metrics file: {error}") from None
        machine = metrics.get("machine") or {}
        where = machine.get("gpu") or machine.get("cpu") or "unrecorded CPU"
        detail = ", ".join(filter(None, [machine.get("cpu_capability"), " ".join(machine.get("cpu_flags", []))]))
        line = f"{metrics.get('device', '?')}, {metrics.get('precision', '?')}: {where}"
        line += f" ({detail})" if detail and not machine.get("gpu") else ""
        seen[line] = seen.get(line, 0) + 1
    return [f"{line} — {count} run{'s' * (count > 1)}" for line, count in seen.items()]


def _claims_markdown(claims: list[dict], seeds: tuple[int, ...]) -> list[str]:
    lines = ["## The paper's claims on this data", "",
             f"mAP, mean over seeds {list(seeds)}. A gap counts only beyond {NOISE_FACTOR:g}x the pooled seed std "
             "(sqrt of the mean of the two variances; Random is exact). \"at least\" claims fail only "
             "when the first is below beyond noise.", "",
             "| claim | first | second | gap | noise | verdict |", "|---|---:|---:|---:|---:|---|"]
    for c in claims:
        if "gap" not in c:
            lines.append(f"| {c['claim']} | {MISSING} | {MISSING} | | | {c['verdict']} |")
            continue
        noise = "n/a" if c["noise"] is None else f"{c['noise']:.1f}"
        lines.append(f"| {c['claim']} | {c['a']:.1f} | {c['b']:.1f} | {c['gap']:+.1f} | {noise} | {c['verdict']} |")
    return lines + [""]


# Active speaker detection: the asd stage's methods in table order, and published AP on real AVA-ActiveSpeaker val.
ASD_METHODS = {"chance": "Chance (share of SPEAKING_AUDIBLE boxes)",
               "only_face": "Only face on screen, while the VAD hears speech",
               "largest_face": "Largest face on screen, while the VAD hears speech",
               "synchrony": "Synchrony detector (mouth motion x speech envelope, no trained weights)"}
ASD_PUBLISHED = {"TalkNet (Tao et al. 2021)": 92.3, "Light-ASD (Liao et al. 2023)": 94.1}


def read_asd(path: str | Path | None) -> dict | None:
    """The asd stage's metrics (None when there is no file yet); each method must carry a finite AP."""
    if path is None or not Path(path).is_file():
        return None
    try:
        metrics = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise DataError(path, f"not a readable JSON metrics file: {error}") from None
    methods = metrics.get("methods") if isinstance(metrics, dict) else None
    if not isinstance(methods, dict) or not methods:
        raise DataError(path, "expected the asd stage's metrics with a 'methods' mapping", field="methods")
    for name, result in methods.items():
        value = result.get("AP") if isinstance(result, dict) else None
        if not isinstance(value, (int, float)) or not np.isfinite(value):
            raise DataError(path, f"expected a finite number, found {value!r}", field=f"methods.{name}.AP")
    return metrics


def asd_markdown(asd: dict | None) -> list[str]:
    """The report's Active speaker detection section: AP of each method, published real-data numbers for scale."""
    lines = ["## Active speaker detection", ""]
    if asd is None:
        return lines + [f"{MISSING} not evaluated yet (`apes-cli asd`).", ""]
    lines += [f"Average precision (%) of SPEAKING_AUDIBLE over the {asd['boxes']:,} labelled face boxes of the "
              f"{asd['videos']} {asd.get('split', 'val')} videos ({asd['positive_share']:.1f} % positive; the "
              f"{asd['speaking_not_audible']:,} SPEAKING_NOT_AUDIBLE boxes, a mouth moving without a voice, are "
              "negatives), computed as ActivityNet's get_ava_active_speaker_performance.py does (docs/evaluation.md).",
              "", "| method | AP |", "|---|---:|"]
    methods = asd["methods"]
    for name in [*(m for m in ASD_METHODS if m in methods), *(m for m in methods if m not in ASD_METHODS)]:
        lines.append(f"| {ASD_METHODS.get(name, name)} | {methods[name]['AP']:.1f} |")
    lines += [f"| {name}: published, real AVA-ActiveSpeaker val, trained weights | ({value:.1f}) |"
              for name, value in ASD_PUBLISHED.items()]
    lines.append("")
    vad = asd.get("vad_speech_share")
    if vad:
        lines += [f"The rule rows need speech: Silero VAD hears it at {vad['speaking_audible']:.1f} % of the "
                  f"SPEAKING_AUDIBLE boxes and {vad['other_boxes']:.1f} % of the others. The published rows are "
                  "trained models on real films, for scale only: not this data.", ""]
    return lines


def _format(cell: dict) -> str:
    ours = MISSING
    if cell["values"]:
        ours = f"{cell['mean']:.1f}"
        if len(cell["values"]) > 1:
            ours += f" ± {cell['std']:.1f}"
    return ours if cell["paper"] is None else f"{ours} ({cell['paper']:.1f})"


def render_markdown(tables: Tables, seeds: tuple[int, ...], notes: list[str], figure: str | None,
                    claims: list[dict], trained_on: list[str], asd: dict | None = None) -> str:
    """The benchmark tables as Markdown, in the paper's layout, then the claims."""
    lines = [
        "# APES benchmark (val split)", "",
        "Trained on: " + ("; ".join(trained_on) if trained_on else "no training metrics found") + ".", "",
        "Per query tracklet, the other tracklets of its video are ranked by Euclidean distance; metrics are "
        "averaged per video, then over videos (paper section 4.2; docs/evaluation.md).",
        f"Each cell: this project's value (the paper's value in parentheses). Seeds: {list(seeds)}; with more "
        "than one, `mean ± sample std` over the seeds found (the `runs` column). Random is the exact "
        "expectation of a random ranking; Pretrained rows are off-the-shelf embedders with fixed weights (dlib's "
        f"face descriptor, CAM++ voice; docs/search.md), run once. {MISSING} = not evaluated yet.", "",
    ]
    if len(seeds) == 1:
        lines += ["With a single seed, cells a few points apart are not separated: short training runs move "
                  "by several points from seed to seed.", ""]
    for task, rows in tables.items():
        lines += [f"## {TASK_TITLES[task]}", "",
                  "| | " + " | ".join(COLUMNS) + " | runs |", "|---|" + "---:|" * (len(COLUMNS) + 1)]
        for entry in rows:
            if entry.row.method.seedless:
                runs = ("exact" if entry.row == RANDOM else "fixed") if entry.files else MISSING
            else:
                runs = f"{len(entry.seeds)}/{len(seeds)}"
            cells = " | ".join(_format(entry.cells[c]) for c in COLUMNS)
            lines.append(f"| {entry.row.label} | {cells} | {runs} |")
        lines.append("")
    lines += _claims_markdown(claims, seeds)
    lines += asd_markdown(asd)
    if figure:
        lines += ["## Retrieval examples", "",
                  f"![Top-5 retrievals of easy and hard queries; red = wrong identity]({figure})", ""]
    if notes:
        lines += ["## Notes", ""] + [f"- {note}" for note in notes] + [""]
    return "\n".join(lines)


def best_run(tables: Tables, records: list[Record]) -> Record | None:
    """The trained run file with the highest mAP among the reported cells (the figure's model)."""
    reported = {name for rows in tables.values() for entry in rows if entry.row.method == Method.trained
                for name in entry.files}
    candidates = [r for r in records if r.path.name in reported]
    return max(candidates, key=lambda r: (r.metrics["mAP"], r.path.name), default=None)


def run(settings: ReportParams, eval_dir: str | Path, crops_dir: str | Path, out_dir: str | Path,
        train_dir: str | Path | None = None, asd_metrics: str | Path | None = None,
        progress: Progress | None = None) -> dict:
    """Write benchmark.md, benchmark.json and the retrieval figure into `out_dir`; returns the stage metrics.
    `asd_metrics` is the asd stage's metrics JSON (the Active speaker detection section; absent: not evaluated)."""
    started = time.perf_counter()
    progress = progress or Silent()
    seeds, out_dir = settings.seeds, Path(out_dir)
    figure_png = out_dir / FIGURE_NAME
    progress.start(2, "report")
    records, ignored = read_records(eval_dir)
    asd = read_asd(asd_metrics)
    tables, notes = build_tables(records, seeds)
    progress.advance()
    best = best_run(tables, records)
    figure, figure_skip = None, None
    if best is None:
        figure_skip = "no trained run evaluated yet"
    elif not best.metrics.get("embeddings"):
        figure_skip = f"{best.path.name} names no embeddings file"
    else:
        try:
            retrieval_examples(best.metrics.get("embeddings", ""), crops_dir, figure_png,
                               title=f"{best.metrics.get('run', best.path.stem)} (mAP {best.metrics['mAP']:.1f})")
            figure = figure_png.name
        except DataError as error:
            figure_skip = str(error)
    progress.advance()
    if figure_skip:
        notes.append(f"no retrieval figure: {figure_skip}")
    claims, trained_on = check_claims(tables), machines(train_dir)
    markdown = render_markdown(tables, seeds, notes, figure, claims, trained_on, asd)
    with atomic_path(out_dir / "benchmark.md") as tmp:
        tmp.write_text(markdown)
    as_json = {task: [entry.as_json() for entry in rows] for task, rows in tables.items()}
    write_json(out_dir / "benchmark.json", {"seeds": list(seeds), "columns": list(COLUMNS), "tasks": as_json,
                                            "claims": claims, "trained_on": trained_on,
                                            "active_speaker": None if asd is None else asd["methods"],
                                            "figure": str(figure_png) if figure else None, "notes": notes})
    filled = sum(bool(entry.cells["mAP"]["values"]) for rows in tables.values() for entry in rows)
    total = sum(len(rows) for rows in tables.values())
    return {"files_read": len(records), "files_ignored": ignored, "rows_filled": filled, "rows_total": total,
            "best_run": best.path.name if best else None, "figure": str(figure_png) if figure else None,
            "figure_skipped": figure_skip, "claims_holding": sum(c["verdict"].holding for c in claims),
            "claims_judged": sum(c["verdict"].judged for c in claims),
            "seconds": round(time.perf_counter() - started, 3)}
