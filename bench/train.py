"""Benchmark the training step against named baselines measured in the same run.

1. Face train steps fed by the real input path (Parquet shards decoded once into RAM, seeded triplet
   sampler, gather, flip + corner crop, DataLoader) against the same model fed one prepared in-memory
   batch tensor (goal >= 0.9).
2. CPU images/s of the training step at 124 px as `stages.train` runs it (channels_last; bf16 autocast
   only where oneDNN has native bf16) against a plain fp32 NCHW loop (goal >= 2.5x; see docs/training.md).
3. When the embedded data set exists (data/crops, data/mels, data/triplets): val mAP of face-within-
   seen_heard trained with batch-hard mining on L2-normalised embeddings against plain triplets, same
   images and steps (the option beyond the paper).
Timings are the best of REPEATS interleaved rounds. Run: .venv/bin/python -m bench.train
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from stages.core.atomic import write_parquet
from stages.core.config import Params, load_params
from stages.core.runs import Run
from stages.core.schemas import CROPS
from stages.learning.datasets import BatchDataset, load_store
from stages.learning.embed import use_bf16
from stages.learning.models import build_model
from stages.learning.samplers import TripletSampler
from stages.learning.strategies import strategy_named
from stages.learning.tracklets import CROP_META, build_tracklets, read_meta
from stages.media.shards import with_metadata
from stages.train import batch_loss
from stages.train import run as train

REPEATS, STEPS, BATCH = 3, 4, 48


def write_shards(root: Path, size: int, videos: int = 4, identities: int = 6, tracklets: int = 4,
                 crops: int = 8) -> Path:
    """Random-noise face crops in the CROPS schema (throughput does not care what they show)."""
    rng = np.random.default_rng(0)
    schema = with_metadata(CROPS, {"crop_size": size, "crop_margin": 0.1, "image_format": "raw_rgb_uint8"})
    for v in range(videos):
        rows = [(f"v{v}", f"v{v}_0900_0960:{i * tracklets + t}", f"v{v}_p{i}", 900.0 + c)
                for i in range(identities) for t in range(tracklets) for c in range(crops)]
        n = len(rows)
        table = pa.table({
            "video_id": [r[0] for r in rows], "split": ["train"] * n, "entity_id": [r[1] for r in rows],
            "identity": [r[2] for r in rows], "frame_timestamp": [r[3] for r in rows],
            "label": ["SPEAKING_AUDIBLE"] * n, "x1": [0.1] * n, "y1": [0.1] * n, "x2": [0.3] * n, "y2": [0.3] * n,
            "image": [rng.integers(0, 256, size * size * 3, np.uint8).tobytes() for _ in range(n)],
        }, schema=schema)
        write_parquet(root / "train" / f"v{v}.parquet", table)
    return root


def _timed(step: Callable[[], None], steps: int) -> float:
    """Images per second of `steps` calls after one warm-up call."""
    step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * BATCH / (time.perf_counter() - started)


def _trainer(bf16: bool, channels_last: bool) -> tuple[torch.nn.Module, torch.optim.Optimizer, Callable]:
    torch.manual_seed(0)
    model = build_model("face")
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step(inputs: dict[str, torch.Tensor]) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = batch_loss(model, False, inputs, "none", 1.0, True)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return model, optimizer, step


def shards_vs_memory(size: int = 64) -> tuple[float, float]:
    """(images/s from the shard input path, images/s from one in-memory batch)."""
    with tempfile.TemporaryDirectory() as tmp:
        crops = write_shards(Path(tmp) / "crops", size)
        tracklets = build_tracklets(read_meta(crops, "train", CROP_META), None, "seen")
        store = load_store(crops, None, "train", "seen", ("crops",), tracklets=tracklets)
    sampler = TripletSampler(store.tracks, strategy_named("within"), "face", BATCH, seed=0)
    loader = torch.utils.data.DataLoader(BatchDataset(store, sampler, 0), batch_size=None,
                                         sampler=[(0, s) for s in range(10_000)])
    batches: Iterator[dict[str, torch.Tensor]] = iter(loader)
    fixed = next(batches)
    bf16 = use_bf16(torch.device("cpu"), "auto")
    _, _, step = _trainer(bf16, True)
    from_shards, in_memory = 0.0, 0.0
    for _ in range(REPEATS):
        from_shards = max(from_shards, _timed(lambda: step(next(batches)), STEPS))
        in_memory = max(in_memory, _timed(lambda: step(fixed), STEPS))
    return from_shards, in_memory


def optimised_vs_plain(size: int = 124) -> tuple[float, float, str]:
    """(images/s as stages.train runs on this CPU, images/s of a plain fp32 NCHW loop, what was used)."""
    rng = np.random.default_rng(0)
    plain_inputs = {"crops": torch.from_numpy(rng.random((BATCH, 3, size, size), np.float32))}
    fast_inputs = {"crops": plain_inputs["crops"].contiguous(memory_format=torch.channels_last)}
    bf16 = use_bf16(torch.device("cpu"), "auto")
    _, _, fast = _trainer(bf16, True)
    _, _, plain = _trainer(False, False)
    best_fast, best_plain = 0.0, 0.0
    for _ in range(REPEATS):
        best_fast = max(best_fast, _timed(lambda: fast(fast_inputs), STEPS))
        best_plain = max(best_plain, _timed(lambda: plain(plain_inputs), STEPS))
    return best_fast, best_plain, ("bf16 autocast + " if bf16 else "fp32 ") + "channels_last"


def mining_vs_plain(data: Path = Path("data")) -> tuple[float, float] | None:
    """(val mAP with batch-hard mining, val mAP with plain triplets) on the embedded data, if present."""
    if not (data / "triplets" / "seen_heard.parquet").is_file():
        return None
    params = load_params("params.yaml")
    scores = []
    for extra in ({"mining": "batch_hard", "normalize": True, "margin": 0.3}, {}):
        settings = dataclasses.replace(params.train, **extra)
        with tempfile.TemporaryDirectory() as tmp:
            metrics = train(settings, Run("face", "within", "seen_heard", params.seed), data / "crops",
                            data / "mels", data / "triplets", Path(tmp) / "models", Path(tmp) / "history.tsv",
                            eval_batch_size=params.evaluate.batch_size)
        scores.append(metrics["val_mAP"])
    return scores[0], scores[1]


def rows() -> list[tuple[str, str, float]]:
    """(figure, baseline, ratio) rows for `python -m bench`."""
    torch.set_num_threads(Params().train.threads)
    shards, memory = shards_vs_memory()
    fast, plain, how = optimised_vs_plain()
    mining = mining_vs_plain()
    extra = [] if mining is None else [
        (f"face within seen_heard val mAP, batch-hard + L2-normalised ({mining[0]:.1f})",
         f"plain triplets, same steps ({mining[1]:.1f})", mining[0] / mining[1])]
    return extra + [
        (f"face train step fed from Parquet shards, 64 px ({shards:.0f} img/s)",
         f"same model fed an in-memory batch ({memory:.0f} img/s); goal >= 0.9", shards / memory),
        (f"CPU train step at 124 px, {how} ({fast:.0f} img/s)",
         f"plain fp32 NCHW loop ({plain:.0f} img/s); goal >= 2.5", fast / plain),
    ]


if __name__ == "__main__":
    for figure, baseline, ratio in rows():
        print(f"{ratio:6.2f}x  {figure}  vs  {baseline}")
