"""Reading frames of video files with PyAV, by seeking to the keyframe before the clip.

Frame i of a video is the frame shown at time i / fps after the stream's start: a decoded
frame's index is round((pts - start_pts) * time_base * fps), halves rounded up. Reading a clip
seeks (backward) to the keyframe at or before its first frame and decodes forward from there,
so a clip costs at most one group of pictures plus the clip, wherever it lies in the file. A
wanted index with no frame of its own (a dropped frame in a variable-rate file) gets the frame
shown at that time, the last one before it.

Every call opens and closes its own container, so nothing is shared across forked DataLoader
workers. The header's frame count is only an estimate (probe_video); reads report the true
decodable length when they run out of frames (read_clip).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

VIDEO_EXTENSIONS: frozenset[str] = frozenset(
    {".avi", ".mp4", ".mkv", ".webm", ".mov", ".mpg", ".mpeg", ".m4v", ".flv", ".ogv", ".wmv",
     ".3gp"}
)  # fmt: skip
"""Lower-case suffixes (with the dot) of the video containers the sources look for."""

# What a damaged, truncated or hostile file may make PyAV/FFmpeg raise. av.FFmpegError's
# subclasses are mostly OSError/ValueError too; programming errors (TypeError...) are not here.
_READ_ERRORS: tuple[type[BaseException], ...] = (
    av.FFmpegError,
    OSError,
    ValueError,
    EOFError,
    MemoryError,
    OverflowError,
    ZeroDivisionError,
)


@dataclass(frozen=True)
class VideoInfo:
    """What a video's header says. frames_estimate: the header's frame count, else
    duration * fps rounded, else 0; never trust it as the decodable length."""

    frames_estimate: int
    fps: float
    width: int
    height: int


@dataclass(frozen=True)
class ClipRead:
    """The result of read_clip. frames: uint8 (n, H, W, 3) or None. length: when the decoder
    ran out of frames before the largest wanted index, the number of decodable frames (the
    last decoded index + 1, 0 if none decoded); otherwise None."""

    frames: np.ndarray | None
    length: int | None = None


class _Restart(Exception):
    """Seeking did not work out (landed after the first wanted frame, or frames lack pts)."""


def _video_stream(container: av.container.InputContainer) -> av.VideoStream | None:
    streams = container.streams.video
    return streams[0] if streams else None


def _limit_threads(stream: av.VideoStream, threads: int) -> None:
    """Let FFmpeg use at most `threads` decoding threads (its default, 0, means all cores)."""
    ctx = stream.codec_context
    ctx.thread_count = max(1, int(threads))
    ctx.thread_type = "AUTO" if threads > 1 else "SLICE"


def _fps(stream: av.VideoStream) -> Fraction | None:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and rate > 0:
            return Fraction(rate)
    return None


def probe_video(path: str | os.PathLike[str]) -> VideoInfo | None:
    """Header information of the first video stream (nothing decoded), or None if the file
    cannot be opened or has no video stream."""
    try:
        with av.open(os.fspath(path)) as container:
            stream = _video_stream(container)
            if stream is None:
                return None
            fps = _fps(stream)
            estimate = int(stream.frames or 0)
            if estimate <= 0 and fps is not None:
                if stream.duration and stream.time_base:
                    seconds = stream.duration * stream.time_base
                elif container.duration:
                    seconds = Fraction(container.duration, av.time_base)
                else:
                    seconds = Fraction(0)
                estimate = math.floor(seconds * fps + Fraction(1, 2))
            ctx = stream.codec_context
            return VideoInfo(max(estimate, 0), float(fps or 0.0), ctx.width, ctx.height)
    except _READ_ERRORS:
        return None


def count_frames(path: str | os.PathLike[str]) -> int:
    """The number of frames that truly decode (demuxes and decodes the whole video stream).

    Slow; for tests, benchmarks and the rare file whose header gives no estimate. 0 when the
    file cannot be opened or has no video stream; a decoding error ends the count.
    """
    count = 0
    try:
        with av.open(os.fspath(path)) as container:
            stream = _video_stream(container)
            if stream is None:
                return 0
            _limit_threads(stream, 1)
            for _ in container.decode(stream):
                count += 1
    except _READ_ERRORS:
        pass
    return count


def _next_frame(frames: Iterator[av.VideoFrame]) -> av.VideoFrame | None:
    """The next decoded frame; None at the end or when the data is damaged from here on."""
    try:
        return next(frames, None)
    except _READ_ERRORS:
        return None


def _collect(
    frames: Iterator[av.VideoFrame],
    wanted: Sequence[int],
    index_of: Callable[[av.VideoFrame], int | None],
    seeked: bool,
) -> ClipRead:
    """Take the wanted (sorted) indices from decoded frames; raises _Restart when the first
    frame after a seek is already past the first wanted index or has no index (no pts)."""
    out: list[np.ndarray] = []
    size: tuple[int, int] | None = None
    prev: av.VideoFrame | None = None
    prev_rgb: np.ndarray | None = None
    last = -1

    def rgb(frame: av.VideoFrame) -> np.ndarray:
        nonlocal size
        if size is None:
            size = (frame.width, frame.height)
        return frame.to_ndarray(format="rgb24", width=size[0], height=size[1])

    while len(out) < len(wanted):
        frame = _next_frame(frames)
        if frame is None:
            return ClipRead(None, last + 1)
        k = index_of(frame)
        if k is None or (seeked and prev is None and k > wanted[0]):
            raise _Restart
        if k <= last:  # a repeated timestamp: the frame at that index is already known
            continue
        while len(out) < len(wanted) and wanted[len(out)] < k:
            # The wanted frame has no frame of its own: it shows the one before (or the
            # first frame of the stream when none came before).
            held = prev if prev is not None else frame
            if prev_rgb is None or held is not prev:
                prev_rgb = rgb(held)
            out.append(prev_rgb)
        if len(out) < len(wanted) and wanted[len(out)] == k:
            prev_rgb = rgb(frame)
            while len(out) < len(wanted) and wanted[len(out)] == k:
                out.append(prev_rgb)
        else:
            prev_rgb = None
        prev, last = frame, k
    return ClipRead(np.stack(out))


def _pts_index(stream: av.VideoStream, fps: Fraction) -> Callable[[av.VideoFrame], int | None]:
    start = stream.start_time or 0
    scale = Fraction(stream.time_base) * fps

    def index_of(frame: av.VideoFrame) -> int | None:
        if frame.pts is None:
            return None
        return math.floor((frame.pts - start) * scale + Fraction(1, 2))

    return index_of


def _read_sequential(path: str, wanted: Sequence[int], threads: int) -> ClipRead:
    """Decode from the start counting frames (streams without pts, or when seeking fails)."""
    with av.open(path) as container:
        stream = _video_stream(container)
        if stream is None:
            return ClipRead(None)
        _limit_threads(stream, threads)
        counter = iter(range(1 << 62))
        return _collect(container.decode(stream), wanted, lambda _: next(counter), False)


def _read_seeking(path: str, wanted: Sequence[int], threads: int) -> ClipRead:
    with av.open(path) as container:
        stream = _video_stream(container)
        if stream is None:
            return ClipRead(None)
        fps, time_base = _fps(stream), stream.time_base
        if fps is None or not time_base:
            raise _Restart
        _limit_threads(stream, threads)
        start = stream.start_time or 0
        # The first wanted frame's exact time; any frame rounding to that index is at or after
        # it minus half a frame, so the keyframe at or before this pts precedes it.
        target = start + math.floor(Fraction(wanted[0]) / fps / Fraction(time_base))
        seeked = target > start
        if seeked:
            try:
                container.seek(target, stream=stream, backward=True, any_frame=False)
            except _READ_ERRORS:
                raise _Restart from None  # e.g. a raw stream without an index or timestamps
        result = _collect(container.decode(stream), wanted, _pts_index(stream, fps), seeked)
        if result.frames is None and result.length == 0 and seeked:
            raise _Restart  # the seek went past the end: the length is still unknown
        return result


def read_clip(path: str | os.PathLike[str], indices: Sequence[int], threads: int = 1) -> ClipRead:
    """Frames at the given 0-based indices (ascending, repeats allowed), with what was learnt.

    Seeks to the keyframe at or before indices[0] and decodes forward (module docstring).
    Falls back to decoding from the start, counting frames, when the stream has no pts or the
    seek lands after the wanted frame or past the end. frames is None when the file cannot be
    opened or decoded, has no video stream, or ends before the largest index (then length is
    the decodable frame count). threads: the most threads FFmpeg may use.
    """
    wanted = [int(i) for i in indices]
    if wanted != sorted(wanted) or (wanted and wanted[0] < 0):
        raise ValueError(f"indices must be ascending and >= 0, got {wanted}")
    name = os.fspath(path)
    try:
        if not wanted:
            probe = probe_video(name)
            if probe is None:
                return ClipRead(None)
            return ClipRead(np.zeros((0, probe.height, probe.width, 3), dtype=np.uint8))
        try:
            return _read_seeking(name, wanted, threads)
        except _Restart:
            return _read_sequential(name, wanted, threads)
    except (_Restart, *_READ_ERRORS):
        return ClipRead(None)
