"""CaffeNet (AlexNet) with BatchNorm, up to pool5, with blocks named conv1..pool5 (design §4).

The same weights serve two input regimes, as in the paper: conv1 stride 2 on 64 px puzzle tiles
(pool5 is 3x3, the jigsaw network the paper builds on) and stride 4 on 227 px evaluation images
(standard CaffeNet). `conv1_stride` can therefore be overridden per call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BLOCKS = ("conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool5")

# CaffeNet: (out channels, kernel, padding) of conv1..conv5.
_CAFFENET = {
    "conv1": (96, 11, 0),
    "conv2": (256, 5, 2),
    "conv3": (384, 3, 1),
    "conv4": (384, 3, 1),
    "conv5": (256, 3, 1),
}


def block_size(input_size: int, conv1_stride: int, upto: str = "pool5") -> int:
    """Spatial size of block `upto` for a square input (0 or less: the input is too small)."""
    n = input_size
    for name in BLOCKS:
        if name.startswith("conv"):
            _, kernel, pad = _CAFFENET[name]
            stride = conv1_stride if name == "conv1" else 1
            n = (n + 2 * pad - kernel) // stride + 1
        else:
            out = -(-(n - 3) // 2) + 1  # Caffe/ceil_mode: ceil((n - 3) / 2) + 1
            n = out - 1 if (out - 1) * 2 >= n else out  # the last window must start inside
        if n < 1:
            return 0
        if name == upto:
            return n
    return n


def min_input_size(conv1_stride: int, upto: str = "pool5") -> int:
    """The smallest square input for which block `upto` is not empty."""
    n = 11
    while block_size(n, conv1_stride, upto) < 1:
        n += 1
    return n


class ConvBN(nn.Module):
    """Convolution -> BatchNorm -> ReLU (BN takes the place of CaffeNet's LRN)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.stride = stride

    def forward(self, x: torch.Tensor, stride: int | None = None) -> torch.Tensor:
        s = self.stride if stride is None else stride
        x = F.conv2d(x, self.conv.weight, None, s, self.conv.padding)
        return F.relu(self.bn(x), inplace=True)


def caffe_pool() -> nn.MaxPool2d:
    """3x3/2 max pooling with Caffe's rounding (ceil_mode)."""
    return nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True)


class CaffeNetBN(nn.Module):
    """Trunk conv1..pool5. `width` scales every channel count (1.0 = CaffeNet, 0.25 = cpu)."""

    def __init__(self, width: float = 1.0, conv1_stride: int = 4, in_channels: int = 3) -> None:
        super().__init__()
        if width <= 0:
            raise ValueError(f"width must be positive, got {width}")
        self.width = width
        self.channels = {k: max(1, round(c * width)) for k, (c, _, _) in _CAFFENET.items()}
        c_in = in_channels
        for name, (_, kernel, pad) in _CAFFENET.items():
            stride = conv1_stride if name == "conv1" else 1
            setattr(self, name, ConvBN(c_in, self.channels[name], kernel, stride, pad))
            c_in = self.channels[name]
        self.pool1, self.pool2, self.pool5 = caffe_pool(), caffe_pool(), caffe_pool()

    @property
    def out_channels(self) -> int:
        return self.channels["conv5"]

    def forward(
        self, x: torch.Tensor, upto: str = "pool5", conv1_stride: int | None = None
    ) -> torch.Tensor:
        """Run blocks conv1..`upto` and return that block's output (N, C, H, W)."""
        if upto not in BLOCKS:
            raise ValueError(f"unknown layer {upto!r}; choose one of {', '.join(BLOCKS)}")
        for name in BLOCKS:
            block = getattr(self, name)
            x = block(x, conv1_stride) if name == "conv1" else block(x)
            if name == upto:
                return x
        raise AssertionError("unreachable")

    def output_shape(self, input_size: int, upto: str = "pool5", conv1_stride: int | None = None):
        """(C, H, W) of block `upto` for a square input, computed by a dry run."""
        with torch.no_grad():
            was_training = self.training
            self.eval()
            device = next(self.parameters()).device
            y = self(torch.zeros(1, 3, input_size, input_size, device=device), upto, conv1_stride)
            self.train(was_training)
        return tuple(y.shape[1:])
