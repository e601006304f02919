"""results.html: one self-contained page (thumbnails inline as base64 JPEG, no network, no script)."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#1c1c1c;background:#fafafa}
h1{font-size:22px;margin:0 0 12px} h2{font-size:17px;margin:24px 0 8px}
.query{display:flex;gap:20px;align-items:center;background:#fff;border:1px solid #ddd;padding:12px;border-radius:6px}
.query img{width:96px;height:96px;border-radius:4px}
table{border-collapse:collapse;background:#fff;width:100%}
td,th{border-bottom:1px solid #e3e3e3;padding:6px 10px;text-align:left;vertical-align:middle}
th{background:#f0f0f0;font-size:13px}
td.thumbs img{width:64px;height:64px;margin-right:4px;border-radius:3px}
tr.match td{background:#effaf0} tr.nomatch td{color:#777}
.badge{display:inline-block;padding:1px 7px;border-radius:9px;font-size:12px;background:#ddd}
.badge.face{background:#cfe3ff} .badge.voice{background:#ffe2c4} .badge.speaking{background:#d9f2d0}
.none{color:#999;font-size:12px}
"""


def _uri(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def _clock(seconds: float) -> str:
    minutes, rest = divmod(max(0.0, seconds), 60)
    return f"{int(minutes)}:{rest:05.2f}"


def video_link(video: str, start: float) -> str:
    """A link that opens the video at `start` (media fragment VIDEO#t=START, VIDEO as a file:// URI)."""
    return Path(video).resolve().as_uri() + f"#t={start:.2f}"


def render(results: dict[str, Any], thumbnails: list[list[bytes]], query_face: bytes | None) -> str:
    """The page: the query, then one row per hit (thumbnail, time range, score, link)."""
    esc = html.escape
    query = results["query"]
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             "<title>apes search results</title>", f"<style>{STYLE}</style></head><body>",
             "<h1>Person search results</h1>", '<section class="query" id="query">']
    if query_face:
        parts.append(f'<img class="query-face" alt="query face" src="{_uri(query_face)}">')
    lines = []
    if "face" in query:
        q = query["face"]
        lines.append(f"Face: {esc(Path(q['photo']).name)} (face {q['face_index']} of {q['faces_found']}; "
                     f"match when score &ge; {q['threshold']:.2f})")
    if "voice" in query:
        q = query["voice"]
        lines.append(f"Voice: {esc(Path(q['clip']).name)} ({q['speech_seconds']:.1f} s of speech; "
                     f"match when score &ge; {q['threshold']:.2f})")
    for video in query.get("enrolled_voice", {}).get("videos", []):
        lines.append(f"Her voice, enrolled from her speaking hits in {esc(Path(video['video']).name)}: "
                     f"{video['speech_seconds']:.1f} s" + ("" if video["enrolled"] else
                     f" (under {query['enrolled_voice']['min_seconds']:.0f} s: not enrolled)"))
    if "person" in query:
        q = query["person"]
        lines.append(f"Person: {esc(q['name'] or q['id'])} of {esc(q['file'])} (face: {'yes' if q['face'] else 'no'}, "
                     f"voice: {'yes' if q['voice'] else 'no'})")
    videos = results["videos"]
    lines.append(f"{len(videos)} video(s): " + ", ".join(esc(Path(v["path"]).name) for v in videos))
    lines += [f"<strong>{esc(Path(v['path']).name)}: {esc(v['damage']['message'])}</strong>"
              for v in videos if v.get("damage")]
    summary = results["summary"]
    lines.append(f"{summary['matches']} match(es) among {summary['hits']} listed hit(s)")
    parts.append("<div>" + "<br>".join(lines) + "</div></section>")
    parts.append("<h2>Hits, best first</h2>")
    parts.append('<table id="hits"><thead><tr><th>#</th><th>faces</th><th>video</th><th>time</th>'
                 "<th>modality</th><th>score</th><th>match</th><th>track</th></tr></thead><tbody>")
    for number, (hit, thumbs) in enumerate(zip(results["hits"], thumbnails), 1):
        images = "".join(f'<img alt="face" src="{_uri(t)}">' for t in thumbs if t) or \
            '<span class="none">no face on screen</span>'
        link = video_link(hit["video"], hit["start"])
        css = "match" if hit["match"] else "nomatch"
        parts.append(
            f'<tr class="hit {css}" data-start="{hit["start"]:.3f}" data-end="{hit["end"]:.3f}" '
            f'data-score="{hit["score"]:.4f}" data-modality="{esc(hit["modality"])}">'
            f"<td>{number}</td><td class=\"thumbs\">{images}</td>"
            f"<td>{esc(Path(hit['video']).name)}</td>"
            f'<td><a href="{esc(link)}">{_clock(hit["start"])} &ndash; {_clock(hit["end"])}</a></td>'
            f'<td><span class="badge {esc(hit["modality"])}">{esc(hit["modality"])}</span></td>'
            f"<td>{hit['score']:.3f}</td><td>{'yes' if hit['match'] else 'no'}</td><td>{esc(hit['track'])}</td></tr>")
    parts.append("</tbody></table></body></html>")
    return "\n".join(parts) + "\n"
