"""apes-cli decode (being built)."""

from __future__ import annotations

from stages.errors import ApesError

NAME = "decode"
HELP = "Stage 'decode' (being built)."


def command() -> None:
    """Not built yet."""
    raise ApesError("stage 'decode' is not built yet")
