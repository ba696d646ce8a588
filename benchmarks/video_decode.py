"""Benchmark clip reading: seeking (read_video_frames) vs decoding from the file's start.

Writes one 20 s, 320 x 240, 25 fps MPEG-4 video (GOP 25) into a temporary folder, draws random
clips (8 frames, stride 2, random start) and reads the same clips both ways: by seeking to the
keyframe before each clip, and the naive way (decode from the first frame up to the clip's
last frame, every time). Checks that both give identical frames, prints clips per second and
the ratio. Run: python benchmarks/video_decode.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import av
import numpy as np

from permrl.data.videos import count_frames, read_video_frames

SECONDS, FPS, WIDTH, HEIGHT, GOP = 20, 25, 320, 240, 25
CLIP, STRIDE, CLIPS, SEED = 8, 2, 60, 0


def write_video(path: Path) -> None:
    """A moving texture with a frame-numbered bar, so every frame differs."""
    rng = np.random.default_rng(SEED)
    texture = rng.integers(0, 256, (HEIGHT, 2 * WIDTH, 3), dtype=np.uint8)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.codec_context.gop_size = GOP
        stream.bit_rate = 2_000_000
        for i in range(SECONDS * FPS):
            img = np.ascontiguousarray(texture[:, i % WIDTH : i % WIDTH + WIDTH])
            img[:20, : (i * WIDTH) // (SECONDS * FPS) + 1] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def read_from_start(path: Path, indices: list[int]) -> np.ndarray:
    """The naive way: decode every frame from the start until the last wanted one."""
    wanted, out = set(indices), {}
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        for k, frame in enumerate(container.decode(stream)):
            if k in wanted:
                out[k] = frame.to_ndarray(format="rgb24")
            if k >= indices[-1]:
                break
    return np.stack([out[k] for k in indices])


def rate(read, clips: list[list[int]], path: Path) -> tuple[float, list[np.ndarray]]:  # noqa: ANN001
    t0 = time.perf_counter()
    frames = [read(path, clip) for clip in clips]
    return len(clips) / (time.perf_counter() - t0), frames


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.avi"
        write_video(path)
        total = count_frames(path)
        rng = np.random.default_rng(SEED)
        span = (CLIP - 1) * STRIDE + 1
        starts = rng.integers(0, total - span + 1, CLIPS)
        clips = [list(range(int(s), int(s) + span, STRIDE)) for s in starts]
        print(
            f"{SECONDS} s {WIDTH}x{HEIGHT} {FPS} fps mpeg4 GOP {GOP}: {total} frames, "
            f"{path.stat().st_size / 1e6:.1f} MB; {CLIPS} random clips of {CLIP} frames, "
            f"stride {STRIDE}"
        )
        seek_rate, seek_frames = rate(lambda p, c: read_video_frames(p, c, threads=1), clips, path)
        naive_rate, naive_frames = rate(read_from_start, clips, path)
        same = all(np.array_equal(a, b) for a, b in zip(seek_frames, naive_frames, strict=True))
        print(f"  seeking (read_video_frames): {seek_rate:8.1f} clips/s")
        print(f"  decoding from the start:     {naive_rate:8.1f} clips/s")
        print(f"  ratio: {seek_rate / naive_rate:.1f}x   identical frames: {same}")


if __name__ == "__main__":
    main()
