"""Resumable, md5-verified HTTP downloads with bounded retries, on the standard library (urllib) only."""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from stages.core.errors import DataError
from stages.core.progress import Progress, Silent

CHUNK_BYTES = 1 << 20
MAX_BACKOFF_S = 30.0
RETRY_STATUS = frozenset({408, 429})  # plus every 5xx
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


class DownloadError(DataError):
    """A file could not be fetched or did not verify; names the URL or file."""


class Cancelled(Exception):
    """Another download failed, so this one stopped early (its .part file is kept for a re-run)."""


class _Transient(Exception):
    """A failure worth retrying: connection dropped or refused, timeout, 5xx."""


class _RestartNeeded(Exception):
    """The .part file cannot be continued and must be discarded."""


@dataclass
class FetchStats:
    """Counters of one download run (updated from several threads under a lock)."""

    fetched: int = 0
    skipped_present: int = 0
    bytes: int = 0
    retries: int = 0
    resumed: int = 0
    restarted: int = 0


def _md5_of(path: Path, on_bytes: Callable[[int], None] | None = None) -> hashlib._Hash:
    """The md5 state after reading a whole file in chunks (it can be updated further)."""
    digest = hashlib.md5()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
            if on_bytes is not None:
                on_bytes(len(chunk))
    return digest


def md5_file(path: Path, on_bytes: Callable[[int], None] | None = None) -> str:
    """Hex md5 of a file, read in chunks."""
    return _md5_of(path, on_bytes).hexdigest()


def part_path(dest: Path) -> Path:
    """Where an unfinished download of `dest` lives until it verifies."""
    return dest.with_name(dest.name + ".part")


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) of a Content-Range header; None where absent or unknown."""
    match = _CONTENT_RANGE.match(value or "")
    if not match:
        total = re.fullmatch(r"bytes\s+\*/(\d+)", (value or "").strip())
        return None, int(total.group(1)) if total else None
    first, _, total = match.groups()
    return int(first), None if total == "*" else int(total)


class Fetcher:
    """Downloads files to `<dest>.part`, resumes them with HTTP Range, verifies md5, renames into place."""

    def __init__(self, retries: int, timeout_s: float, backoff_s: float, progress: Progress | None = None) -> None:
        self.retries, self.timeout_s, self.backoff_s = retries, timeout_s, backoff_s
        self.progress = progress or Silent()
        self.stats = FetchStats()
        self.stop = threading.Event()
        self._lock = threading.Lock()

    def count(self, **increments: int) -> None:
        """Add to the shared counters."""
        with self._lock:
            for name, amount in increments.items():
                setattr(self.stats, name, getattr(self.stats, name) + amount)

    def advance(self, amount: int) -> None:
        """Move the progress bar (serialised: bars are not thread-safe)."""
        with self._lock:
            self.progress.advance(amount)

    def metrics(self) -> dict[str, int]:
        """The counters as a plain dict."""
        with self._lock:
            return asdict(self.stats)

    def present(self, dest: Path, md5: str) -> bool:
        """True when `dest` exists and matches `md5` (or exists and there is no md5 to check); a mismatch is deleted."""
        if not dest.is_file():
            return False
        if not md5 or md5_file(dest, self.advance) == md5:
            return True
        dest.unlink()
        return False

    def remote_size(self, url: str) -> int | None:
        """Content-Length from one HEAD request; None when the server does not say (no retries: a hint only)."""
        try:
            request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": "apes-cli"})
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                length = response.headers.get("Content-Length")
                return int(length) if length and length.isdigit() else None
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError):
            return None

    def fetch(self, url: str, dest: Path, md5: str) -> None:
        """Download `url` to `dest` through `<dest>.part`, retrying transient failures with backoff."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = part_path(dest)
        attempt = 0
        while True:
            try:
                actual = self._transfer(url, part)
                break
            except _Transient as error:
                if attempt >= self.retries:
                    raise DownloadError(url, f"gave up after {attempt} retries: {error}; "
                                             f"re-run to resume from {part.name}") from None
                delay = min(self.backoff_s * 2 ** attempt, MAX_BACKOFF_S)
                attempt += 1
                self.count(retries=1)
                if self.stop.wait(delay):
                    raise Cancelled(url) from None
        if md5:
            if actual != md5:
                part.unlink(missing_ok=True)
                raise DownloadError(dest, f"md5 mismatch: expected {md5}, got {actual} (from {url}); "
                                          "the bad file was removed", field="md5")
        os.replace(part, dest)
        self.count(fetched=1)

    def _open(self, url: str, offset: int) -> http.client.HTTPResponse | None:
        """Send the GET (with Range when resuming); None means the .part is already complete."""
        headers = {"User-Agent": "apes-cli"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=self.timeout_s)
        except urllib.error.HTTPError as error:
            if error.code == 416 and offset:
                _, total = _parse_content_range(error.headers.get("Content-Range"))
                if total == offset:
                    return None
                raise _RestartNeeded("range not satisfiable; restarting from byte 0") from None
            if error.code >= 500 or error.code in RETRY_STATUS:
                raise _Transient(f"HTTP {error.code} {error.reason}") from None
            raise DownloadError(url, f"HTTP {error.code} {error.reason}: check the URL "
                                     "(base_url / apes_url in params.yaml or the command-line options)") from None
        except urllib.error.URLError as error:
            if isinstance(error.reason, OSError):
                raise _Transient(f"cannot connect: {error.reason}") from None
            raise DownloadError(url, f"cannot fetch: {error.reason}") from None
        except (OSError, http.client.HTTPException) as error:
            raise _Transient(f"connection failed: {error!r}") from None
        except ValueError as error:
            raise DownloadError(url, f"not a valid URL: {error}") from None

    def _transfer(self, url: str, part: Path) -> str:
        """One attempt: append to (or restart) the .part file and return its md5; _Transient when it ends short."""
        offset = part.stat().st_size if part.exists() else 0
        try:
            response = self._open(url, offset)
        except _RestartNeeded as error:
            part.unlink(missing_ok=True)
            self.count(restarted=1)
            raise _Transient(str(error)) from None
        if response is None:
            return md5_file(part)
        with response:
            if response.status == 206:
                first, total = _parse_content_range(response.headers.get("Content-Range"))
                if first != offset:
                    part.unlink(missing_ok=True)
                    self.count(restarted=1)
                    raise _Transient(f"server resumed at byte {first}, not {offset}; restarting")
                self.count(resumed=1)
                mode, digest = "ab", _md5_of(part)
            else:
                if offset:
                    self.count(restarted=1)  # the server ignored Range: start over cleanly
                offset, mode, digest = 0, "wb", hashlib.md5()
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
            received = offset
            with part.open(mode) as handle:
                try:
                    while chunk := response.read(CHUNK_BYTES):
                        if self.stop.is_set():
                            raise Cancelled(url)
                        handle.write(chunk)
                        digest.update(chunk)
                        received += len(chunk)
                        self.count(bytes=len(chunk))
                        self.advance(len(chunk))
                except (OSError, http.client.HTTPException) as error:
                    raise _Transient(f"connection lost after {received} bytes: {error!r}") from None
        if total is not None and received < total:
            raise _Transient(f"connection closed after {received} of {total} bytes")
        return digest.hexdigest()
