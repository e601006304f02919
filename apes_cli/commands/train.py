"""apes-cli train (being built)."""

from __future__ import annotations

from stages.errors import ApesError

NAME = "train"
HELP = "Stage 'train' (being built)."


def command() -> None:
    """Not built yet."""
    raise ApesError("stage 'train' is not built yet")
