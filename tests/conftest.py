"""Shared fixtures: a tiny generated mini-APES raw layout that every stage's tests can read."""

from __future__ import annotations

import json
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: spinning OpenMP threads thrash 2 cores

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from stages import synth  # noqa: E402
from stages.core.config import SynthParams  # noqa: E402

TINY_SEED = 7


@pytest.fixture(scope="session")
def tiny_synth_params() -> SynthParams:
    """Generator settings of `tiny_raw`: 2 train + 2 val videos of ~12 s, 256x144 at 10 fps."""
    return SynthParams(train_videos=2, val_videos=2, shots_per_video=10, shot_seconds=(1.0, 1.5),
                       intro_seconds=0.5, identities_per_video=(4, 5), width=256, height=144, fps=10,
                       workers=2)


@pytest.fixture(scope="session")
def tiny_raw(tmp_path_factory: pytest.TempPathFactory, tiny_synth_params: SynthParams) -> Path:
    """Root of a raw layout (docs/data.md) generated once per test session, its metrics beside it; read-only."""
    root = tmp_path_factory.mktemp("tiny") / "raw"
    (root.parent / "synth.json").write_text(json.dumps(synth.run(tiny_synth_params, TINY_SEED, root)))
    return root
