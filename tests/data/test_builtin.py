"""Bundled demo photos (disjoint subset regions) and procedural dead-leaves images."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from permrl.data.builtin import (
    DEMO_PHOTO_NAMES,
    DEMO_REGIONS,
    DEMO_SUBSETS,
    dead_leaves,
    demo_photo,
    demo_photo_crops,
    demo_photo_path,
)


def test_demo_photos_exist_and_are_large_enough():
    assert 12 <= len(DEMO_PHOTO_NAMES) <= 16 and len(set(DEMO_PHOTO_NAMES)) == len(DEMO_PHOTO_NAMES)
    for name in DEMO_PHOTO_NAMES:
        with Image.open(demo_photo_path(name)) as img:
            assert min(img.size) >= 300, name
        photo = demo_photo(name)
        assert photo.shape == (256, 256, 3) and photo.dtype == np.uint8
        assert photo.std() > 5, name  # not a flat picture
    with pytest.raises(KeyError):
        demo_photo_path("not-a-photo")


def _region_mask(box: tuple[int, int, int, int]) -> np.ndarray:
    mask = np.zeros((256, 256), dtype=bool)
    y0, x0, y1, x1 = box
    mask[y0:y1, x0:x1] = True
    return mask


def test_regions_are_disjoint_and_cover_the_photo():
    masks = [_region_mask(DEMO_REGIONS[s]) for s in DEMO_SUBSETS]
    assert (sum(m.astype(int) for m in masks) == 1).all()


@pytest.mark.parametrize("subset", DEMO_SUBSETS)
def test_crops_lie_in_their_region(subset):
    crops = demo_photo_crops(subset, crops_per_photo=10, seed=3)
    n = len(DEMO_PHOTO_NAMES)
    assert len(crops) == 10 * n and crops.boxes.shape == (10 * n, 4)
    np.testing.assert_array_equal(crops.labels, np.repeat(np.arange(n), 10))
    assert crops.class_names == DEMO_PHOTO_NAMES
    y0, x0, y1, x1 = DEMO_REGIONS[subset]
    b = crops.boxes
    assert (b[:, 0] >= y0).all() and (b[:, 1] >= x0).all()
    assert (b[:, 2] <= y1).all() and (b[:, 3] <= x1).all()
    sides = b[:, 2] - b[:, 0]
    np.testing.assert_array_equal(sides, b[:, 3] - b[:, 1])
    assert sides.min() >= 64 and sides.max() <= 128 and len(set(sides.tolist())) > 5
    for i in (0, len(crops) - 1):
        top, left, bottom, right = crops.boxes[i]
        photo = demo_photo(DEMO_PHOTO_NAMES[crops.labels[i]])
        np.testing.assert_array_equal(crops[i], photo[top:bottom, left:right])


def test_subsets_never_share_pixels():
    covered = {}
    for subset in DEMO_SUBSETS:
        mask = np.zeros((256, 256), dtype=bool)
        for y0, x0, y1, x1 in demo_photo_crops(subset, crops_per_photo=40).boxes:
            mask[y0:y1, x0:x1] = True
        covered[subset] = mask
    assert not (covered["train"] & covered["gallery"]).any()
    assert not (covered["train"] & covered["query"]).any()
    assert not (covered["gallery"] & covered["query"]).any()


def test_crops_are_deterministic():
    a = demo_photo_crops("query", 5, seed=1)
    np.testing.assert_array_equal(a.boxes, demo_photo_crops("query", 5, seed=1).boxes)
    assert not np.array_equal(a.boxes, demo_photo_crops("query", 5, seed=2).boxes)
    with pytest.raises(ValueError, match="subset"):
        demo_photo_crops("validation")


def test_dead_leaves_deterministic_and_varied():
    a = dead_leaves(128, np.random.default_rng([0, 1]))
    assert a.shape == (128, 128, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, dead_leaves(128, np.random.default_rng([0, 1])))
    b = dead_leaves(128, np.random.default_rng([0, 2]))
    assert np.mean(a != b) > 0.5
    assert len(np.unique(a.reshape(-1, 3), axis=0)) > 100  # many shapes, textures
    assert dead_leaves(17, np.random.default_rng(0)).shape == (17, 17, 3)
