"""apes-cli report (being built)."""

from __future__ import annotations

from stages.errors import ApesError

NAME = "report"
HELP = "Stage 'report' (being built)."


def command() -> None:
    """Not built yet."""
    raise ApesError("stage 'report' is not built yet")
