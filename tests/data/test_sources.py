"""Source specs (folder, fashion-mnist, demo kinds), their errors, and the Dataset/collate."""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from permrl.data.builtin import DEMO_PHOTO_NAMES
from permrl.data.sources import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    SOURCE_KINDS,
    ImageDataset,
    SkipCounter,
    SourceError,
    collate_images,
    open_source,
)


def _png(path, value: int = 0, size: tuple[int, int] = (12, 10)):  # noqa: ANN001, ANN202
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, value, value)).save(path)
    return path


# folder: ----------------------------------------------------------------------------------------


def test_flat_folder_is_unlabelled_and_sorted(tmp_path):
    for name in ("b.png", "a.JPG", "c.bmp"):
        img = Image.new("RGB", (8, 8), (1, 2, 3))
        img.save(tmp_path / name, format="JPEG" if name.endswith("JPG") else None)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "data.npy").write_bytes(b"\x93NUMPY")
    (tmp_path / ".hidden.png").write_bytes(b"")
    (tmp_path / "._b.png").write_bytes(b"\0\5\x16\7")
    src = open_source(f"folder:{tmp_path}")
    assert len(src) == 3 and src.classes == [] and src.name == f"folder:{tmp_path}"
    assert [os.path.basename(src.describe(i)) for i in range(3)] == ["a.JPG", "b.png", "c.bmp"]
    assert src.labels.dtype == np.int64 and (src.labels == -1).all()
    assert src.load(1).shape == (8, 8, 3)


def test_class_subfolders_give_labels_recursively(tmp_path):
    _png(tmp_path / "dog" / "1.png")
    _png(tmp_path / "cat" / "x" / "y" / "deep.png")
    _png(tmp_path / "cat" / "2.png")
    _png(tmp_path / "cat" / "3.png")
    (tmp_path / "cat" / "readme.md").write_text("#")
    (tmp_path / "empty").mkdir()
    (tmp_path / ".git").mkdir()
    _png(tmp_path / ".git" / "icon.png")
    _png(tmp_path / "loose.png")
    src = open_source(f"folder:{tmp_path}")
    assert src.classes == ["cat", "dog"]
    assert len(src) == 4
    for i in range(len(src)):
        path = src.describe(i)
        assert os.path.relpath(path, tmp_path).split(os.sep)[0] == src.classes[src.labels[i]]
    assert src.describe(2).endswith(os.path.join("x", "y", "deep.png"))  # files, then sub-folders
    assert any("ignored 1 image directly" in note for note in src.notes)


def test_folder_errors_name_the_path(tmp_path):
    with pytest.raises(SourceError, match="no image files") as err:
        open_source(f"folder:{tmp_path}")
    assert str(tmp_path) in str(err.value)
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / "sub").mkdir()
    with pytest.raises(SourceError, match=str(tmp_path)):
        open_source(f"folder:{tmp_path}")
    missing = tmp_path / "nope"
    with pytest.raises(SourceError, match=f"does not exist: {missing}"):
        open_source(f"folder:{missing}")
    with pytest.raises(SourceError, match="not a folder"):
        open_source(f"folder:{tmp_path / 'a.txt'}")
    with pytest.raises(SourceError, match="needs a path"):
        open_source("folder:")


def test_bad_specs():
    with pytest.raises(SourceError, match="allowed kinds: " + ", ".join(SOURCE_KINDS)):
        open_source("imagenet:/data")
    with pytest.raises(SourceError, match="write folder:/data/x"):
        open_source("/data/x")
    with pytest.raises(SourceError, match="unknown option 'colour'"):
        open_source("dead-leaves?colour=red")
    with pytest.raises(SourceError, match="count must be an integer >= 1"):
        open_source("dead-leaves?count=ten")
    with pytest.raises(SourceError, match="limit must be an integer >= 1"):
        open_source("dead-leaves?limit=0")
    with pytest.raises(SourceError, match="subset must be one of train, gallery, query"):
        open_source("demo-photos?subset=val")
    with pytest.raises(SourceError, match="takes no path"):
        open_source("dead-leaves:/tmp")
    with pytest.raises(SourceError, match="given twice"):
        open_source("dead-leaves?seed=1&seed=2")
    with pytest.raises(SourceError, match="bad options"):
        open_source("dead-leaves?seed")
    assert issubclass(SourceError, ValueError)


def test_limit_on_every_kind(tmp_path):
    for i in range(5):
        _png(tmp_path / f"{i}.png", value=i * 10)
    src = open_source(f"folder:{tmp_path}?limit=2")
    assert len(src) == 2 and len(src.labels) == 2 and src.load(1)[0, 0, 0] == 10
    with pytest.raises(IndexError):
        src.load(2)
    assert len(open_source(f"folder:{tmp_path}?limit=99")) == 5
    assert len(open_source("dead-leaves?limit=7")) == 7
    assert len(open_source("demo-photos?subset=gallery&limit=3")) == 3
    assert len(open_source("demo?count=10&limit=4")) == 4


# fashion-mnist: ---------------------------------------------------------------------------------


def _idx(data: np.ndarray, magic_type: int = 0x08) -> bytes:
    header = struct.pack(">BBBB", 0, 0, magic_type, data.ndim)
    header += struct.pack(f">{data.ndim}I", *data.shape)
    return header + data.astype(np.uint8).tobytes()


def _write_mnist(folder, prefix: str = "train", gz: bool = True, **broken) -> np.ndarray:  # noqa: ANN001
    images = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    labels = np.array([0, 9, 3], dtype=np.uint8)
    files = {
        f"{prefix}-images-idx3-ubyte": broken.get("images", _idx(images)),
        f"{prefix}-labels-idx1-ubyte": broken.get("labels", _idx(labels)),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, blob in files.items():
        if gz:
            with gzip.open(folder / f"{name}.gz", "wb") as f:
                f.write(blob)
        else:
            (folder / name).write_bytes(blob)
    return images


def test_fashion_mnist_from_tiny_idx_files(tmp_path):
    images = _write_mnist(tmp_path)
    src = open_source(f"fashion-mnist:{tmp_path}")
    assert len(src) == 3 and src.classes == list(FASHION_MNIST_CLASSES)
    np.testing.assert_array_equal(src.labels, [0, 9, 3])
    img = src.load(1)
    assert img.shape == (28, 28, 3) and img.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(img[..., c], images[1])
    assert src.describe(1) == f"fashion-mnist:{tmp_path}[1]"
    assert src.classes[src.labels[1]] == "Ankle boot"
    with pytest.raises(SourceError, match="t10k-images-idx3-ubyte"):
        open_source(f"fashion-mnist:{tmp_path}?subset=test")
    _write_mnist(tmp_path, "t10k", gz=False)
    assert len(open_source(f"fashion-mnist:{tmp_path}?subset=test&limit=2")) == 2


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        ({"images": _idx(np.zeros((3, 28, 28)), magic_type=0x0D)}, "bad magic number"),
        ({"images": b"\x00\x00"}, "bad magic number"),
        ({"images": _idx(np.zeros((3, 28, 28)))[:-5]}, "header says"),
        ({"labels": _idx(np.zeros((4,)))}, "3 images but 4 labels"),
        ({"labels": _idx(np.array([1, 2, 10]))}, "out of range"),
        ({"labels": _idx(np.zeros((3, 1)))}, "2 dimensions"),
    ],
)
def test_fashion_mnist_corrupt_files(tmp_path, broken, message):
    _write_mnist(tmp_path, **broken)
    with pytest.raises(SourceError, match=message):
        open_source(f"fashion-mnist:{tmp_path}")


def test_fashion_mnist_bad_gzip_and_missing(tmp_path):
    _write_mnist(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(SourceError, match="cannot read"):
        open_source(f"fashion-mnist:{tmp_path}")
    with pytest.raises(SourceError, match="does not exist"):
        open_source(f"fashion-mnist:{tmp_path / 'nope'}")


def test_fashion_mnist_default_path_absent():
    if os.path.exists(FASHION_MNIST_DIR):
        pytest.skip(f"{FASHION_MNIST_DIR} exists on this machine")
    with pytest.raises(SourceError, match="dataset-fashion-mnist"):
        open_source("fashion-mnist")


def test_fashion_mnist_real_data():
    if not os.path.isdir(FASHION_MNIST_DIR):
        pytest.skip("Debian package dataset-fashion-mnist not installed")
    train = open_source("fashion-mnist")
    test = open_source("fashion-mnist:?subset=test")
    assert (len(train), len(test)) == (60000, 10000)
    assert set(np.unique(test.labels).tolist()) == set(range(10))
    assert test.load(0).shape == (28, 28, 3)


# built-in kinds ---------------------------------------------------------------------------------


def test_demo_photos_subsets():
    n = len(DEMO_PHOTO_NAMES)
    for subset in ("train", "gallery", "query"):
        src = open_source(f"demo-photos?subset={subset}&crops=3")
        assert len(src) == 3 * n and src.classes == list(DEMO_PHOTO_NAMES)
        np.testing.assert_array_equal(src.labels, np.repeat(np.arange(n), 3))
        assert src.items.subset == subset
        img = src.load(len(src) - 1)
        assert img.ndim == 3 and 64 <= img.shape[0] == img.shape[1] <= 128
    assert len(open_source("demo-photos")) == 16 * n


def test_dead_leaves_source_is_deterministic():
    a, b = open_source("dead-leaves?count=10&size=32"), open_source("dead-leaves?count=10&size=32")
    assert len(a) == 10 and a.classes == [] and (a.labels == -1).all()
    np.testing.assert_array_equal(a.load(5), b.load(5))
    assert a.load(5).shape == (32, 32, 3)
    assert not np.array_equal(a.load(5), a.load(6))
    other = open_source("dead-leaves?count=10&size=32&seed=1")
    assert not np.array_equal(a.load(5), other.load(5))
    assert a.describe(3) == "dead-leaves?count=10&size=32[3]"


def test_demo_mix():
    src = open_source("demo?count=20")
    assert len(src) == 20 + 64 * len(DEMO_PHOTO_NAMES)
    assert src.classes == [] and (src.labels == -1).all()
    assert src.load(0).shape == (128, 128, 3)
    assert 64 <= src.load(len(src) - 1).shape[0] <= 128
    assert len(open_source("demo?count=5")) == 5 + 64 * len(DEMO_PHOTO_NAMES)


# Dataset, collate, skips ----------------------------------------------------------------------


def test_dataset_loader_collate_counts_bad_file(tmp_path):
    for i, name in enumerate(("a.png", "b.png", "d.png")):
        _png(tmp_path / name, value=50 * i, size=(40, 30))
    (tmp_path / "c.jpg").write_bytes(np.random.default_rng(0).bytes(500))
    src = open_source(f"folder:{tmp_path}")
    assert len(src) == 4
    bad = src.describe(2)
    assert bad.endswith("c.jpg")
    data = ImageDataset(src, 16, crop="center")
    assert data[2]["image"] is None and data[2]["skipped"] == bad
    loader = DataLoader(data, batch_size=3, num_workers=0, collate_fn=collate_images)
    skips = SkipCounter()
    batches = list(loader)
    for batch in batches:
        skips.extend(batch["skipped"])
    first, second = batches
    assert first["images"].shape == (2, 3, 16, 16) and first["images"].dtype == torch.uint8
    assert first["index"].tolist() == [0, 1] and first["skipped"] == [bad]
    assert first["label"].dtype == torch.int64 and first["label"].tolist() == [-1, -1]
    assert second["images"].shape == (1, 3, 16, 16) and second["index"].tolist() == [3]
    assert int(first["images"][1, 0, 0, 0]) == 50
    assert skips.count == 1 and skips.first == bad
    assert skips.warning_line() == f"permrl: skipped 1 unreadable image (first: {bad})"


def test_collate_all_skipped():
    out = collate_images([{"image": None, "index": 4, "label": 2, "skipped": "x"}])
    assert out["images"].shape == (0, 3, 0, 0) and out["index"].shape == (0,)
    assert out["skipped"] == ["x"]


def test_random_crops_follow_torch_seed(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(4):
        pixels = rng.integers(0, 256, (48, 96, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"{i}.png")
    src = open_source(f"folder:{tmp_path}")
    data = ImageDataset(src, 48, crop="random")

    def draw() -> list[torch.Tensor]:
        torch.manual_seed(7)
        return [data[i]["image"] for i in range(4)] + [data[0]["image"] for _ in range(6)]

    a, b = draw(), draw()
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert a[0].shape == (3, 48, 48)
    assert len({tuple(x.flatten().tolist()[:200]) for x in a[4:]}) > 1
    assert data[1]["label"] == -1
    demo = ImageDataset(open_source("demo-photos?crops=1&limit=2"), 48, crop="random")
    assert demo[1]["label"] == 1 and demo[1]["image"].shape == (3, 48, 48)


def test_skip_counter_lines():
    skips = SkipCounter()
    assert skips.warning_line() == "" and skips.count == 0 and skips.first is None
    for path in ("/x/y.jpg", "/x/z.jpg", "/q.png"):
        skips.add(path)
    assert skips.warning_line() == "permrl: skipped 3 unreadable images (first: /x/y.jpg)"
