"""apes-cli synth (being built)."""

from __future__ import annotations

from stages.errors import ApesError

NAME = "synth"
HELP = "Stage 'synth' (being built)."


def command() -> None:
    """Not built yet."""
    raise ApesError("stage 'synth' is not built yet")
