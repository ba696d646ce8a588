"""Fine-tuning (design §7, paper Tables 3-5): conv1..conv5 initialised from a trunk, new fc6-fc8,
the whole network trained on a labelled set.

Protocol. Images are resized so the shorter side is round(1.14 * input_size) (256 for 227) and
the centre square of that size is kept; training takes random input_size crops of it with
random horizontal flips, testing its centre crop (the Caffe/AlexNet convention), both
per-image per-channel normalised as everywhere in this package. SGD with momentum for a fixed
number of steps, the learning rate divided by 10 at the given fractions of the steps; nothing is
selected on the test set. After training, the BN statistics are re-estimated on centre crops
of training images (cumulative average; the network keeps BN, unlike the paper's VOC runs on
the plain CaffeNet).

- Single label: cross-entropy; test accuracy of the centre crop.
- Multi-label (the source has `.targets` (N, C) in {1, 0, -1}, Pascal VOC): binary
  cross-entropy with logits over the entries with target != -1 (difficult-only classes are
  ignored, absent classes are negatives), averaged over those entries; test mAP over classes
  of the sigmoid scores of the centre crop (the paper's protocol, Krähenbühl et al., averages
  10 crops; one crop is used here).
- Videos (UCF-101/HMDB-51, Table 3): training on single frames, `train_frames_per_video`
  evenly spaced frames per training video; each test video is predicted by averaging the
  softmax outputs of `frames_per_video` (25) evenly spaced frames, and video accuracy is
  reported (frame accuracy too).

Why this long: the protocol of Tables 3-5 in one place: labels (single and multi-label),
augmentation, the network, training, BN re-estimation, testing and the JSON result.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from permrl.evaluate.knn import _image_dataset_api, normalise_images, reestimate_bn
from permrl.evaluate.video_knn import VideoFrames, mean_per_video

RESIZE_RATIO = 256 / 227
"""Shorter side before cropping, relative to the crop (256 for 227, as in CaffeNet)."""


class FinetuneNet(nn.Module):
    """A deep copy of the trunk's conv1..pool5 and new fc6-fc7-fc8 on the flattened pool5.

    fc6 and fc7 are Linear-ReLU-Dropout; `fc_dims` defaults to 4096 * trunk width each (4096
    for the full CaffeNet). Forward takes (B, 3, input_size, input_size) normalised images and
    runs conv1 with stride `conv1_stride` (the evaluation stride).
    """

    def __init__(
        self,
        trunk: nn.Module,
        classes: int,
        *,
        input_size: int,
        conv1_stride: int | None,
        fc_dims: Sequence[int] | None = None,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.trunk = copy.deepcopy(trunk)
        self.conv1_stride = conv1_stride
        self.input_size = input_size
        if fc_dims is None:
            width = float(getattr(trunk, "width", 1.0))
            fc_dims = (max(1, round(4096 * width)),) * 2
        c, h, w = self.trunk.output_shape(input_size, "pool5", conv1_stride)
        self.pool5_dim = int(c * h * w)
        if self.pool5_dim < 1:
            raise ValueError(f"input size {input_size} is too small for pool5")
        layers: list[nn.Module] = []
        d_in = self.pool5_dim
        for d in fc_dims:
            layers += [nn.Linear(d_in, int(d)), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            d_in = int(d)
        self.fc = nn.Sequential(*layers)
        self.fc8 = nn.Linear(d_in, classes)
        self.fc_dims = [int(d) for d in fc_dims]

    def forward(self, x: Tensor) -> Tensor:
        y = self.trunk(x, upto="pool5", conv1_stride=self.conv1_stride)
        return self.fc8(self.fc(y.flatten(1)))


# Pieces (tested on their own) ----------------------------------------------------------------


def masked_bce(logits: Tensor, targets: Tensor) -> Tensor:
    """Binary cross-entropy with logits, averaged over the entries whose target is not -1
    (target 1: present, 0: absent); 0 when every entry is ignored."""
    mask = targets != -1
    losses = F.binary_cross_entropy_with_logits(logits, (targets > 0).to(logits.dtype),
                                                reduction="none")
    return (losses * mask).sum() / mask.sum().clamp(min=1)


def augment(images: Tensor, size: int, generator: torch.Generator) -> Tensor:
    """Random size x size crops (one offset per image) and random horizontal flips of
    (B, C, H, W) images, on the images' device in one gather; the draws come from the CPU
    `generator`, so a GPU batch is cropped exactly as the CPU one."""
    b, c, h, w = images.shape
    if h < size or w < size:
        raise ValueError(f"images of {h}x{w} px cannot be cropped to {size}")
    tops = torch.randint(0, h - size + 1, (b,), generator=generator)
    lefts = torch.randint(0, w - size + 1, (b,), generator=generator)
    flips = torch.rand(b, generator=generator) < 0.5
    step = torch.arange(size)
    rows = tops[:, None] + step  # (B, size)
    cols = lefts[:, None] + torch.where(flips[:, None], size - 1 - step, step)
    on = images.device
    return images[torch.arange(b, device=on)[:, None, None, None],
                  torch.arange(c, device=on)[None, :, None, None],
                  rows.to(on)[:, None, :, None], cols.to(on)[:, None, None, :]]


def centre_crop(images: Tensor, size: int) -> Tensor:
    """The central size x size crop of (B, 3, H, W) images."""
    h, w = images.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return images[..., top : top + size, left : left + size]


def video_predictions(
    probs: Tensor, labels: Tensor, indices: Tensor, frames_per_video: int
) -> tuple[Tensor, Tensor, Tensor]:
    """(video ids, mean frame probabilities per video (V, C), video labels) from per-frame
    softmax outputs; frame item v * frames_per_video + j belongs to video v."""
    videos = torch.div(indices, frames_per_video, rounding_mode="floor")
    ids = torch.unique(videos)
    means, video_labels = mean_per_video(probs.float(), labels.long(), videos)
    return ids, means, video_labels


class VideoFrameSamples(VideoFrames):
    """Training frames: like VideoFrames (item v * n + j is the j-th of n evenly spaced frames
    of video v) but decoding only the requested frame, so shuffled access stays cheap."""

    def load(self, i: int) -> np.ndarray | None:
        v, j = divmod(i, self.n)
        indices = self.videos.evenly_spaced(v, self.n)
        if indices is None:
            return None
        data = self.videos.read_frames(v, [indices[j]])
        return None if data is None else data[0]


def _mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
    from permrl.evaluate.metrics import mean_average_precision

    return mean_average_precision(scores, targets)


def _loop(loader: DataLoader) -> Iterator[dict[str, Any]]:
    while True:
        yielded = False
        for batch in loader:
            yielded = True
            yield batch
        if not yielded:
            raise ValueError("the training set yields no batches")


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray | Tensor):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # NaN (e.g. the AP of a class without positives) -> JSON null
    return value


# Fine-tuning ---------------------------------------------------------------------------------


def finetune_labels(
    train_source: Any, test_source: Any, train_images: Any, multilabel: bool
) -> tuple[int, np.ndarray, Tensor | None, Tensor | None]:
    """(number of classes, indices of the labelled training items, and for multi-label
    sources the (N, C) training and test targets with -1 = ignored)."""
    train_targets = test_targets = None
    if multilabel:
        for role, src in (("train", train_source), ("test", test_source)):
            if getattr(src, "targets", None) is None:
                raise ValueError(f"multi-label fine-tuning: {role} source {src.name!r} has no "
                                 "targets")
        train_targets = torch.as_tensor(np.asarray(train_source.targets), dtype=torch.float32)
        test_targets = torch.as_tensor(np.asarray(test_source.targets), dtype=torch.float32)
        classes = int(train_targets.shape[1])
        usable = np.flatnonzero((train_targets != -1).any(1).numpy())
    else:
        train_labels = np.asarray(train_images.labels)
        classes = len(train_source.classes) or int(train_labels.max()) + 1
        usable = np.flatnonzero(train_labels >= 0)
    if len(usable) == 0:
        raise ValueError(f"train source {train_source.name!r} has no labelled items")
    if classes < 1:
        raise ValueError("need at least one class")
    return classes, usable, train_targets, test_targets


def train_finetune(
    net: nn.Module, opt: torch.optim.Optimizer, batches: Iterator[dict[str, Any]], *,
    steps: int, lr: float, lr_drops: Sequence[float], input_size: int,
    crops: torch.Generator, multilabel: bool, train_targets: Tensor | None,
    device: torch.device,
) -> tuple[list[float], int]:
    """`steps` SGD steps, the learning rate divided by 10 at each of `lr_drops` (fractions of
    the steps): (the losses, unreadable training items)."""
    drops = sorted(math.ceil(f * steps) for f in lr_drops if 0 < f < 1)
    net.train()
    losses: list[Tensor] = []  # on the device, read once at the end (no sync per step)
    skipped = 0
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * 0.1 ** sum(step >= d for d in drops)
        batch = next(batches)
        skipped += len(batch["skipped"])
        if batch["images"].shape[0] < 2:  # BN needs two items; an all-unreadable batch
            continue
        x = normalise_images(augment(batch["images"].to(device, non_blocking=True), input_size,
                                     crops))
        logits = net(x)
        if multilabel:
            loss = masked_bce(logits, train_targets[batch["index"]].to(device))
        else:
            loss = F.cross_entropy(logits, batch["label"].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    return (torch.stack(losses).tolist() if losses else []), skipped


def finetune_result(
    out: Tensor, lab: Tensor, idx: Tensor, train_source: Any, test_source: Any, *,
    classes: int, usable: int, skipped: int, steps: int, losses: list[float],
    settings: dict[str, Any], multilabel: bool, video: bool, test_targets: Tensor | None,
    frames_per_video: int, train_fpv: int,
) -> dict[str, Any]:
    """The JSON result of `finetune` from the test predictions: the metric and the protocol."""
    st = settings
    tail = losses[-max(1, len(losses) // 10):]
    result: dict[str, Any] = dict(
        train_source=str(train_source.name),
        test_source=str(test_source.name),
        classes=classes,
        train_items=usable,
        test_items=int(len(lab)),
        skipped=skipped,
        steps=steps,
        final_train_loss=float(np.mean(tail)) if tail else float("nan"),
        settings=settings,
    )
    common = (f"conv1-conv5 initialised from the trunk, new fc6-fc8 "
              f"({'-'.join(map(str, st['fc_dims']))}-{classes}, dropout 0.5), SGD (momentum "
              f"{st['momentum']}, lr {st['lr']} divided by 10 at {st['lr_drops']} of the steps, "
              f"weight decay {st['weight_decay']}, batch {st['batch_size']}) for a fixed {steps} "
              f"steps on random {st['input_size']} px crops with horizontal flips of images "
              f"resized to {st['resize']} px, "
              "BN statistics then re-estimated on training images, nothing selected on the test "
              "set")
    if multilabel:
        keep = idx.numpy()
        metrics = _mean_average_precision(out.numpy(), test_targets[keep].numpy())
        result.update(_jsonable(metrics))
        result["protocol"] = (f"{common}; loss: binary cross-entropy over entries with target "
                              "!= -1 (difficult ignored); test: mean over classes of the AP of "
                              "the sigmoid scores of one centre crop (the paper averaged 10 "
                              "crops).")
    elif video:
        labelled = lab >= 0
        out, lab, idx = out[labelled], lab[labelled], idx[labelled]
        frame_acc = float((out.argmax(1) == lab).float().mean())
        _, means, video_labels = video_predictions(out, lab, idx, frames_per_video)
        video_acc = float((means.argmax(1) == video_labels).float().mean())
        result.update(
            test_accuracy=video_acc, video_accuracy=video_acc, frame_accuracy=frame_acc,
            test_videos=int(len(video_labels)), frames_per_video=frames_per_video,
            train_frames_per_video=train_fpv,
            protocol=(f"{common}; trained on single frames ({train_fpv} evenly spaced per "
                      f"training video); a test video's prediction is the mean softmax of its "
                      f"{frames_per_video} evenly spaced frames (centre crops); video "
                      "accuracy."),
        )
    else:
        labelled = lab >= 0
        result["test_items"] = int(labelled.sum())
        result.update(
            test_accuracy=float((out[labelled].argmax(1) == lab[labelled]).float().mean()),
            protocol=f"{common}; test accuracy of one centre crop per image.",
        )
    return result


def finetune(
    trunk: nn.Module,
    train_source: Any,
    test_source: Any,
    *,
    input_size: int,
    conv1_stride: int | None,
    steps: int,
    batch_size: int = 64,
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    lr_drops: Sequence[float] = (0.5, 0.75),
    device: str | torch.device = "cpu",
    seed: int = 0,
    multilabel: bool | None = None,
    video: bool | None = None,
    frames_per_video: int = 25,
    train_frames_per_video: int | None = None,
    fc_dims: Sequence[int] | None = None,
    bn_batches: int = 20,
    workers: int = 0,
) -> dict[str, Any]:
    """Fine-tune conv1..conv5 of `trunk` (a copy; `trunk` is not changed) with new fc6-fc8 for
    `steps` SGD steps on `train_source`, then evaluate on `test_source` (see the module doc).

    multilabel=None: multi-label iff the training source has `.targets`; video=None: video iff
    the training source has `evenly_spaced` (then both sources are VideoSources).
    Returns a JSON-able dict: the metric ("test_accuracy", or "map" and per-class "ap";
    videos: "video_accuracy" = "test_accuracy", and "frame_accuracy"), counts and protocol.
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be positive, got {steps}, {batch_size}")
    if video is None:
        video = hasattr(train_source, "evenly_spaced")
    if video != hasattr(test_source, "evenly_spaced"):
        raise ValueError("train and test sources must both be video sources or both images")
    if multilabel is None:
        multilabel = getattr(train_source, "targets", None) is not None
    if multilabel and video:
        raise ValueError("multi-label fine-tuning of video sources is not supported")
    train_fpv = train_frames_per_video or frames_per_video
    train_images = VideoFrameSamples(train_source, train_fpv) if video else train_source
    test_images = VideoFrames(test_source, frames_per_video) if video else test_source

    classes, usable, train_targets, test_targets = finetune_labels(
        train_source, test_source, train_images, multilabel)
    device = torch.device(device)
    resize = max(input_size, round(input_size * RESIZE_RATIO))
    image_dataset, collate = _image_dataset_api()
    train_set = image_dataset(train_images, resize, crop="center")
    test_set = image_dataset(test_images, resize, crop="center")
    shuffle = torch.Generator().manual_seed(seed)
    crops = torch.Generator().manual_seed(seed + 1)
    pin = device.type == "cuda"  # uint8 batches copied to the device, cropped and normalised there
    loader = DataLoader(Subset(train_set, usable.tolist()), batch_size=batch_size, shuffle=True,
                        generator=shuffle, num_workers=workers, collate_fn=collate,
                        drop_last=len(usable) >= batch_size, pin_memory=pin)

    fork_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(seed)
        net = FinetuneNet(trunk, classes, input_size=input_size, conv1_stride=conv1_stride,
                          fc_dims=fc_dims).to(device)
        opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum,
                              weight_decay=weight_decay)
        losses, skipped = train_finetune(net, opt, _loop(loader), steps=steps, lr=lr,
                                         lr_drops=lr_drops, input_size=input_size, crops=crops,
                                         multilabel=multilabel, train_targets=train_targets,
                                         device=device)

        # BN statistics of the fine-tuned network on centre crops of training images.
        bn_loader = DataLoader(Subset(train_set, usable.tolist()), batch_size=batch_size,
                               shuffle=True, generator=torch.Generator().manual_seed(seed + 2),
                               num_workers=workers, collate_fn=collate, pin_memory=pin)

        def bn_images() -> Iterator[Tensor]:
            for k, b in enumerate(bn_loader):
                if k >= bn_batches:
                    return
                if b["images"].shape[0] > 1:
                    yield normalise_images(centre_crop(b["images"].to(device), input_size))

        if bn_batches > 0:
            net.trunk = reestimate_bn(net.trunk, bn_images(), "pool5", conv1_stride)
        net.eval()

        test_loader = DataLoader(test_set, batch_size=batch_size, shuffle=False,
                                 num_workers=workers, collate_fn=collate, pin_memory=pin)
        outputs, labels, indices = [], [], []
        test_skipped = 0
        with torch.no_grad():
            for b in test_loader:
                test_skipped += len(b["skipped"])
                if b["images"].shape[0] == 0:
                    continue
                x = normalise_images(centre_crop(b["images"].to(device, non_blocking=True),
                                                 input_size))
                logits = net(x).float()
                outputs.append((logits.sigmoid() if multilabel else logits.softmax(1)).cpu())
                labels.append(b["label"])
                indices.append(b["index"])
    if not outputs:
        raise ValueError(f"no readable test items in {test_source.name!r}")
    settings = dict(input_size=input_size, resize=resize, conv1_stride=conv1_stride,
                    batch_size=batch_size, lr=lr, momentum=momentum, weight_decay=weight_decay,
                    lr_drops=list(lr_drops), seed=seed, fc_dims=net.fc_dims, dropout=0.5,
                    bn_batches=bn_batches)
    return finetune_result(
        torch.cat(outputs), torch.cat(labels), torch.cat(indices), train_source, test_source,
        classes=classes, usable=len(usable), skipped=skipped + test_skipped, steps=steps,
        losses=losses, settings=settings, multilabel=multilabel, video=video,
        test_targets=test_targets, frames_per_video=frames_per_video, train_fpv=train_fpv)
