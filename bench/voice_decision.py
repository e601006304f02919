"""Choose and check the voice decision (and the embedder) on real voices: fixtures/realdev and sample.wav.

Each part is a soundtrack of turns of real speakers separated by short pauses, run through the index's own
audio path (Silero VAD, speaker-change splitting, segment embeddings) with each embedder; each person is
then queried with speech the soundtrack never plays, and every rule is scored as search scores it: time
overlap of the matched segments with the person's turns, precision and recall per person, mean over people.

- choose: speaker T (query: the first 10 s of one recording; turns from the three others), the three
  interview speakers (query: the first 3 s of their reference stretch; the rest is played) and the two
  speakers of sample.wav (query: one RTTM turn; other turns played): 6 people, different microphones.
- check: the five read-speech speakers (query: the first half of each clip, the second half played),
  among strangers (other stretches of the choose voices). Never used to choose anything. `--check-video`
  also runs it end to end: the turns as shots of a 1280x720 video (a face on screen in most), `search`.

`--timing` and `--index-speed` time CAM++ against Resemblyzer (the baseline) in the same run.
Run: .venv/bin/python -m bench.voice_decision [--cache /tmp/voice_decision.npz] [--timing] [--index-speed]
     [--check-video]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from search_media import FIXTURES, merged, precision_recall, sample_audio  # noqa: E402

from stages.footage.speech import read_clip, speech_regions, split_region  # noqa: E402
from stages.footage.voice_embedders import EMBEDDERS  # noqa: E402
from stages.footage.voice_numpy import speech_mask  # noqa: E402

RATE = 16000
REALDEV = FIXTURES / "realdev" / "voices"
T_FILES = ["speaker-T-4glfwiMXgwQ", "speaker-T-F2PiuixG0NY", "speaker-T-dpJE5qd9CRM", "speaker-T-y0xEoKRHRi4"]
READ = ["read-3575_00000", "read-6829_00000", "read-8230_00000", "read-p240_00000", "read-p260_00000"]
INTERVIEW = {"A": (0.0, 5.5), "B": (6.5, 12.0), "C": (17.0, 25.0)}
TURN_SECONDS = [1.2, 3.0, 5.0, 2.0, 4.0, 1.8, 2.6]


def _clip(name: str) -> np.ndarray:
    return read_clip(REALDEV / f"{name}.mp3")


def _cut(audio: np.ndarray, start: float, end: float) -> np.ndarray:
    return audio[int(start * RATE):int(end * RATE)]


def _chunks(audio: np.ndarray, start: float, end: float, count: int) -> list[np.ndarray]:
    out, t, k = [], start, 0
    while len(out) < count and t + 1.0 < end:
        length = TURN_SECONDS[k % len(TURN_SECONDS)]
        out.append(_cut(audio, t, min(end, t + length)))
        t += length + 0.5
        k += 1
    return out


def material() -> dict[str, tuple[dict[str, np.ndarray], list[tuple[str, np.ndarray]]]]:
    """Per part: the query audio of each person, and the turns (speaker, audio) the soundtrack plays."""
    interview = _clip("interview-3-speakers")
    sample = sample_audio()
    t_audio = [_clip(name) for name in T_FILES]
    choose_q = {"T": _cut(t_audio[0], 0, 10)}
    choose_turns: list[tuple[str, np.ndarray]] = []
    for audio in t_audio[1:]:
        choose_turns += [("T", a) for a in _chunks(audio, 0, audio.size / RATE, 4)]
    for name, (a, b) in INTERVIEW.items():
        choose_q[name] = _cut(interview, a, a + 3.0)
        choose_turns.append((name, _cut(interview, a + 3.0, b)))
    choose_q["s90"] = _cut(sample, 10.60, 14.45)
    choose_q["s91"] = _cut(sample, 21.80, 27.80)
    for name, (a, b) in [("s90", (18.60, 21.45)), ("s90", (27.90, 30.00)), ("s90", (8.35, 9.90)),
                         ("s91", (14.50, 17.90)), ("s91", (9.95, 11.00))]:
        choose_turns.append((name, _cut(sample, a, b)))
    check_q, check_turns = {}, []
    for name in READ:
        audio = _clip(name)
        half = audio.size // 2
        check_q[name] = audio[:half]
        check_turns.append((name, audio[half:]))
    # strangers of the check part: other stretches of the choose voices (never queried in the check)
    for audio in t_audio[:1]:
        check_turns += [("stranger-T", a) for a in _chunks(audio, 12, audio.size / RATE, 3)]
    check_turns += [("stranger-interview", a) for a in _chunks(interview, 30, 60, 5)]
    check_turns.append(("stranger-s90", _cut(sample, 10.60, 14.45)))
    return {"choose": (choose_q, choose_turns), "check": (check_q, check_turns)}


def soundtrack(turns: list[tuple[str, np.ndarray]], seed: int) -> tuple[np.ndarray, dict[str, list]]:
    """Turns in a seeded order with 0.3-0.9 s pauses of faint noise; truth intervals per speaker."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(turns))
    pieces, truth, t = [], {}, 0.0
    for i in order:
        speaker, audio = turns[i]
        pause = rng.uniform(0.3, 0.9)
        pieces.append(rng.normal(0, 1e-3, int(pause * RATE)).astype(np.float32))
        t += pause
        pieces.append(audio.astype(np.float32))
        truth.setdefault(speaker, []).append((t, t + audio.size / RATE))
        t += audio.size / RATE
    return np.concatenate(pieces), truth


def segments_of(audio: np.ndarray) -> list[tuple[float, float]]:
    """The index's segmentation: Silero regions, split at voice changes (no shot cuts here)."""
    out = []
    for lo, hi in speech_regions(audio):
        out += split_region(audio[lo:hi], lo / RATE, np.zeros(0))
    return out


def trimmed(audio: np.ndarray) -> np.ndarray:
    """A query clip's speech, as search trims it (speech.embed_clip)."""
    from stages.footage.speech import _louder
    audio, _ = _louder(audio)
    return audio[speech_mask(audio)]


def build(cache: Path) -> dict:
    """Segment and embed both parts with every embedder (cached: this is the slow part)."""
    if cache.is_file():
        return dict(np.load(cache, allow_pickle=True))["data"].item()
    data = {}
    for part, (queries, turns) in material().items():
        audio, truth = soundtrack(turns, seed=1 if part == "choose" else 2)
        segs = segments_of(audio)
        entry = {"truth": truth, "segments": segs, "people": sorted(queries)}
        for name, embedder in EMBEDDERS.items():
            entry[f"{name}/segments"] = np.stack([embedder.embed_segment(audio[int(a * RATE):int(b * RATE)])
                                                  for a, b in segs])
            entry[f"{name}/queries"] = np.stack([embedder.embed_query(trimmed(queries[p])) for p in entry["people"]])
        data[part] = entry
        print(f"{part}: {audio.size / RATE:.0f} s, {len(segs)} segments, people {entry['people']}", flush=True)
    np.savez(cache, data=np.array(data, dtype=object))
    return data


def quality(entry: dict, matches: np.ndarray) -> tuple[float, float]:
    """Mean over people of time-overlap precision and recall; matches: (people, segments) bool."""
    precisions, recalls = [], []
    for k, person in enumerate(entry["people"]):
        found = merged([seg for seg, m in zip(entry["segments"], matches[k]) if m])
        p, r = precision_recall(found, merged(entry["truth"][person]))
        precisions.append(p)
        recalls.append(r)
    return float(np.mean(precisions)), float(np.mean(recalls))


def labels(entry: dict) -> np.ndarray:
    """(people, segments): True where most of the segment is that person's speech."""
    out = np.zeros((len(entry["people"]), len(entry["segments"])), bool)
    for k, person in enumerate(entry["people"]):
        truth = merged(entry["truth"][person])
        for j, (a, b) in enumerate(entry["segments"]):
            inside = sum(max(0.0, min(b, y) - max(a, x)) for x, y in truth)
            out[k, j] = inside >= 0.5 * (b - a)
    return out


def eer(scores: np.ndarray, truth: np.ndarray) -> float:
    """Equal error rate of query-segment scores."""
    pos, neg = scores[truth], scores[~truth]
    best = 1.0
    for t in np.unique(scores):
        best = min(best, max(float(np.mean(pos < t)), float(np.mean(neg >= t))))
    return best


def asnorm(query: np.ndarray, segments: np.ndarray, k: int = 10) -> np.ndarray:
    """AS-norm scores with the soundtrack's own segments as the cohort (measured, not used: docs/search.md)."""
    def top(scores: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
        best = -np.sort(-scores, axis=-1)[..., :count]
        return best.mean(axis=-1), np.maximum(best.std(axis=-1), 1e-3)
    raw = segments @ query
    q_mean, q_std = top(segments @ query, min(k, len(segments)))
    pairs = segments @ segments.T
    np.fill_diagonal(pairs, -np.inf)
    s_mean, s_std = top(pairs, min(k, len(segments) - 1))
    return 0.5 * ((raw - q_mean) / q_std + (raw - s_mean) / s_std)


def timing(data: dict) -> None:
    """CPU seconds per second of speech of each embedder's index and query sides, in the same run."""
    import time
    audio = np.concatenate([_clip(name) for name in READ])
    pieces = [audio[i:i + 3 * RATE] for i in range(0, audio.size - 3 * RATE, 3 * RATE)]
    seconds = sum(p.size for p in pieces) / RATE
    for name, embedder in EMBEDDERS.items():
        embedder.embed_segment(pieces[0]), embedder.embed_query(pieces[0])  # load the weights first
        for side in ("embed_segment", "embed_query"):
            started = time.thread_time()
            for piece in pieces:
                getattr(embedder, side)(piece)
            print(f"  {name} {side}: {(time.thread_time() - started) / seconds * 1000:.1f} ms CPU per s of speech "
                  f"({len(pieces)} pieces of 3 s)")


def index_speed(seconds: float = 60.0) -> None:
    """Index one 1280x720 video of real speech with each embedder (Resemblyzer = the baseline), same run."""
    import tempfile
    import time

    from search_media import Shot, compose

    from stages.footage.indexing import index_videos
    from stages.footage.settings import IndexSettings
    audio = np.concatenate([_clip(name) for name in T_FILES[:2]])
    shots, t = [], 0.0
    while t < seconds:
        length = 4.0 + (len(shots) % 3)
        voice = audio[int(t * RATE):int((t + length) * RATE)] if len(shots) % 4 != 3 else None
        shots.append(Shot(length, [(len(shots) % 5, 0.5, 0.4)], voice, "T" if voice is not None else None))
        t += length
    with tempfile.TemporaryDirectory() as folder:
        video = Path(folder) / "talk.mp4"
        compose(video, shots, width=1280, height=720, grain=8, grain_frames=8)
        for name in ("resemblyzer", "campplus"):
            started = time.perf_counter()
            entries, _ = index_videos([video], IndexSettings(voice_embedder=name), Path(folder) / name)
            wall = time.perf_counter() - started
            timings = entries[0].meta["timings"]
            print(f"  index {name}: {wall:.1f} s wall for {t:.0f} s of video ({t / wall:.2f}x real time), audio "
                  f"thread {timings['audio_thread_cpu']:.1f} s CPU, faces thread {timings['faces_thread_cpu']:.1f} s")


def check_video() -> None:
    """The check part end to end: its turns as shots of a 1280x720 video, indexed and searched by `search`."""
    import tempfile

    from search_media import Shot, compose, write_wav

    from stages.footage.search import search
    from stages.footage.settings import IndexSettings
    queries, turns = material()["check"]
    rng = np.random.default_rng(3)
    shots = []
    for k in rng.permutation(len(turns)):
        speaker, audio = turns[k]
        faces = [(int(rng.integers(0, 6)), 0.5, 0.4)] if rng.random() < 0.7 else []
        shots.append(Shot(audio.size / RATE + 0.4, faces, np.concatenate([np.zeros(int(0.2 * RATE), np.float32), audio]),
                          speaker))
    precisions, recalls, ceilings = [], [], []
    with tempfile.TemporaryDirectory() as folder:
        video = Path(folder) / "check.mp4"
        truth = compose(video, shots, width=1280, height=720)
        for person, clip in queries.items():
            wav = write_wav(Path(folder) / f"{person}.wav", clip)
            results = search([video], Path(folder) / person, IndexSettings(), Path(folder) / "index", voice=wav)
            found = merged([(h["start"], h["end"]) for h in results["hits"] if h["match"]])
            every = merged([(h["start"], h["end"]) for h in results["hits"] if h["modality"] == "voice"])
            p, r = precision_recall(found, merged(truth.speaking[person]))
            precisions.append(p)
            recalls.append(r)
            ceilings.append(precision_recall(every, merged(truth.speaking[person]))[1])
            print(f"  {person}: precision {p:.3f} recall {r:.3f} (every segment matched: recall {ceilings[-1]:.3f})")
    print(f"  check video, mean over people: precision {np.mean(precisions):.3f}, recall {np.mean(recalls):.3f} "
          f"(recall ceiling of the segmentation {np.mean(ceilings):.3f})")


def main() -> None:
    """EER and precision/recall at each embedder's default decision, on both parts; the rules compared."""
    from stages.footage.decision import score_voice
    parser = argparse.ArgumentParser()
    parser.add_argument("--cache", type=Path, default=Path("/tmp/voice_decision.npz"))
    parser.add_argument("--timing", action="store_true", help="also time both embedders (CPU per s of speech)")
    parser.add_argument("--index-speed", action="store_true", help="also index a 60 s 720p video with each")
    parser.add_argument("--check-video", action="store_true", help="also run the check part through `search`")
    args = parser.parse_args()
    data = build(args.cache)
    print("| part | embedder | rule | EER | precision | recall |\n|---|---|---|---:|---:|---:|")
    for part, entry in data.items():
        truth = labels(entry)
        seconds = np.array([b - a for a, b in entry["segments"]])
        ceiling = quality(entry, np.ones(truth.shape, bool))[1]
        for name in EMBEDDERS:
            segments, queries = entry[f"{name}/segments"], entry[f"{name}/queries"]
            decided = [score_voice(q, segments, seconds, name) for q in queries]
            raw = np.stack([d.raw for d in decided])
            p, r = quality(entry, np.stack([d.match for d in decided]))
            print(f"| {part} | {name} | default | {eer(raw, truth):.3f} | {p:.3f} | {r:.3f} |")
            normed = np.stack([asnorm(q, segments) for q in queries])
            best = max((quality(entry, normed >= t) for t in np.unique(normed)), key=lambda pr: min(pr[0], pr[1]))
            print(f"| {part} | {name} | AS-norm (best threshold in hindsight) | {eer(normed, truth):.3f} | "
                  f"{best[0]:.3f} | {best[1]:.3f} |")
        print(f"| {part} | (every segment matched: recall ceiling of the segmentation) | | | | {ceiling:.3f} |")
    if args.timing:
        timing(data)
    if args.index_speed:
        index_speed()
    if args.check_video:
        check_video()


if __name__ == "__main__":
    main()


def trial_pieces() -> tuple[dict[str, list[np.ndarray]], list[tuple[str, np.ndarray]]]:
    """Choose-part material as verification trials: per person several query clips, and pieces of 0.5-4 s."""
    interview = _clip("interview-3-speakers")
    sample = sample_audio()
    t_audio = [_clip(name) for name in T_FILES]
    queries: dict[str, list[np.ndarray]] = {"T": [_cut(audio, 0, 8) for audio in t_audio]}
    pieces: list[tuple[str, np.ndarray]] = []
    lengths = [0.5, 0.8, 1.2, 1.6, 2.0, 2.5, 3.0, 4.0]
    for k, audio in enumerate(t_audio):
        t = 9.0
        while t + 4 < audio.size / RATE:
            length = lengths[len(pieces) % len(lengths)]
            pieces.append((f"T{k}", _cut(audio, t, t + length)))
            t += length + 0.3
    for name, (a, b) in INTERVIEW.items():
        queries[name] = [_cut(interview, a, a + 3.0)]
        t = a + 3.0
        for length in lengths:
            if t + length > b:
                break
            pieces.append((name, _cut(interview, t, t + length)))
            t += length * 0.5
    queries["s90"] = [_cut(sample, 10.60, 14.45)]
    queries["s91"] = [_cut(sample, 21.80, 27.80)]
    for name, (a, b) in [("s90", (18.60, 21.45)), ("s90", (27.90, 30.00)), ("s90", (8.35, 9.90)),
                         ("s91", (14.50, 17.90)), ("s91", (9.95, 11.00))]:
        t = a
        for length in lengths:
            if t + length > b:
                break
            pieces.append((name, _cut(sample, t, t + length)))
            t += length * 0.5
    return queries, pieces


def trials(embedder_name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cosine, piece seconds, same person) of every query clip against every piece of another recording."""
    embedder = EMBEDDERS[embedder_name]
    queries, pieces = trial_pieces()
    piece_vectors = np.stack([embedder.embed_segment(audio) for _, audio in pieces])
    cosines, seconds, same = [], [], []
    for person, clips in queries.items():
        for k, clip in enumerate(clips):
            q = embedder.embed_query(trimmed(clip))
            recording = f"T{k}" if person == "T" else person
            for (name, audio), vector in zip(pieces, piece_vectors):
                if name == recording:  # the T query's own recording is not a trial (the rest of it is)
                    continue
                cosines.append(float(q @ vector))
                seconds.append(audio.size / RATE)
                same.append(name.startswith("T") if person == "T" else name == person)
    return np.asarray(cosines), np.asarray(seconds), np.asarray(same)
