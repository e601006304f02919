"""apes-cli people: the cast of a video or a collection, written as people.json, people.html, RTTM and WebVTT.

`people(videos, out_dir, settings, index_dir, names=...) -> document` indexes what is not indexed yet,
clusters faces and voices (stages/footage/people.py) and writes, in out_dir: people.json, people.html and
per video <stem>.rttm (NIST RTTM as pyannote writes it) and <stem>.vtt (WebVTT cues naming who speaks).
`load_person(spec)` reads `people.json:person-3` (or `:Alice`) back for `search --person`.
"""

from __future__ import annotations

import base64
import html
import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from stages.core.atomic import atomic_path, check_writable, disk_errors
from stages.core.errors import DataError
from stages.core.progress import Progress
from stages.footage.face_embedding import DlibFaceEmbedder
from stages.footage.html_page import STYLE, video_link
from stages.footage.index_store import read_entry
from stages.footage.indexing import index_videos
from stages.footage.people import (FACE_LINK, MODEL_FACE_LINK, describe, find_people, track_thumbnails,
                                   voice_link_for)
from stages.footage.settings import IndexSettings

FORMAT = "apes-people-1"
PEOPLE_BYTES = 2_000_000  # free space asked for the outputs, per video (as search asks for its results)
NAME_LINE = re.compile(r"^\s*(person-\d+)\s*=\s*(\S.*?)\s*$")


def read_names(path: str | Path) -> dict[str, str]:
    """`person-N = Name` lines (blank lines and # comments allowed) -> {person id: name}."""
    names: dict[str, str] = {}
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(path, f"cannot read the names file ({error}); expected UTF-8 text") from None
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = NAME_LINE.match(line)
        if match is None:
            raise DataError(path, f"expected 'person-N = Name', got {line.strip()[:60]!r}", line=number)
        if match.group(2) in names.values():
            raise DataError(path, f"name {match.group(2)!r} is given twice; expected one name per person",
                            line=number)
        names[match.group(1)] = match.group(2)
    return names


def people(videos: list[str | Path], out_dir: str | Path, settings: IndexSettings, index_dir: str | Path,
           names_file: str | Path | None = None, workers: int = 1, progress: Progress | None = None,
           notes: list[str] | None = None) -> dict[str, Any]:
    """Find the people of the videos and write people.json, people.html, <stem>.rttm and <stem>.vtt (a damaged
    video's warning goes to `notes`)."""
    names = read_names(names_file) if names_file is not None else {}
    check_writable(out_dir, PEOPLE_BYTES * max(1, len(videos)))
    entries, index_summary = index_videos(list(videos), settings, index_dir, progress, workers)
    started = time.perf_counter()
    indexes = [read_entry(entry.path) for entry in entries]
    paths = [str(entry.video) for entry in entries]
    found = describe(find_people(indexes), indexes, paths)
    unknown = sorted(set(names) - {person["id"] for person in found})
    if unknown:
        raise DataError(names_file, f"no {unknown[0]} among the {len(found)} people found; expected ids "
                                    f"person-1..person-{len(found)}")
    for person in found:
        if person["id"] in names:
            person["name"] = names[person["id"]]
    seconds = time.perf_counter() - started
    cosine = bool(settings.model)
    document = {
        "format": FORMAT,
        "videos": [{"path": path, "sha256": entry.digest, "index": str(entry.path), "duration": entry.meta["duration"],
                    "tracks": entry.meta["tracks"], "speech_segments": entry.meta["speech_segments"]}
                   for path, entry in zip(paths, entries)],
        "embedders": {"face": face_embedder_label(settings), "voice": settings.voice_embedder,
                      "face_link": MODEL_FACE_LINK if cosine else FACE_LINK, "voice_link": voice_link_for(indexes)},
        "people": found,
        "summary": {"people": len(found), "face_only": sum(p["face_only"] for p in found),
                    "voice_only": sum(p["voice_only"] for p in found), "people_seconds": round(seconds, 3),
                    **{f"index_{k}": v for k, v in index_summary.items()}},
    }
    out_dir = Path(out_dir)
    by_path = dict(zip(paths, indexes))
    page = render_page(document, {p["id"]: track_thumbnails(p, by_path) for p in found})
    with disk_errors(out_dir):
        with atomic_path(out_dir / "people.json") as tmp:
            tmp.write_text(json.dumps(document, indent=1) + "\n")
        with atomic_path(out_dir / "people.html") as tmp:
            tmp.write_text(page, encoding="utf-8")
        for path in paths:
            stem = Path(path).stem
            with atomic_path(out_dir / f"{stem}.rttm") as tmp:
                tmp.write_text(rttm(document, path))
            with atomic_path(out_dir / f"{stem}.vtt") as tmp:
                tmp.write_text(webvtt(document, path), encoding="utf-8")
    if notes is not None:
        notes += [entry.warning for entry in entries if entry.warning]
    return document


def face_embedder_label(settings: IndexSettings) -> str:
    """Which face embedder made the index: dlib's, or a --model network named by its content hash."""
    settings = settings.resolved()
    return f"apes-model-{settings.model_digest}" if settings.model else DlibFaceEmbedder.name


def label(person: dict[str, Any]) -> str:
    """The name given to a person, or their id."""
    return person.get("name") or person["id"]


def _speech(document: dict[str, Any], video: str) -> list[tuple[float, float, str]]:
    turns = [(h["start"], h["end"], label(p)) for p in document["people"] for h in p["heard"] if h["video"] == video]
    return sorted(turns)


def rttm(document: dict[str, Any], video: str) -> str:
    """Who speaks when in one video, as pyannote writes RTTM (uri = the file's stem, spaces in names as _)."""
    def token(text: str) -> str:
        return re.sub(r"\s+", "_", text)

    return "".join(f"SPEAKER {token(Path(video).stem)} 1 {start:.3f} {end - start:.3f} <NA> <NA> {token(who)} <NA> <NA>\n"
                   for start, end, who in _speech(document, video))


def _vtt_clock(seconds: float) -> str:
    millis = int(round(seconds * 1000))
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    return f"{hours:02d}:{minutes:02d}:{rest // 1000:02d}.{rest % 1000:03d}"


def webvtt(document: dict[str, Any], video: str) -> str:
    """WebVTT cues, one per speech segment, naming the speaker (a <v> voice span)."""
    cues = ["WEBVTT", ""]
    for start, end, who in _speech(document, video):
        text = html.escape(who, quote=False)
        cues += [f"{_vtt_clock(start)} --> {_vtt_clock(end)}", f"<v {text}>{text}", ""]
    return "\n".join(cues)


def _uri(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


PAGE_STYLE = STYLE + """
.person{background:#fff;border:1px solid #ddd;border-radius:6px;padding:12px;margin:0 0 14px}
.person img{width:72px;height:72px;border-radius:4px;margin-right:6px}
.strip{position:relative;height:18px;background:#eee;border-radius:3px;margin:4px 0 10px}
.strip a{position:absolute;top:0;height:18px;display:block;min-width:2px}
.strip a.seen{background:#4d8fe0;top:0;height:9px} .strip a.heard{background:#f0953a;top:9px;height:9px}
.flag{font-size:12px;color:#555;margin-left:8px}
"""


NO_FACE = '<span class="none">never on screen</span>'


def render_page(document: dict[str, Any], thumbnails: dict[str, list[bytes]]) -> str:
    """people.html: a card per person (thumbnails, times, a timeline strip per video with #t= links)."""
    esc = html.escape
    durations = {v["path"]: max(float(v["duration"] or 0.0), 1e-3) for v in document["videos"]}
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', "<title>apes people</title>",
             f"<style>{PAGE_STYLE}</style></head><body>",
             f"<h1>People in {len(durations)} video(s)</h1>",
             "<p>Blue: on screen. Orange: speaking. Each bar opens the video at that moment.</p>"]
    for person in document["people"]:
        flag = " face only" if person["face_only"] else " voice only" if person["voice_only"] else ""
        parts.append(f'<section class="person" id="{esc(person["id"])}">')
        title = esc(label(person)) + (f" ({esc(person['id'])})" if "name" in person else "")
        parts.append(f"<h2>{title}<span class=\"flag\">{flag}</span></h2>")
        images = "".join(f'<img alt="face" src="{_uri(t)}">' for t in thumbnails.get(person["id"], []))
        parts.append(f"<div>{images or NO_FACE}</div>")
        parts.append(f"<p>on screen {person['screen_seconds']:.1f} s, speaking {person['speaking_seconds']:.1f} s</p>")
        for video, duration in durations.items():
            items = [("seen", x) for x in person["seen"] if x["video"] == video] + \
                    [("heard", x) for x in person["heard"] if x["video"] == video]
            if not items:
                continue
            parts.append(f"<div>{esc(Path(video).name)}</div>")
            bars = []
            for kind, x in items:
                left, width = 100 * x["start"] / duration, 100 * (x["end"] - x["start"]) / duration
                bars.append(f'<a class="{kind}" href="{esc(video_link(video, x["start"]))}" '
                            f'title="{kind} {x["start"]:.2f}-{x["end"]:.2f} s" '
                            f'style="left:{left:.3f}%;width:{width:.3f}%"></a>')
            parts.append('<div class="strip">' + "".join(bars) + "</div>")
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def load_person(spec: str) -> dict[str, Any]:
    """`DIR/people.json:person-3` or `...:Alice` -> that person's record plus the file's embedders."""
    file, sep, who = spec.rpartition(":")
    if not sep or not file or not who:
        raise DataError(spec, "expected PEOPLE.json:person-N or PEOPLE.json:NAME")
    path = Path(file)
    if path.is_dir():
        path = path / "people.json"
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise DataError(path, f"unreadable people file ({error}); expected a people.json of `apes-cli people`") \
            from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        found = document.get("format") if isinstance(document, dict) else None
        raise DataError(path, f"format {found!r}; expected {FORMAT!r} (run `apes-cli people` again)", field="format")
    for person in document["people"]:
        if who in (person["id"], person.get("name")):
            return {**person, "embedders": document["embedders"], "file": str(path)}
    known = ", ".join(label(p) for p in document["people"][:8])
    raise DataError(path, f"no person {who!r}; expected a person id or name in it ({known})")


def person_embeddings(person: dict[str, Any]) -> tuple[np.ndarray | None, np.ndarray | None]:
    """A found person's face and voice embeddings (None where they were never seen or heard)."""
    face, voice = person.get("face_embedding"), person.get("voice_embedding")
    return (np.asarray(face, np.float32) if face else None, np.asarray(voice, np.float32) if voice else None)
