"""Tracklet embeddings: embed a tracklet's evenly spaced crops/snippets and average them.

Aggregation rule: the mean of the per-item 512-d stream features of a tracklet; the cross-modal
tracklet embedding is the joint projection of (mean face feature, mean voice feature), which equals
the mean of the joint embeddings of every (crop, snippet) pair because the projection is linear.
A model trained with L2-normalised embeddings gets its tracklet embedding normalised after averaging.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from stages.core.config import EvaluateParams
from stages.core.errors import DataError
from stages.core.schemas import EMBEDDINGS
from stages.learning.datasets import Store, crops_to_tensor, load_store, mels_to_tensor
from stages.learning.models import EMBEDDING_DIM, Embedder
from stages.learning.pool import STREAMS
from stages.learning.tracklets import load_tracklets


def use_bf16(device: torch.device, precision: str) -> bool:
    """bf16 autocast when asked, or with `auto` on CUDA only: on a CPU, auto is fp32, whose results do not depend
    on whether the CPU has native bf16 (docs/training.md)."""
    if precision != "auto":
        return precision == "bf16"
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on the device when enabled (fp32 master weights stay untouched)."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def _stream_means(model: Embedder, store: Store, stream: str, device: torch.device, batch_size: int,
                  bf16: bool) -> torch.Tensor:
    """Mean stream feature per tracklet (n_tracklets x 512, float32 on the CPU)."""
    values = store.crops if stream == "crops" else store.mels
    count = store.tracks.count(stream)
    owner = np.repeat(np.arange(len(count)), count)
    encoder = model.face if stream == "crops" else model.voice
    total = torch.zeros(len(count), EMBEDDING_DIM)
    for lo in range(0, len(values), batch_size):
        chunk = values[lo:lo + batch_size]
        inputs = crops_to_tensor(chunk) if stream == "crops" else mels_to_tensor(chunk)
        with autocast(device, bf16):
            features = encoder(inputs.to(device, non_blocking=True)).float().cpu()
        total.index_add_(0, torch.from_numpy(owner[lo:lo + batch_size]), features)
    return total / torch.from_numpy(np.maximum(count, 1)).float().unsqueeze(1)


@torch.inference_mode()
def embed_store(model: Embedder, store: Store, device: torch.device | str = "cpu", batch_size: int = 256,
                bf16: bool = False) -> np.ndarray:
    """One embedding per tracklet of the store (n_tracklets x 512 float32), in tracklet-table order."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    means = {stream: _stream_means(model, store, stream, device, batch_size, bf16)
             for stream in STREAMS[model.modality]}
    if model.modality == "crossmodal":
        with autocast(device, bf16):
            embedding = model.joint(means["crops"].to(device), means["mels"].to(device)).float().cpu()
    else:
        embedding = next(iter(means.values()))
    model.train(was_training)
    return model.finish(embedding).numpy()


def embeddings_table(tracklets: pa.Table, embeddings: np.ndarray) -> pa.Table:
    """The EMBEDDINGS table of tracklets (rows in the order of `embeddings`)."""
    flat = pa.array(embeddings.astype(np.float32).reshape(-1), pa.float32())
    offsets = pa.array(np.arange(0, embeddings.size + 1, embeddings.shape[1], dtype=np.int32))
    return pa.table({
        "video_id": tracklets["video_id"],
        "entity_id": tracklets["entity_id"],
        "identity": tracklets["identity"],
        "embedding": pa.ListArray.from_arrays(offsets, flat),
    }, schema=EMBEDDINGS)


def embed_tracklets(model: Embedder, modality: str, crops_dir: str | Path, mels_dir: str | Path | None,
                    split: str, task: str, settings: EvaluateParams, precision: str) -> pa.Table:
    """Embed every tracklet of a split's task (schema EMBEDDINGS) under `precision` (train.precision), averaging
    up to `settings.crops_per_track` crops and `settings.snippets_per_track` snippets, evenly spaced.

    One video at a time: only one video's items are in memory, however many videos the split has."""
    if modality != model.modality:
        raise ValueError(f"model is {model.modality!r}, asked to embed as {modality!r}")
    tracklets = load_tracklets(crops_dir, mels_dir, split, task)
    if tracklets.num_rows == 0:
        raise DataError(Path(crops_dir) / split, f"no tracklets for task '{task}' in split '{split}'")
    device = next(model.parameters()).device
    bf16 = use_bf16(device, precision)
    video_ids = np.asarray(tracklets["video_id"].to_pylist(), dtype=object)
    tables, order = [], []
    for video in dict.fromkeys(video_ids):
        rows = np.flatnonzero(video_ids == video)
        store = load_store(crops_dir, mels_dir, split, task, STREAMS[modality], max_crops=settings.crops_per_track,
                           max_snippets=settings.snippets_per_track, tracklets=tracklets.take(pa.array(rows)))
        tables.append(embeddings_table(store.tracklets, embed_store(model, store, device, settings.batch_size, bf16)))
        order.append(rows)
    return pa.concat_tables(tables).take(pa.array(np.argsort(np.concatenate(order), kind="stable")))
