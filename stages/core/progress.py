"""How stages report progress without knowing about the terminal (the CLI supplies a progress bar)."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    """Receives a total once per phase, then increments."""

    def start(self, total: int, description: str) -> None: ...

    def advance(self, amount: int = 1) -> None: ...


class Silent:
    """Progress that shows nothing (library use and tests)."""

    def start(self, total: int, description: str) -> None:
        """Ignore the phase."""

    def advance(self, amount: int = 1) -> None:
        """Ignore the step."""
