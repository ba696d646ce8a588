"""The prepared image store (`permrl prepare`, `prepared:DIR`): the raw path's squares, once."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import permrl.data.prepare as prepare
from permrl.config import load_config
from permrl.data.batches import PuzzleBatches, scaled_size
from permrl.data.images import decode_image, resize_square
from permrl.data.prepare import prepare_images
from permrl.data.samples import geometry_of
from permrl.data.sources import SourceError, open_source


@pytest.fixture
def folder(tmp_path):
    """Two classes of photos of assorted sizes and formats, one unreadable file."""
    rng = np.random.default_rng(0)
    for k, (h, w) in enumerate([(90, 120), (130, 70), (64, 64), (200, 150), (75, 110)]):
        cls = tmp_path / "images" / f"class{k % 2}"
        cls.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(cls / f"{k}.{'jpg' if k % 2 else 'png'}", quality=90)
    (tmp_path / "images/class0/broken.jpg").write_bytes(b"not a jpeg")
    return tmp_path / "images"


def test_the_store_holds_the_raw_paths_squares_and_keeps_unreadables_unreadable(
        folder, tmp_path, monkeypatch):
    monkeypatch.setattr(prepare, "CHUNK", 2)  # several chunks over two processes
    spec = f"folder:{folder}"
    meta = prepare_images(spec, tmp_path / "store", size=48, workers=2)
    raw, store = open_source(spec), open_source(f"prepared:{tmp_path / 'store'}")
    assert len(store) == len(raw) == 6 and store.classes == raw.classes == ["class0", "class1"]
    assert np.array_equal(store.labels, raw.labels)
    for i in range(len(raw)):
        image = decode_image(raw.items[i])
        if image is None:
            assert store.load(i) is None
            continue
        assert np.array_equal(store.load(i), resize_square(image, 48, crop="center"))
    assert meta["unreadable"] == [str(folder / "class0/broken.jpg")]
    assert "1 unreadable" in store.notes[0]
    with pytest.raises(FileExistsError, match="exists"):
        prepare_images(spec, tmp_path / "store", size=48)


def test_an_interrupted_prepare_resumes_with_the_chunks_it_had(folder, tmp_path, monkeypatch,
                                                               capsys):
    """Stopped in its third chunk (of 2 items), the rerun fills only chunk 3: the store equals
    one written in one go, unreadable items included."""
    monkeypatch.setattr(prepare, "CHUNK", 2)
    spec, real, filled = f"folder:{folder}", prepare._fill, []

    def stopped_in_chunk_3(source_spec, out, size, start, stop):
        if start == 4:
            raise KeyboardInterrupt
        filled.append(start)
        return real(source_spec, out, size, start, stop)

    monkeypatch.setattr(prepare, "_fill", stopped_in_chunk_3)
    with pytest.raises(KeyboardInterrupt):
        prepare_images(spec, tmp_path / "store", size=48)
    assert filled == [0, 2] and (tmp_path / "store.partial/progress.json").is_file()
    monkeypatch.setattr(prepare, "_fill", lambda *args: (filled.append(args[3]), real(*args))[1])
    meta = prepare_images(spec, tmp_path / "store", size=48)
    assert filled == [0, 2, 4] and "resuming" in capsys.readouterr().err
    prepare_images(spec, tmp_path / "whole", size=48)
    assert meta == json.loads((tmp_path / "whole/meta.json").read_text())
    for name in ("images.npy", "readable.npy", "labels.npy"):
        assert np.array_equal(np.load(tmp_path / "store" / name),
                              np.load(tmp_path / "whole" / name)), name
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == [
        "images.npy", "labels.npy", "meta.json", "readable.npy"]
    # Another size is another store: the partial one is not reused.
    monkeypatch.setattr(prepare, "_fill", stopped_in_chunk_3)
    with pytest.raises(KeyboardInterrupt):
        prepare_images(spec, tmp_path / "other", size=48)
    filled.clear()
    monkeypatch.setattr(prepare, "_fill", lambda *args: (filled.append(args[3]), real(*args))[1])
    prepare_images(spec, tmp_path / "other", size=40)
    assert filled == [0, 2, 4]


def test_puzzles_from_the_store_are_the_raw_paths_puzzles(folder, tmp_path):
    cfg = load_config(overrides=["spatial.grid=2", "spatial.cell=36", "spatial.tile=32",
                                 "spatial.permutations=12"])
    geometry = geometry_of(cfg)
    spec = f"folder:{folder}"
    prepare_images(spec, tmp_path / "store", size=scaled_size(geometry.image_size))
    batches = [PuzzleBatches(open_source(s), np.arange(6), geometry, 4, 0, 0.3, 0.2)
               for s in (spec, f"prepared:{tmp_path / 'store'}")]
    for step in range(3):
        raw, store = (b[step] for b in batches)
        assert torch.equal(raw["uint8"], store["uint8"]) and torch.equal(raw["rows"], store["rows"])
        assert len(raw["skipped"]) == len(store["skipped"])


def test_a_folder_that_is_no_store_is_one_clear_error(tmp_path):
    with pytest.raises(SourceError, match="is not a prepared store .* permrl prepare"):
        open_source(f"prepared:{tmp_path}")


def test_the_video_store_holds_every_frame_resized_and_reads_a_clips_frames(tmp_path):
    from permrl.data.images import resize_short_side
    from permrl.data.prepare import prepare_videos
    from permrl.data.video_sources import open_video_source

    from .test_video_sources import write_video

    write_video(tmp_path / "videos/a/one.mp4", n=12)
    write_video(tmp_path / "videos/b/two.mp4", n=9, level=40)
    (tmp_path / "videos/b/broken.mp4").write_bytes(b"not a video")
    spec = f"videos:{tmp_path / 'videos'}"
    meta = prepare_videos(spec, tmp_path / "store", size=24)
    raw, store = open_video_source(spec), open_video_source(f"prepared-videos:{tmp_path / 'store'}")
    assert meta["frames"] == [12, 0, 9] and store.classes == raw.classes == ["a", "b"]
    assert np.array_equal(store.labels, raw.labels)
    for i, count in enumerate(meta["frames"]):
        assert store.frame_count(i) == count
        if count:  # each frame decoded once, shorter side 48 -> 24 px
            frames = raw.read_frames(i, range(count))
            expected = np.stack([resize_short_side(f, 24) for f in frames])[[0, 4, count - 1]]
            assert np.array_equal(store.read_frames(i, [0, 4, count - 1]), expected)
    assert store.read_frames(1, [0]) is None  # the broken file: unreadable, as from the raw
    assert store.read_frames(0, [12]) is None  # past the end: too short, as from the raw
