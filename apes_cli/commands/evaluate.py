"""apes-cli evaluate (being built)."""

from __future__ import annotations

from stages.errors import ApesError

NAME = "evaluate"
HELP = "Stage 'evaluate' (being built)."


def command() -> None:
    """Not built yet."""
    raise ApesError("stage 'evaluate' is not built yet")
