"""One synthetic video of the embedded mini-APES: cast, shots, speech, face tracks, frames and the mp4."""

from __future__ import annotations

import subprocess
import tempfile
import wave
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import imageio_ffmpeg
import numpy as np

from stages.core.config import SynthParams
from stages.rawdata.layout import AMBIGUOUS
from stages.synthetic import faces, soundtrack, voices

SAMPLE_RATE = 16000
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_TALK_PROBABILITY = 0.7          # chance that a turn slot is taken by an on-screen speaker
_SYLLABLES_PER_SECOND = 4.6      # espeak at 175 words/min speaks about this many random syllables a second


@dataclass
class Person:
    """One cast member."""

    name: str
    face: faces.FaceIdentity
    voice: voices.Voice
    weight: float
    silent: bool


@dataclass
class Segment:
    """One speech turn: who (cast index, or -1 for an outsider), when, and whether it is heard."""

    speaker: int
    start: float
    end: float
    audible: bool
    envelope: np.ndarray     # mouth openness per video frame from the start frame on


@dataclass
class Track:
    """One face track: a person in one shot."""

    entity_id: str
    person: int
    first_frame: int
    boxes: np.ndarray        # frames x 4 pixel boxes x1, y1, x2, y2 of the face
    mouth: np.ndarray        # frames, openness level 0..3
    labels: list[str]
    look: faces.TrackLook
    face_height: int
    ambiguous: bool = False
    sprites: dict[int, faces.Sprite] = field(default_factory=dict)
    noise: np.ndarray | None = None


@dataclass
class Shot:
    """A stretch of frames with one background and 1-3 people."""

    first_frame: int
    frames: int
    people: list[int]


def video_id_for(rng: np.random.Generator, split: str, index: int) -> str:
    """AVA-like id with safe characters only, e.g. syntr03AbCd."""
    return f"syn{split[:2]}{index:02d}" + "".join(_LETTERS[i] for i in rng.integers(0, len(_LETTERS), 4))


def _cast(rng: np.random.Generator, voice_rng: np.random.Generator, video_id: str, p: SynthParams) -> list[Person]:
    count = int(rng.integers(p.identities_per_video[0], p.identities_per_video[1] + 1))
    voice_list = voices.draw_cast_voices(voice_rng, count, p.voice_similarity)
    weights = 1.0 / np.arange(1, count + 1) ** 1.1       # a few main characters get most shots
    silent = set()
    if count > 2:
        silent = set(int(i) for i in rng.choice(np.arange(2, count), size=min(count - 2, int(round(p.silent_share * count))),
                                                replace=False))
    return [Person(f"{video_id}_p{i:02d}", faces.draw_identity(rng), voice_list[i], float(weights[i]), i in silent)
            for i in range(count)]


def _shots(rng: np.random.Generator, cast: list[Person], count: int, p: SynthParams) -> list[Shot]:
    weights = np.array([c.weight for c in cast])
    order = rng.permutation(len(cast))
    frame = int(round(p.intro_seconds * p.fps))
    shots = []
    for index in range(count):
        size = int(rng.choice([1, 2, 3], p=[0.4, 0.38, 0.22]))
        size = min(size, len(cast))
        people = [int(order[index])] if index < len(cast) else []   # everyone appears at least once
        rest = [i for i in range(len(cast)) if i not in people]
        w = weights[rest] / weights[rest].sum()
        people += [int(i) for i in rng.choice(rest, size=size - len(people), replace=False, p=w)]
        frames = max(2, int(round(rng.uniform(*p.shot_seconds) * p.fps)))
        shots.append(Shot(frame, frames, people))
        frame += frames
    return shots


def _envelope(audio: np.ndarray, fps: int, start: float) -> np.ndarray:
    """Mouth openness 0..3 per video frame from the speech loudness."""
    first = int(np.ceil(start * fps - 1e-9))
    step = SAMPLE_RATE / fps
    levels = []
    frame = first
    while True:
        a = int(round(frame / fps * SAMPLE_RATE - start * SAMPLE_RATE))
        if a >= audio.size:
            break
        window = audio[max(0, a - int(step / 2)): a + int(step / 2) + 1]
        levels.append(float(np.sqrt(np.mean(window ** 2))) if window.size else 0.0)
        frame += 1
    levels_arr = np.array(levels, np.float32)
    peak = float(levels_arr.max()) if levels_arr.size else 0.0
    if peak <= 0:
        return np.zeros(levels_arr.size, np.int8)
    return np.clip(np.ceil(levels_arr / peak * 3.2), 1, 3).astype(np.int8)


def _speech(rng: np.random.Generator, bed_rng: np.random.Generator, cast: list[Person], shots: list[Shot],
            outsiders: list[voices.Voice], p: SynthParams) -> tuple[np.ndarray, list[Segment]]:
    """The soundtrack and its speech turns (from `rng`) over reverb and beds at the shot's SNR (from `bed_rng`)."""
    total = shots[-1].first_frame + shots[-1].frames
    audio = np.zeros(int(np.ceil(total / p.fps * SAMPLE_RATE)) + 1, np.float32)
    intro = int(shots[0].first_frame / p.fps * SAMPLE_RATE)
    if intro:
        audio[:intro] += soundtrack.music_bed(bed_rng, intro, SAMPLE_RATE) * soundtrack.bed_gain(10.0)
    segments: list[Segment] = []
    talkers = [i for i, c in enumerate(cast) if not c.silent]
    for shot in shots:
        start, end = shot.first_frame / p.fps, (shot.first_frame + shot.frames) / p.fps
        speech = np.zeros(int(round((end - start) * SAMPLE_RATE)), np.float32)
        on_screen = [i for i in shot.people if not cast[i].silent]
        off_screen = [i for i in talkers if i not in shot.people]
        t, previous = start + rng.uniform(0.0, 0.4), -2
        while t < end - 0.25:
            r = rng.random()
            if r < p.offscreen_speech_share:
                speaker = int(rng.choice(off_screen)) if off_screen and rng.random() < 0.5 else -1
            elif on_screen and r < p.offscreen_speech_share + _TALK_PROBABILITY:
                speaker = int(rng.choice(on_screen))
            else:
                t += rng.uniform(0.2, 0.8)
                continue
            voice = cast[speaker].voice if speaker >= 0 else outsiders[int(rng.integers(len(outsiders)))]
            target = float(np.clip(rng.lognormal(0.0, 0.45), 0.35, 3.5))
            syllables = int(round(target * _SYLLABLES_PER_SECOND * voice.rate / 175))
            spoken = voices.speak(voices.random_text(rng, syllables), voice, SAMPLE_RATE)
            length = min(spoken.size, int((end - t) * SAMPLE_RATE))
            if length < int(0.2 * SAMPLE_RATE):
                break
            spoken = soundtrack.normalise_speech(spoken[:length])
            spoken[-160:] *= np.linspace(1, 0, min(160, length), dtype=np.float32)
            audible = speaker < 0 or speaker not in shot.people or rng.random() >= p.not_audible_share
            if audible:
                a = int(round((t - start) * SAMPLE_RATE))
                speech[a: a + length] += spoken[: speech.size - a]
            if speaker >= 0 and speaker in shot.people:
                envelope = (_envelope(spoken, p.fps, t) if audible
                            else rng.integers(1, 4, size=int(length / SAMPLE_RATE * p.fps) + 1).astype(np.int8))
                segments.append(Segment(speaker, t, t + length / SAMPLE_RATE, audible, envelope))
            overlap = rng.random() < p.overlap_share and speaker >= 0 and speaker != previous
            t += length / SAMPLE_RATE + (-rng.uniform(0.1, 0.4) if overlap else rng.uniform(0.1, 0.6))
            previous = speaker
        speech = soundtrack.reverberate(bed_rng, speech, SAMPLE_RATE, p.reverb)
        bed = (soundtrack.music_bed if bed_rng.random() < p.music_share else soundtrack.noise_bed)(
            bed_rng, speech.size, SAMPLE_RATE)
        a = int(round(start * SAMPLE_RATE))
        audio[a: a + speech.size] += speech + bed * soundtrack.bed_gain(bed_rng.uniform(*p.snr_db))
    audio = audio[: int(round(total / p.fps * SAMPLE_RATE))]
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    return (audio / max(1.0, peak / 0.95)).astype(np.float32), segments


def _tracks(rng: np.random.Generator, video_id: str, cast: list[Person], shots: list[Shot],
            segments: list[Segment], p: SynthParams) -> list[Track]:
    """One face track per person per shot: placement, motion, labels and mouth per frame."""
    tracks: list[Track] = []
    n = p.nuisance
    for shot in shots:
        slots = rng.permutation(len(shot.people))
        slot_width = p.width / len(shot.people)
        for person, slot in zip(shot.people, slots):
            face = cast[person].face
            small = 0.34 - 0.24 * n
            face_h = int(min(p.height * rng.uniform(small, 0.5), 0.9 * slot_width * face.aspect))
            face_h = max(12, face_h)
            face_w = face_h / face.aspect
            cx = (slot + rng.uniform(0.3, 0.7)) * slot_width
            cy = p.height * rng.uniform(0.3, 0.6)
            velocity = rng.uniform(-1, 1, 2) * n * np.array([0.12 * p.width, 0.05 * p.height])
            t = np.arange(shot.frames) / p.fps
            xs = np.clip(cx + velocity[0] * t, face_w / 2 + 1, p.width - face_w / 2 - 1)
            ys = np.clip(cy + velocity[1] * t, face_h / 2 + 1, p.height - face_h / 2 - 1)
            boxes = np.stack([xs - face_w / 2, ys - face_h / 2, xs + face_w / 2, ys + face_h / 2], axis=1)
            mouth = np.zeros(shot.frames, np.int8)
            labels = ["NOT_SPEAKING"] * shot.frames
            for seg in segments:
                if seg.speaker != person:
                    continue
                first = int(np.ceil(seg.start * p.fps - 1e-9))
                for k, level in enumerate(seg.envelope):
                    f = first + k - shot.first_frame
                    if 0 <= f < shot.frames and (first + k) / p.fps < seg.end:
                        mouth[f] = max(mouth[f], level)
                        if labels[f] != "SPEAKING_AUDIBLE":
                            labels[f] = "SPEAKING_AUDIBLE" if seg.audible else "SPEAKING_NOT_AUDIBLE"
            start_s, end_s = shot.first_frame / p.fps, (shot.first_frame + shot.frames) / p.fps
            entity = f"{video_id}_{int(start_s):04d}_{int(np.ceil(end_s)):04d}:{len(tracks) + 1}"
            tracks.append(Track(entity, person, shot.first_frame, boxes, mouth, labels, faces.draw_look(rng, n),
                                face_h))
    ambiguous = int(round(p.ambiguous_share * len(tracks)))
    if ambiguous:
        weights = np.array([1.0 / t.face_height ** 2 for t in tracks])   # small faces are the ambiguous ones
        for index in rng.choice(len(tracks), size=ambiguous, replace=False, p=weights / weights.sum()):
            tracks[int(index)].ambiguous = True
    return tracks


def _write_wav(path: Path, audio: np.ndarray) -> None:
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(SAMPLE_RATE)
        handle.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())


def _encode(path: Path, wav: Path, frames, p: SynthParams) -> None:
    """Pipe RGB frames into ffmpeg (H.264 + AAC, single-threaded and bit-exact, so output is deterministic)."""
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
               "-f", "rawvideo", "-pix_fmt", "yuv420p", "-s", f"{p.width}x{p.height}", "-r", str(p.fps), "-i", "pipe:0",
               "-i", str(wav), "-map", "0:v", "-map", "1:a",
               "-c:v", "libx264", "-preset", "superfast", "-crf", "25", "-threads", "1",
               "-c:a", "aac", "-b:a", "64k", "-ar", str(SAMPLE_RATE), "-ac", "1",
               "-fflags", "+bitexact", "-flags:v", "+bitexact", "-flags:a", "+bitexact", "-map_metadata", "-1",
               "-movflags", "+faststart", "-f", "mp4", str(path)]
    with tempfile.TemporaryFile() as log:   # a file, not a pipe: a chatty ffmpeg cannot block us
        proc = subprocess.Popen(command, stdin=subprocess.PIPE, stderr=log)
        try:
            for frame in frames:   # converted here: OpenCV's BT.601 conversion is faster than ffmpeg's
                proc.stdin.write(cv2.cvtColor(frame, cv2.COLOR_RGB2YUV_I420).tobytes())
            proc.stdin.close()
        except BrokenPipeError:
            pass
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        if proc.wait() != 0:
            log.seek(0)
            raise RuntimeError(f"ffmpeg failed to encode {path.name}: {log.read().decode(errors='replace')[-500:]}")


def _frames(rng: np.random.Generator, cast: list[Person], shots: list[Shot], tracks: list[Track],
            p: SynthParams):
    """Yield every RGB frame: intro backdrop, then each shot's backdrop with its people pasted in."""
    noise_pool = rng.standard_normal((512, 512, 3)).astype(np.float32)
    intro = faces.background(rng, p.width, p.height, p.nuisance)
    for _ in range(shots[0].first_frame):
        yield intro
    by_shot: dict[int, list[Track]] = {}
    for track in tracks:
        by_shot.setdefault(track.first_frame, []).append(track)
    for shot in shots:
        backdrop = faces.background(rng, p.width, p.height, p.nuisance)
        shot_tracks = by_shot.get(shot.first_frame, [])
        for f in range(shot.frames):
            frame = backdrop.copy()
            for track in shot_tracks:
                level = int(track.mouth[f])
                if level not in track.sprites:
                    sprite = faces.render_sprite(cast[track.person].face, track.look, level)
                    track.sprites[level] = faces.scale_sprite(sprite, track.face_height)
                sprite = track.sprites[level]
                left = int(round(track.boxes[f, 0])) - sprite.box[0]
                top = int(round(track.boxes[f, 1])) - sprite.box[1]
                height, width = sprite.alpha.shape[:2]
                noise = None
                if track.look.noise > 0.5 and max(height, width) < noise_pool.shape[0]:
                    if track.noise is None or f % 4 == 0 or track.noise.shape[:2] != (height, width):
                        oy, ox = rng.integers(0, noise_pool.shape[0] - max(height, width), 2)
                        track.noise = noise_pool[oy: oy + height, ox: ox + width] * track.look.noise
                    noise = track.noise
                faces.paste(frame, sprite, left, top, noise)
            yield frame


def generate_video(seed: int, split: str, index: int, p: SynthParams, directory: Path) -> dict:
    """Render one video into `directory`: <id>.mp4 and its AVA rows and APES rows; returns a summary."""
    cv2.setNumThreads(1)
    # separate streams, so an audio knob changes no face and a face knob no voice
    streams = np.random.SeedSequence([seed, 0 if split == "train" else 1, index]).spawn(7)
    plan_rng, voice_rng, audio_rng, bed_rng, track_rng, frame_rng, id_rng = (np.random.default_rng(s) for s in streams)
    video_id = video_id_for(id_rng, split, index)
    voices.reset(int(id_rng.integers(1 << 31)))
    cast = _cast(plan_rng, voice_rng, video_id, p)
    shots = _shots(plan_rng, cast, p.shots(split, index), p)
    outsiders = voices.draw_cast_voices(voice_rng, 3, 0.0)
    audio, segments = _speech(audio_rng, bed_rng, cast, shots, outsiders, p)
    tracks = _tracks(track_rng, video_id, cast, shots, segments, p)
    wav = directory / f".{video_id}.wav"
    _write_wav(wav, audio)
    try:
        _encode(directory / f"{video_id}.mp4", wav, _frames(frame_rng, cast, shots, tracks, p), p)
    finally:
        wav.unlink(missing_ok=True)
    ava_rows, apes_rows = [], []
    for track in tracks:
        for k, (box, label) in enumerate(zip(track.boxes, track.labels)):
            x1, y1, x2, y2 = box / np.array([p.width, p.height, p.width, p.height])
            ava_rows.append(f"{video_id},{(track.first_frame + k) / p.fps:.3f},{max(0.0, x1):.4f},{max(0.0, y1):.4f},"
                            f"{min(1.0, x2):.4f},{min(1.0, y2):.4f},{label},{track.entity_id}")
        head, _, tail = track.entity_id.rpartition(":")
        apes_rows.append(f"{head}_{tail},{video_id},{AMBIGUOUS if track.ambiguous else cast[track.person].name}")
    return {"video_id": video_id, "split": split, "ava_rows": ava_rows, "apes_rows": apes_rows,
            "seconds": len(audio) / SAMPLE_RATE, "frames": shots[-1].first_frame + shots[-1].frames}
