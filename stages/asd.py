"""Stage 'asd': active speaker detection on the val videos' labelled face boxes, scored as AVA-ActiveSpeaker is.

Per val video: the boxes of its AVA-ActiveSpeaker CSV (the ground truth; SPEAKING_NOT_AUDIBLE boxes, a mouth
moving without a voice, are hard negatives), the 16 kHz audio of the annotated window, Silero VAD's speech
regions in it, and the frames of every face track's span decoded at the video's full frame rate. Each method
gives every box a score; stages.evaluation.active_speaker turns the scores into the official AP:

- chance: one score for every box (its AP is the share of SPEAKING_AUDIBLE boxes);
- only_face: 1 where the box is the only face of its frame and the VAD hears speech (the index's rule before
  active speaker detection), else 0;
- largest_face: 1 where the box is the largest face of its frame and the VAD hears speech, else 0;
- synchrony: stages.media.active_speaker's per-frame speaking score of the face's mouth region (its motion
  against the speech envelope, at the best audio-video offset, times the audio's activity).

Writes <out>/<method>.csv in the official predictions format, which `apes-cli evaluate --asd` scores again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stages.core.config import AsdParams
from stages.core.progress import Progress, Silent
from stages.evaluation.active_speaker import (
    SPEAKING,
    LabelledBoxes,
    concat,
    match_scores,
    read_box_csv,
    read_groundtruth,
    score_boxes,
    write_predictions,
)
from stages.media.active_speaker import MOUTH_H, MOUTH_W, mouth_crops, speaking_scores
from stages.media.video_io import VideoInfo, iter_frames, nearest_frames, probe, read_audio
from stages.media.video_jobs import map_videos, resolve_workers
from stages.media.voice_activity import SAMPLE_RATE, speech_at, speech_regions_by_block
from stages.rawdata.annotations import list_split_videos
from stages.rawdata.layout import RawLayout

METHODS = ("chance", "only_face", "largest_face", "synchrony")
SPLIT = "val"
AUDIO_MARGIN_SECONDS = 1.0  # audio either side of the annotated window, so the offset search sees a whole span
VAD_BLOCK_SECONDS = 60.0    # the VAD hears the audio a minute at a time, as the index reads it


@dataclass(frozen=True)
class VideoScores:
    """One video's ground-truth boxes, every method's score per box, and what the VAD heard."""

    groundtruth: LabelledBoxes
    scores: dict[str, np.ndarray]
    speech: np.ndarray   # per box: the VAD hears speech at its frame


def frame_rules(frames: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per box: whether it is the only box of its frame, and whether it is the largest (ties: all of them)."""
    area = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    _, group, counts = np.unique(frames, return_inverse=True, return_counts=True)
    largest = np.full(counts.size, -np.inf)
    np.maximum.at(largest, group, area)
    return counts[group] == 1, area >= largest[group]


def _audio_span(audio: np.ndarray, first_sample: int, count: int) -> np.ndarray:
    """`count` samples from `first_sample` of the window's audio, zeros where the span leaves the window."""
    out = np.zeros(count, np.float32)
    lo, hi = max(first_sample, 0), min(first_sample + count, audio.size)
    if hi > lo:
        out[lo - first_sample:hi - first_sample] = audio[lo:hi]
    return out


def synchrony_scores(info: VideoInfo, groundtruth: LabelledBoxes, frames: np.ndarray, times: np.ndarray | None,
                     audio: np.ndarray, audio_start: float) -> np.ndarray:
    """The detector's score of every box: each face track decoded over its whole span at the full frame rate
    (boxes between annotations interpolated), its mouth crops scored against the span's audio from the time
    its first frame is shown (`times`: the frames' presentation times; None: frame k at k / fps)."""
    tracks: dict[str, list[int]] = {}
    for row, entity in enumerate(groundtruth.entity_ids):
        tracks.setdefault(entity, []).append(row)
    size = np.array([info.width, info.height, info.width, info.height], np.float64)
    spans: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []   # rows, span frames, pixel boxes per span frame
    wanted: dict[int, list[tuple[int, int]]] = {}                 # frame -> (track, position in its span)
    for number, track_rows in enumerate(tracks.values()):
        rows = np.asarray(track_rows)
        rows = rows[np.argsort(frames[rows], kind="stable")]
        span = np.arange(frames[rows[0]], frames[rows[-1]] + 1)
        pixels = np.stack([np.interp(span, frames[rows], groundtruth.boxes[rows, c] * size[c]) for c in range(4)], 1)
        spans.append((rows, span, pixels))
        for position, frame in enumerate(span.tolist()):
            wanted.setdefault(frame, []).append((number, position))
    crops = [np.empty((len(span), MOUTH_H, MOUTH_W), np.float32) for _, span, _ in spans]
    for frame, planes in iter_frames(info, sorted(wanted), times):
        grey = planes.y[None]
        for number, position in wanted[frame]:
            crops[number][position] = mouth_crops(grey, spans[number][2][position][None])[0]
    scores = np.zeros(len(groundtruth))
    for (rows, span, _), track_crops in zip(spans, crops):
        shown = span[0] / info.fps if times is None else times[span[0]]
        first = int(round((shown - audio_start) * SAMPLE_RATE))
        count = int(np.ceil(len(span) / info.fps * SAMPLE_RATE))
        per_frame = speaking_scores(track_crops, _audio_span(audio, first, count), info.fps, SAMPLE_RATE)
        scores[rows] = per_frame[frames[rows] - span[0]]
    return scores


def score_video(layout: RawLayout, video_id: str, csv_path: Path) -> VideoScores:
    """Every method's score for the labelled boxes of one video."""
    groundtruth = read_box_csv(csv_path, scored=False)
    info = probe(layout.video_path(video_id))
    frames, times = nearest_frames(info, groundtruth.timestamps)
    shown = frames / info.fps if times is None else times[frames]   # when each box's frame is on screen
    start = max(0.0, float(groundtruth.timestamps.min()) - AUDIO_MARGIN_SECONDS)
    end = float(groundtruth.timestamps.max()) + AUDIO_MARGIN_SECONDS
    if info.duration is not None:
        end = min(end, info.duration)
    audio = read_audio(info, start, end - start, SAMPLE_RATE).astype(np.float32) / 32768.0
    speech = speech_at(speech_regions_by_block(audio, VAD_BLOCK_SECONDS), shown - start)
    only, largest = frame_rules(frames, groundtruth.boxes)
    scores = {"chance": np.zeros(len(groundtruth)),
              "only_face": (only & speech).astype(np.float64),
              "largest_face": (largest & speech).astype(np.float64),
              "synchrony": synchrony_scores(info, groundtruth, frames, times, audio, start)}
    return VideoScores(groundtruth, scores, speech)


def run(settings: AsdParams, raw_dir: str | Path, out_dir: str | Path, progress: Progress | None = None) -> dict:
    """Score every method on the val videos' labelled boxes; write <out_dir>/<method>.csv; return the metrics."""
    started = time.perf_counter()
    progress = progress or Silent()
    layout = RawLayout(Path(raw_dir))
    videos = list_split_videos(layout, SPLIT)
    progress.start(len(videos), "asd")
    per_video = map_videos(videos, lambda item: score_video(layout, *item), resolve_workers(settings.workers),
                           progress)
    groundtruth = concat([video.groundtruth for video in per_video])
    speech = np.concatenate([video.speech for video in per_video])
    speaking = np.asarray(groundtruth.labels) == SPEAKING
    methods = {}
    for method in METHODS:
        scores = np.concatenate([video.scores[method] for video in per_video])
        predictions = Path(out_dir) / f"{method}.csv"
        write_predictions(predictions, groundtruth, scores)
        summary = score_boxes(groundtruth, scores, layout.ava_dir(SPLIT))
        methods[method] = {"AP": summary.pop("AP"), "predictions": str(predictions)}
    return {**summary, "split": SPLIT, "methods": methods,
            "vad_speech_share": {"speaking_audible": round(100 * float(speech[speaking].mean()), 3),
                                 "other_boxes": round(100 * float(speech[~speaking].mean()), 3)},
            "seconds": round(time.perf_counter() - started, 3)}


def run_predictions_file(predictions: str | Path, groundtruth: str | Path | None, raw_dir: str | Path | None) -> dict:
    """`apes-cli evaluate --asd`: the official AP of anyone's predictions CSV against a ground-truth CSV or folder
    (default: the val annotations of the raw layout at `raw_dir`)."""
    started = time.perf_counter()
    truth_path = Path(groundtruth) if groundtruth is not None else RawLayout(Path(raw_dir or ".")).ava_dir(SPLIT)
    truth = read_groundtruth(truth_path)
    scored = read_box_csv(predictions, scored=True)
    summary = score_boxes(truth, match_scores(truth, scored), predictions)
    return {**summary, "method": "file", "predictions": str(predictions), "groundtruth": str(truth_path),
            "seconds": round(time.perf_counter() - started, 3)}
