"""Stage 'report': gather every metrics/eval_*.json into the paper's Tables 3 and 4 (Markdown + JSON).

Rows: Random (exact expectation), Untrained (random weights) per modality, Pretrained (dlib face, CAM++
voice) where evaluated, then modality x sampling.
Each cell is the mean over the seeds in `report.seeds` that have a metrics file, with the sample
standard deviation when there are several; a cell with no file is shown as '—'. The paper's own
numbers are printed alongside for reference. Then the paper's claims, each checked on these numbers
with a verdict, and the machines the runs were trained on. See docs/evaluation.md.
The tables and the claims are stages/evaluation/tables.py and claims.py; this module writes them out.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from stages.core.atomic import atomic_path, write_json
from stages.core.choices import Method, Task
from stages.core.config import ReportParams
from stages.core.errors import DataError
from stages.core.progress import Progress, Silent
from stages.evaluation.claims import NOISE_FACTOR, check_claims
from stages.evaluation.figures import retrieval_examples
from stages.evaluation.tables import COLUMNS, RANDOM, Record, Tables, build_tables, read_records

FIGURE_NAME = "benchmark_examples.png"
MISSING = "—"
TASK_TITLES = {Task.seen_heard: "Seen & Heard (paper Table 3)", Task.seen: "Seen (paper Table 4)"}


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
