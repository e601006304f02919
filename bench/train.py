"""Benchmark training against named baselines measured in the same run.

CPU (always):
1. Face train steps fed by the device feed (stages.learning.feed, on the CPU) against the same steps fed by the
   input path it replaced (BatchDataset + DataLoader of commit ef4714e: `LegacyBatches`, a DataLoader over the
   tests' bit-exact copy of it, tests/train_data.reference_batch): the CPU path must be no slower (goal >= 1.0);
   and the batch making alone, feed against legacy.
2. The same feed against one prepared in-memory batch (goal >= 0.9).
3. CPU images/s of the training step at 124 px as `stages.train` runs it (channels_last, `precision: auto` = fp32
   on a CPU) against a plain fp32 NCHW loop.
4. When the embedded data set exists (data/crops, data/mels, data/triplets): val mAP of face-within-seen_heard
   with batch-hard mining on L2-normalised embeddings against plain triplets, same images and steps.
CUDA (skipped, with one line saying so, when no GPU is visible): at 124 and 64 px, batch 384, bf16 autocast +
channels_last, the real input path (items resident on the GPU, and staged through pinned memory) against the
same model fed one resident batch; `train.compile` on against off; images/s of a whole `--profile paper` run.
Timings are the best of REPEATS interleaved rounds. Run: .venv/bin/python -m bench.train [--cuda]
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from torchvision.models import resnet18

from stages.core.atomic import write_parquet
from stages.core.config import Params, TrainParams, load_params
from stages.core.runs import Run
from stages.core.schemas import CROPS
from stages.learning.datasets import Store, load_store
from stages.learning.feed import Feed
from stages.learning.models import build_model
from stages.learning.samplers import TripletSampler
from stages.learning.strategies import strategy_named
from stages.learning.tracklets import (
    CROP_META,
    build_tracklets,
    read_meta,
    tracklet_path,
)
from stages.media.shards import with_metadata
from stages.learning.losses import TripletLoss
from stages.learning.trainer import Schedule, Trainer
from stages.learning.world import World
from stages.train import run as train

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from train_data import reference_batch  # noqa: E402  (the legacy path is also the tests' bit-exact oracle)

REPEATS, STEPS, BATCH = 3, 4, 48
GPU_BATCH, GPU_STEPS = 384, 60
CUDA = torch.device("cuda")
Row = tuple[str, str, float]


def write_shards(root: Path, size: int, videos: int = 4, identities: int = 6, tracklets: int = 4,
                 crops: int = 8, split: str = "train") -> Path:
    """Random-noise face crops in the CROPS schema (throughput does not care what they show)."""
    rng = np.random.default_rng(0)
    schema = with_metadata(CROPS, {"crop_size": size, "crop_margin": 0.1, "image_format": "raw_rgb_uint8"})
    for v in range(videos):
        rows = [(f"{split}{v}", f"{split}{v}_0900_0960:{i * tracklets + t}", f"{split}{v}_p{i}", 900.0 + c)
                for i in range(identities) for t in range(tracklets) for c in range(crops)]
        n = len(rows)
        pixels = rng.integers(0, 256, (n, size * size * 3), np.uint8)
        table = pa.table({
            "video_id": [r[0] for r in rows], "split": [split] * n, "entity_id": [r[1] for r in rows],
            "identity": [r[2] for r in rows], "frame_timestamp": [r[3] for r in rows],
            "label": ["SPEAKING_AUDIBLE"] * n, "x1": [0.1] * n, "y1": [0.1] * n, "x2": [0.3] * n, "y2": [0.3] * n,
            "image": [row.tobytes() for row in pixels],
        }, schema=schema)
        write_parquet(root / split / f"{split}{v}.parquet", table)  # one shard per video, named by its id
    return root


def face_store(crops: Path) -> Store:
    """The train store of the Seen task of a shard set, every crop kept."""
    return load_store(crops, None, "train", "seen", ("crops",),
                      tracklets=build_tracklets(read_meta(crops, "train", CROP_META), None, "seen"))


class LegacyBatches(torch.utils.data.Dataset):
    """The input path before the device feed (commit ef4714e), the named baseline: float conversion of the
    whole crops, then flip and a per-corner crop loop on the CPU, through a DataLoader."""

    def __init__(self, store: Store, sampler: TripletSampler, seed: int) -> None:
        self.store, self.sampler, self.seed = store, sampler, seed

    def __len__(self) -> int:
        return 1 << 30

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        return reference_batch(self.store, self.sampler, self.seed, *key)


def _timed(step: Callable[[], None], steps: int, images: int = BATCH) -> float:
    """Images per second of `steps` calls after one warm-up call."""
    step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * images / (time.perf_counter() - started)


def _trainer(bf16: bool, channels_last: bool) -> Callable[[dict[str, torch.Tensor]], None]:
    """A CPU face train step (Adam, plain triplets)."""
    torch.manual_seed(0)
    model = build_face(channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    plain_triplets = TripletLoss()

    def step(inputs: dict[str, torch.Tensor]) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = plain_triplets(model(crops=inputs.get("crops"), mels=inputs.get("mels")), inputs)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def build_face(channels_last: bool) -> torch.nn.Module:
    """A fresh face model, channels_last in memory if asked."""
    model = build_model("face")
    return model.to(memory_format=torch.channels_last) if channels_last else model


def cpu_input_path(size: int = 64) -> list[Row]:
    """Feed vs the legacy path (whole steps and batch making alone), and feed vs one in-memory batch."""
    with tempfile.TemporaryDirectory() as tmp:
        store = face_store(write_shards(Path(tmp) / "crops", size))
    sampler = TripletSampler(store.tracks, strategy_named("within"), "face", BATCH, seed=0)
    feed = Feed(store, sampler, 0, torch.device("cpu"))
    legacy = iter(torch.utils.data.DataLoader(LegacyBatches(store, sampler, 0), batch_size=None,
                                              sampler=[(0, s) for s in range(100_000)]))
    fed = (batch for _, batch in feed.batches((0, s) for s in range(100_000)))
    fixed = next(fed)
    step = _trainer(False, True)
    best = {"feed": 0.0, "legacy": 0.0, "memory": 0.0, "feed batches": 0.0, "legacy batches": 0.0}
    for _ in range(REPEATS):
        best["feed"] = max(best["feed"], _timed(lambda: step(next(fed)), STEPS))
        best["legacy"] = max(best["legacy"], _timed(lambda: step(next(legacy)), STEPS))
        best["memory"] = max(best["memory"], _timed(lambda: step(fixed), STEPS))
    for _ in range(2 * REPEATS):  # batch making is short: more rounds, for a best less at the mercy of other load
        best["feed batches"] = max(best["feed batches"], _timed(lambda: next(fed), 30))
        best["legacy batches"] = max(best["legacy batches"], _timed(lambda: next(legacy), 30))
    return [
        (f"face train step, device feed on the CPU, {size} px ({best['feed']:.0f} img/s)",
         f"the input path it replaced, BatchDataset + DataLoader of ef4714e ({best['legacy']:.0f} img/s); goal >= 1.0",
         best["feed"] / best["legacy"]),
        (f"batch making alone, device feed on the CPU, {size} px ({best['feed batches']:.0f} img/s)",
         f"BatchDataset + DataLoader of ef4714e ({best['legacy batches']:.0f} img/s)",
         best["feed batches"] / best["legacy batches"]),
        (f"face train step fed from Parquet shards by the feed, {size} px ({best['feed']:.0f} img/s)",
         f"same model fed an in-memory batch ({best['memory']:.0f} img/s); goal >= 0.9", best["feed"] / best["memory"]),
    ]


def optimised_vs_plain(size: int = 124) -> Row:
    """Images/s of the CPU step as stages.train runs it (fp32 channels_last) against a plain fp32 NCHW loop."""
    rng = np.random.default_rng(0)
    plain_inputs = {"crops": torch.from_numpy(rng.random((BATCH, 3, size, size), np.float32))}
    fast_inputs = {"crops": plain_inputs["crops"].contiguous(memory_format=torch.channels_last)}
    fast, plain = _trainer(False, True), _trainer(False, False)
    best_fast, best_plain = 0.0, 0.0
    for _ in range(REPEATS):
        best_fast = max(best_fast, _timed(lambda: fast(fast_inputs), STEPS))
        best_plain = max(best_plain, _timed(lambda: plain(plain_inputs), STEPS))
    return (f"CPU train step at 124 px, fp32 channels_last ({best_fast:.0f} img/s)",
            f"plain fp32 NCHW loop ({best_plain:.0f} img/s)", best_fast / best_plain)


def mining_vs_plain(data: Path = Path("data")) -> Row | None:
    """Val mAP with batch-hard mining against plain triplets on the embedded data, if present."""
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
    return (f"face within seen_heard val mAP, batch-hard + L2-normalised ({scores[0]:.1f})",
            f"plain triplets, same steps ({scores[1]:.1f})", scores[0] / scores[1])


def _gpu_trainer(compile_model: bool, device: torch.device) -> Trainer:
    """A face Trainer as `train` builds it (on CUDA: bf16 autocast via precision auto, channels_last)."""
    torch.manual_seed(0)
    settings = dataclasses.replace(TrainParams(), compile=compile_model)
    return Trainer(settings, Run("face", "within", "seen", 0), Schedule(3e-4, 1, 1, GPU_BATCH, GPU_STEPS),
                   World(0, 1, device), {}, TripletLoss())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _gpu_rate(trainer: Trainer, batches: Callable[[], Iterator]) -> float:
    """Images/s of one epoch (after a warm-up epoch), synchronised at both ends."""
    trainer.train_epoch(batches(), True, _Quiet())
    _sync(trainer.world.device)
    started = time.perf_counter()
    _, samples = trainer.train_epoch(batches(), True, _Quiet())
    _sync(trainer.world.device)
    return samples / (time.perf_counter() - started)


class _Quiet:
    """Progress that shows nothing."""

    def start(self, total: int, description: str) -> None:
        """Ignore the phase."""

    def advance(self, amount: int = 1) -> None:
        """Ignore the step."""


def gpu_input_path(size: int, device: torch.device = CUDA) -> list[Row]:
    """The real input path (resident and staged items) against one resident batch, at one crop size."""
    with tempfile.TemporaryDirectory() as tmp:
        store = face_store(write_shards(Path(tmp) / "crops", size, videos=8, identities=8, tracklets=6, crops=16))
    sampler = TripletSampler(store.tracks, strategy_named("within"), "face", GPU_BATCH, seed=0)
    feeds = {"resident": Feed(store, sampler, 0, device), "staged": Feed(store, sampler, 0, device, resident=False)}
    fixed = feeds["resident"][(0, 0)]
    trainer = _gpu_trainer(False, device)
    best = dict.fromkeys(("fixed", "resident", "staged"), 0.0)
    keys = [(0, s) for s in range(GPU_STEPS)]
    for _ in range(REPEATS):
        best["fixed"] = max(best["fixed"], _gpu_rate(trainer, lambda: (((0, s), fixed) for s in range(GPU_STEPS))))
        for name, feed in feeds.items():
            best[name] = max(best[name], _gpu_rate(trainer, lambda feed=feed: feed.batches(keys)))
    baseline = f"same model fed one resident batch ({best['fixed']:,.0f} img/s)"
    return [
        (f"GPU face train step, {size} px, real input path, items resident ({best['resident']:,.0f} img/s)",
         f"{baseline}; goal >= 0.9", best["resident"] / best["fixed"]),
        (f"GPU face train step, {size} px, real input path, items staged, pinned ({best['staged']:,.0f} img/s)",
         baseline, best["staged"] / best["fixed"]),
    ]


def gpu_compile(size: int = 124, device: torch.device = CUDA) -> Row:
    """train.compile on against off, on one resident batch (compile time reported in the figure)."""
    rng = np.random.default_rng(0)
    batch = {"crops": torch.from_numpy(rng.random((GPU_BATCH, 3, size, size), np.float32)).to(device)
             .contiguous(memory_format=torch.channels_last)}
    steps = [((0, s), batch) for s in range(GPU_STEPS)]
    eager, compiled = _gpu_trainer(False, device), _gpu_trainer(True, device)
    started = time.perf_counter()
    compiled.train_epoch(iter(steps[:2]), True, _Quiet())
    _sync(device)
    compile_s = time.perf_counter() - started
    best_eager, best_compiled = 0.0, 0.0
    for _ in range(REPEATS):
        best_eager = max(best_eager, _gpu_rate(eager, lambda: iter(steps)))
        best_compiled = max(best_compiled, _gpu_rate(compiled, lambda: iter(steps)))
    figure = f"GPU face train step, {size} px, train.compile on ({best_compiled:,.0f} img/s; compiled in {compile_s:.0f} s)"
    return (figure, f"eager ({best_eager:,.0f} img/s)", best_compiled / best_eager)


def gpu_paper_run(size: int = 124, videos: int = 16) -> Row:
    """Images/s of a whole `train --profile paper` run (face within seen, 124 px), compile on against off."""
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        crops = write_shards(root / "crops", size, videos=videos, identities=8, tracklets=6, crops=16)
        write_shards(crops, size, videos=2, identities=8, tracklets=4, crops=4, split="val")
        write_parquet(tracklet_path(root / "triplets", "seen"),
                      build_tracklets(read_meta(crops, "train", CROP_META), None, "seen"))
        torch.save(resnet18(weights=None).state_dict(), root / "resnet18.pth")  # stands in for ImageNet's
        for compile_model in (False, True):
            settings = dataclasses.replace(TrainParams(), profile="paper", pretrained=str(root / "resnet18.pth"),
                                           compile=compile_model, threads=16)
            metrics = train(settings, Run("face", "within", "seen", 0), crops, root / "mels", root / "triplets",
                            root / f"models{compile_model}", root / f"history{compile_model}.tsv",
                            eval_batch_size=1024)
            rates[compile_model] = (metrics["images_per_s"], metrics["seconds"], metrics["epochs"],
                                    metrics["steps_per_epoch"])
    on, off = rates[True], rates[False]
    return ((f"whole `train --profile paper` run, face within seen, {size} px, {off[2]} epochs x {off[3]} steps of "
             f"{GPU_BATCH}: compile on {on[0]:,.0f} img/s ({on[1]:.0f} s in all)"),
            f"compile off {off[0]:,.0f} img/s ({off[1]:.0f} s in all)", on[0] / off[0])


def cuda_rows() -> list[Row]:
    """Every GPU figure of docs/training.md."""
    return gpu_input_path(124) + gpu_input_path(64) + [gpu_compile(), gpu_paper_run()]


def rows(cuda_only: bool = False) -> list[Row]:
    """(figure, baseline, ratio) rows for `python -m bench`."""
    gpu: list[Row] = []
    if torch.cuda.is_available():
        gpu = cuda_rows()
    else:
        print("bench.train: no CUDA device visible: GPU rows skipped (bench/gpu_check.sh on a GPU machine)",
              file=sys.stderr)
    if cuda_only:
        return gpu
    torch.set_num_threads(Params().train.threads)
    mining = mining_vs_plain()
    return ([] if mining is None else [mining]) + cpu_input_path() + [optimised_vs_plain()] + gpu


if __name__ == "__main__":
    for figure, baseline, ratio in rows(cuda_only="--cuda" in sys.argv[1:]):
        print(f"{ratio:6.2f}x  {figure}  vs  {baseline}")
