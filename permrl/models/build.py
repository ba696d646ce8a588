"""The one place that turns a config into a network: CaffeNet-BN trunk + one head per task."""

from __future__ import annotations

import torch

from permrl.config import Config
from permrl.data.samples import geometry_of
from permrl.models.heads import OrderingNet, SpatialHead, TemporalHead
from permrl.models.trunk import CaffeNetBN


def build_model(cfg: Config) -> OrderingNet:
    """CaffeNet-BN trunk + one head per task, each sized by its parts (design §4)."""
    m = cfg.model
    trunk = CaffeNetBN(width=m.width, conv1_stride=m.conv1_stride)
    heads: dict[str, torch.nn.Module] = {}
    if "spatial" in cfg.tasks:
        c, h, w = trunk.output_shape(cfg.spatial.tile)
        heads["spatial"] = SpatialHead(
            c * h * w, geometry_of(cfg).num_tiles, cfg.spatial.permutations,
            fc6_dim=m.fc6, fc7_dim=m.fc7, dropout=m.dropout,
        )
    if "temporal" in cfg.tasks:
        c, h, w = trunk.output_shape(cfg.temporal.frame_size)
        heads["temporal"] = TemporalHead(
            c * h * w, cfg.temporal.frames, cfg.temporal.permutations,
            fc6_dim=m.fc6, hidden=m.lstm, dropout=m.dropout,
        )
    return OrderingNet(trunk, heads, channels_last=m.channels_last)
