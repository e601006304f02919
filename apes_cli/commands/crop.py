"""apes-cli crop (being built)."""

from __future__ import annotations

from stages.errors import ApesError

NAME = "crop"
HELP = "Stage 'crop' (being built)."


def command() -> None:
    """Not built yet."""
    raise ApesError("stage 'crop' is not built yet")
