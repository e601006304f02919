"""apes-cli mel (being built)."""

from __future__ import annotations

from stages.errors import ApesError

NAME = "mel"
HELP = "Stage 'mel' (being built)."


def command() -> None:
    """Not built yet."""
    raise ApesError("stage 'mel' is not built yet")
