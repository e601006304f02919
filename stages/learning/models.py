"""The face, voice and cross-modal embedding networks (ResNet-18 streams) and their checkpoints.

Stable API (used by the evaluate stage): `build_model(modality, normalize=False, pretrained="")` and
`load_checkpoint(path) -> Embedder` (in eval mode, `model.meta` holds the training run's facts).
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from stages.core.errors import ConfigError, DataError
from stages.learning.resnet import ResNet18

EMBEDDING_DIM = 512
CHECKPOINT_FORMAT = "apes-model-1"
TORCHVISION_RESNET18 = "resnet18-f37072fd.pth"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LAST_STAGE_STRIDE = 16  # ResNet-18's downsampling of its input before the last (strided) stage


def _trunk(in_channels: int) -> nn.Module:
    """ResNet-18 without its classifier: 512-d average-pooled features."""
    net = ResNet18()
    if in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    net.fc = nn.Identity()
    return net


class FaceStream(nn.Module):
    """Face crops (N, 3, S, S) in [0, 1] -> 512-d; ImageNet normalisation inside."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _trunk(3)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return self.net((crops - self.mean) / self.std)


class VoiceStream(nn.Module):
    """Log-mel snippets (N, 1, n_mels, frames) -> 512-d; each snippet standardised inside."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _trunk(1)

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        mean = mels.mean(dim=(2, 3), keepdim=True)
        std = mels.std(dim=(2, 3), keepdim=True).clamp_min(1e-5)
        return self.net((mels - mean) / std)


class Embedder(nn.Module):
    """One model for the three modalities: face, voice, or both streams plus a joint projection.

    forward(crops, mels) returns raw 512-d features per stream ('face', 'voice') and, cross-modal,
    'joint' = Linear(1024 -> 512) of their concatenation. `finish` L2-normalises when asked.
    """

    def __init__(self, modality: str, normalize: bool = False) -> None:
        super().__init__()
        if modality not in ("face", "voice", "crossmodal"):
            raise ConfigError("modality", f"unknown modality {modality!r}: expected face, voice or crossmodal")
        self.modality, self.normalize = modality, normalize
        self.meta: dict[str, Any] = {}
        self.face = FaceStream() if modality in ("face", "crossmodal") else None
        self.voice = VoiceStream() if modality in ("voice", "crossmodal") else None
        self.project = nn.Linear(2 * EMBEDDING_DIM, EMBEDDING_DIM) if modality == "crossmodal" else None

    def joint(self, face: torch.Tensor, voice: torch.Tensor) -> torch.Tensor:
        """The cross-modal projection of (face, voice) features."""
        return self.project(torch.cat([face, voice], dim=1))

    def finish(self, embedding: torch.Tensor) -> torch.Tensor:
        """Float32, L2-normalised when the model was trained normalised."""
        embedding = embedding.float()
        return F.normalize(embedding, dim=1) if self.normalize else embedding

    def forward(self, crops: torch.Tensor | None = None, mels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        if self.face is not None:
            out["face"] = self.face(crops)
        if self.voice is not None:
            out["voice"] = self.voice(mels)
        if self.project is not None:
            out["joint"] = self.joint(out["face"], out["voice"])
        return out


def one_column_at_last_stage(width: int) -> bool:
    """Whether inputs `width` wide reach ResNet-18's last strided 3x3 conv one column wide.

    There PyTorch's oneDNN bf16 backward on the CPU (torch 2.14.1) reads uninitialised memory into the weight
    gradient's off-centre taps, which only ever see padding: gradients that differ from process to process and
    now and then are NaN. fp32 and CUDA compute them exactly (zero).
    """
    return -(-width // LAST_STAGE_STRIDE) == 1


def build_model(modality: str, normalize: bool = False, pretrained: str = "") -> Embedder:
    """A fresh model; `pretrained` names a torchvision ResNet-18 state dict ('torchvision' = its cache)."""
    model = Embedder(modality, normalize)
    if pretrained:
        state = read_pretrained(pretrained)
        for stream in (model.face, model.voice):
            if stream is not None:
                load_imagenet_trunk(stream.net, state)
    return model


def pretrained_path(setting: str) -> Path:
    """Resolve `train.pretrained`: a file path, or 'torchvision' for torchvision's cache (never downloads)."""
    if setting == "torchvision":
        return Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_RESNET18
    return Path(setting)


def read_pretrained(setting: str) -> dict[str, torch.Tensor]:
    """Load an ImageNet ResNet-18 state dict from disk, or say where it was expected."""
    path = pretrained_path(setting)
    if not path.is_file():
        raise ConfigError("train.pretrained", f"no ResNet-18 weights at {path} (nothing is downloaded; "
                          "copy torchvision's resnet18 state dict there or set pretrained to \"\")")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "conv1.weight" not in state:
        raise DataError(path, "not a torchvision ResNet-18 state dict (no 'conv1.weight')")
    return state


def load_imagenet_trunk(net: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy ImageNet weights into a trunk, dropping the classifier; a one-channel conv1 gets the RGB mean."""
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    conv = state["conv1.weight"]
    in_channels = net.conv1.weight.shape[1]
    if conv.shape[1] != in_channels:
        state["conv1.weight"] = conv.mean(dim=1, keepdim=True).expand(-1, in_channels, -1, -1).contiguous()
    missing, unexpected = net.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if not k.startswith("fc.")]:
        raise ConfigError("train.pretrained", f"weights do not fit ResNet-18 (missing {missing}, "
                          f"unexpected {unexpected})")


def start_stream_from(model: Embedder, stream: str, checkpoint: str | Path) -> None:
    """Copy the weights of one stream ('face' or 'voice') of a trained checkpoint into `model`'s same stream."""
    source = getattr(load_checkpoint(checkpoint), stream)
    if source is None:
        raise DataError(checkpoint, f"holds no {stream} stream to start from")
    getattr(model, stream).load_state_dict(source.state_dict())


def checkpoint_payload(model: Embedder, meta: dict[str, Any]) -> dict[str, Any]:
    """What model.pt holds: format, modality, normalisation, weights and the run's facts (`meta`: plain values)."""
    return {"format": CHECKPOINT_FORMAT, "modality": str(model.modality), "normalize": model.normalize,
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "meta": {k: str(v) if isinstance(v, StrEnum) else v for k, v in meta.items()}}


def load_checkpoint(path: str | Path) -> Embedder:
    """Rebuild a trained model from model.pt (or last.pt) on the CPU, in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "checkpoint not found: run `apes-cli train` for this run first")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # a truncated or foreign file: say which
        raise DataError(path, f"unreadable checkpoint: {error}") from None
    if isinstance(payload, dict) and "model" in payload:
        payload = payload["model"]
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise DataError(path, f"not an apes checkpoint (expected format {CHECKPOINT_FORMAT})")
    model = Embedder(payload["modality"], payload["normalize"])
    model.load_state_dict(payload["state_dict"])
    model.meta = dict(payload.get("meta", {}))
    return model.eval()
