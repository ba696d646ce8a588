"""Video source specs (videos, frames, ucf101, hmdb51, demo-videos) on tiny trees written here."""

from __future__ import annotations

import math

import av
import numpy as np
import pytest
from PIL import Image

from permrl.data import builtin_videos
from permrl.data.sources import SourceError
from permrl.data.video_sources import (
    VIDEO_SOURCE_KINDS,
    FrameFolder,
    VideoSkips,
    VideoSource,
    open_video_source,
)

TEXTURE = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)


def write_video(path, n: int = 12, codec: str = "mpeg4", level: int = 0):  # noqa: ANN001
    """n frames 48 x 64; frame i has a grey band of level + 6 i on top and texture below."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.gop_size = 10
        stream.bit_rate = 4_000_000
        for i in range(n):
            img = np.roll(TEXTURE, 2 * i, axis=1)
            img[:16] = level + 6 * i
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def band(frames: np.ndarray) -> list[int]:
    return [round(float(np.median(f[4:12, 8:56])) / 6) for f in frames]


def write_frames(folder, n: int, level: int = 0) -> None:  # noqa: ANN001
    """frame1.png .. frame{n}.png, frame k (1-based) of grey level + 10 k."""
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(1, n + 1):
        Image.new("RGB", (8, 6), (level + 10 * k,) * 3).save(folder / f"frame{k}.png")


# videos: ----------------------------------------------------------------------------------------


def test_videos_with_class_subfolders(tmp_path):
    write_video(tmp_path / "walk" / "a.avi", n=12)
    write_video(tmp_path / "run" / "deep" / "b.webm", n=15, codec="libvpx")
    write_video(tmp_path / "run" / "c.avi", n=11)
    write_video(tmp_path / "loose.avi", n=5)
    (tmp_path / "run" / "notes.txt").write_text("not a video")
    (tmp_path / "run" / ".hidden.avi").write_bytes(b"")
    src = open_video_source(f"videos:{tmp_path}")
    assert src.classes == ["run", "walk"] and len(src) == 3
    names = [src.describe(i).removeprefix(str(tmp_path) + "/") for i in range(3)]
    assert names == ["run/c.avi", "run/deep/b.webm", "walk/a.avi"]
    assert src.labels.tolist() == [0, 0, 1] and src.labels.dtype == np.int64
    assert [src.frame_count(i) for i in range(3)] == [11, 15, 12]
    assert band(src.read_frames(1, [0, 7, 14])) == [0, 7, 14]
    assert src.read_frames(0, [5, 11]) is None  # past the end of an 11-frame video
    assert len(src.notes) == 1 and "ignored 1 video" in src.notes[0]
    assert len(open_video_source(f"videos:{tmp_path}?limit=2")) == 2


def test_flat_videos_are_unlabelled(tmp_path):
    write_video(tmp_path / "x.avi", n=4)
    write_video(tmp_path / "y.AVI", n=4)
    src = open_video_source(f"videos:{tmp_path}")
    assert len(src) == 2 and src.classes == [] and (src.labels == -1).all()


@pytest.mark.parametrize(
    "make, spec, message",
    [
        (lambda p: None, "videos:{p}", "no video files"),
        (lambda p: (p / "a.txt").write_text("x"), "videos:{p}", "no video files"),
        (lambda p: None, "videos:{p}/missing", "path does not exist"),
        (lambda p: (p / "f.avi").write_bytes(b""), "videos:{p}/f.avi", "not a folder"),
        (lambda p: None, "videos:", "needs a path"),
        (lambda p: None, "frames:{p}", "no folders of frame images"),
        (lambda p: None, "clips:{p}", "allowed kinds: videos, frames, ucf101"),
        (lambda p: None, "videos:{p}?limit=0", "limit must be an integer >= 1"),
        (lambda p: None, "videos:{p}?limit=two", "limit must be an integer"),
        (lambda p: None, "videos:{p}?speed=2", "unknown option 'speed'"),
        (lambda p: None, "videos:{p}?limit=2&limit=3", "given twice"),
        (lambda p: None, "ucf101:{p}?split=4", "split must be one of 1, 2, 3"),
        (lambda p: None, "demo-videos:{p}", "takes no path"),
        (lambda p: None, "demo-videos?label=colour", "label must be one of event, photo"),
    ],
)
def test_errors_are_one_line_source_errors(tmp_path, make, spec, message):
    make(tmp_path)
    with pytest.raises(SourceError, match=message) as info:
        open_video_source(spec.format(p=tmp_path))
    assert "\n" not in str(info.value)


def test_unreadable_video_reads_none_and_loses_its_count(tmp_path):
    (tmp_path / "junk.avi").write_bytes(np.random.default_rng(0).bytes(5000))
    src = open_video_source(f"videos:{tmp_path}")
    assert src.frame_count(0) is None and src.evenly_spaced(0, 4) is None
    assert src.read_frames(0, [0]) is None


def test_truncated_video_count_is_corrected_for_a_retry(tmp_path):
    full = write_video(tmp_path / "full.webm", n=40, codec="libvpx").read_bytes()
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "v.webm").write_bytes(full[: len(full) * 4 // 10])
    src = open_video_source(f"videos:{tmp_path / 'cut'}")
    assert src.frame_count(0) == 40  # the header's estimate
    assert src.read_frames(0, [30, 39]) is None
    true = src.frame_count(0)
    assert 0 < true < 40
    clip = src.read_frames(0, src.evenly_spaced(0, 3))
    assert band(clip) == [0, math.floor((true - 1) / 2 + 0.5), true - 1]


# frames: ----------------------------------------------------------------------------------------


def test_frame_folders_labelled_with_natural_sort(tmp_path):
    write_frames(tmp_path / "jump" / "v1", 12)
    write_frames(tmp_path / "jump" / "v2", 3, level=100)
    write_frames(tmp_path / "sit" / "v10", 4)
    write_frames(tmp_path / "sit" / "v9", 5)
    (tmp_path / "sit" / "v9" / "labels.csv").write_text("not a frame")
    src = open_video_source(f"frames:{tmp_path}")
    assert src.classes == ["jump", "sit"] and src.labels.tolist() == [0, 0, 1, 1]
    assert [src.describe(i)[-3:] for i in range(4)] == ["/v1", "/v2", "/v9", "v10"]
    assert [src.frame_count(i) for i in range(4)] == [12, 3, 5, 4]
    assert isinstance(src.items[0], FrameFolder)
    names = [f.rsplit("/", 1)[1] for f in src.items[0].files]
    assert names == [f"frame{k}.png" for k in range(1, 13)]  # frame10 after frame9
    clip = src.read_frames(0, [0, 8, 9, 11])
    assert clip.shape == (4, 6, 8, 3) and clip[:, 0, 0, 0].tolist() == [10, 90, 100, 120]
    assert src.read_frames(1, [2, 3]) is None  # v2 has 3 frames
    assert src.read_frames(1, [2])[0, 0, 0, 0] == 130


def test_frame_folders_unlabelled(tmp_path):
    write_frames(tmp_path / "a", 3)
    write_frames(tmp_path / "b", 2)
    src = open_video_source(f"frames:{tmp_path}?limit=1")
    assert len(src) == 1 and src.classes == [] and src.labels.tolist() == [-1]
    assert src.frame_count(0) == 3


def test_unreadable_frame_gives_none(tmp_path):
    write_frames(tmp_path / "v", 3)
    (tmp_path / "v" / "frame2.png").write_bytes(b"broken")
    src = open_video_source(f"frames:{tmp_path}")
    assert src.read_frames(0, [0, 2]) is not None and src.read_frames(0, [0, 1]) is None


# evenly_spaced, VideoSkips ----------------------------------------------------------------------


def test_evenly_spaced_by_hand():
    src = VideoSource("mem", [np.zeros((40, 2, 2, 3), np.uint8), np.zeros((3, 2, 2, 3), np.uint8)])
    assert src.evenly_spaced(0, 10) == [0, 4, 9, 13, 17, 22, 26, 30, 35, 39]
    for count, n in [(40, 10), (40, 7), (25, 8), (3, 5), (100, 2)]:
        expected = [math.floor(k * (count - 1) / (n - 1) + 0.5) for k in range(n)]
        clip = VideoSource("mem", [np.zeros((count, 1, 1, 3), np.uint8)])
        assert clip.evenly_spaced(0, n) == expected
    assert src.evenly_spaced(0, 1) == [19] and src.evenly_spaced(1, 4) == [0, 1, 1, 2]
    assert src.read_frames(1, [0, 2]).shape == (2, 2, 2, 3) and src.read_frames(1, [3]) is None


def test_video_skips_warning():
    skips = VideoSkips()
    assert skips.warning_line() == ""
    skips.extend(["a.avi", "b.avi"])
    assert skips.warning_line() == (
        "permrl: skipped 2 videos (unreadable or too short; first: a.avi)"
    )


# ucf101:, hmdb51: --------------------------------------------------------------------------------


def _ucf_tree(root):  # noqa: ANN001, ANN202
    lists = root / "ucfTrainTestlist"
    lists.mkdir(parents=True)
    (lists / "classInd.txt").write_text("1 ApplyEyeMakeup\r\n2 Archery\r\n")
    (lists / "trainlist01.txt").write_text(
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\n"
        "Archery/v_Archery_g08_c01.avi 2\n"
        "Archery/v_Archery_g09_c01.avi 2\n\n"
    )
    (lists / "testlist01.txt").write_text(
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\nArchery/v_Archery_g01_c01.avi\n"
    )
    videos = root / "UCF-101"
    for rel in [
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi",
        "Archery/v_Archery_g08_c01.avi",  # g09 is missing
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi",
        "Archery/v_Archery_g01_c01.avi",
    ]:
        write_video(videos / rel, n=3)


def test_ucf101_lists(tmp_path):
    _ucf_tree(tmp_path)
    train = open_video_source(f"ucf101:{tmp_path}")
    assert train.classes == ["ApplyEyeMakeup", "Archery"]
    assert len(train) == 2 and train.labels.tolist() == [0, 1]
    assert train.describe(1).endswith("UCF-101/Archery/v_Archery_g08_c01.avi")
    assert len(train.notes) == 1 and "1 of 3 listed videos are missing" in train.notes[0]
    assert "v_Archery_g09_c01.avi" in train.notes[0]
    test = open_video_source(f"ucf101:{tmp_path}?subset=test&split=1")
    assert test.labels.tolist() == [0, 1] and test.notes == []
    assert test.read_frames(1, [0, 2]).shape == (2, 48, 64, 3)
    with pytest.raises(SourceError, match="looked for classInd.txt, trainlist02.txt in"):
        open_video_source(f"ucf101:{tmp_path}?split=2")


def test_ucf101_with_no_listed_video_on_disk(tmp_path):
    _ucf_tree(tmp_path)
    for f in (tmp_path / "UCF-101").rglob("*.avi"):
        f.unlink()
    with pytest.raises(SourceError, match="none of the 3 listed videos exist"):
        open_video_source(f"ucf101:{tmp_path}")


def test_hmdb51_splits(tmp_path):
    splits = tmp_path / "testTrainMulti_7030_splits"
    splits.mkdir()
    (splits / "brush_hair_test_split1.txt").write_text("a.avi 1 \nb.avi 2 \nc.avi 0 \n")
    (splits / "cartwheel_test_split1.txt").write_text("d.avi 2\ne.avi 1\n")
    (splits / "cartwheel_test_split2.txt").write_text("d.avi 1\ne.avi 2\n")
    for rel in ["brush_hair/a.avi", "brush_hair/b.avi", "cartwheel/d.avi", "cartwheel/e.avi"]:
        write_video(tmp_path / rel, n=3)
    train = open_video_source(f"hmdb51:{tmp_path}")
    assert train.classes == ["brush_hair", "cartwheel"]
    assert [train.describe(i)[-5:] for i in range(2)] == ["a.avi", "e.avi"]
    assert train.labels.tolist() == [0, 1]
    test = open_video_source(f"hmdb51:{tmp_path}?subset=test")
    assert [test.describe(i)[-5:] for i in range(2)] == ["b.avi", "d.avi"]
    two = open_video_source(f"hmdb51:{tmp_path}?split=2&subset=test")
    assert two.classes == ["cartwheel"] and len(two) == 1
    with pytest.raises(SourceError, match="looked for <class>_test_split3.txt"):
        open_video_source(f"hmdb51:{tmp_path}?split=3")


# demo-videos ------------------------------------------------------------------------------------


def test_demo_videos_passes_options(monkeypatch):
    calls = []

    def fake(subset, count, frames, size, seed, label):  # noqa: ANN001, ANN202
        calls.append((subset, count, frames, size, seed, label))
        clips = [np.full((frames, size, size, 3), k, np.uint8) for k in range(count)]
        return clips, np.arange(count, dtype=np.int64) % 2, ["a", "b"]

    monkeypatch.setattr(builtin_videos, "demo_videos", fake, raising=False)
    src = open_video_source("demo-videos?subset=query&count=5&frames=6&size=8&seed=3&limit=4")
    assert calls == [("query", 5, 6, 8, 3, "event")]
    assert len(src) == 4 and src.classes == ["a", "b"] and src.labels.tolist() == [0, 1, 0, 1]
    assert src.frame_count(2) == 6 and src.describe(2) == src.name + "[2]"
    assert src.read_frames(3, [0, 5]).shape == (2, 8, 8, 3)
    open_video_source("demo-videos")
    assert calls[-1] == ("train", 120, 24, 96, 0, "event")


def test_demo_videos_real():
    src = open_video_source("demo-videos?count=3&frames=4&size=16&label=photo")
    assert len(src) == 3 and src.frame_count(0) == 4 and src.classes
    assert src.read_frames(0, [0, 3]).shape == (2, 16, 16, 3)
    with pytest.raises(SourceError, match="frames must be at least 2"):
        open_video_source("demo-videos?frames=1")


def test_kinds_listed():
    assert VIDEO_SOURCE_KINDS == ("videos", "frames", "ucf101", "hmdb51", "demo-videos",
                                  "prepared-videos")
