"""Jigsaw puzzles and shuffled clips, built in batch on tensors (design §3).

Image (square, grid*cell px) -> m x m grid of cells -> from each cell a tile (random position
inside the cell: jitter; centred for deterministic validation views) -> per-tile colour jitter ->
per-tile, per-channel normalisation (std 0 -> 1) -> tiles reordered by a permutation (Eq. 1).
All of it on (B, 3, S, S) tensors, no per-sample Python loops.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from permrl.config import Config


@dataclass(frozen=True)
class PuzzleGeometry:
    """An m x m grid of `cell` px cells, a `tile` px tile cut from each cell."""

    grid: int
    cell: int
    tile: int

    def __post_init__(self) -> None:
        if self.grid < 2:
            raise ValueError(f"grid must be >= 2, got {self.grid}")
        if not 0 < self.tile <= self.cell:
            raise ValueError(f"tile ({self.tile}) must be in 1..cell ({self.cell})")

    @property
    def image_size(self) -> int:
        return self.grid * self.cell

    @property
    def num_tiles(self) -> int:
        return self.grid * self.grid

    @property
    def max_jitter(self) -> int:
        return self.cell - self.tile


def geometry_of(cfg: Config) -> PuzzleGeometry:
    """The jigsaw geometry of a config's `spatial` section."""
    s = cfg.spatial
    return PuzzleGeometry(grid=s.grid, cell=s.cell, tile=s.tile)


def tile_boxes(geometry: PuzzleGeometry, offsets: torch.Tensor) -> torch.Tensor:
    """Top-left (row, col) of every tile, in raster order of the cells.

    offsets: (..., m*m, 2) integer offsets of each tile inside its cell; they are clamped to
    0..cell-tile, so a box can never leave its cell (and so never the image).
    Returns (..., m*m, 2) = cell origin + clamped offset.
    """
    g = geometry
    cells = torch.arange(g.num_tiles, device=offsets.device)
    origin = torch.stack((cells // g.grid, cells % g.grid), dim=-1) * g.cell
    return origin + offsets.long().clamp(0, g.max_jitter)


@dataclass(frozen=True)
class DrawRows:
    """Which rows of a batch's random draws some samples take.

    The random numbers of a training step are drawn for the whole (global) batch of `batch`
    samples; samples at positions `rows` take theirs. A process holding one shard of the batch,
    or a batch with unreadable items left out, gets exactly the numbers it would have had in the
    complete batch, so the data of a step does not depend on how it is split across processes.
    """

    batch: int
    rows: torch.Tensor  # (b,) int64 positions in 0..batch-1

    @classmethod
    def all(cls, batch: int) -> DrawRows:
        return cls(batch, torch.arange(batch))


def draw_device(generator: torch.Generator | None, device) -> torch.device | None:
    """Where a step's random numbers are drawn: on its generator's device (a CPU generator for
    the batches, so the draws, and a resumed run, do not depend on where the tiles are built)."""
    return generator.device if generator is not None else device


def to_device(draws: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """A step's CPU draws on the tiles' device: on a GPU through pinned memory, asynchronous
    (a pageable copy would make the host wait for the GPU at every one)."""
    if torch.device(device).type == "cuda" and draws.device.type == "cpu":
        return draws.pin_memory().to(device, non_blocking=True)
    return draws.to(device)


def random_offsets(batch: int, geometry: PuzzleGeometry, generator=None, device=None):
    """Uniform jitter of each tile inside its cell: (B, m*m, 2)."""
    return torch.randint(
        0, geometry.max_jitter + 1, (batch, geometry.num_tiles, 2),
        generator=generator, device=device,
    )


def centre_offsets(batch: int, geometry: PuzzleGeometry, device=None) -> torch.Tensor:
    """The deterministic view: every tile centred in its cell."""
    return torch.full((batch, geometry.num_tiles, 2), geometry.max_jitter // 2, device=device)


def cut_tiles(images: torch.Tensor, boxes: torch.Tensor, tile: int) -> torch.Tensor:
    """(B, C, S, S) images, (B, n, 2) boxes -> (B, n, C, tile, tile) by one gather.

    `unfold` views every tile-sized window of each image; the boxes pick B*n of them (4x faster
    than gathering pixel by pixel).
    """
    windows = images.unfold(2, tile, 1).unfold(3, tile, 1)  # (B, C, S-t+1, S-t+1, t, t)
    batch_idx = torch.arange(boxes.shape[0], device=images.device)[:, None]
    return windows.permute(0, 2, 3, 1, 4, 5)[batch_idx, boxes[..., 0], boxes[..., 1]]


def normalise_tiles(tiles: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per tile and channel: subtract the mean, divide by the std (a constant one -> 0)."""
    mean = tiles.mean(dim=(-2, -1), keepdim=True)
    centred = tiles - mean
    # Two passes (mean, then mean squared deviation): as exact as torch.std_mean, 6x faster here.
    std = (centred * centred).mean(dim=(-2, -1), keepdim=True).sqrt_()
    flat = std < eps  # a constant tile (channel) maps to exactly 0
    return torch.where(flat, 0.0, centred.div_(torch.where(flat, 1.0, std)))


def to_grey(x: torch.Tensor) -> torch.Tensor:
    """Luma (ITU-R 601) replicated over the channel dim (dim -3)."""
    r, g, b = x.unbind(dim=-3)  # (the same sum, in the same order, as a weighted channel sum,
    luma = (r * 0.299 + g * 0.587 + b * 0.114).unsqueeze(-3)  # without its 3x temporary)
    return luma.expand_as(x)


def colour_jitter(
    tiles: torch.Tensor, strength: float, generator=None, draw: DrawRows | None = None
) -> torch.Tensor:
    """Per-tile saturation and gamma jitter on [0, 1] tiles (B, n, 3, t, t).

    A per-channel gain or offset would be undone by the per-channel normalisation, so the jitter
    is non-linear (gamma) and mixes channels (saturation).
    """
    if strength <= 0:
        return tiles
    draw = draw or DrawRows.all(tiles.shape[0])
    shape = (draw.batch, tiles.shape[1], 1, 1, 1)
    here = draw_device(generator, tiles.device)
    u = to_device(torch.rand((2, *shape), generator=generator, device=here)[:, draw.rows],
                  tiles.device)
    saturation = 1 + strength * (2 * u[0] - 1)
    gamma = torch.exp(strength * (2 * u[1] - 1))
    grey = to_grey(tiles)
    # grey + saturation (tiles - grey), clamped, then the gamma: in place on one temporary
    out = (tiles - grey).mul_(saturation).add_(grey).clamp_(0, 1).clamp_min_(1e-6)
    return out.pow_(gamma)


def make_tiles(
    images: torch.Tensor,
    geometry: PuzzleGeometry,
    *,
    train: bool = True,
    grey_prob: float = 0.3,
    jitter_strength: float = 0.2,
    generator: torch.Generator | None = None,
    draw: DrawRows | None = None,
) -> torch.Tensor:
    """uint8 (B, 3, S, S) images -> normalised tiles (B, m*m, 3, tile, tile) in grid order.

    `train=False` gives the deterministic validation view (centred tiles, no jitter, no grey).
    This part does not depend on the permutation, so it can run in DataLoader workers. `draw`:
    which rows of a larger batch's random draws these images take (default: all B).

    >>> images = torch.zeros(8, 3, 72, 72, dtype=torch.uint8)  # 2 x 2 cells of 36 px
    >>> make_tiles(images, PuzzleGeometry(grid=2, cell=36, tile=32)).shape
    torch.Size([8, 4, 3, 32, 32])
    """
    b, _, h, w = images.shape
    g = geometry
    if h != g.image_size or w != g.image_size:
        raise ValueError(f"images are {h}x{w}, the puzzle geometry needs {g.image_size} px")
    dev = images.device
    draw = draw or DrawRows.all(b)
    grey = None
    here = draw_device(generator, dev)
    if train:
        offsets = to_device(random_offsets(draw.batch, g, generator, here)[draw.rows], dev)
        if grey_prob > 0:
            grey = torch.rand(draw.batch, generator=generator, device=here)[draw.rows] < grey_prob
            grey = to_device(grey, dev)
    else:
        offsets = centre_offsets(b, g, dev)
    # Cut the uint8 images first (4x less memory traffic), then convert the tiles only.
    tiles = cut_tiles(images, tile_boxes(g, offsets), g.tile).float().div_(255)
    if grey is not None:  # per pixel: cutting first changes nothing; no host sync (no mask)
        tiles = torch.where(grey[:, None, None, None, None], to_grey(tiles), tiles)
    if train:
        tiles = colour_jitter(tiles, jitter_strength, generator, draw)
    return normalise_tiles(tiles)


def shuffle_tiles(
    tiles: torch.Tensor, permutations: torch.Tensor, perm_index: torch.Tensor
) -> torch.Tensor:
    """Eq. 1: output position k of sample b holds tile permutations[perm_index[b], k].

    >>> tiles = torch.arange(4.0).view(1, 4, 1, 1, 1)  # one sample, tiles 0..3
    >>> psi = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0]])
    >>> shuffle_tiles(tiles, psi, torch.tensor([1])).flatten()  # the puzzle; its class is 1
    tensor([3., 2., 1., 0.])
    """
    order = permutations.to(tiles.device).long()[perm_index.to(tiles.device)]  # (B, n)
    batch_idx = torch.arange(tiles.shape[0], device=tiles.device)[:, None]
    return tiles[batch_idx, order]  # whole tiles are copied (~10x faster than take_along_dim)


# Temporal samples (design §3): u frames in order, one crop per clip, per-frame jitter. ----------


def clip_window(
    frame_count: int, frames: int, stride_min: int, stride_max: int,
    rng: np.random.Generator | None,
) -> tuple[int, int] | None:
    """(start, stride) of `frames` frames taken every `stride` frames, inside the video.

    Training (`rng` given): stride uniform in stride_min..stride_max, limited to what the video
    allows, then a uniform start. Validation (`rng` None): the middle stride of the range,
    rounded up (or the largest that fits), and a centred start, so the view is deterministic
    and its motion per frame is that of a typical training clip. None when the video has fewer
    than `frames` frames.
    """
    if frame_count < frames:
        return None
    longest = (frame_count - 1) // (frames - 1)  # the largest stride that fits
    hi = min(stride_max, longest)
    lo = min(stride_min, hi)
    if rng is None:
        stride = min((stride_min + stride_max + 1) // 2, longest)
        span = (frames - 1) * stride + 1
        return (frame_count - span) // 2, stride
    stride = int(rng.integers(lo, hi + 1))
    span = (frames - 1) * stride + 1
    return int(rng.integers(0, frame_count - span + 1)), stride


def clip_crop_box(
    height: int, width: int, crop_min: float, rng: np.random.Generator | None
) -> tuple[int, int, int]:
    """(top, left, side) of the one square crop shared by all frames of a clip.

    Training: side uniform in crop_min..1 of the shorter side, position uniform. Validation
    (`rng` None): the centred square of the mean training side, (crop_min + 1) / 2 of the
    shorter side, so objects and motion have their typical training scale.
    """
    short = min(height, width)
    if rng is None:
        side = max(1, round((crop_min + 1) / 2 * short))
        return (height - side) // 2, (width - side) // 2, side
    side = int(rng.integers(max(1, round(crop_min * short)), short + 1))
    return int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1)), side


def crop_clip(frames: np.ndarray, box: tuple[int, int, int], size: int) -> torch.Tensor:
    """uint8 (u, H, W, 3) frames -> uint8 (u, 3, size, size): the same crop, then resized."""
    top, left, side = box
    x = torch.from_numpy(np.ascontiguousarray(frames[:, top : top + side, left : left + side]))
    x = x.permute(0, 3, 1, 2).float()
    if side != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                          align_corners=False)
    return x.round_().clamp_(0, 255).to(torch.uint8)


def make_clip_frames(
    clips: torch.Tensor,
    *,
    train: bool = True,
    grey_prob: float = 0.3,
    jitter_strength: float = 0.2,
    generator: torch.Generator | None = None,
    draw: DrawRows | None = None,
) -> torch.Tensor:
    """uint8 (B, u, 3, S, S) clips (frames in temporal order) -> normalised float frames.

    Greying is per clip, colour jitter and normalisation per frame (frame-level augmentation,
    Sect. 3.1), so a frame cannot be placed by its colour statistics. Shuffle the result with
    `shuffle_tiles`, which reorders dim 1 whatever the parts are (Eq. 1). `draw` as in
    `make_tiles`.
    """
    x = clips.float().div_(255)
    draw = draw or DrawRows.all(x.shape[0])
    if train and grey_prob > 0:
        here = draw_device(generator, x.device)
        grey = torch.rand(draw.batch, generator=generator, device=here)[draw.rows] < grey_prob
        x = torch.where(to_device(grey, x.device)[:, None, None, None, None], to_grey(x), x)
    if train:
        x = colour_jitter(x, jitter_strength, generator, draw)
    return normalise_tiles(x)
