"""Clip reading by seeking (permrl.data.videos) on tiny videos written here with PyAV."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest

from permrl.data import videos
from permrl.data.videos import VideoInfo, count_frames, probe_video, read_clip

N, H, W, GOP = 40, 48, 64, 10
TEXTURE = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)

# (file name, codec, pixel format); the container follows the suffix
CODECS = [
    ("mpeg4.avi", "mpeg4", "yuv420p"),
    ("vp8.webm", "libvpx", "yuv420p"),
    ("h264.mp4", "libx264", "yuv420p"),
    ("mjpeg.mkv", "mjpeg", "yuvj420p"),
]


def read_frames(path, indices, threads=1):
    """The frames of `read_clip` (None when the video cannot give them all)."""
    return read_clip(path, indices, threads).frames


def frame(i: int) -> np.ndarray:
    """Frame i: a grey band of level 6 i on top (survives lossy coding), texture below."""
    img = np.roll(TEXTURE, 2 * i, axis=1)
    img[:16] = 6 * i
    return img


def identify(frames: np.ndarray) -> list[int]:
    """The index each frame shows, read back from its grey band."""
    return [round(float(np.median(f[4:12, 8:56])) / 6) for f in frames]


def write_video(path, codec: str = "mpeg4", pix_fmt: str = "yuv420p", n: int = N):  # noqa: ANN001
    """n frames (see frame) at 25 fps, a keyframe at least every GOP frames."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = W, H, pix_fmt
        stream.codec_context.gop_size = GOP
        stream.bit_rate = 4_000_000
        for i in range(n):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame(i), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def decode_all(path) -> np.ndarray:  # noqa: ANN001
    """Reference: every frame, decoded sequentially from the start."""
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    made = {name: write_video(root / name, codec, pix) for name, codec, pix in CODECS}
    made["raw.h264"] = write_video(root / "raw.h264", "libx264")  # no timestamps at all
    return made


NAMES = [c[0] for c in CODECS]


@pytest.mark.parametrize("name", NAMES)
def test_scattered_indices_show_the_right_frames(files, name):
    wanted = [0, 3, 9, 10, 11, 17, 17, 25, 38, 39]
    clip = read_frames(files[name], wanted)
    assert clip.dtype == np.uint8 and clip.shape == (len(wanted), H, W, 3)
    assert identify(clip) == wanted
    for single in ([21], [39], [30, 31, 32]):
        assert identify(read_frames(files[name], single)) == single


@pytest.mark.parametrize("name", [*NAMES, "raw.h264"])
def test_seeking_equals_a_full_sequential_decode(files, name):
    reference = decode_all(files[name])
    assert len(reference) == N
    rng = np.random.default_rng(1)
    for _ in range(4):
        wanted = sorted(rng.integers(0, N, 6).tolist())
        assert np.array_equal(read_frames(files[name], wanted, threads=2), reference[wanted])


@pytest.mark.parametrize("name", NAMES)
def test_count_and_probe(files, name):
    assert count_frames(files[name]) == N
    assert probe_video(files[name]) == VideoInfo(frames_estimate=N, fps=25.0, width=W, height=H)


class _CountingContainer:
    """Wraps a container to record seeks and count decoded frames."""

    log: list[_CountingContainer] = []

    def __init__(self, container) -> None:  # noqa: ANN001
        self.c, self.seeks, self.decoded = container, [], 0
        self.log.append(self)

    def __enter__(self) -> _CountingContainer:
        return self

    def __exit__(self, *exc) -> None:  # noqa: ANN002
        self.c.close()

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self.c, name)

    def seek(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        self.seeks.append(args)
        self.c.seek(*args, **kwargs)

    def decode(self, stream, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN201
        self.threads = stream.codec_context.thread_count, stream.codec_context.thread_type
        for f in self.c.decode(stream, *args, **kwargs):
            self.decoded += 1
            yield f


@pytest.mark.parametrize("name", ["mpeg4.avi", "vp8.webm", "h264.mp4"])
def test_a_late_clip_is_read_by_seeking_not_from_the_start(files, name, monkeypatch):
    real_open = av.open
    _CountingContainer.log.clear()
    monkeypatch.setattr(videos.av, "open", lambda *a, **k: _CountingContainer(real_open(*a, **k)))
    for threads in (1, 3):
        assert identify(read_frames(files[name], [34, 36], threads)) == [34, 36]
    for threads, opened in zip((1, 3), _CountingContainer.log, strict=True):
        assert opened.seeks and opened.decoded <= GOP  # keyframe 30, then 30..36 (+ lag)
        assert opened.threads[0] == threads  # never FFmpeg's default 0 = every core


@pytest.mark.parametrize("name", NAMES)
def test_indices_past_the_end_give_none_and_the_true_length(files, name):
    assert read_frames(files[name], [35, N]) is None
    assert read_clip(files[name], [N + 60]) == videos.ClipRead(None, N)
    assert read_clip(files[name], [5]).length is None


def test_bad_indices_and_empty_request(files):
    with pytest.raises(ValueError):
        read_frames(files["mpeg4.avi"], [5, 3])
    with pytest.raises(ValueError):
        read_frames(files["mpeg4.avi"], [-1, 3])
    assert read_frames(files["mpeg4.avi"], []).shape == (0, H, W, 3)


def test_corrupt_missing_and_audio_only_files(tmp_path):
    junk = tmp_path / "junk.avi"
    junk.write_bytes(np.random.default_rng(0).bytes(20000))
    audio = tmp_path / "tone.wav"
    with av.open(str(audio), "w") as out:
        stream = out.add_stream("pcm_s16le", rate=8000)
        samples = (np.sin(np.arange(8000) / 5) * 8000).astype(np.int16)[None]
        chunk = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        chunk.sample_rate = 8000
        for packet in [*stream.encode(chunk), *stream.encode()]:
            out.mux(packet)
    for path in (junk, audio, tmp_path / "missing.mp4", tmp_path):
        assert read_frames(path, [0, 1]) is None
        assert read_clip(path, [0]) == videos.ClipRead(None, None)
        assert probe_video(path) is None
        assert count_frames(path) == 0


@pytest.mark.parametrize("name", ["mpeg4.avi", "vp8.webm", "mjpeg.mkv", "h264.mp4"])
def test_truncated_file(files, tmp_path, name):
    data = files[name].read_bytes()
    cut = tmp_path / name
    cut.write_bytes(data[: len(data) * 4 // 10])
    true = count_frames(cut)
    assert true < N
    if true == 0:  # mp4 keeps its index at the end: nothing left to open
        assert read_clip(cut, [0]) == videos.ClipRead(None, None)
        return
    head = [0, true // 2, true - 1]
    assert identify(read_frames(cut, head)) == head
    assert read_clip(cut, [true - 1, 30]) == videos.ClipRead(None, true)
    assert read_clip(cut, [35]) == videos.ClipRead(None, true)


def _write_timed(path, pts: list[int]) -> None:  # noqa: ANN001
    """An MJPEG .mkv whose frame k (grey 6 * k) is shown at pts[k] / 25 s."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mjpeg", rate=25)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuvj420p"
        stream.codec_context.time_base = Fraction(1, 25)
        for k, t in enumerate(pts):
            img = av.VideoFrame.from_ndarray(np.full((H, W, 3), 6 * k, np.uint8), format="rgb24")
            img.pts, img.time_base = t, Fraction(1, 25)
            for packet in stream.encode(img):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def test_index_is_time_from_the_stream_start_and_gaps_hold_the_last_frame(tmp_path):
    late = tmp_path / "late.mkv"  # starts at 0.4 s: frame index counts from the first frame
    _write_timed(late, [10 + k for k in range(20)])
    assert identify(read_frames(late, [0, 3, 19])) == [0, 3, 19]
    gap = tmp_path / "gap.mkv"  # no frame at t = 5 / 25 s: index 5 shows the one before
    _write_timed(gap, [0, 1, 2, 3, 4, 6, 7, 8, 9, 10])
    assert identify(read_frames(gap, [3, 4, 5, 6, 10])) == [3, 4, 4, 5, 9]
    assert read_clip(gap, [11]) == videos.ClipRead(None, 11)
