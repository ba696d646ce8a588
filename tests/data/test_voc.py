"""Pascal VOC 2007 reading on a tiny hand-made VOC tree: crops, the pixel threshold, targets."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from permrl.data.sources import ImageDataset, SourceError, open_source
from permrl.data.voc import (
    VOC_CLASSES,
    VocObject,
    read_annotation,
    voc_images,
    voc_object_crops,
)

RED, GREEN, BLUE, GREY = (220, 20, 20), (20, 200, 20), (20, 20, 220), (128, 128, 128)

# id: (width, height, [(name, (xmin, ymin, xmax, ymax), difficult, colour)])
IMAGES = {
    "000001": (200, 150, [
        ("dog", (11, 21, 110, 120), False, RED),  # 100 x 100 = 10000 pixels: kept (not under)
        ("person", (1, 1, 50, 50), False, None),  # 50 x 50 = 2500: dropped
    ]),
    "000002": (300, 200, [
        ("cat", (1, 1, 300, 200), False, None),  # 60000
        ("chair", (101, 51, 250, 150), True, GREEN),  # difficult, 150 x 100 = 15000: kept
    ]),
    "000003": (120, 100, [
        ("car", (51, 1, 200, 150), False, BLUE),  # 150 x 150 in the XML; clamped to 70 x 100
    ]),
    "000004": (150, 150, [
        ("bird", (1, 1, 150, 150), True, None),  # the only bird is difficult -> target -1
        ("dog", (1, 1, 100, 100), True, None),
        ("dog", (51, 51, 150, 150), False, None),  # a non-difficult dog too -> target 1
    ]),
    "000005": (160, 120, [("horse", (1, 1, 160, 120), False, None)]),
}  # fmt: skip
SUBSETS = {
    "trainval": ["000001", "000002", "000003", "000004"],
    "train": ["000001", "000002"],
    "val": ["000003", "000004"],
    "test": ["000005"],
}


def _xml(image_id: str, width: int, height: int, objects) -> str:  # noqa: ANN001
    parts = [f"<annotation><folder>VOC2007</folder><filename>{image_id}.jpg</filename>"]
    parts.append(f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>")
    for name, (x0, y0, x1, y1), difficult, _ in objects:
        parts.append(
            f"<object><name>{name}</name><pose>Left</pose><truncated>{int(name == 'cat')}"
            f"</truncated><difficult>{int(difficult)}</difficult><bndbox><xmin>{x0}</xmin>"
            f"<ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        )
    return "\n".join(parts) + "</annotation>\n"


def _make_voc(folder):  # noqa: ANN001, ANN202
    """A VOC2007-style folder; coloured boxes painted where `colour` is given."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (folder / sub).mkdir(parents=True)
    for image_id, (width, height, objects) in IMAGES.items():
        arr = np.full((height, width, 3), GREY, dtype=np.uint8)
        for _, (x0, y0, x1, y1), _, colour in objects:
            if colour is not None:
                arr[y0 - 1 : y1, x0 - 1 : x1] = colour
        Image.fromarray(arr).save(folder / "JPEGImages" / f"{image_id}.jpg", quality=95)
        (folder / "Annotations" / f"{image_id}.xml").write_text(
            _xml(image_id, width, height, objects)
        )
    for subset, ids in SUBSETS.items():
        (folder / "ImageSets" / "Main" / f"{subset}.txt").write_text("\n".join(ids) + "\n")
    # per-class files as in the real devkit: present, not used
    (folder / "ImageSets" / "Main" / "dog_trainval.txt").write_text("000001  1\n000002 -1\n")
    return folder


@pytest.fixture
def voc_root(tmp_path):  # noqa: ANN201
    _make_voc(tmp_path / "VOCdevkit" / "VOC2007")
    return tmp_path


def test_classes_are_the_standard_twenty():
    assert len(VOC_CLASSES) == 20 and len(set(VOC_CLASSES)) == 20
    assert VOC_CLASSES[0] == "aeroplane" and VOC_CLASSES[10] == "diningtable"
    assert VOC_CLASSES[14] == "person" and VOC_CLASSES[-1] == "tvmonitor"


def test_read_annotation(voc_root):
    objects = read_annotation(voc_root / "VOCdevkit/VOC2007/Annotations/000002.xml")
    assert objects == [
        VocObject("cat", (1, 1, 300, 200), difficult=False, truncated=True),
        VocObject("chair", (101, 51, 250, 150), difficult=True, truncated=False),
    ]
    assert objects[1].pixels == 150 * 100


def test_object_crops_sizes_labels_and_dropped_count(voc_root):
    src = voc_object_crops(voc_root, "trainval")
    # 000001: dog (person dropped); 000002: cat, chair (difficult, kept); 000003: car;
    # 000004: bird 150x150, dog 100x100, dog 100x100 (difficult ones kept)
    names = ["dog", "cat", "chair", "car", "bird", "dog", "dog"]
    assert len(src) == 7
    assert src.labels.tolist() == [VOC_CLASSES.index(n) for n in names]
    assert src.labels.tolist()[:4] == [11, 7, 8, 6]
    assert src.classes == list(VOC_CLASSES) and src.targets is None
    assert src.notes == [f"{src.name}: dropped 1 object box under 10000 pixels"]
    shapes = [src.load(i).shape for i in range(len(src))]
    assert shapes == [
        (100, 100, 3), (200, 300, 3), (100, 150, 3), (100, 70, 3),
        (150, 150, 3), (100, 100, 3), (100, 100, 3),
    ]  # fmt: skip
    for i, colour in ((0, RED), (2, GREEN), (3, BLUE)):  # the painted boxes, nothing around
        crop = src.load(i).astype(float)
        assert np.abs(crop.mean(axis=(0, 1)) - colour).max() < 6, i
        assert np.abs(crop[1:-1, 1:-1] - colour).max() < 40, i
    assert src.describe(0).endswith("000001.jpg box (11, 21, 110, 120)")


def test_object_crop_options(voc_root):
    no_difficult = voc_object_crops(voc_root, "trainval", include_difficult=False)
    assert [VOC_CLASSES[k] for k in no_difficult.labels] == ["dog", "cat", "car", "dog"]
    assert any("dropped 3 difficult objects" in n for n in no_difficult.notes)
    everything = voc_object_crops(voc_root, "trainval", min_pixels=1)
    assert len(everything) == 8 and everything.notes == []
    assert everything.load(1).shape == (50, 50, 3)
    strict = voc_object_crops(voc_root, "trainval", min_pixels=10001)  # the 100 x 100 ones go
    assert len(strict) == 4 and "dropped 4 object boxes under 10001" in strict.notes[0]
    test = voc_object_crops(voc_root, "test")
    assert [VOC_CLASSES[k] for k in test.labels] == ["horse"]
    assert voc_object_crops(voc_root, "val").labels.tolist() == [6, 2, 11, 11]


def test_images_multilabel_targets(voc_root):
    src, targets = voc_images(voc_root, "trainval")
    assert src.targets is targets and targets.shape == (4, 20) and targets.dtype == np.float32
    assert (src.labels == -1).all() and src.classes == list(VOC_CLASSES)
    expected = np.zeros((4, 20), dtype=np.float32)
    expected[0, [VOC_CLASSES.index("dog"), VOC_CLASSES.index("person")]] = 1
    expected[1, VOC_CLASSES.index("cat")] = 1
    expected[1, VOC_CLASSES.index("chair")] = -1  # difficult only
    expected[2, VOC_CLASSES.index("car")] = 1
    expected[3, VOC_CLASSES.index("bird")] = -1  # difficult only
    expected[3, VOC_CLASSES.index("dog")] = 1  # one difficult dog, one not
    np.testing.assert_array_equal(targets, expected)
    assert src.load(1).shape == (200, 300, 3)
    assert src.describe(2).endswith("000003.jpg")


def test_both_layouts_and_open_source(voc_root):
    inner = voc_root / "VOCdevkit" / "VOC2007"
    for root in (voc_root, inner):
        src = open_source(f"voc2007:{root}")
        assert len(src) == 7 and src.labels[0] == VOC_CLASSES.index("dog")
    images = open_source(f"voc2007:{inner}?mode=images&subset=val")
    assert len(images) == 2 and images.targets.shape == (2, 20)
    limited = open_source(f"voc2007:{voc_root}?mode=images&limit=3")
    assert len(limited) == 3 and limited.targets.shape == (3, 20)
    np.testing.assert_array_equal(limited.targets, voc_images(voc_root)[1][:3])
    crops = open_source(f"voc2007:{voc_root}?min_pixels=1&limit=2")
    assert len(crops) == 2 and crops.describe(1).endswith("box (1, 1, 50, 50)")
    item = ImageDataset(crops, 32, crop="center")[0]
    assert item["image"].shape == (3, 32, 32) and item["label"] == VOC_CLASSES.index("dog")


def test_missing_jpeg_loads_as_none(voc_root):
    (voc_root / "VOCdevkit/VOC2007/JPEGImages/000003.jpg").unlink()
    src = voc_object_crops(voc_root)
    assert src.load(3) is None and src.load(0) is not None


def test_errors(tmp_path, voc_root):
    inner = voc_root / "VOCdevkit" / "VOC2007"
    with pytest.raises(SourceError, match="needs a path"):
        open_source("voc2007:")
    with pytest.raises(SourceError, match=f"path does not exist: {tmp_path / 'nope'}"):
        open_source(f"voc2007:{tmp_path / 'nope'}")
    with pytest.raises(SourceError, match="subset must be one of trainval, test, train, val"):
        open_source(f"voc2007:{voc_root}?subset=all")
    with pytest.raises(SourceError, match="mode must be one of objects, images"):
        open_source(f"voc2007:{voc_root}?mode=boxes")
    with pytest.raises(SourceError, match="min_pixels must be an integer"):
        open_source(f"voc2007:{voc_root}?min_pixels=big")
    with pytest.raises(SourceError, match="no object boxes of at least 99999999 pixels"):
        open_source(f"voc2007:{voc_root}?min_pixels=99999999")

    (inner / "Annotations" / "000002.xml").unlink()
    with pytest.raises(SourceError, match="missing annotation .*000002.xml") as err:
        open_source(f"voc2007:{voc_root}")
    assert str(err.value).startswith(f"image source 'voc2007:{voc_root}': ")
    assert "\n" not in str(err.value)
    (inner / "Annotations" / "000002.xml").write_text("<annotation><object>")
    with pytest.raises(SourceError, match="cannot parse .*000002.xml"):
        open_source(f"voc2007:{voc_root}?mode=images")
    (inner / "Annotations" / "000002.xml").write_text(
        _xml("000002", 10, 10, [("unicorn", (1, 1, 5, 5), False, None)])
    )
    with pytest.raises(SourceError, match="unknown class 'unicorn'"):
        open_source(f"voc2007:{voc_root}")
    with pytest.raises(SourceError, match="missing subset file .*test.txt"):
        (inner / "ImageSets" / "Main" / "test.txt").unlink()
        open_source(f"voc2007:{voc_root}?subset=test")
    (inner / "JPEGImages").rename(inner / "images")
    with pytest.raises(SourceError, match="missing folder .*JPEGImages"):
        open_source(f"voc2007:{voc_root}?subset=val")

    (inner / "Annotations").rename(inner / "notes")
    with pytest.raises(SourceError, match="no Annotations folder") as err:
        open_source(f"voc2007:{voc_root}")
    assert str(inner / "Annotations") in str(err.value) and "\n" not in str(err.value)
