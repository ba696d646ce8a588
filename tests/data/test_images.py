"""decode_image on the odd modes and broken files; resize_square shapes and crops."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from permrl.data.images import IMAGE_EXTENSIONS, decode_image, resize_square


def _save(img: Image.Image, path, **kwargs):  # noqa: ANN001, ANN202
    img.save(path, **kwargs)
    return path


def test_extensions_cover_common_formats_only():
    for ext in (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"):
        assert ext in IMAGE_EXTENSIONS
    for ext in (".pdf", ".txt", ".eps", ".h5", ".npy", ".JPG"):
        assert ext not in IMAGE_EXTENSIONS
    assert all(e == e.lower() and e.startswith(".") for e in IMAGE_EXTENSIONS)


def test_rgb_png_roundtrip(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    out = decode_image(_save(Image.fromarray(arr), tmp_path / "a.png"))
    assert out.dtype == np.uint8 and out.shape == (5, 7, 3)
    np.testing.assert_array_equal(out, arr)


def test_grey_is_repeated_into_three_channels(tmp_path):
    grey = np.array([[0, 17], [128, 255]], dtype=np.uint8)
    out = decode_image(_save(Image.fromarray(grey, mode="L"), tmp_path / "g.png"))
    assert out.shape == (2, 2, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], grey)


def test_rgba_is_composited_over_black(tmp_path):
    rgba = np.array([[[200, 100, 50, 128], [10, 20, 30, 255], [90, 90, 90, 0]]], dtype=np.uint8)
    out = decode_image(_save(Image.fromarray(rgba, mode="RGBA"), tmp_path / "a.png"))
    # round(200 * 128 / 255) = 100, round(100 * 128 / 255) = 50, round(50 * 128 / 255) = 25
    np.testing.assert_array_equal(out[0], [[100, 50, 25], [10, 20, 30], [0, 0, 0]])


def test_la_is_composited_over_black(tmp_path):
    img = Image.new("LA", (2, 1))
    img.putpixel((0, 0), (200, 255))
    img.putpixel((1, 0), (200, 51))  # 200 * 51 / 255 = 40
    out = decode_image(_save(img, tmp_path / "la.png"))
    np.testing.assert_array_equal(out[0], [[200, 200, 200], [40, 40, 40]])


def test_palette_and_palette_transparency(tmp_path):
    img = Image.new("P", (3, 1))
    img.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (253 * 3))
    for x in range(3):
        img.putpixel((x, 0), x)
    np.testing.assert_array_equal(
        decode_image(_save(img, tmp_path / "p.png"))[0], [[255, 0, 0], [0, 255, 0], [0, 0, 255]]
    )
    out = decode_image(_save(img, tmp_path / "pt.png", transparency=1))
    np.testing.assert_array_equal(out[0], [[255, 0, 0], [0, 0, 0], [0, 0, 255]])
    gif = decode_image(_save(img, tmp_path / "p.gif"))
    np.testing.assert_array_equal(gif[0], [[255, 0, 0], [0, 255, 0], [0, 0, 255]])


def test_16_bit_png_divided_by_257(tmp_path):
    values = np.array([[0, 128, 129, 385, 386, 1000, 25700, 65535]], dtype=np.uint16)
    path = _save(Image.fromarray(values), tmp_path / "deep.png")
    with Image.open(path) as check:
        assert check.mode.startswith("I")  # really stored as 16-bit
    out = decode_image(path)
    # v / 257 rounded: 0, 0.498, 0.502, 1.498, 1.502, 3.89, 100, 255
    np.testing.assert_array_equal(out[0, :, 0], [0, 0, 1, 1, 2, 4, 100, 255])
    assert (out[..., 0] == out[..., 2]).all()


def test_32_bit_int_and_float_tiff(tmp_path):
    ints = np.array([[-3, 25700, 70000]], dtype=np.int32)
    out = decode_image(_save(Image.fromarray(ints, mode="I"), tmp_path / "i.tif"))
    np.testing.assert_array_equal(out[0, :, 1], [0, 100, 255])
    floats = np.array([[-5.0, 3.4, 254.6, 300.0]], dtype=np.float32)
    out = decode_image(_save(Image.fromarray(floats, mode="F"), tmp_path / "f.tif"))
    np.testing.assert_array_equal(out[0, :, 0], [0, 3, 255, 255])


def test_cmyk_jpeg(tmp_path):
    img = Image.new("CMYK", (16, 8), (0, 255, 255, 0))  # red
    img.paste((0, 0, 0, 0), (8, 0, 16, 8))  # white
    out = decode_image(_save(img, tmp_path / "c.jpg", quality=95))
    assert out.shape == (8, 16, 3)
    assert np.abs(out[4, 2].astype(int) - [255, 0, 0]).max() <= 12
    assert np.abs(out[4, 13].astype(int) - [255, 255, 255]).max() <= 12


def test_one_bit(tmp_path):
    img = Image.new("1", (3, 1), 0)
    img.putpixel((1, 0), 1)
    out = decode_image(_save(img, tmp_path / "b.png"))
    np.testing.assert_array_equal(out[0, :, 0], [0, 255, 0])
    out = decode_image(_save(img, tmp_path / "b.bmp"))
    np.testing.assert_array_equal(out[0, :, 2], [0, 255, 0])


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (20, 10), (0, 0, 255))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    out = decode_image(_save(img, tmp_path / "o.jpg", exif=exif))
    assert out.shape == (20, 10, 3)


def test_broken_files_give_none(tmp_path):
    rng = np.random.default_rng(1)
    (tmp_path / "noise.jpg").write_bytes(rng.integers(0, 256, 4000, dtype=np.uint8).tobytes())
    (tmp_path / "fake.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8)
    big = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    whole = _save(big, tmp_path / "whole.png").read_bytes()
    (tmp_path / "half.png").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("this is not a picture\n")
    jpg = _save(big, tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "half.jpg").write_bytes(jpg[: len(jpg) // 2])
    for name in ("noise.jpg", "fake.jpg", "half.png", "empty.png", "text.png", "half.jpg"):
        assert decode_image(tmp_path / name) is None, name
    assert decode_image(tmp_path / "missing.png") is None
    assert decode_image(tmp_path) is None  # a folder
    assert decode_image(tmp_path / "whole.png").shape == (64, 64, 3)


@pytest.mark.parametrize(
    ("shape", "size"),
    [((100, 200, 3), 50), ((200, 100, 3), 50), ((37, 37, 3), 64), ((3, 5, 3), 32), ((9, 300), 8)],
)
def test_resize_square_shapes(shape, size):
    img = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    for crop in ("center", "random"):
        out = resize_square(img, size, crop, np.random.default_rng(0))
        assert out.shape == (size, size, 3) and out.dtype == np.uint8
        assert out.flags.writeable and out.flags.c_contiguous


def _bands(h: int, w: int) -> np.ndarray:
    """Left quarter red, middle half green, right quarter blue."""
    img = np.zeros((h, w, 3), dtype=np.uint8)
    img[:, : w // 4, 0] = 255
    img[:, w // 4 : 3 * w // 4, 1] = 255
    img[:, 3 * w // 4 :, 2] = 255
    return img


def test_resize_square_center_crop_content():
    out = resize_square(_bands(40, 80), 40, "center")  # no resize: columns 20..59 are kept
    np.testing.assert_array_equal(out, _bands(40, 80)[:, 20:60])
    assert (out[..., 1] == 255).all() and (out[..., [0, 2]] == 0).all()
    out = resize_square(_bands(80, 160), 40, "center")  # halved, then the same crop
    assert (out[:, 2:-2, 1] == 255).all() and (out[:, 2:-2, [0, 2]] == 0).all()
    tall = _bands(40, 80).transpose(1, 0, 2)  # (80, 40): bands top to bottom
    np.testing.assert_array_equal(resize_square(tall, 40, "center"), tall[20:60])


def test_resize_square_random_crop_is_seeded_and_varies():
    img = np.random.default_rng(0).integers(0, 256, (64, 128, 3), dtype=np.uint8)
    a = resize_square(img, 64, "random", np.random.default_rng(5))
    b = resize_square(img, 64, "random", np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    lefts = set()
    rng = np.random.default_rng(1)
    for _ in range(20):
        crop = resize_square(img, 64, "random", rng)
        matches = [x for x in range(65) if np.array_equal(img[:, x : x + 64], crop)]
        assert len(matches) == 1
        lefts.add(matches[0])
    assert len(lefts) > 5


def test_resize_square_rejects_bad_arguments():
    img = np.zeros((8, 8, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="crop"):
        resize_square(img, 4, "middle")
    with pytest.raises(ValueError, match="size"):
        resize_square(img, 0)
    with pytest.raises(ValueError, match="shape"):
        resize_square(np.zeros((8, 8, 4), dtype=np.uint8), 4)
