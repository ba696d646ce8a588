"""Video retrieval (design §7, Table 1 UCF-101): 10 evenly spaced frames per video.

Frame level (the paper's protocol): every frame of a test video is a query against every frame
of the training videos, labelled by its video's class. Video level: the mean feature of a
video's frames is one query against the training videos' mean features.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from permrl.evaluate.knn import DEFAULT_KS, knn_features, protocol_fields, retrieval_topk


class VideoFrames:
    """A video source seen as labelled images (the ImageSource interface): item v*n + j is the
    j-th of n evenly spaced frames of video v. The n frames of a video are decoded together.
    """

    def __init__(self, videos: Any, frames_per_video: int = 10) -> None:
        self.videos, self.n = videos, frames_per_video
        self.name = videos.name
        self.classes = list(videos.classes)
        self.labels = np.repeat(np.asarray(videos.labels, dtype=np.int64), frames_per_video)
        self.notes: list[str] = []
        self._cached: tuple[int, np.ndarray | None] = (-1, None)

    def __len__(self) -> int:
        return len(self.videos) * self.n

    def video_of(self, index: torch.Tensor) -> torch.Tensor:
        return torch.div(index, self.n, rounding_mode="floor")

    def frames(self, v: int) -> np.ndarray | None:
        if self._cached[0] != v:
            indices = self.videos.evenly_spaced(v, self.n)
            data = None if indices is None else self.videos.read_frames(v, indices)
            self._cached = (v, data)
        return self._cached[1]

    def load(self, i: int) -> np.ndarray | None:
        v, j = divmod(i, self.n)
        data = self.frames(v)
        return None if data is None else data[j]

    def describe(self, i: int) -> str:
        return self.videos.describe(i // self.n)


def mean_per_video(
    features: torch.Tensor, labels: torch.Tensor, videos: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Average the frame features of each video (videos with no readable frame drop out)."""
    ids, inverse = torch.unique(videos, return_inverse=True)
    sums = torch.zeros(len(ids), features.shape[1]).index_add_(0, inverse, features)
    counts = torch.zeros(len(ids)).index_add_(0, inverse, torch.ones(len(videos)))
    video_labels = torch.zeros(len(ids), dtype=torch.long).scatter_(0, inverse, labels)
    return sums / counts[:, None], video_labels


def evaluate_video_knn(
    trunk: nn.Module,
    train_videos: Any,
    test_videos: Any,
    *,
    frames_per_video: int = 10,
    layer: str = "pool5",
    input_size: int,
    conv1_stride: int | None,
    bn_stats: Literal["gallery", "stored"] = "gallery",
    batch_size: int = 128,
    workers: int = 0,
    device: str | torch.device = "cpu",
    ks: tuple[int, ...] = DEFAULT_KS,
    precision: str = "float32",
) -> dict[str, Any]:
    """Frame-level and video-level Top-k; the top-level `top*` keys are frame level (paper)."""
    gallery, queries = VideoFrames(train_videos, frames_per_video), VideoFrames(
        test_videos, frames_per_video)
    (g_feat, g_lab, g_idx), (q_feat, q_lab, q_idx), skipped = knn_features(
        trunk, gallery, queries, layer=layer, input_size=input_size, conv1_stride=conv1_stride,
        bn_stats=bn_stats, batch_size=batch_size, workers=workers, device=device,
        precision=precision,
    )
    on = torch.device(device)  # the similarities where the features were computed
    frame_level = retrieval_topk(q_feat.to(on), q_lab, g_feat.to(on), g_lab, ks=ks)
    gv_feat, gv_lab = mean_per_video(g_feat, g_lab, gallery.video_of(g_idx))
    qv_feat, qv_lab = mean_per_video(q_feat, q_lab, queries.video_of(q_idx))
    video_level = retrieval_topk(qv_feat, qv_lab, gv_feat, gv_lab, ks=ks)
    result = dict(frame_level)
    result |= protocol_fields(gallery, queries, layer, bn_stats, input_size, conv1_stride,
                              int(g_feat.shape[1]), skipped)
    result |= {
        "precision": precision,
        "level": "frame",
        "frames_per_video": frames_per_video,
        "frame_level": frame_level,
        "video_level": video_level,
        "protocol": result["protocol"] + f" Videos: {frames_per_video} evenly spaced frames "
        "each; top-level top-k is frame level (each frame a query, the paper's protocol); "
        "video_level uses the mean frame feature per video.",
    }
    return result
