"""Stage 'report': gather every metrics/eval_*.json into the paper's Tables 3 and 4 (Markdown + JSON).

Rows: Random (exact expectation), Untrained (random weights) per modality, Pretrained (dlib face, Resemblyzer
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
from pathlib import Path

import numpy as np

from stages.core.atomic import atomic_path, write_json
from stages.core.config import MODALITIES, STRATEGIES, TASKS, ReportParams
from stages.core.errors import DataError
from stages.core.progress import Progress, Silent
from stages.evaluation.figures import retrieval_examples

COLUMNS = ("R@10", "R@50", "R@100", "P@1", "P@5", "P@10", "mAP")
MISSING = "—"
FIGURE_NAME = "benchmark_examples.png"
TASK_TITLES = {"seen_heard": "Seen & Heard (paper Table 3)", "seen": "Seen (paper Table 4)"}
MODALITY_TITLES = {"face": "Facial Matching", "voice": "Voice Matching", "crossmodal": "Cross-modal Matching"}
PAPER_MODALITIES = {"seen_heard": MODALITIES, "seen": ("face",)}

# The paper's Tables 3 and 4 (val split), in COLUMNS order.
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


# The paper's findings, each a comparison of two mAP cells "<task>:<row>": (claim, higher, lower, strict).
# strict=False reads "at least as good": it fails only when the first is below beyond noise.
SH, SEEN = "seen_heard", "seen"
CLAIMS: tuple[tuple[str, str, str, bool], ...] = (
    ("Face beats Random", f"{SH}:face/within", f"{SH}:random", True),
    ("Face beats Random (Seen)", f"{SEEN}:face/within", f"{SEEN}:random", True),
    ("Voice beats Random", f"{SH}:voice/within", f"{SH}:random", True),
    *((f"{MODALITY_TITLES[m].split()[0]}: Weak below {s.capitalize()}", f"{SH}:{m}/{s}", f"{SH}:{m}/weak", True)
      for m in MODALITIES for s in ("within", "across")),
    *((f"Facial: Weak below {s.capitalize()} (Seen)", f"{SEEN}:face/{s}", f"{SEEN}:face/weak", True)
      for s in ("within", "across")),
    *((f"Cross-modal at least Face: {s.capitalize()}", f"{SH}:crossmodal/{s}", f"{SH}:face/{s}", False)
      for s in STRATEGIES),
    *((f"Seen harder than Seen & Heard: Face {s.capitalize()}", f"{SH}:face/{s}", f"{SEEN}:face/{s}", True)
      for s in STRATEGIES),
)
NOISE_FACTOR = 2.0  # a gap counts only beyond twice the pooled seed std


@dataclass(frozen=True)
class Record:
    """One metrics file of `apes-cli evaluate`, keyed by its place in the tables."""

    path: Path
    task: str
    row: str
    seed: int | None
    metrics: dict


def row_key(metrics: dict) -> str | None:
    """'random', 'untrained/<modality>', 'pretrained/<modality>' or '<modality>/<sampling>'; None for files of
    other methods."""
    method = metrics.get("method")
    if method == "random":
        return "random"
    if method in ("untrained", "pretrained") and metrics.get("modality") in MODALITIES:
        return f"{method}/{metrics['modality']}"
    if method == "trained" and metrics.get("modality") in MODALITIES and metrics.get("sampling") in STRATEGIES:
        return f"{metrics['modality']}/{metrics['sampling']}"
    return None


def _seedless(row: str) -> bool:
    """Rows that do not depend on a seed: the exact Random expectation and the fixed pretrained embedders."""
    return row == "random" or row.startswith("pretrained/")


def read_records(metrics_dir: str | Path) -> tuple[list[Record], list[dict]]:
    """Every benchmark metrics file in `metrics_dir`, and the files left out with the reason."""
    records, ignored = [], []
    for path in sorted(Path(metrics_dir).glob("eval_*.json")):
        try:
            metrics = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise DataError(path, f"not a readable JSON metrics file: {error}") from None
        key = row_key(metrics) if isinstance(metrics, dict) else None
        if key is None or metrics.get("task") not in TASKS:
            ignored.append({"file": str(path), "reason": "not a benchmark run (no method/modality/sampling/task)"})
            continue
        for column in COLUMNS:
            value = metrics.get(column)
            if not isinstance(value, (int, float)) or not np.isfinite(value):
                raise DataError(path, f"expected a finite number, found {value!r}", field=column)
        seed = metrics.get("seed")
        records.append(Record(path, metrics["task"], key, seed if isinstance(seed, int) else None, metrics))
    return records, ignored


def row_layout(task: str, present: set[str]) -> list[tuple[str, str]]:
    """(row key, label) in table order: the paper's rows, plus rows of other modalities that have files."""
    modalities = [m for m in MODALITIES if m in PAPER_MODALITIES[task] or any(k.startswith(f"{m}/") for k in present)]
    rows = [("random", "Random")]
    rows += [(f"untrained/{m}", f"Untrained ({MODALITY_TITLES[m].split()[0].lower()})") for m in modalities]
    rows += [(f"pretrained/{m}", f"Pretrained {m}") for m in MODALITIES if f"pretrained/{m}" in present]
    for modality in modalities:
        rows += [(f"{modality}/{s}", f"{MODALITY_TITLES[modality]}: {s.capitalize()}") for s in STRATEGIES]
    return rows


def _cell(values: list[float], paper: float | None) -> dict:
    cell: dict = {"values": values, "paper": paper}
    if values:
        cell.update(mean=float(np.mean(values)), min=float(min(values)), max=float(max(values)),
                    std=float(np.std(values, ddof=1)) if len(values) > 1 else 0.0)
    return cell


def build_tables(records: list[Record], seeds: tuple[int, ...]) -> tuple[dict, list[str]]:
    """Per task, the rows with their cells; and notes on duplicate or out-of-seed files."""
    notes: list[str] = []
    chosen: dict[tuple[str, str, int | None], Record] = {}
    for record in records:
        if not _seedless(record.row) and record.seed not in seeds:
            notes.append(f"{record.path.name}: seed {record.seed} is not in report.seeds {list(seeds)}; left out")
            continue
        key = (record.task, record.row, None if _seedless(record.row) else record.seed)
        if key in chosen:
            notes.append(f"{record.path.name} replaces {chosen[key].path.name} (same task, row and seed)")
        chosen[key] = record
    tables = {}
    for task in TASKS:
        present = {row for (t, row, _) in chosen if t == task}
        rows = []
        for key, label in row_layout(task, present):
            found = sorted((r for (t, row, _), r in chosen.items() if t == task and row == key),
                           key=lambda r: r.seed if r.seed is not None else -1)
            paper = PAPER[task].get(key)
            cells = {column: _cell([float(r.metrics[column]) for r in found],
                                   paper[i] if paper else None) for i, column in enumerate(COLUMNS)}
            rows.append({"key": key, "label": label, "seeds": [r.seed for r in found],
                         "files": [r.path.name for r in found], "cells": cells})
        tables[task] = rows
    return tables, notes


def _mean_std(tables: dict, task: str, key: str) -> tuple[float, float, int] | None:
    """mAP mean, seed std (0 for the seedless rows) and number of runs of one cell; None when empty."""
    for row in tables[task]:
        if row["key"] == key and row["cells"]["mAP"]["values"]:
            cell = row["cells"]["mAP"]
            return cell["mean"], cell["std"], 0 if _seedless(key) else len(cell["values"])
    return None


def check_claims(tables: dict) -> list[dict]:
    """Each paper claim with both cells, the gap, the noise threshold and a verdict."""
    checked = []
    for claim, high, low, strict in CLAIMS:
        a, b = _mean_std(tables, *high.split(":")), _mean_std(tables, *low.split(":"))
        entry = {"claim": claim, "higher": high, "lower": low}
        if a is None or b is None:
            checked.append(entry | {"verdict": "not evaluated"})
            continue
        gap = a[0] - b[0]
        noise = NOISE_FACTOR * float(np.sqrt((a[1] ** 2 + b[1] ** 2) / 2))
        runs = [n for n in (a[2], b[2]) if n]  # seedless rows (Random, Pretrained) have no seeds
        if not runs or min(runs) < 2:
            verdict, noise = "one seed: not judged", None
        elif gap > noise:
            verdict = "holds"
        elif gap < -noise:
            verdict = "does not hold"
        else:
            verdict = "holds (within noise)" if not strict else "within noise"
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


def render_markdown(tables: dict, seeds: tuple[int, ...], notes: list[str], figure: str | None,
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
        f"face descriptor, Resemblyzer; docs/search.md), run once. {MISSING} = not evaluated yet.", "",
    ]
    if len(seeds) == 1:
        lines += ["With a single seed, cells a few points apart are not separated: short training runs move "
                  "by several points from seed to seed.", ""]
    for task, rows in tables.items():
        lines += [f"## {TASK_TITLES[task]}", "",
                  "| | " + " | ".join(COLUMNS) + " | runs |", "|---|" + "---:|" * (len(COLUMNS) + 1)]
        for row in rows:
            if _seedless(row["key"]):
                runs = ("exact" if row["key"] == "random" else "fixed") if row["files"] else MISSING
            else:
                runs = f"{len(row['seeds'])}/{len(seeds)}"
            cells = " | ".join(_format(row["cells"][c]) for c in COLUMNS)
            lines.append(f"| {row['label']} | {cells} | {runs} |")
        lines.append("")
    lines += _claims_markdown(claims, seeds)
    lines += asd_markdown(asd)
    if figure:
        lines += ["## Retrieval examples", "",
                  f"![Top-5 retrievals of easy and hard queries; red = wrong identity]({figure})", ""]
    if notes:
        lines += ["## Notes", ""] + [f"- {note}" for note in notes] + [""]
    return "\n".join(lines)


def best_run(tables: dict, records: list[Record]) -> Record | None:
    """The trained run file with the highest mAP among the reported cells (the figure's model)."""
    reported = {name for rows in tables.values() for row in rows if "/" in row["key"]
                and not row["key"].startswith(("untrained/", "pretrained/")) for name in row["files"]}
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
    write_json(out_dir / "benchmark.json", {"seeds": list(seeds), "columns": list(COLUMNS), "tasks": tables,
                                            "claims": claims, "trained_on": trained_on,
                                            "active_speaker": None if asd is None else asd["methods"],
                                            "figure": str(figure_png) if figure else None, "notes": notes})
    filled = sum(bool(row["cells"]["mAP"]["values"]) for rows in tables.values() for row in rows)
    total = sum(len(rows) for rows in tables.values())
    return {"files_read": len(records), "files_ignored": ignored, "rows_filled": filled, "rows_total": total,
            "best_run": best.path.name if best else None, "figure": str(figure_png) if figure else None,
            "figure_skipped": figure_skip, "claims_holding": sum(c["verdict"].startswith("holds") for c in claims),
            "claims_judged": sum("gap" in c and "not judged" not in c["verdict"] for c in claims),
            "seconds": round(time.perf_counter() - started, 3)}
