"""The paper's findings, each a pair of table cells, judged on this benchmark's numbers beyond seed noise."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from stages.core.choices import Modality, Sampling, Task
from stages.evaluation.tables import MODALITY_TITLES, RANDOM, Cell, Tables, trained


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
