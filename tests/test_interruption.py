"""A stage killed with SIGKILL part-way never leaves a readable partial shard, and its re-run equals a clean run."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

BIN = Path(sys.executable).parent
PARAMS = "crop: {size: 32, margin: 0.1}\n"


def _cli(*args: object, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "apes-cli"), *map(str, args)], cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _crop_args(raw: Path, work: Path, out: str) -> list[object]:
    return ["crop", "--params", work / "params.yaml", "--raw", raw, "--decoded", work / "decoded",
            "--out", work / out, "--workers", 1, "--metrics", work / f"{out}.json"]


@pytest.fixture(scope="module")
def work(tiny_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Decoded tiny data set and one uninterrupted crop run to compare against."""
    work = tmp_path_factory.mktemp("interrupt")
    (work / "params.yaml").write_text(PARAMS)
    for args in (["decode", "--params", work / "params.yaml", "--raw", tiny_raw, "--out", work / "decoded",
                  "--metrics", work / "decode.json"], _crop_args(tiny_raw, work, "clean")):
        process = _cli(*args, cwd=work)
        assert process.wait(timeout=600) == 0, process.stderr.read().decode()
    return work


def _shards(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*.parquet"))}


def test_sigkill_mid_crop_leaves_only_complete_shards_and_rerun_matches(tiny_raw: Path, work: Path) -> None:
    clean = _shards(work / "clean")
    assert len(clean) >= 2
    process = _cli(*_crop_args(tiny_raw, work, "killed"), cwd=work)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:  # kill once the first shard is being written
        if (work / "killed").exists() and any(p.is_file() for p in (work / "killed").rglob("*")):
            break
        time.sleep(0.005)
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)

    partial = _shards(work / "killed")
    assert len(partial) < len(clean), "the kill came too late to interrupt anything"
    for name, data in partial.items():  # whatever is visible under its final name is complete
        assert data == clean[name]
        pq.read_table(work / "killed" / name)

    rerun = _cli(*_crop_args(tiny_raw, work, "killed"), cwd=work)
    assert rerun.wait(timeout=600) == 0, rerun.stderr.read().decode()
    assert _shards(work / "killed") == clean
    assert not [p for p in (work / "killed").rglob("*") if p.name.endswith(".tmp")]
