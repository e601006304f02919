"""apes-cli search: every moment a person is on screen (face) or heard (voice), in one or more videos.

`search(videos, face=..., voice=..., out_dir=..., settings=..., index_dir=...) -> results` validates the
queries first (a bad photo or clip stops before any work), indexes what is not indexed yet (stages/footage/indexing.py),
scores every face track and speech segment, and writes `out_dir/results.json` and `out_dir/results.html`.

results.json: {"query": {...}, "videos": [...], "hits": [...], "summary": {...}}; each hit has `video`,
`start`, `end` (s), `score` (higher = more alike), `match` (score >= the threshold), `modality` (face,
voice or speaking) and `track` ("face-<id>" or "speech-<id>"; a speaking hit also has `segment`). With a
face query alone, voice hits come from her voice enrolled from her own speaking hits (`enrolled_from`).
Sorted by score.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from stages.core.atomic import atomic_path, check_writable, disk_errors
from stages.core.errors import ConfigError, DataError
from stages.core.progress import Progress
from stages.footage.decision import Decision, score_face, score_voice, voice_rule, voice_score_threshold
from stages.footage.face_embedding import DlibFaceEmbedder
from stages.footage.index_store import VideoIndex, read_entry
from stages.footage.settings import IndexSettings
from stages.footage.indexing import check_video, index_videos
from stages.footage.people_outputs import face_embedder_label, load_person, person_embeddings

RESULTS_BYTES = 2_000_000  # free space asked for results.json and results.html (100 hits, thumbnails inline)

# Seconds of her own speaking hits needed to enrol her voice from a face query (docs/search.md).
ENROL_SECONDS = 3.0


def _face_hits(index: VideoIndex, video: str, query: np.ndarray, embedder, threshold: float) -> list[dict]:
    if index.faces.num_rows == 0:
        return []
    if isinstance(embedder, DlibFaceEmbedder):
        decision = score_face(query, index.face_matrix(), threshold)
    else:
        raw = embedder.scores(query, index.face_matrix())
        decision = Decision(raw, raw, np.full(raw.shape, threshold), raw >= threshold, "cosine")
    faces = index.faces
    hits = []
    for row, (score, raw, match) in enumerate(zip(decision.score, decision.raw, decision.match)):
        hits.append({"video": video, "start": faces["start"][row].as_py(), "end": faces["end"][row].as_py(),
                     "score": round(float(score), 4), "raw": round(float(raw), 4), "match": bool(match),
                     "modality": "face",
                     "track": f"face-{faces['track'][row].as_py()}", "_thumbs": [faces["thumbnail"][row].as_py()]})
    return hits


def _voice_hits(index: VideoIndex, video: str, query: np.ndarray, embedder: str,
                fixed: float | None) -> list[dict]:
    if index.speech.num_rows == 0:
        return []
    speech, thumbs = index.speech, dict(zip(index.faces["track"].to_pylist(), index.faces["thumbnail"].to_pylist()))
    seconds = np.asarray(speech["end"].to_pylist()) - np.asarray(speech["start"].to_pylist())
    decision = score_voice(query, index.voice_matrix(), seconds, embedder, fixed)
    hits = []
    for row, (score, raw, match) in enumerate(zip(decision.score, decision.raw, decision.match)):
        visible = speech["visible_tracks"][row].as_py()
        hits.append({"video": video, "start": speech["start"][row].as_py(), "end": speech["end"][row].as_py(),
                     "score": round(float(score), 4), "raw": round(float(raw), 4), "match": bool(match),
                     "modality": "voice",
                     "track": f"speech-{speech['segment'][row].as_py()}",
                     "faces": [f"face-{t}" for t in visible],
                     "speaker_face": (f"face-{speech['speaker_track'][row].as_py()}"
                                      if speech["speaker_track"][row].as_py() >= 0 else None),
                     "_thumbs": [thumbs[t] for t in visible[:4] if t in thumbs]})
    return hits


def _speaking_hits(index: VideoIndex, video: str, face_hits: list[dict], voice_hits: list[dict] | None
                   ) -> list[dict]:
    """Seen & Heard: each speech row given to a face track (active speaker detection), scored by the face
    query, and with a voice query also by the voice (then a match needs both)."""
    by_track = {hit["track"]: hit for hit in face_hits}
    by_segment = {hit["track"]: hit for hit in voice_hits or []}
    speech = index.speech
    out = []
    for row in range(speech.num_rows):
        speaker = speech["speaker_track"][row].as_py()
        face = by_track.get(f"face-{speaker}") if speaker >= 0 else None
        if face is None:
            continue
        segment = f"speech-{speech['segment'][row].as_py()}"
        start = max(speech["start"][row].as_py(), face["start"])
        end = min(speech["end"][row].as_py(), face["end"])
        if end - start <= 0:
            continue
        hit = {"video": video, "start": round(start, 3), "end": round(end, 3), "score": face["score"],
               "match": face["match"], "modality": "speaking", "track": face["track"], "segment": segment,
               "face_score": face["score"], "speaker_score": round(float(speech["speaker_score"][row].as_py()), 4),
               "_thumbs": face["_thumbs"]}
        voice = by_segment.get(segment)
        if voice is not None:
            hit.update(score=round((face["score"] + voice["score"]) / 2, 4), voice_score=voice["score"],
                       match=bool(face["match"] and voice["match"]))
        out.append(hit)
    return out


def _enrolled_voice(index: VideoIndex, speaking: list[dict]) -> tuple[np.ndarray | None, list[str], float]:
    """Her voice from her own matched `speaking` hits: the duration-weighted mean of their segments'
    embeddings (None under ENROL_SECONDS of speech), the segment ids and the seconds of speech used."""
    rows = {f"speech-{s}": row for row, s in enumerate(index.speech["segment"].to_pylist())}
    chosen = sorted({hit["segment"] for hit in speaking if hit["match"]}, key=lambda s: rows[s])
    if not chosen:
        return None, [], 0.0
    matrix = index.voice_matrix()
    weights = np.array([index.speech["end"][rows[s]].as_py() - index.speech["start"][rows[s]].as_py()
                        for s in chosen])
    seconds = float(weights.sum())
    if seconds < ENROL_SECONDS:
        return None, chosen, seconds
    mean = (matrix[[rows[s] for s in chosen]] * weights[:, None]).sum(axis=0)
    return mean / max(float(np.linalg.norm(mean)), 1e-9), chosen, seconds


def search(videos: list[str | Path], out_dir: str | Path, settings: IndexSettings, index_dir: str | Path,
           face: str | Path | None = None, voice: str | Path | None = None, face_index: int | None = None,
           top: int = 100, face_threshold: float | None = None, voice_threshold: float | None = None,
           workers: int = 1, progress: Progress | None = None, notes: list[str] | None = None,
           person: str | None = None) -> dict[str, Any]:
    """Run a search; returns the results (also written to out_dir/results.json and results.html). `person`
    (`people.json:person-N` or `:Name`) queries with the face and voice embeddings `apes-cli people` found."""
    from stages.footage.face_embedding import face_embedder
    from stages.footage.html_page import render
    from stages.footage.photo import query_face
    from stages.footage.speech import embed_clip

    if face is None and voice is None and person is None:
        raise ConfigError("--face/--voice", "give a face photo, a voice clip, both, or --person", "command line")
    if person is not None and (face is not None or voice is not None):
        raise ConfigError("--person", "expected --person alone (it brings its own face and voice)", "command line")
    if top < 1:
        raise ConfigError("--top", "expected >= 1", "command line")
    settings = settings.resolved()
    query: dict[str, Any] = {}
    face_query = embedder = voice_embedding = None
    face_vector = None
    if person is not None:
        found = load_person(person)
        embedder = face_embedder(settings.model)
        if found["embedders"]["face"] != face_embedder_label(settings):
            raise DataError(found["file"], f"its faces were embedded by {found['embedders']['face']}; expected the "
                                           "index settings it was made with (same --model)", field="embedders")
        if found["embedders"].get("voice") != settings.voice_embedder:
            raise DataError(found["file"], f"its voices were embedded by {found['embedders'].get('voice')}; expected "
                                           f"{settings.voice_embedder} (the same --voice-embedder)", field="embedders")
        face_vector, voice_embedding = person_embeddings(found)
        face_threshold = embedder.threshold if face_threshold is None else face_threshold
        query["person"] = {"file": found["file"], "id": found["id"], "name": found.get("name"),
                           "face": face_vector is not None, "voice": voice_embedding is not None,
                           "face_threshold": face_threshold,
                           "voice_threshold": voice_score_threshold(settings.voice_embedder, voice_threshold),
                           "voice_rule": voice_rule(settings.voice_embedder, voice_threshold)}
    if face is not None:
        embedder = face_embedder(settings.model)
        face_query = query_face(face, embedder, face_index)
        face_vector = face_query.embedding
        if face_query.note and notes is not None:
            notes.append(face_query.note)
        face_threshold = embedder.threshold if face_threshold is None else face_threshold
        query["face"] = {"photo": str(face), "faces_found": face_query.faces_found,
                         "face_index": face_query.face_index, "box": [round(v, 1) for v in face_query.box],
                         "embedder": embedder.name, "threshold": face_threshold,
                         "score": "1 - Euclidean distance of dlib descriptors" if not settings.model
                         else "cosine similarity"}
    if voice is not None and face is None:
        silent = [video for video in videos if not check_video(video).has_audio]
        if len(silent) == len(videos):
            raise DataError(silent[0], "this video has no audio stream, so a --voice query cannot be answered; "
                                       "expected a video with sound (or add --face)")
    if voice is not None:
        from stages.footage.voice_embedders import voice_embedder
        voice_model = voice_embedder(settings.voice_embedder)
        voice_embedding, speech_seconds = embed_clip(voice, voice_model.embed_query)
        query["voice"] = {"clip": str(voice), "speech_seconds": round(speech_seconds, 2),
                          "embedder": voice_model.name,
                          "threshold": voice_score_threshold(voice_model.name, voice_threshold),
                          "rule": voice_rule(voice_model.name, voice_threshold),
                          "raw": f"cosine similarity of {voice_model.name} embeddings"}
    check_writable(out_dir, RESULTS_BYTES)
    entries, index_summary = index_videos(list(videos), settings, index_dir, progress, workers)
    if notes is not None:
        notes += [entry.warning for entry in entries if entry.warning]
        if voice is not None:
            notes += [f"{entry.video}: has no audio stream; the voice query could not be searched there"
                      for entry in entries if not entry.meta["has_audio"]]
    started = time.perf_counter()
    hits: list[dict] = []
    video_rows = []
    enrolment: list[dict] = []
    for entry in entries:
        index = read_entry(entry.path)
        name = str(entry.video)
        face_hits = _face_hits(index, name, face_vector, embedder, face_threshold) if face_vector is not None else []
        voice_hits = (_voice_hits(index, name, voice_embedding, settings.voice_embedder, voice_threshold)
                      if voice_embedding is not None else [])
        speaking = _speaking_hits(index, name, face_hits, voice_hits if voice_embedding is not None else None)
        if face_vector is not None and voice_embedding is None:  # her voice, from her own speaking hits
            enrolled, segments, seconds = _enrolled_voice(index, speaking)
            enrolment.append({"video": name, "segments": segments, "speech_seconds": round(seconds, 2),
                              "enrolled": enrolled is not None})
            if enrolled is not None:
                voice_hits = _voice_hits(index, name, enrolled, settings.voice_embedder, voice_threshold)
                for hit in voice_hits:
                    hit["enrolled_from"] = segments
        hits += face_hits + voice_hits + speaking
        meta = entry.meta
        video_rows.append({"path": name, "sha256": entry.digest, "index": str(entry.path),
                           "indexed_now": entry.built, "duration": meta["duration"], "width": meta["width"],
                           "height": meta["height"], "fps": round(meta["fps"], 3), "has_audio": meta["has_audio"],
                           "complete": meta["complete"], "damage": meta["damage"], "tracks": meta["tracks"],
                           "speech_segments": meta["speech_segments"], "cuts": len(meta["cuts"]),
                           "index_seconds": meta["timings"]["total_seconds"]})
    if enrolment:
        query["enrolled_voice"] = {"from": "the face query's own speaking hits (matched)", "min_seconds": ENROL_SECONDS,
                                   "embedder": settings.voice_embedder,
                                   "threshold": voice_score_threshold(settings.voice_embedder, voice_threshold),
                                   "rule": voice_rule(settings.voice_embedder, voice_threshold), "videos": enrolment}
    hits.sort(key=lambda h: (-h["score"], h["video"], h["start"]))
    hits = hits[:top]
    query_seconds = time.perf_counter() - started
    thumbs = [hit.pop("_thumbs") for hit in hits]
    results = {
        "query": query, "videos": video_rows, "hits": hits,
        "summary": {"hits": len(hits), "matches": sum(h["match"] for h in hits),
                    "query_seconds": round(query_seconds, 3), **{f"index_{k}": v for k, v in index_summary.items()}},
    }
    out_dir = Path(out_dir)
    page = render(results, thumbs, face_query.thumbnail if face_query else None)
    with disk_errors(out_dir):
        with atomic_path(out_dir / "results.json") as tmp:
            tmp.write_text(json.dumps(results, indent=2) + "\n")
        with atomic_path(out_dir / "results.html") as tmp:
            tmp.write_text(page, encoding="utf-8")
    return results
