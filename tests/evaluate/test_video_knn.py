"""Video retrieval: frames per video, mean feature per video, against naive references."""

from __future__ import annotations

import numpy as np
import torch

from permrl.evaluate.video_knn import VideoFrames, mean_per_video


class Videos:
    name = "fake"
    classes = ["a", "b"]

    def __init__(self, lengths, labels):
        self.lengths, self.labels = lengths, np.array(labels)
        self.reads = 0

    def __len__(self):
        return len(self.lengths)

    def evenly_spaced(self, v, n):
        return None if self.lengths[v] == 0 else [round(k * (self.lengths[v] - 1) / (n - 1))
                                                   for k in range(n)]

    def read_frames(self, v, indices):
        self.reads += 1
        return np.stack([np.full((4, 4, 3), 10 * v + i, np.uint8) for i in indices])

    def describe(self, i):
        return f"video{i}"


def test_video_frames_items_labels_and_one_decode_per_video():
    videos = Videos([7, 0, 31], [1, 0, 1])
    frames = VideoFrames(videos, frames_per_video=4)
    assert len(frames) == 12
    assert frames.labels.tolist() == [1] * 4 + [0] * 4 + [1] * 4
    values = [frames.load(i)[0, 0, 0] for i in range(12) if i // 4 != 1]
    assert values == [0, 2, 4, 6, 20, 30, 40, 50]  # 10 * v + evenly spaced index
    assert frames.load(5) is None and frames.describe(5) == "video1"
    assert videos.reads == 2  # the frames of a video are decoded once, together


def test_mean_per_video_equals_a_loop():
    torch.manual_seed(0)
    feats = torch.randn(9, 5)
    videos = torch.tensor([4, 4, 0, 7, 0, 4, 7, 7, 0])
    labels = torch.tensor([1, 1, 2, 0, 2, 1, 0, 0, 2])
    means, video_labels = mean_per_video(feats, labels, videos)
    for row, v in enumerate(sorted(set(videos.tolist()))):
        torch.testing.assert_close(means[row], feats[videos == v].mean(0))
        assert video_labels[row] == labels[videos == v][0]
