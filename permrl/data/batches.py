"""The training data of step s, as a pure function of (seed, s), for both ordering tasks.

Item `step` of `PuzzleBatches` / `ClipBatches` is the whole unshuffled batch of that step, built
in a DataLoader worker: which items (a seeded order, epoch by epoch, over the training indices),
their random crops and jitter (seeded by the step). The permutations are drawn in the main
process by the sampler (later: the policy), so nothing here depends on them. Because a step's
data depends on nothing else, a resumed run sees exactly the data the interrupted one would
have, whatever the number of workers.

Also here: the held-out validation split X_val and its deterministic views (design §3).
"""

from __future__ import annotations

import sys
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from permrl.data.images import resize_square
from permrl.data.samples import (
    DrawRows,
    PuzzleGeometry,
    clip_crop_box,
    clip_window,
    crop_clip,
    make_clip_frames,
    make_tiles,
)
from permrl.data.sources import ImageSource, SkipCounter


class ValidationError(ValueError):
    """The data cannot provide a validation set: one line."""


class VideoSourceLike(Protocol):
    def __len__(self) -> int: ...
    def frame_count(self, i: int) -> int | None: ...
    def read_frames(self, i: int, indices: list[int]) -> np.ndarray | None: ...
    def describe(self, i: int) -> str: ...


def step_seed(seed: int, step: int, stream: int) -> int:
    """A 63-bit seed for (run seed, step, stream): the randomness of a step is reproducible."""
    return int(np.random.default_rng([seed, step, stream]).integers(2**63 - 1))


AUTO_VAL_FRACTION = 0.1  # train.val_size=0: hold out this share of the source ...
AUTO_VAL_MAX = 100  # ... at most this many items (the paper's |X_val|) ...
AUTO_VAL_MIN = 4  # ... and at least this many, or half the source if that is fewer
AUTO_VAL_RULE = f"{AUTO_VAL_FRACTION:.0%}, at most {AUTO_VAL_MAX}"  # said when it applies


def validation_size(num_items: int, val_size: int) -> int:
    """|X_val|: `val_size` when positive; 0 (auto) gives 10 % of the items, at most 100, at
    least 4 (at most half of a tiny source), so a source of 1000 items or more holds out 100."""
    if val_size > 0:
        return val_size
    share = round(AUTO_VAL_FRACTION * num_items)
    return min(AUTO_VAL_MAX, max(share, min(AUTO_VAL_MIN, num_items // 2)))


def split_validation(
    num_items: int, val_size: int, seed: int, what: str = "image"
) -> tuple[np.ndarray, np.ndarray]:
    """X_val: `validation_size(num_items, val_size)` items drawn with the seed and excluded
    from training (design §3)."""
    size = validation_size(num_items, val_size)
    if size < 1 or num_items < size + 1:
        given = f"train.val_size={val_size}" if val_size else "train.val_size=0 (auto)"
        raise ValidationError(
            f"the {what} source has {num_items} item{'s' * (num_items != 1)}; {given} needs "
            f"{max(size, 1)} held-out {what}{'s' * (max(size, 1) != 1)} plus at least one "
            f"training {what}"
        )
    order = np.random.default_rng([seed, 7]).permutation(num_items)
    return np.sort(order[size:]), np.sort(order[:size])


def shard_positions(batch_size: int, rank: int, world_size: int) -> np.ndarray:
    """Positions in a global batch that process `rank` of `world_size` builds: a contiguous
    block, the first `batch_size % world_size` blocks one longer."""
    return np.array_split(np.arange(batch_size), world_size)[rank]


class StepBatches(Dataset):
    """Shared part: which training items make up the batch of a step, and which of them this
    process builds (its shard: `rank` of `world_size`; one process builds them all)."""

    def __init__(self, indices: np.ndarray, batch_size: int, seed: int, stream: int,
                 rank: int = 0, world_size: int = 1) -> None:
        self.indices, self.batch_size, self.seed, self.stream = indices, batch_size, seed, stream
        self.positions = shard_positions(batch_size, rank, world_size)

    build_in_worker = False  # True: `parts` runs in the DataLoader worker (a CPU run, where
    # the worker's core is otherwise idle); False: on the training device in the main process

    def finished(self, batch: dict[str, Any]) -> dict[str, Any]:
        if self.build_in_worker:
            batch["parts"], batch["uint8"] = self.parts(batch), None
        return batch

    def parts(self, batch: dict[str, Any], device: torch.device | str = "cpu"
              ) -> torch.Tensor | None:
        """The batch's normalised parts on `device` (None if it has none), built by `build`
        from its uint8 crops with the step's random draws, which are made on the CPU generator
        (the same on every device); or those the worker already built (a CPU run)."""
        if "parts" in batch:
            return batch["parts"]
        if batch["uint8"] is None:
            return None
        _, gen = self.generators(batch["step"])
        return self.build(batch["uint8"].to(device, non_blocking=True), gen,
                          DrawRows(self.batch_size, batch["rows"]))

    def build(self, uint8: torch.Tensor, gen: torch.Generator, draw: DrawRows) -> torch.Tensor:
        raise NotImplementedError

    def items_of_step(self, step: int) -> np.ndarray:
        """Items of a step: a seeded permutation per epoch, consumed batch by batch."""
        n = len(self.indices)
        positions = np.arange(step * self.batch_size, (step + 1) * self.batch_size)
        out = np.empty(self.batch_size, dtype=np.int64)
        for epoch in np.unique(positions // n):
            mask = positions // n == epoch
            order = np.random.default_rng([self.seed, self.stream, int(epoch)]).permutation(n)
            out[mask] = self.indices[order[positions[mask] % n]]
        return out

    def generators(self, step: int) -> tuple[np.random.Generator, torch.Generator]:
        """The step's generators; their draws are made for the whole global batch."""
        rng = np.random.default_rng(step_seed(self.seed, step, 10 * self.stream + 1))
        gen = torch.Generator().manual_seed(step_seed(self.seed, step, 10 * self.stream + 2))
        return rng, gen

    def item_rng(self, step: int, position: int) -> np.random.Generator:
        """Item-level randomness whose bounds depend on the item (clip window, crop)."""
        return np.random.default_rng([self.seed, step, 10 * self.stream + 3, position])

    def shard_items(self, step: int) -> list[tuple[int, int]]:
        """(position in the global batch, item index) for this process's shard of the step."""
        items = self.items_of_step(step)
        return [(int(j), int(items[j])) for j in self.positions]

    def __len__(self) -> int:
        return sys.maxsize


def scaled_size(image_size: int) -> int:
    """The side of the centre square a training image is resized to before a random
    `image_size` crop is taken from it (256 for the paper's 225 px puzzle)."""
    return round(image_size * 256 / 225)


class PuzzleBatches(StepBatches):
    """Spatial task: jigsaw tiles of a step's images (design §3).

    Each image is resized so its shorter side is 256/225 of the puzzle size and a random square
    crop of the puzzle size is taken (the jigsaw recipe), then cut into jittered,
    colour-jittered, normalised tiles.
    """

    def __init__(
        self, source: ImageSource, indices: np.ndarray, geometry: PuzzleGeometry,
        batch_size: int, seed: int, grey_prob: float, colour_jitter: float,
        rank: int = 0, world_size: int = 1,
    ) -> None:
        super().__init__(indices, batch_size, seed, stream=0, rank=rank, world_size=world_size)
        self.source, self.geometry = source, geometry
        self.grey_prob, self.jitter = grey_prob, colour_jitter

    def __getitem__(self, step: int) -> dict[str, Any]:
        """{"uint8": the readable images of this shard, cropped to the puzzle size (B, 3, S, S;
        None if none), "rows": their positions in the global batch, "skipped": descriptions of
        the unreadable ones}. `parts` turns them into tiles on the training device."""
        rng, _ = self.generators(step)
        size = self.geometry.image_size
        scaled = scaled_size(size)
        corners = rng.integers(0, scaled - size + 1, size=(self.batch_size, 2))
        images, rows, skipped = [], [], []
        for j, i in self.shard_items(step):
            img = self.source.load(i)
            if img is None:
                skipped.append(self.source.describe(i))
                continue
            big = resize_square(img, scaled, crop="center")
            top, left = corners[j]
            images.append(big[top : top + size, left : left + size])
            rows.append(j)
        uint8 = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2) if images else None
        return self.finished({"step": step, "uint8": uint8,
                              "rows": torch.tensor(rows, dtype=torch.long), "skipped": skipped})

    def build(self, uint8: torch.Tensor, gen: torch.Generator, draw: DrawRows) -> torch.Tensor:
        """Normalised tiles (B, m*m, 3, t, t): cut, jittered and greyed where `uint8` is."""
        return make_tiles(uint8, self.geometry, train=True, grey_prob=self.grey_prob,
                          jitter_strength=self.jitter, generator=gen, draw=draw)


def read_clip(
    source: VideoSourceLike, i: int, frames: int, stride_min: int, stride_max: int,
    crop_min: float, size: int, rng: np.random.Generator | None,
) -> torch.Tensor | None:
    """uint8 (u, 3, size, size): u frames in temporal order, one crop for all (design §3).

    `rng` None gives the deterministic validation view. None when the video cannot be read or is
    shorter than the clip. A video whose header promised more frames than it decodes is retried
    once with the length the failed read discovered.
    """
    for _ in range(2):
        count = source.frame_count(i)
        window = clip_window(count or 0, frames, stride_min, stride_max, rng)
        if window is None:
            return None
        start, stride = window
        data = source.read_frames(i, [start + k * stride for k in range(frames)])
        if data is not None:
            box = clip_crop_box(data.shape[1], data.shape[2], crop_min, rng)
            return crop_clip(data, box, size)
        if source.frame_count(i) == count:  # not a length problem: unreadable
            return None
    return None


class ClipBatches(StepBatches):
    """Temporal task: u frames per video of a step, in temporal order, not yet shuffled."""

    def __init__(
        self, source: VideoSourceLike, indices: np.ndarray, *, frames: int, size: int,
        stride_min: int, stride_max: int, crop_min: float, batch_size: int, seed: int,
        grey_prob: float, colour_jitter: float, rank: int = 0, world_size: int = 1,
    ) -> None:
        super().__init__(indices, batch_size, seed, stream=1, rank=rank, world_size=world_size)
        self.source = source
        self.clip = {"frames": frames, "stride_min": stride_min, "stride_max": stride_max,
                     "crop_min": crop_min, "size": size}
        self.grey_prob, self.jitter = grey_prob, colour_jitter

    def __getitem__(self, step: int) -> dict[str, Any]:
        """As `PuzzleBatches`: this shard's clips as uint8 (B, u, 3, S, S), cropped and resized,
        frames in temporal order; their rows; the unreadable ones."""
        clips, rows, skipped = [], [], []
        for j, i in self.shard_items(step):
            clip = read_clip(self.source, i, rng=self.item_rng(step, j), **self.clip)
            if clip is None:
                skipped.append(self.source.describe(i))
                continue
            clips.append(clip)
            rows.append(j)
        uint8 = torch.stack(clips) if clips else None
        return self.finished({"step": step, "uint8": uint8,
                              "rows": torch.tensor(rows, dtype=torch.long), "skipped": skipped})

    def build(self, uint8: torch.Tensor, gen: torch.Generator, draw: DrawRows) -> torch.Tensor:
        """Normalised frames (B, u, 3, S, S), greyed and jittered, not yet shuffled."""
        return make_clip_frames(uint8, train=True, grey_prob=self.grey_prob,
                                jitter_strength=self.jitter, generator=gen, draw=draw)


def validation_tiles(
    source: ImageSource, indices: np.ndarray, geometry: PuzzleGeometry, skips: SkipCounter
) -> torch.Tensor:
    """The deterministic view of X_val images: centre crop at the training scale, centred
    tiles, no jitter."""
    images = []
    for i in indices:
        img = source.load(int(i))
        if img is None:
            skips.add(source.describe(int(i)))
            continue
        # The training scale (shorter side 256/225 of the puzzle), centred instead of random.
        big = resize_square(img, round(geometry.image_size * 256 / 225), crop="center")
        off = (big.shape[0] - geometry.image_size) // 2
        images.append(big[off : off + geometry.image_size, off : off + geometry.image_size])
    if not images:
        raise ValidationError(f"none of the {len(indices)} validation images could be read")
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
    return make_tiles(batch, geometry, train=False)


def validation_clips(
    source: VideoSourceLike, indices: np.ndarray, *, frames: int, size: int, stride_min: int,
    stride_max: int, crop_min: float, skips: SkipCounter,
) -> torch.Tensor:
    """The deterministic view of X_val videos: middle stride, centred start and crop."""
    clips = []
    for i in indices:
        clip = read_clip(source, int(i), frames, stride_min, stride_max, crop_min, size, None)
        if clip is None:
            skips.add(source.describe(int(i)))
            continue
        clips.append(clip)
    if not clips:
        raise ValidationError(f"none of the {len(indices)} validation videos could be read")
    return make_clip_frames(torch.stack(clips), train=False)
