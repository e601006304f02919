"""Write outputs under a temporary name and move them into place, so nothing is ever half-written."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from stages.core.errors import DataError

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path; on success rename it onto `final`, on error delete it."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs should be readable like any file
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces `final` whole."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    os.chmod(tmp, 0o777 & ~_UMASK)
    try:
        yield tmp
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_writable(folder: str | Path, needed_bytes: int = 0) -> None:
    """Stop before any work when `folder` cannot be created or written, or has under `needed_bytes` free."""
    folder = Path(folder).absolute()
    if folder.exists() and not folder.is_dir():
        raise DataError(folder, "is a file; expected a folder to write into")
    created = folder
    while not created.parent.exists():
        created = created.parent
    made = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-check.", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(probe)
        free = shutil.disk_usage(folder).free
    except OSError as error:
        raise DataError(folder, f"cannot write here ({error.strerror or error}); expected a writable folder") from None
    finally:
        if made:  # the check leaves nothing behind; the real write makes the folder again
            shutil.rmtree(created, ignore_errors=True)
    if free < needed_bytes:
        raise DataError(folder, f"only {free / 1e6:.1f} MB free on this disk, about {needed_bytes / 1e6:.1f} MB "
                                "needed; free some space or choose another folder")


@contextlib.contextmanager
def disk_errors(target: str | Path) -> Iterator[None]:
    """Turn a failed write under `target` (disk full, no permission, read-only) into one clear DataError."""
    try:
        yield
    except OSError as error:
        raise DataError(target, f"cannot write ({error.strerror or error}); nothing was left half-written") from None


def write_json(path: str | Path, payload: Any) -> None:
    """Write JSON atomically, keys sorted so diffs stay readable."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def write_parquet(path: str | Path, table: pa.Table) -> None:
    """Write one Parquet shard atomically (zstd, statistics on)."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def remove_stale_temporaries(directory: str | Path) -> int:
    """Delete leftovers of killed runs (`.name.*.tmp`); returns how many were removed."""
    removed = 0
    directory = Path(directory)
    if not directory.exists():
        return 0
    for leftover in directory.rglob(".*.tmp"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
        removed += 1
    return removed
