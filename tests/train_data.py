"""A tiny crop/mel shard set written straight in the CROPS/MELS schemas, so training tests skip the media stages.

Each identity has a colour and a stripe pattern (faces) and a tone (voices), plus noise; every video
holds a few identities, each seen in a few tracklets. Some tracklets are silent, one is unlabelled,
one is ambiguous.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from stages.core.atomic import write_parquet
from stages.core.schemas import CROPS, MELS
from stages.learning.datasets import Store, crops_to_tensor, mels_to_tensor
from stages.learning.samplers import PKSampler, TripletSampler
from stages.media.shards import with_metadata
from stages.rawdata.layout import AMBIGUOUS

SIZE = 32
PRECISION = os.environ.get("APES_TEST_PRECISION", "auto")  # train.precision of the training tests (fp32, bf16, auto)
N_MELS, FRAMES = 16, 20  # 20 frames: bf16 training on a CPU needs inputs over 16 wide (models.LAST_STAGE_STRIDE)


@dataclass(frozen=True)
class TinySpec:
    """How much tiny data to write."""

    train_videos: int = 3
    val_videos: int = 2
    identities: int = 4
    tracklets: int = 3
    crops: int = 6
    snippets: int = 3
    noise: float = 0.25


def _face(rng: np.random.Generator, identity: int, noise: float) -> np.ndarray:
    colour = np.array([(identity * 97) % 256, (identity * 57 + 80) % 256, (identity * 31 + 160) % 256], float)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    angle = (identity % 4) * np.pi / 4
    stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * (0.4 + 0.15 * (identity % 3)))
    image = colour[None, None, :] * (0.75 + 0.25 * stripes[..., None])
    image += rng.normal(0, 255 * noise, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _mel(rng: np.random.Generator, identity: int, noise: float) -> np.ndarray:
    mel = np.full((N_MELS, FRAMES), -4.0)
    band = 2 + (identity * 5) % (N_MELS - 4)
    mel[band:band + 2] = 2.0
    mel[(band + 7) % N_MELS] = 1.0
    return (mel + rng.normal(0, 4 * noise, mel.shape)).astype(np.float32)


def write_tiny_shards(root: Path, spec: TinySpec = TinySpec(), seed: int = 0) -> tuple[Path, Path]:
    """Write <root>/crops/<split>/*.parquet and <root>/mels/<split>/*.parquet; returns (crops_dir, mels_dir)."""
    rng = np.random.default_rng(seed)
    crops_dir, mels_dir = root / "crops", root / "mels"
    crop_schema = with_metadata(CROPS, {"crop_size": SIZE, "crop_margin": 0.1, "image_format": "raw_rgb_uint8"})
    mel_schema = with_metadata(MELS, {"n_mels": N_MELS, "frames": FRAMES})
    identity_index = 0
    for split, videos in (("train", spec.train_videos), ("val", spec.val_videos)):
        for v in range(videos):
            video = f"{split}{v:02d}"
            crops: dict[str, list] = {name: [] for name in CROPS.names}
            mels: dict[str, list] = {name: [] for name in MELS.names}
            entity = 0
            for i in range(spec.identities):
                identity_index += 1
                for t in range(spec.tracklets):
                    entity += 1
                    name = f"{video}_0900_0960:{entity}"
                    identity: str | None = f"{video}_person{i}"
                    if i == 0 and t == 0:
                        identity = None  # a face track the APES file does not label
                    elif i == 1 and t == 0:
                        identity = AMBIGUOUS
                    audible = t != 1
                    for c in range(spec.crops):
                        crops["video_id"].append(video)
                        crops["split"].append(split)
                        crops["entity_id"].append(name)
                        crops["identity"].append(identity)
                        crops["frame_timestamp"].append(900.0 + entity + c * 0.05)
                        crops["label"].append("SPEAKING_AUDIBLE" if audible and c % 2 == 0 else "NOT_SPEAKING")
                        for key in ("x1", "y1"):
                            crops[key].append(0.1)
                        for key in ("x2", "y2"):
                            crops[key].append(0.3)
                        crops["image"].append(_face(rng, identity_index, spec.noise).tobytes())
                    for s in range(spec.snippets if audible else 0):
                        mels["video_id"].append(video)
                        mels["split"].append(split)
                        mels["entity_id"].append(name)
                        mels["identity"].append(identity)
                        mels["start"].append(900.0 + entity + s * 0.15)
                        mels["label"].append("SPEAKING_AUDIBLE")
                        mels["mel"].append(_mel(rng, identity_index, spec.noise).tobytes())
            write_parquet(crops_dir / split / f"{video}.parquet", pa.table(crops, schema=crop_schema))
            write_parquet(mels_dir / split / f"{video}.parquet", pa.table(mels, schema=mel_schema))
    return crops_dir, mels_dir


def reference_batch(store: Store, sampler: TripletSampler | PKSampler, seed: int, epoch: int, step: int,
                    rank: int = 0, world: int = 1) -> dict[str, torch.Tensor]:
    """The CPU batch as train made it before the device feed (commit ef4714e): convert the whole crops to float,
    flip, cut each crop's corner with a per-corner loop, resize; the feed must give the same bits."""
    batch = sampler.batch(epoch, step).shard(rank, world)
    rng = np.random.default_rng([seed, epoch, step, rank, 1])
    out: dict[str, torch.Tensor] = {}
    if "crops" in batch.items:
        crops = crops_to_tensor(store.crops[batch.items["crops"]])
        n, _, size, _ = crops.shape
        flip = torch.from_numpy(rng.random(n) < 0.5)
        crops = torch.where(flip.view(-1, 1, 1, 1), crops.flip(3), crops)
        side = round(size * 0.875)
        corners = ((0, 0), (0, size - side), (size - side, 0), (size - side, size - side),
                   ((size - side) // 2, (size - side) // 2))
        choice = rng.integers(0, len(corners), n)
        cut = torch.empty((n, 3, side, side), dtype=crops.dtype)
        for index, (top, left) in enumerate(corners):
            rows = torch.from_numpy(np.flatnonzero(choice == index))
            if len(rows):
                cut[rows] = crops[rows, :, top:top + side, left:left + side]
        resized = F.interpolate(cut, size=(size, size), mode="bilinear", align_corners=False)
        out["crops"] = resized.contiguous(memory_format=torch.channels_last)
    if "mels" in batch.items:
        out["mels"] = mels_to_tensor(store.mels[batch.items["mels"]])
    for name in ("labels", "tracks", "groups"):
        value = getattr(batch, name)
        if value is not None and batch.labelled:
            out[name] = torch.from_numpy(np.asarray(value, np.int64))
    return out
