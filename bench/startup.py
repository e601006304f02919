"""Benchmark: the start-up of a train or evaluate process, against the same imports plus torchvision's.

What every `apes-cli train` / `evaluate` of `dvc repro` pays before it works: importing its stage modules (torch,
pyarrow, the learning layer). Baseline: the same imports after `import torchvision.models`, which
stages/learning/models.py did before it built ResNet-18 itself (stages/learning/resnet.py). Each is timed in a
fresh interpreter, alternating, best of ROUNDS (start-up times on a shared machine only ever grow).
Run: .venv/bin/python -m bench startup
"""

from __future__ import annotations

import subprocess
import sys
import time

ROUNDS = 5
STAGES = "import stages.train, stages.evaluate"


def _start(code: str) -> float:
    """Wall seconds of a fresh interpreter running `code`."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - started


def rows() -> list[tuple[str, str, float]]:
    """(figure, baseline, ratio) rows for `python -m bench`."""
    ours, theirs = [], []
    for _ in range(ROUNDS):
        ours.append(_start(STAGES))
        theirs.append(_start(f"import torchvision.models; {STAGES}"))
    return [(f"train + evaluate stage imports, fresh process: {min(ours):.2f} s",
             f"the same with torchvision imported, as before: {min(theirs):.2f} s", min(ours) / min(theirs))]
