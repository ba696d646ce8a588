"""Jigsaw samples (design §3): geometry, tile boxes, cutting, normalisation, shuffling."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from permrl.data.samples import (
    PuzzleGeometry,
    centre_offsets,
    colour_jitter,
    cut_tiles,
    make_tiles,
    normalise_tiles,
    shuffle_tiles,
    tile_boxes,
)

CPU = PuzzleGeometry(grid=3, cell=36, tile=32)


# --- PuzzleGeometry -------------------------------------------------------------------------


@pytest.mark.parametrize("grid", [1, 0, -2])
def test_geometry_rejects_small_grid(grid):
    with pytest.raises(ValueError, match="grid"):
        PuzzleGeometry(grid=grid, cell=36, tile=32)


@pytest.mark.parametrize("tile", [37, 100, 0, -1])
def test_geometry_rejects_tile_outside_cell(tile):
    with pytest.raises(ValueError, match="tile"):
        PuzzleGeometry(grid=3, cell=36, tile=tile)


@pytest.mark.parametrize(
    "grid, cell, tile, size, n, jitter",
    [(3, 36, 32, 108, 9, 4), (3, 75, 64, 225, 9, 11), (2, 10, 10, 20, 4, 0), (4, 5, 1, 20, 16, 4)],
)
def test_geometry_properties(grid, cell, tile, size, n, jitter):
    g = PuzzleGeometry(grid=grid, cell=cell, tile=tile)
    assert (g.image_size, g.num_tiles, g.max_jitter) == (size, n, jitter)


# --- tile_boxes -----------------------------------------------------------------------------


@pytest.mark.parametrize("geom", [CPU, PuzzleGeometry(2, 7, 5), PuzzleGeometry(3, 6, 6)])
def test_tile_boxes_brute_force_sweep_stays_in_own_cell(geom):
    mj = geom.max_jitter
    values = range(-3, mj + 4)  # includes negative and too-large offsets
    pairs = list(itertools.product(values, values))
    n = geom.num_tiles
    # every (dr, dc) pair applied to every cell at once: (P, n, 2)
    offsets = torch.tensor(pairs, dtype=torch.long)[:, None, :].expand(-1, n, 2)
    boxes = tile_boxes(geom, offsets)
    assert boxes.shape == (len(pairs), n, 2)
    for p, (dr, dc) in enumerate(pairs):
        for k in range(n):
            cr, cc = divmod(k, geom.grid)
            r, c = boxes[p, k].tolist()
            assert r == cr * geom.cell + min(max(dr, 0), mj)
            assert c == cc * geom.cell + min(max(dc, 0), mj)
            # the box [r, r+tile) x [c, c+tile) lies inside its own cell ...
            assert cr * geom.cell <= r and r + geom.tile <= (cr + 1) * geom.cell
            assert cc * geom.cell <= c and c + geom.tile <= (cc + 1) * geom.cell
            # ... and hence inside the image
            assert 0 <= r and r + geom.tile <= geom.image_size
            assert 0 <= c and c + geom.tile <= geom.image_size


def test_tile_boxes_centre_offsets_hand_computed():
    # grid 3, cell 36, tile 32: jitter range 4, centre offset 2 -> top-left (36 r + 2, 36 c + 2)
    boxes = tile_boxes(CPU, centre_offsets(1, CPU))[0]
    expected = [
        [2, 2], [2, 38], [2, 74],
        [38, 2], [38, 38], [38, 74],
        [74, 2], [74, 38], [74, 74],
    ]
    assert boxes.tolist() == expected
    assert boxes[1 * 3 + 2].tolist() == [38, 74]  # cell (1, 2)


def test_tile_boxes_random_batch_matches_clamp_formula():
    g = CPU
    offsets = torch.randint(-10, 15, (4, 9, 2), generator=torch.Generator().manual_seed(0))
    boxes = tile_boxes(g, offsets)
    for b in range(4):
        for k in range(9):
            cr, cc = divmod(k, 3)
            dr, dc = offsets[b, k].tolist()
            assert boxes[b, k].tolist() == [
                36 * cr + min(max(dr, 0), 4),
                36 * cc + min(max(dc, 0), 4),
            ]


# --- cut_tiles ------------------------------------------------------------------------------


def test_cut_tiles_equals_naive_slicing_loop():
    gen = torch.Generator().manual_seed(1)
    g = CPU
    b = 3
    images = torch.rand(b, 3, g.image_size, g.image_size, generator=gen)
    offsets = torch.randint(0, g.max_jitter + 1, (b, g.num_tiles, 2), generator=gen)
    boxes = tile_boxes(g, offsets)
    out = cut_tiles(images, boxes, g.tile)
    assert out.shape == (b, g.num_tiles, 3, g.tile, g.tile)
    for i in range(b):
        for k in range(g.num_tiles):
            r, c = boxes[i, k].tolist()
            expected = images[i, :, r : r + g.tile, c : c + g.tile]
            assert torch.equal(out[i, k], expected)


def test_cut_tiles_hand_example():
    img = torch.arange(16.0).view(1, 1, 4, 4)  # value = 4 * row + col
    boxes = torch.tensor([[[0, 0], [1, 2], [2, 1]]])
    out = cut_tiles(img, boxes, 2)
    assert out[0, :, 0].tolist() == [
        [[0, 1], [4, 5]],
        [[6, 7], [10, 11]],
        [[9, 10], [13, 14]],
    ]


# --- normalise_tiles ------------------------------------------------------------------------


def test_normalise_tiles_matches_numpy():
    gen = torch.Generator().manual_seed(2)
    tiles = torch.rand(2, 4, 3, 8, 8, generator=gen, dtype=torch.float64) * 5 + 1
    out = normalise_tiles(tiles).numpy()
    x = tiles.numpy()
    mean = x.mean(axis=(-2, -1), keepdims=True)
    std = x.std(axis=(-2, -1), keepdims=True)  # population std (ddof=0)
    np.testing.assert_allclose(out, (x - mean) / std, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(out.mean(axis=(-2, -1)), 0, atol=1e-10)
    np.testing.assert_allclose(out.std(axis=(-2, -1)), 1, atol=1e-10)


def test_normalise_constant_tile_maps_to_zero():
    tiles = torch.rand(1, 2, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    tiles[0, 1] = 0.7  # a constant tile
    tiles[0, 0, 2] = 0.25  # a constant channel of an otherwise varying tile
    out = normalise_tiles(tiles)
    assert torch.equal(out[0, 1], torch.zeros(3, 4, 4))
    assert torch.equal(out[0, 0, 2], torch.zeros(4, 4))
    x = tiles[0, 0, :2].numpy()
    ref = (x - x.mean(axis=(-2, -1), keepdims=True)) / x.std(axis=(-2, -1), keepdims=True)
    np.testing.assert_allclose(out[0, 0, :2].numpy(), ref, rtol=1e-5, atol=1e-5)


# --- shuffle_tiles --------------------------------------------------------------------------


def test_shuffle_tiles_hand_example():
    # tiles labelled by their value: tile i of sample b is filled with 10 * b + i
    tiles = (torch.arange(2)[:, None] * 10 + torch.arange(4)).float()
    tiles = tiles[:, :, None, None, None].expand(2, 4, 1, 2, 2).contiguous()
    perms = torch.tensor([[0, 1, 2, 3], [2, 0, 3, 1], [3, 2, 1, 0]])
    out = shuffle_tiles(tiles, perms, torch.tensor([1, 2]))
    labels = out[:, :, 0, 0, 0].tolist()
    assert labels == [[2, 0, 3, 1], [13, 12, 11, 10]]
    assert torch.equal(out[:, :, 0], out[:, :, 0, :1, :1].expand(-1, -1, 2, 2))


def test_shuffle_tiles_equals_naive_loop():
    gen = torch.Generator().manual_seed(4)
    b, n = 5, 9
    tiles = torch.rand(b, n, 3, 4, 4, generator=gen)
    perms = torch.stack([torch.randperm(n, generator=gen) for _ in range(7)])
    idx = torch.randint(0, 7, (b,), generator=gen)
    out = shuffle_tiles(tiles, perms, idx)
    for i in range(b):
        for k in range(n):
            assert torch.equal(out[i, k], tiles[i, perms[idx[i], k]])


# --- make_tiles -----------------------------------------------------------------------------


def _images(b=3, g=CPU, seed=5):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, g.image_size, g.image_size), generator=gen,
                         dtype=torch.uint8)


def test_make_tiles_eval_is_deterministic_centre_crop():
    images = _images()
    a = make_tiles(images, CPU, train=False)
    b = make_tiles(images, CPU, train=False, generator=torch.Generator().manual_seed(9))
    assert torch.equal(a, b)
    x = images.float() / 255
    ref = normalise_tiles(cut_tiles(x, tile_boxes(CPU, centre_offsets(3, CPU)), CPU.tile))
    assert a.shape == (3, 9, 3, 32, 32)
    torch.testing.assert_close(a, ref, rtol=0, atol=1e-6)


def test_make_tiles_does_not_modify_input():
    images = _images()
    copy = images.clone()
    make_tiles(images, CPU, train=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(images, copy)


def test_make_tiles_train_seeded_reproducible_and_seed_dependent():
    images = _images()
    a = make_tiles(images, CPU, train=True, generator=torch.Generator().manual_seed(11))
    b = make_tiles(images, CPU, train=True, generator=torch.Generator().manual_seed(11))
    c = make_tiles(images, CPU, train=True, generator=torch.Generator().manual_seed(12))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_make_tiles_grey_prob_one_gives_equal_channels():
    images = _images()
    out = make_tiles(images, CPU, train=True, grey_prob=1.0, jitter_strength=0.0,
                     generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[:, :, 0], out[:, :, 1])
    assert torch.equal(out[:, :, 0], out[:, :, 2])
    # and with colour jitter on top (saturation of a grey tile is still grey)
    out = make_tiles(images, CPU, train=True, grey_prob=1.0, jitter_strength=0.5,
                     generator=torch.Generator().manual_seed(1))
    assert torch.equal(out[:, :, 0], out[:, :, 1])
    assert torch.equal(out[:, :, 0], out[:, :, 2])


def test_make_tiles_train_without_augmentation_is_a_jittered_crop():
    # grey_prob 0 and jitter 0: every tile is a normalised crop at some offset in 0..max_jitter
    images = _images(b=2)
    out = make_tiles(images, CPU, train=True, grey_prob=0.0, jitter_strength=0.0,
                     generator=torch.Generator().manual_seed(3))
    x = images.float() / 255
    mj = CPU.max_jitter
    for i in range(2):
        for k in range(9):
            cr, cc = divmod(k, 3)
            found = False
            for dr, dc in itertools.product(range(mj + 1), repeat=2):
                r, c = 36 * cr + dr, 36 * cc + dc
                ref = normalise_tiles(x[i, :, r : r + 32, c : c + 32])
                if torch.allclose(out[i, k], ref, atol=1e-5):
                    found = True
                    break
            assert found, (i, k)


@pytest.mark.parametrize("shape", [(1, 3, 107, 108), (1, 3, 108, 107), (1, 3, 225, 225)])
def test_make_tiles_wrong_size_raises(shape):
    with pytest.raises(ValueError, match="108"):
        make_tiles(torch.zeros(shape, dtype=torch.uint8), CPU, train=False)


# --- colour_jitter --------------------------------------------------------------------------


def test_colour_jitter_strength_zero_is_identity():
    tiles = torch.rand(2, 9, 3, 5, 5, generator=torch.Generator().manual_seed(6))
    assert torch.equal(colour_jitter(tiles, 0.0), tiles)
    assert torch.equal(colour_jitter(tiles, 0.0, torch.Generator().manual_seed(1)), tiles)
