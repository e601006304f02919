"""`python -m bench`: run every benchmark and print one table (figure, baseline, ratio).

`python -m bench media train` runs a subset; `python -m bench rehearsal` (APES at full scale, not in the
default set) prints its own table. Each ratio is measured against its named baseline in the same run, on the
same machine; the machine is printed first so tables can be compared.
"""

from __future__ import annotations

import importlib
import os
import platform
import sys
import time

import torch

SUITES = ("media", "train", "evaluate", "search", "people", "asd", "startup")
ON_REQUEST = ("rehearsal",)  # minutes and gigabytes (APES at full scale): run only when named


def machine() -> str:
    """One line naming the machine the numbers came from."""
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {cuda}, "
            f"Python {platform.python_version()}, torch {torch.__version__}")


def main(argv: list[str]) -> int:
    """Run the chosen suites and print the table."""
    chosen = argv or list(SUITES)
    unknown = [name for name in chosen if name not in SUITES + ON_REQUEST]
    if unknown:
        print(f"unknown suite(s) {unknown}; choose from {list(SUITES + ON_REQUEST)}", file=sys.stderr)
        return 2
    table: list[tuple[str, str, str, float]] = []
    for name in chosen:
        started = time.perf_counter()
        rows = importlib.import_module(f"bench.{name}").rows()
        table.extend((name, figure, baseline, ratio) for figure, baseline, ratio in rows)
        print(f"[{name}: {time.perf_counter() - started:.0f} s]", file=sys.stderr)
    print(f"machine: {machine()}\n")
    print("| suite | figure | baseline | ratio |")
    print("|---|---|---|---|")
    for suite, figure, baseline, ratio in table:
        print(f"| {suite} | {figure} | {baseline} | {ratio:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
