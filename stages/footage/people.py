"""Who is in these videos: face tracks clustered into people, speech segments joined to them by voice.

Faces: average-linkage clustering of every face track of the given videos, with cannot-link
constraints (two tracks of one video on screen at the same time are different people); clusters merge
while the mean face score between them is >= FACE_LINK (dlib: 1 - Euclidean distance).
Voices: each person's speech given to one of their tracks by the index's speaker rule (speaker_track)
seeds their voice, once checked against the seeds' voices (consistent_seeds); every other segment (off
screen, several faces, a new voice) joins by constrained average linkage on voice cosine (CAM++ >=
CAMPPLUS_VOICE_LINK, Resemblyzer >= VOICE_LINK), a seeded person scored by their mean voice; two seeds never
merge (they are two people by face). A voice cluster without a seed is a "voice only" person; a face never
given speech stays "face only". Memory is O(tracks^2 + segments^2); nothing is decoded."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import sparse

from stages.footage.decision import VOICE_BASE_THRESHOLD
from stages.footage.index_store import VideoIndex

# Link thresholds, chosen on the "choose" part of bench/people.py (group photo, sample.wav, the interview;
# docs/search.md). Face: the search threshold, unchanged from 0.40 to 0.55 there.
FACE_LINK = 0.45
MODEL_FACE_LINK = 0.8  # a --model network's cosine: the search default, not calibrated on real faces
VOICE_LINK = 0.75  # Resemblyzer cosine (an index built with --voice-embedder resemblyzer)
# CAM++ cosine (the default embedder since issue 17): the voice search rule's threshold for segments of 1.5 s
# and more (stages/footage/decision.py); re-swept on the choose part of bench/people.py, where 0.25-0.45 give
# the same people (0.50 splits two voices off), so the search rule's value is kept.
CAMPPLUS_VOICE_LINK = VOICE_BASE_THRESHOLD
VOICE_MEAN = True  # a person seen speaking is scored by their mean voice embedding (steadier than one segment)
# Tracks (or segments) of one video sharing more than this many seconds are different people.
CANNOT_OVERLAP = 0.1


@dataclass
class Person:
    """One found person: face tracks and speech segments, each as (video number, row in its table)."""

    tracks: list[tuple[int, int]] = field(default_factory=list)
    segments: list[tuple[int, int]] = field(default_factory=list)


def euclidean_score(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """dlib's face score between every row of x and of y: 1 - Euclidean distance."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    squared = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2 * x @ y.T
    return 1.0 - np.sqrt(np.maximum(squared, 0.0))


def cosine_score(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Cosine similarity between every row of x and of y."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-9)
    y = y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-9)
    return x @ y.T


def overlapping(videos: np.ndarray, starts: np.ndarray, ends: np.ndarray, margin: float = CANNOT_OVERLAP
                ) -> np.ndarray:
    """n x n: items of the same video whose time ranges share more than `margin` seconds."""
    shared = np.minimum(ends[:, None], ends[None, :]) - np.maximum(starts[:, None], starts[None, :])
    out = (videos[:, None] == videos[None, :]) & (shared > margin)
    np.fill_diagonal(out, False)
    return out


class _Linkage:
    """Cluster-to-cluster scores, updated in place as clusters merge: the mean of the item scores between
    two clusters (average linkage), or, where one of them is an anchor, the score of the anchor's mean vector
    to the other's mean vector (a known person's voice profile is steadier than any single segment)."""

    def __init__(self, vectors: np.ndarray, member: sparse.csr_matrix, score, anchors: np.ndarray) -> None:
        vectors = np.asarray(vectors, np.float64)
        self.score, self.anchors = score, anchors
        self.pair_sums = np.asarray(member.T @ np.asarray(member.T @ score(vectors, vectors)).T)
        self.vector_sums = np.asarray(member.T @ vectors)
        self.sizes = np.asarray(member.sum(0)).ravel()

    def _means(self, rows: np.ndarray | slice) -> np.ndarray:
        return self.vector_sums[rows] / self.sizes[rows, None]

    def matrix(self) -> np.ndarray:
        """Every cluster pair's score."""
        out = self.pair_sums / np.outer(self.sizes, self.sizes)
        if self.anchors.any():
            anchored = np.flatnonzero(self.anchors)
            by_mean = self.score(self._means(anchored), self._means(slice(None)))
            out[anchored, :] = by_mean
            out[:, anchored] = by_mean.T
        return out

    def merge(self, a: int, b: int) -> np.ndarray:
        """Fold cluster b into a; returns a's new scores to every cluster."""
        self.pair_sums[a] += self.pair_sums[b]
        self.pair_sums[:, a] += self.pair_sums[:, b]
        self.vector_sums[a] += self.vector_sums[b]
        self.sizes[a] += self.sizes[b]
        self.anchors[a] |= self.anchors[b]
        out = self.pair_sums[a] / (self.sizes[a] * self.sizes)
        mean_scored = slice(None) if self.anchors[a] else self.anchors
        if self.anchors[a] or self.anchors.any():
            out[mean_scored] = self.score(self._means(slice(a, a + 1)), self._means(mean_scored))[0]
        return out


def constrained_linkage(vectors: np.ndarray, score, cannot: np.ndarray, threshold: float,
                        seeds: np.ndarray | None = None, seed_mean: bool = False) -> np.ndarray:
    """Cluster labels (0..k-1 in order of first item) by agglomerative average linkage stopping below `threshold`.

    `score(x, y)` gives the pairwise score matrix of two sets of vectors (higher = more alike); `cannot`
    (n x n) marks pairs that must stay apart. `seeds` (per item, -1 = none) starts items with the same seed
    together; two seeds never merge; with `seed_mean` a seeded cluster is scored by its mean vector. A merge
    costs O(clusters), plus a rescan of the rows whose best partner changed.
    """
    n = len(vectors)
    if n == 0:
        return np.zeros(0, np.int64)
    seeds = np.full(n, -1) if seeds is None else np.asarray(seeds)
    start = np.where(seeds >= 0, seeds, seeds.max(initial=-1) + 1 + np.arange(n))
    _, start = np.unique(start, return_inverse=True)
    k = int(start.max()) + 1
    member = sparse.csr_matrix((np.ones(n), (np.arange(n), start)), shape=(n, k))  # one-hot: O(n^2) products
    blocked = np.asarray((member.T @ sparse.csr_matrix(cannot.astype(np.float64)) @ member).todense()) > 0
    seeded = np.zeros(k, bool)
    seeded[start[seeds >= 0]] = True
    blocked |= seeded[:, None] & seeded[None, :]
    np.fill_diagonal(blocked, True)
    link = _Linkage(vectors, member, score, seeded.copy() if seed_mean else np.zeros(k, bool))
    scores = np.where(blocked, -np.inf, link.matrix())
    best = scores.argmax(1)
    owner, alive = np.arange(k), np.ones(k, bool)
    while True:
        row_best = scores[np.arange(k), best]
        a = int(np.argmax(row_best))
        b = int(best[a])
        if not row_best[a] >= threshold:
            break
        a, b = min(a, b), max(a, b)
        blocked[a] |= blocked[b]
        blocked[:, a] = blocked[a]
        alive[b] = False
        fresh = np.where(blocked[a] | ~alive, -np.inf, link.merge(a, b))
        scores[a], scores[:, a] = fresh, fresh
        scores[b], scores[:, b] = -np.inf, -np.inf
        owner[owner == b] = a
        stale = (best == a) | (best == b)
        stale[a] = True
        best[stale] = scores[stale].argmax(1)
        better = fresh > scores[np.arange(k), best]
        best[better] = a
    labels = owner[start]
    _, first = np.unique(labels, return_index=True)
    order = {label: rank for rank, label in enumerate(labels[np.sort(first)])}
    return np.array([order[label] for label in labels], np.int64)


def consistent_seeds(seeds: np.ndarray, voices: np.ndarray, link: float) -> np.ndarray:
    """Seeds without the speech whose voice is not its person's (a listener on screen while someone off screen
    speaks); an unseeded segment may still join anyone by voice. A seeded segment of a person with 2 or more
    is unseeded when another person's seeded voice (the mean of their 2 or more seeded segments) scores
    >= `link` and above its own person's (the mean of their other seeded segments); then, while a person
    keeps 3 or more, the one least like the others is unseeded if it scores below `link`."""
    seeds = seeds.copy()
    unit = np.asarray(voices, np.float64)
    unit = unit / np.maximum(np.linalg.norm(unit, axis=1, keepdims=True), 1e-9)
    people = np.unique(seeds[seeds >= 0])
    if len(people) > 1:
        sums = np.stack([unit[seeds == person].sum(0) for person in people])
        counts = np.array([np.sum(seeds == person) for person in people], np.float64)
        seeded = np.flatnonzero(seeds >= 0)
        own = np.searchsorted(people, seeds[seeded])
        scores = unit[seeded] @ (sums / np.linalg.norm(sums, axis=1, keepdims=True)).T
        rest = sums[own] - unit[seeded]  # the person's other seeded segments
        own_score = (unit[seeded] * rest).sum(1) / np.maximum(np.linalg.norm(rest, axis=1), 1e-9)
        scores[np.arange(len(seeded)), own] = -np.inf
        scores[:, counts < 2] = -np.inf  # one segment is no voice profile to go by
        other = scores.max(1)
        # a person's only seeded segment stays: with nothing of their own to compare, a voice like another
        # person's is weak evidence (different speakers reach 0.75 under Resemblyzer)
        seeds[seeded[(counts[own] >= 2) & (other >= link) & (other > own_score)]] = -1
    for person in np.unique(seeds[seeds >= 0]):
        while True:
            rows = np.flatnonzero(seeds == person)
            if len(rows) < 3:
                break
            others = unit[rows].sum(0)[None, :] - unit[rows]
            scores = (unit[rows] * others).sum(1) / np.maximum(np.linalg.norm(others, axis=1), 1e-9)
            worst = int(np.argmin(scores))
            if scores[worst] >= link:
                break
            seeds[rows[worst]] = -1
    return seeds


def voice_link_for(indexes: list[VideoIndex]) -> float:
    """The voice link threshold for the speaker embedder the indexes were built with."""
    embedders = {index.meta.get("settings", {}).get("voice_embedder", "resemblyzer") for index in indexes}
    return CAMPPLUS_VOICE_LINK if embedders == {"campplus"} else VOICE_LINK


def find_people(indexes: list[VideoIndex], face_link: float | None = None, voice_link: float | None = None,
                voice_mean: bool = VOICE_MEAN, check_seeds: bool = True) -> list[Person]:
    """People of a collection of indexed videos (unsorted): faces clustered, voices joined."""
    voice_link = voice_link_for(indexes) if voice_link is None else voice_link
    cosine = any(index.meta.get("settings", {}).get("model") for index in indexes)
    face_link = (MODEL_FACE_LINK if cosine else FACE_LINK) if face_link is None else face_link
    track_rows = [(v, r) for v, index in enumerate(indexes) for r in range(index.faces.num_rows)]
    segment_rows = [(v, r) for v, index in enumerate(indexes) for r in range(index.speech.num_rows)]

    people: list[Person] = []
    if track_rows:
        faces = np.concatenate([index.face_matrix() for index in indexes if index.faces.num_rows])
        videos, starts, ends = _concat_times([index.faces for index in indexes])
        labels = constrained_linkage(faces, cosine_score if cosine else euclidean_score,
                                     overlapping(videos, starts, ends), face_link)
        people = [Person() for _ in range(int(labels.max()) + 1)]
        for row, label in zip(track_rows, labels):
            people[label].tracks.append(row)
    if not segment_rows:
        return people

    person_of_track = {(v, int(indexes[v].faces["track"][r].as_py())): p
                       for p, person in enumerate(people) for v, r in person.tracks}
    seeds = np.array([person_of_track.get((v, int(indexes[v].speech["speaker_track"][r].as_py())), -1)
                      for v, r in segment_rows])
    voices = np.concatenate([index.voice_matrix() for index in indexes if index.speech.num_rows])
    if check_seeds:
        seeds = consistent_seeds(seeds, voices, voice_link)
    videos, starts, ends = _concat_times([index.speech for index in indexes])
    labels = constrained_linkage(voices, cosine_score, overlapping(videos, starts, ends), voice_link,
                                 seeds=seeds, seed_mean=voice_mean)
    owner_of_label: dict[int, int] = {}
    for seed, label in zip(seeds, labels):
        if seed >= 0:
            owner_of_label[int(label)] = int(seed)
    for row, label in zip(segment_rows, labels):
        if int(label) not in owner_of_label:
            owner_of_label[int(label)] = len(people)
            people.append(Person())
        people[owner_of_label[int(label)]].segments.append(row)
    return people


def _concat_times(tables: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    videos = np.concatenate([np.full(t.num_rows, v) for v, t in enumerate(tables)])
    starts = np.concatenate([np.asarray(t["start"], np.float64) for t in tables])
    ends = np.concatenate([np.asarray(t["end"], np.float64) for t in tables])
    return videos, starts, ends


def merged(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Union of intervals, sorted."""
    out: list[list[float]] = []
    for start, end in sorted(intervals):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return [(a, b) for a, b in out]


def intersection(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Time ranges in both interval sets."""
    out = [(max(x0, y0), min(x1, y1)) for x0, x1 in merged(a) for y0, y1 in merged(b)]
    return [(s, e) for s, e in out if e > s]


def describe(people: list[Person], indexes: list[VideoIndex], names: list[str]) -> list[dict[str, Any]]:
    """people.json's person records, sorted by screen plus speaking time, ids person-1, person-2, ..."""
    records = []
    for person in people:
        seen, heard, face_rows, voice_rows, weights = [], [], [], [], []
        for v, r in sorted(person.tracks, key=lambda vr: (vr[0], indexes[vr[0]].faces["start"][vr[1]].as_py())):
            faces = indexes[v].faces
            seen.append({"video": names[v], "start": round(faces["start"][r].as_py(), 3),
                         "end": round(faces["end"][r].as_py(), 3), "track": f"face-{faces['track'][r].as_py()}"})
            face_rows.append(np.asarray(faces["embedding"][r].values, np.float64))
        for v, r in sorted(person.segments, key=lambda vr: (vr[0], indexes[vr[0]].speech["start"][vr[1]].as_py())):
            speech = indexes[v].speech
            item = {"video": names[v], "start": round(speech["start"][r].as_py(), 3),
                    "end": round(speech["end"][r].as_py(), 3), "segment": f"speech-{speech['segment'][r].as_py()}"}
            if "speaker_score" in speech.column_names:
                item["speaker_score"] = round(float(speech["speaker_score"][r].as_py()), 4)
            heard.append(item)
            voice_rows.append(np.asarray(speech["embedding"][r].values, np.float64))
            weights.append(max(item["end"] - item["start"], 1e-3))
        seen_heard = []
        for video in names:
            on = [(s["start"], s["end"]) for s in seen if s["video"] == video]
            spoken = [(h["start"], h["end"]) for h in heard if h["video"] == video]
            seen_heard += [{"video": video, "start": round(s, 3), "end": round(e, 3)}
                           for s, e in intersection(on, spoken)]
        screen = sum(e - s for video in names for s, e in merged(
            [(x["start"], x["end"]) for x in seen if x["video"] == video]))
        speaking = sum(e - s for video in names for s, e in merged(
            [(x["start"], x["end"]) for x in heard if x["video"] == video]))
        voice = None
        if voice_rows:
            mean = np.average(np.stack(voice_rows), axis=0, weights=weights)
            voice = mean / max(float(np.linalg.norm(mean)), 1e-9)
        records.append({
            "seen": seen, "heard": heard, "seen_heard": seen_heard,
            "screen_seconds": round(screen, 3), "speaking_seconds": round(speaking, 3),
            "face_only": bool(seen) and not heard, "voice_only": bool(heard) and not seen,
            "face_embedding": [round(float(x), 6) for x in np.mean(face_rows, axis=0)] if face_rows else None,
            "voice_embedding": [round(float(x), 6) for x in voice] if voice is not None else None,
        })
    first = [(min([(names.index(x["video"]), x["start"]) for x in r["seen"] + r["heard"]])) for r in records]
    order = sorted(range(len(records)),
                   key=lambda i: (-(records[i]["screen_seconds"] + records[i]["speaking_seconds"]), first[i]))
    out = []
    for rank, i in enumerate(order, 1):
        out.append({"id": f"person-{rank}", **records[i]})
    return out


def track_thumbnails(person: dict[str, Any], indexes: dict[str, VideoIndex], limit: int = 3) -> list[bytes]:
    """JPEG thumbnails of a person's best-detected tracks (for the page)."""
    scored = []
    for item in person["seen"]:
        faces = indexes[item["video"]].faces
        tracks = faces["track"].to_pylist()
        row = tracks.index(int(item["track"].split("-")[1]))
        scored.append((-float(faces["detector_score"][row].as_py()), item["video"], item["start"],
                       faces["thumbnail"][row].as_py()))
    return [thumb for *_, thumb in sorted(scored)[:limit] if thumb]
