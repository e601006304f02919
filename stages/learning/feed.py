"""Training batches made on the device the model runs on, from uint8 crops and float mels.

A batch is a pure function of (seed, epoch, step, rank): the seeded sampler picks the item rows and a
generator seeded by the same key draws each crop's flip and corner. Only those small index arrays cross
to the device; the gather, flip, corner crop, conversion to float and bilinear resize run where the
items live. On CUDA the store's items stay on the GPU when they fit (`fits_on`); otherwise a batch's
uint8 items are gathered on the CPU into pinned memory and copied on a side stream one batch ahead. On
the CPU the same code runs on the store's arrays without a copy.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from stages.learning.datasets import Store
from stages.learning.samplers import PKSampler, TripletSampler

CORNER_CROP = 0.875  # share of the side kept by the training corner crop (then resized back)
HEADROOM = 0.25  # share of the GPU's memory kept free for the model, its activations and the allocator
Key = tuple[int, int]  # (epoch, step)


def corner_offsets(size: int) -> np.ndarray:
    """(top, left) of the five corner-or-centre crops of a size x size image: (5, 2) int64."""
    margin = size - round(size * CORNER_CROP)
    return np.array([(0, 0), (0, margin), (margin, 0), (margin, margin), (margin // 2, margin // 2)], np.int64)


def draw_augmentation(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Each crop's horizontal flip and corner (index into corner_offsets), drawn in that order."""
    flip = rng.random(n) < 0.5
    return flip, rng.integers(0, 5, n)


def flip_crop_resize(crops: torch.Tensor, rows: torch.Tensor, flip: torch.Tensor, origin: torch.Tensor) -> torch.Tensor:
    """uint8 (N, S, S, 3) items -> float (n, 3, S, S) channels_last in [0, 1]: rows `rows`, flipped where `flip`,
    cropped at their corner's (top, left) `origin` (n, 2) and resized back (bilinear), all on the items' device,
    with no copy from the host (which would wait for the device).

    One gather of whole pixels (index_select, ~3x faster on a CPU than 3-d advanced indexing) reads the flipped
    crop window straight from the uint8 items; the float image equals flipping and cropping the converted
    image, so a batch is the same bits as converting first.
    """
    size = crops.shape[1]
    side = round(size * CORNER_CROP)
    span = torch.arange(side, device=crops.device)
    y = origin[:, :1] + span
    x = origin[:, 1:] + span
    x = torch.where(flip[:, None], size - 1 - x, x)
    pixel = (rows[:, None, None] * size + y[:, :, None]) * size + x[:, None, :]  # (n, side, side) pixel numbers
    window = torch.index_select(crops.reshape(-1, 3), 0, pixel.reshape(-1)).view(len(rows), side, side, 3)
    images = window.permute(0, 3, 1, 2).to(torch.float32, memory_format=torch.contiguous_format).div_(255.0)
    resized = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    return resized.contiguous(memory_format=torch.channels_last)


def as_tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor sharing the array's memory, also when the array is a read-only view of Arrow buffers (never written)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


def store_bytes(store: Store) -> int:
    """Bytes of the store's training items (uint8 crops and float32 mels)."""
    return int(store.crops.nbytes + store.mels.nbytes)


def fits_on(device: torch.device, nbytes: int) -> bool:
    """Whether items of `nbytes` can stay on the device: always on the CPU (they already sit in RAM); on CUDA
    when they leave HEADROOM of the card's memory free besides what is in use now."""
    if device.type != "cuda":
        return True
    free, total = torch.cuda.mem_get_info(device)
    return nbytes <= free - HEADROOM * total


@dataclass(frozen=True)
class Plan:
    """What a batch is made of, as host arrays: item rows per stream, flips, corners and the mining labels."""

    key: Key
    rows: dict[str, np.ndarray]
    flip: np.ndarray
    corner: np.ndarray
    extras: dict[str, np.ndarray]


class Feed(torch.utils.data.Dataset):
    """Batches for (epoch, step) keys, made on `device`; a Dataset too, for DataLoader workers on the CPU."""

    def __init__(self, store: Store, sampler: TripletSampler | PKSampler, seed: int, device: torch.device,
                 rank: int = 0, world: int = 1, resident: bool | None = None) -> None:
        self.sampler, self.seed, self.rank, self.world, self.device = sampler, seed, rank, world, device
        self.store = store
        self.resident = fits_on(device, store_bytes(store)) if resident is None else resident
        self.items = {"crops": as_tensor(store.crops).to(device), "mels": as_tensor(store.mels).to(device)
                      } if self.resident else {}
        self.copies = torch.cuda.Stream(device) if device.type == "cuda" and not self.resident else None

    def __len__(self) -> int:
        return 1 << 30  # indexed by (epoch, step) keys, not by position

    def __getitem__(self, key: Key) -> dict[str, torch.Tensor]:
        return self._finish(*self._stage(self.plan(key)))

    def plan(self, key: Key) -> Plan:
        """This rank's item rows and augmentation for (epoch, step): a pure function of the key and the seed."""
        epoch, step = key
        batch = self.sampler.batch(epoch, step).shard(self.rank, self.world)
        rng = np.random.default_rng([self.seed, epoch, step, self.rank, 1])
        crops = batch.items.get("crops")
        flip, corner = draw_augmentation(rng, 0 if crops is None else len(crops))
        extras = {}
        if batch.labelled:
            extras = {name: np.asarray(getattr(batch, name), np.int64) for name in ("labels", "tracks", "groups")
                      if getattr(batch, name) is not None}
        return Plan(key, batch.items, flip, corner, extras)

    def batches(self, keys: Iterable[Key]) -> Iterator[tuple[Key, dict[str, torch.Tensor]]]:
        """(key, inputs on the device) for each key; the next batch is staged while the current one trains."""
        pending = None
        for key in keys:
            staged = self._stage(self.plan(key))
            if pending is not None:
                yield pending[0].key, self._finish(*pending)
            pending = staged
        if pending is not None:
            yield pending[0].key, self._finish(*pending)

    def _send(self, array: np.ndarray) -> torch.Tensor:
        """A host array on the device (pinned and asynchronous on CUDA)."""
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        if self.device.type != "cuda":
            return tensor
        return tensor.pin_memory().to(self.device, non_blocking=True)

    def _stage(self, plan: Plan) -> tuple[Plan, dict[str, torch.Tensor], torch.cuda.Event | None]:
        """Start moving the batch's items: the row indices when items are resident, else the gathered uint8
        items themselves (pinned, on the copy stream)."""
        if self.resident:
            return plan, {name: self._send(rows) for name, rows in plan.rows.items()}, None
        sources = {"crops": self.store.crops, "mels": self.store.mels}
        if self.copies is None:
            return plan, {name: as_tensor(sources[name][rows]) for name, rows in plan.rows.items()}, None
        moved = {}
        with torch.cuda.stream(self.copies):
            for name, rows in plan.rows.items():
                source = as_tensor(sources[name])
                pinned = torch.empty((len(rows), *source.shape[1:]), dtype=source.dtype, pin_memory=True)
                torch.index_select(source, 0, torch.from_numpy(rows), out=pinned)
                moved[name] = pinned.to(self.device, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self.copies)
        return plan, moved, done

    def _finish(self, plan: Plan, moved: dict[str, torch.Tensor], done: torch.cuda.Event | None
                ) -> dict[str, torch.Tensor]:
        """The batch's model inputs: gather (resident) or take (staged) the items, then augment the crops."""
        if done is not None:
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(done)
            for value in moved.values():
                value.record_stream(stream)
        out: dict[str, torch.Tensor] = {}
        if "crops" in moved:
            crops = moved["crops"]
            rows = crops if self.resident else torch.arange(len(crops), device=crops.device)
            source = self.items["crops"] if self.resident else crops
            origin = corner_offsets(source.shape[1])[plan.corner]
            out["crops"] = flip_crop_resize(source, rows, self._send(plan.flip), self._send(origin))
        if "mels" in moved:
            mels = self.items["mels"][moved["mels"]] if self.resident else moved["mels"]
            out["mels"] = mels.unsqueeze(1)
        out.update({name: self._send(value) for name, value in plan.extras.items()})
        return out
