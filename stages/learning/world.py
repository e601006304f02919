"""Where a training process runs: its rank under torchrun, its device and threads, and the facts of the machine."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from stages.core.choices import Device
from stages.learning.trainer import TrainingError

CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")  # the ones that change CPU kernels (and so results)


@dataclass(frozen=True)
class World:
    """This process's place under torchrun (rank 0 of 1 when launched plainly) and its device."""

    rank: int
    size: int
    device: torch.device

    @property
    def leader(self) -> bool:
        """Rank 0 validates and writes."""
        return self.rank == 0

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of a scalar over the ranks."""
        if self.size > 1:
            dist.all_reduce(value)
            value /= self.size
        return value

    def barrier(self) -> None:
        """Wait for every rank."""
        if self.size > 1:
            dist.barrier()

    def close(self) -> None:
        """Wait for every rank, then leave the process group (DDP teardown)."""
        if self.size > 1:
            dist.barrier()
            dist.destroy_process_group()


def select_device(setting: Device | str, local_rank: int = 0) -> torch.device:
    """auto: CUDA when available, else CPU; asking for CUDA without one is an error."""
    setting = Device(setting)
    if setting is Device.cuda and not torch.cuda.is_available():
        raise TrainingError("--device cuda asked for, but no CUDA device is visible")
    if setting is Device.cpu or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


def join_world(device: Device | str, threads: int) -> World:
    """Read torchrun's environment, pick the device, join the process group, and share the threads."""
    rank, size = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    dev = select_device(device, int(os.environ.get("LOCAL_RANK", "0")))
    if size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    torch.set_num_threads(max(1, threads // int(os.environ.get("LOCAL_WORLD_SIZE", size))))
    return World(rank, size, dev)


def machine(device: torch.device, bf16: bool) -> dict[str, Any]:
    """Where the numbers came from: device, precision, CPU model, torch's CPU kernel level and flags, GPU."""
    cpu, flags = platform.processor() or platform.machine(), set()
    info = Path("/proc/cpuinfo")
    for line in info.read_text().splitlines() if info.is_file() else []:
        name, _, value = line.partition(":")
        if name.strip() == "model name":
            cpu = value.strip()
        elif name.strip() == "flags":
            flags = set(value.split())
    facts = {"device": device.type, "precision": "bf16" if bf16 else "fp32", "cpu": cpu,
             "cpu_capability": torch.backends.cpu.get_cpu_capability(),
             "cpu_flags": [flag for flag in CPU_FLAGS if flag in flags], "torch": torch.__version__}
    if device.type == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(device)
    return facts
