"""Errors that name the file, row and field a user has to fix."""

from __future__ import annotations

from pathlib import Path


class ApesError(Exception):
    """Base class: a problem the user can fix, reported without a traceback."""


class ConfigError(ApesError):
    """A bad or unknown key in params.yaml."""

    def __init__(self, key: str, message: str, file: str | Path = "params.yaml") -> None:
        self.key, self.message = key, message
        super().__init__(f"{file}: {key}: {message}")


class DataError(ApesError):
    """Malformed input data, located by file, line (1-based) and field."""

    def __init__(
        self,
        file: str | Path,
        message: str,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.file, self.line, self.field = str(file), line, field
        where = str(file)
        if line is not None:
            where += f", line {line}"
        if field is not None:
            where += f", field '{field}'"
        super().__init__(f"{where}: {message}")
