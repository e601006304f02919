"""One run's model, loss, optimiser and scheduler, and its epoch of triplet steps (voxceleb_trainer style);
what last.pt holds to resume it."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from stages.core.config import TrainParams
from stages.core.errors import ApesError
from stages.core.progress import Progress
from stages.core.runs import Run
from stages.learning.embed import use_bf16
from stages.learning.losses import TripletLoss
from stages.learning.models import build_model, checkpoint_payload, start_stream_from

if TYPE_CHECKING:
    from stages.learning.world import World


class TrainingError(ApesError):
    """A run that cannot start or cannot go on (no anchors, NaN loss, mismatched resume)."""


@dataclass(frozen=True)
class Schedule:
    """What the profile resolves to for one run."""

    lr: float
    epochs: int
    step_epochs: int
    batch_size: int
    steps_per_epoch: int


@dataclass
class Progression:
    """Where a run stands: the next epoch, the epochs done so far and the seconds they took."""

    first_epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def seconds_before(self) -> float:
        """Wall seconds of the epochs done before this process started."""
        return self.history[-1]["seconds"] if self.history else 0.0


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch, and ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def rng_states() -> dict[str, Any]:
    """The generators' states, saved in last.pt so that a resumed run draws what the interrupted one would."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def restore_rng(states: dict[str, Any]) -> None:
    """Put back the states of `rng_states`."""
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])


class Trainer:
    """The model, its loss, optimiser and scheduler, and one epoch of triplet training (voxceleb_trainer style)."""

    def __init__(self, train: TrainParams, spec: Run, schedule: Schedule, world: World, start_from: dict[str, Path],
                 loss: TripletLoss) -> None:
        self.spec, self.world, self.loss = spec, world, loss
        self.bf16 = use_bf16(world.device, train.precision)
        self.model = build_model(spec.modality, train.normalize, train.pretrained)
        for stream, checkpoint in start_from.items():
            start_stream_from(self.model, stream, checkpoint)
        self.model = self.model.to(world.device)
        self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=schedule.lr)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=schedule.step_epochs, gamma=0.1)
        self.net: torch.nn.Module = self.model
        if world.size > 1:
            ids = [world.device.index] if world.device.type == "cuda" else None
            self.net = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if train.compile:
            self.net = torch.compile(self.net)

    def train_epoch(self, batches: Iterator[tuple[tuple[int, int], dict[str, torch.Tensor]]],
                    progress: Progress) -> tuple[float, int]:
        """One epoch of steps; returns the mean loss and the samples seen (all ranks).

        On CUDA the losses are read back once, at the end of the epoch: a read per step would make the CPU wait
        for the GPU and leave it idle while the next batch is planned.
        """
        self.model.train()
        step_losses: list[torch.Tensor] = []
        samples, first = 0, (0, 0)
        for (epoch, step), inputs in batches:
            first = first if step_losses else (epoch, step)
            inputs = {k: v.to(self.world.device, non_blocking=True) for k, v in inputs.items()}
            with torch.autocast(self.world.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                loss = self.loss(self.net(crops=inputs.get("crops"), mels=inputs.get("mels")), inputs)
            step_losses.append(self.world.mean(loss.detach().float()))
            if self.world.device.type != "cuda":
                self._check_finite(step_losses[-1].view(1), (epoch, step))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            samples += len(next(iter(inputs.values()))) * self.world.size
            progress.advance()
        values = torch.stack(step_losses).cpu()
        self._check_finite(values, first)
        self.scheduler.step()
        return float(np.mean(values.double().numpy())), samples

    def _check_finite(self, values: torch.Tensor, first: tuple[int, int]) -> None:
        """Stop at the first NaN or infinite loss of consecutive steps from `first`, naming its epoch and step."""
        bad = torch.nonzero(~torch.isfinite(values)).flatten()
        if len(bad):
            epoch, step = first[0], first[1] + int(bad[0])
            raise TrainingError(f"run {self.spec.name}: the loss became {values[bad[0]].item()} at epoch {epoch + 1}, "
                                f"step {step + 1}; lower train.{self.spec.modality}.lr, set train.precision: fp32, "
                                "or look for NaN/inf in the inputs")

    def state(self, epoch: int, history: list[dict[str, float]], signature: dict[str, Any],
              meta: dict[str, Any]) -> dict[str, Any]:
        """What last.pt holds: everything `resume` needs to continue to the same result."""
        return {"model": checkpoint_payload(self.model, meta), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "epoch": epoch, "history": history,
                "rng": rng_states(), "signature": signature}

    def resume(self, last: Path, signature: dict[str, Any]) -> Progression:
        """Continue from last.pt when it exists and was written with the same settings."""
        if not last.is_file():
            return Progression()
        state = torch.load(last, map_location="cpu", weights_only=False)
        if state["signature"] != signature:
            raise TrainingError(f"{last} was written by a run with other settings; drop --resume to start over "
                                f"(saved {state['signature']}, now {signature})")
        self.model.load_state_dict(state["model"]["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        restore_rng(state["rng"])
        return Progression(state["epoch"], state["history"])
