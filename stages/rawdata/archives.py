"""Safe extraction of the AVA-ActiveSpeaker annotation archives: every member is checked before it is written."""

from __future__ import annotations

import re
import shutil
import tarfile
import zlib
from pathlib import Path, PurePosixPath

from stages.core.errors import DataError
from stages.rawdata.layout import check_video_id

ACTIVESPEAKER_SUFFIX = "-activespeaker.csv"
_DRIVE = re.compile(r"^[A-Za-z]:")


def refusal(member: tarfile.TarInfo) -> str | None:
    """Why a member must not be extracted (absolute path, `..`, link, device, ...), or None when it is safe."""
    name = member.name
    if name.startswith(("/", "\\")) or _DRIVE.match(name):
        return "absolute path"
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        return "'..' path component"
    if member.issym() or member.islnk():
        return f"link to {member.linkname!r}"
    if member.ischr() or member.isblk() or member.isfifo():
        return "device or fifo"
    if not (member.isfile() or member.isdir()):
        return "not a regular file or directory"
    return None


def extract_activespeaker(archive: Path, target: Path) -> list[str]:
    """Write every `<video_id>-activespeaker.csv` of a tar archive flat into `target`; return the video ids.

    Every member is checked first and an unsafe one stops everything with an error naming it; members that
    are not per-video CSVs (directories, READMEs) are skipped. The caller passes a temporary directory
    (stages.core.atomic.atomic_dir), so a refused archive leaves nothing behind.
    """
    video_ids: list[str] = []
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                why = refusal(member)
                if why is not None:
                    raise DataError(archive, f"refused archive member {member.name!r}: {why}; nothing was extracted",
                                    field="member")
                base = PurePosixPath(member.name).name
                if not member.isfile() or not base.endswith(ACTIVESPEAKER_SUFFIX):
                    continue
                video_id = check_video_id(base[: -len(ACTIVESPEAKER_SUFFIX)], archive)
                dest = target / base
                if dest.exists():
                    raise DataError(archive, f"member {member.name!r}: video {video_id!r} appears twice",
                                    field="member")
                source = tar.extractfile(member)
                if source is None:
                    raise DataError(archive, f"member {member.name!r} has no data", field="member")
                with source, dest.open("wb") as out:
                    shutil.copyfileobj(source, out)
                video_ids.append(video_id)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
        raise DataError(archive, f"not a readable tar archive: {error}") from None
    if not video_ids:
        raise DataError(archive, f"no '*{ACTIVESPEAKER_SUFFIX}' files in the archive")
    return sorted(video_ids)
