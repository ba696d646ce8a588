"""Property-based tests (hypothesis) over the config space and the permutation utilities."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from permrl.config import Config, ConfigError, load_config
from permrl.data.samples import PuzzleGeometry, shuffle_tiles, tile_boxes
from permrl.permutations import (
    invert_permutation,
    select_permutations,
    validate_permutations,
)


def leaf_keys(obj=None, prefix=""):
    obj = obj or Config()
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from leaf_keys(value, f"{prefix}{f.name}.")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            yield f"{prefix}{f.name}"


NUMERIC_KEYS = sorted(leaf_keys())
VALUES = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
                   st.sampled_from(["abc", "", "1e-3", "[1, 2]", "true", "null"]))


@settings(max_examples=150, deadline=None)
@given(key=st.sampled_from(NUMERIC_KEYS), value=VALUES)
def test_every_numeric_key_is_either_accepted_or_rejected_naming_it(key, value):
    text = value if isinstance(value, str) else repr(value)
    try:
        cfg = load_config(overrides=[f"{key}={text}"])
    except ConfigError as e:
        message = str(e)
        assert "\n" not in message
        assert key in message or key.split(".")[0] in message, message
        return
    got = cfg
    for part in key.split("."):
        got = getattr(got, part)
    assert isinstance(got, int | float) and math.isfinite(got)  # nothing invalid slips through


@settings(max_examples=60, deadline=None)
@given(size=st.integers(2, 7), data=st.data())
def test_shuffle_then_inverse_shuffle_is_the_identity(size, data):
    perm = np.array(data.draw(st.permutations(range(size))))
    parts = torch.arange(size * 3).view(1, size, 3)
    first = torch.tensor([0])
    shuffled = shuffle_tiles(parts, torch.as_tensor(perm)[None], first)
    back = shuffle_tiles(shuffled, torch.as_tensor(invert_permutation(perm))[None], first)
    assert torch.equal(back, parts)
    assert all(shuffled[0, k, 0] == parts[0, perm[k], 0] for k in range(size))  # Eq. 1


@settings(max_examples=40, deadline=None)
@given(size=st.integers(2, 6), seed=st.integers(0, 10**6), data=st.data(),
       criterion=st.sampled_from(["maxmin", "maxmean"]))
def test_selected_sets_are_valid_distinct_and_seeded(size, seed, data, criterion):
    count = data.draw(st.integers(1, math.factorial(size)))
    perms = select_permutations(count, size, seed=seed, criterion=criterion)
    validate_permutations(perms)  # rows are permutations, no duplicates
    assert perms.shape == (count, size)
    assert np.array_equal(perms, select_permutations(count, size, seed=seed, criterion=criterion))
    with pytest.raises(ValueError):
        select_permutations(math.factorial(size) + 1, size, seed=seed)


@settings(max_examples=80, deadline=None)
@given(grid=st.integers(2, 4), cell=st.integers(4, 40), data=st.data())
def test_tile_boxes_never_leave_the_image(grid, cell, data):
    tile = data.draw(st.integers(1, cell))
    g = PuzzleGeometry(grid, cell, tile)
    offsets = torch.tensor(data.draw(st.lists(st.integers(-50, 50), min_size=2 * grid * grid,
                                              max_size=2 * grid * grid))).view(grid * grid, 2)
    boxes = tile_boxes(g, offsets)
    assert (boxes >= 0).all() and (boxes + tile <= g.image_size).all()
    cells = torch.stack((torch.arange(grid * grid) // grid, torch.arange(grid * grid) % grid), 1)
    assert torch.equal(boxes // cell, cells) or (tile == cell and (boxes % cell == 0).all())
