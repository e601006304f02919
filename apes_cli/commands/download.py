"""apes-cli download (being built)."""

from __future__ import annotations

from stages.errors import ApesError

NAME = "download"
HELP = "Stage 'download' (being built)."


def command() -> None:
    """Not built yet."""
    raise ApesError("stage 'download' is not built yet")
