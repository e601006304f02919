"""apes-cli triplets (being built)."""

from __future__ import annotations

from stages.errors import ApesError

NAME = "triplets"
HELP = "Stage 'triplets' (being built)."


def command() -> None:
    """Not built yet."""
    raise ApesError("stage 'triplets' is not built yet")
