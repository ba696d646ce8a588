"""Video sources named by strings `KIND:PATH[?key=value&...]` (like the image sources).

Kinds: videos:/dir, frames:/dir, ucf101:/dir, hmdb51:/dir, demo-videos (see open_video_source).
Every kind takes `?limit=N` (first N videos). Whole-source problems raise SourceError; a
single unreadable or too short video reads as None and is counted by the caller (VideoSkips).

Why this long: the video counterpart of `permrl.data.sources`: every kind's opener, its
options and its one-line errors, side by side, and the VideoSource they return.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from permrl.data import builtin_videos
from permrl.data.builtin import DEMO_SUBSETS
from permrl.data.image_source import item_labels
from permrl.data.images import IMAGE_EXTENSIONS, decode_image
from permrl.data.prepared import prepared_videos
from permrl.data.sources import SkipCounter, SourceError, split_spec
from permrl.data.videos import VIDEO_EXTENSIONS, count_frames, probe_video, read_clip

_SPLITS = ("1", "2", "3")
_OPTIONS: dict[str, dict[str, Any]] = {
    "videos": {},
    "frames": {},
    "ucf101": {"split": _SPLITS, "subset": ("train", "test")},
    "hmdb51": {"split": _SPLITS, "subset": ("train", "test")},
    "demo-videos": {
        "subset": DEMO_SUBSETS, "count": 120, "frames": 24, "size": 96, "seed": 0,
        "label": builtin_videos.DEMO_VIDEO_LABELS,
    },
    "prepared-videos": {},
}  # fmt: skip
"""Options of each kind with their defaults: a tuple lists the choices, its first the default."""

VIDEO_SOURCE_KINDS: tuple[str, ...] = tuple(_OPTIONS)

_TAKES_PATH = {"videos", "frames", "ucf101", "hmdb51", "prepared-videos"}


class FrameFolder(NamedTuple):
    """A video stored as one image file per frame, in display order."""

    path: str
    files: tuple[str, ...]


class VideoSource:
    """A finite, indexable collection of videos with optional integer labels.

    items[i] is a video file path, a FrameFolder, or a clip uint8 (T, H, W, 3): an array, or
    anything with a length and frame indexing (a prepared store's memory-mapped video).
    labels: int64, -1 where unlabelled; classes: label names; notes: remarks for the user;
    threads: the most threads FFmpeg may use per read (1 suits DataLoader workers).
    """

    def __init__(
        self,
        name: str,
        items: Sequence[str | FrameFolder | np.ndarray],
        labels: np.ndarray | None = None,
        classes: Sequence[str] = (),
        notes: Sequence[str] = (),
        threads: int = 1,
    ) -> None:
        self.name = name
        self.items = list(items)
        n = len(self.items)
        self.labels = item_labels(labels, n, "videos")
        self.classes = list(classes)
        self.notes = list(notes)
        self.threads = threads
        self._counts: dict[int, int | None] = {}  # per process: header estimates, corrected

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        return f"VideoSource({self.name!r}, {len(self)} videos, {len(self.classes)} classes)"

    def describe(self, i: int) -> str:
        """A human-readable id of video i: its file or folder, or `name[i]` for clips."""
        item = self.items[i]
        if isinstance(item, str):
            return item
        if isinstance(item, FrameFolder):
            return item.path
        return f"{self.name}[{i}]"

    def frame_count(self, i: int) -> int | None:
        """Frames of video i, None if unreadable. Exact for frame folders and clips; for files
        the header's estimate (a true count only when the header has none), lowered for good
        in this process once a read finds the video ends earlier."""
        item = self.items[i]
        if isinstance(item, FrameFolder):
            return len(item.files)
        if not isinstance(item, str):
            return len(item)
        if i not in self._counts:
            info = probe_video(item)
            if info is None:
                self._counts[i] = None
            else:
                self._counts[i] = info.frames_estimate or count_frames(item) or None
        return self._counts[i]

    def read_frames(self, i: int, indices: Sequence[int]) -> np.ndarray | None:
        """uint8 (len(indices), H, W, 3) frames of video i at the given ascending indices, or
        None when unreadable or too short. A file found shorter than its estimate gets its
        count corrected (frame_count), so the caller can draw again within the true length."""
        item = self.items[i]
        wanted = [int(k) for k in indices]
        if isinstance(item, str):
            result = read_clip(item, wanted, self.threads)
            if result.frames is None:
                if result.length is None:
                    self._counts[i] = None  # cannot be opened, or no video stream
                else:
                    known = self.frame_count(i) or result.length
                    self._counts[i] = min(known, result.length) or None
            return result.frames
        count = self.frame_count(i) or 0
        if any(k < 0 or k >= count for k in wanted):
            return None
        if isinstance(item, FrameFolder):
            return _read_frame_files([item.files[k] for k in wanted])
        return np.asarray(item[wanted], dtype=np.uint8)  # (a prepared clip reads only these)

    def evenly_spaced(self, i: int, n: int) -> list[int] | None:
        """n indices spread evenly over video i: round(k * (count - 1) / (n - 1)), halves up,
        k = 0..n-1 (the middle frame when n == 1); None if its frame count is unknown."""
        count = self.frame_count(i)
        if not count or n < 1:
            return None
        if n == 1:
            return [(count - 1) // 2]
        return [(2 * k * (count - 1) + n - 1) // (2 * (n - 1)) for k in range(n)]

    def head(self, n: int) -> VideoSource:
        """A source of the first n videos (all if n >= len)."""
        keep = min(max(n, 0), len(self))
        return VideoSource(
            self.name, self.items[:keep], self.labels[:keep], self.classes, self.notes,
            self.threads,
        )  # fmt: skip


class VideoSkips(SkipCounter):
    """Counts videos skipped as unreadable or too short, for one warning line."""

    def warning_line(self) -> str:
        """`permrl: skipped N video(s) (unreadable or too short; first: ...)`, or ""."""
        if not self.count:
            return ""
        noun = "video" if self.count == 1 else "videos"
        return f"permrl: skipped {self.count} {noun} (unreadable or too short; first: {self.first})"


def _read_frame_files(files: Sequence[str]) -> np.ndarray | None:
    frames = []
    for path in files:
        img = decode_image(path)
        if img is None or (frames and img.shape != frames[0].shape):
            return None
        frames.append(img)
    return np.stack(frames)


# Sources by kind -----------------------------------------------------------------------------


def _natural_key(name: str) -> list[tuple[int, int | str]]:
    """Sort key putting frame9 before frame10 (digit runs compare as numbers)."""
    return [(0, int(t)) if t.isdigit() else (1, t) for t in re.split(r"(\d+)", name) if t]


def _visible(name: str) -> bool:
    return not name.startswith(".")


def _check_dir(spec: str, path: str, example: str) -> None:
    if not path:
        raise SourceError(f"video source {spec!r}: needs a path, e.g. {example}")
    if not os.path.isdir(path):
        what = "not a folder" if os.path.exists(path) else "path does not exist"
        raise SourceError(f"video source {spec!r}: {what}: {path}")


def _walk(folder: str) -> list[tuple[str, list[str]]]:
    """(directory, its visible file names sorted naturally) for folder and below, sorted."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted((d for d in dirs if _visible(d)), key=_natural_key)
        found.append((root, sorted((f for f in files if _visible(f)), key=_natural_key)))
    return found


def _suffix(name: str) -> str:
    return os.path.splitext(name)[1].lower()


def _class_of(root: str, path: str) -> str | None:
    """The first-level sub-folder of root holding path (None if path is directly in root)."""
    parts = os.path.relpath(path, root).split(os.sep)
    return parts[0] if len(parts) > 1 else None


def _labelled(spec: str, root: str, items: list[Any], where: list[str]) -> VideoSource:
    """ImageFolder style: if any video (file or frame folder, at `where`) lies in a sub-folder
    of root, the first-level sub-folders are the classes and videos directly in root are
    ignored (noted); otherwise the videos are unlabelled."""
    names = [_class_of(root, w) for w in where]
    if not any(names):
        return VideoSource(spec, items)
    classes = sorted({c for c in names if c}, key=_natural_key)
    keep = [k for k, c in enumerate(names) if c]
    labels = np.array([classes.index(names[k]) for k in keep], dtype=np.int64)  # type: ignore[arg-type]
    notes = []
    if len(keep) < len(items):
        loose = len(items) - len(keep)
        noun = "video" if loose == 1 else "videos"
        notes.append(
            f"{spec}: ignored {loose} {noun} directly in {root} (its sub-folders are the classes)"
        )
    return VideoSource(spec, [items[k] for k in keep], labels, classes, notes)


def _videos_source(spec: str, path: str) -> VideoSource:
    _check_dir(spec, path, "videos:/data/videos")
    files = [
        os.path.join(root, f) for root, names in _walk(path) for f in names
        if _suffix(f) in VIDEO_EXTENSIONS
    ]  # fmt: skip
    if not files:
        kinds = ", ".join(sorted(VIDEO_EXTENSIONS))
        raise SourceError(f"video source {spec!r}: no video files ({kinds}) in {path}")
    return _labelled(spec, path, files, files)


def _frames_source(spec: str, path: str) -> VideoSource:
    _check_dir(spec, path, "frames:/data/frames")
    folders = [
        FrameFolder(root, tuple(os.path.join(root, f) for f in frames))
        for root, names in _walk(path)
        if (frames := [f for f in names if _suffix(f) in IMAGE_EXTENSIONS])
    ]
    if not folders:
        raise SourceError(
            f"video source {spec!r}: no folders of frame images (.jpg, .png, ...) in {path}"
        )
    return _labelled(spec, path, folders, [f.path for f in folders])


def _find_file(spec: str, names: Sequence[str], folders: Sequence[str]) -> list[str]:
    """Each of `names` from the first folder that holds them all; SourceError if none does."""
    for folder in folders:
        paths = [os.path.join(folder, n) for n in names]
        if all(os.path.isfile(p) for p in paths):
            return paths
    raise SourceError(
        f"video source {spec!r}: split files not found: looked for {', '.join(names)} "
        f"in {' and '.join(folders)}"
    )


def _read_lines(spec: str, path: str) -> list[list[str]]:
    try:
        with open(path, encoding="utf-8-sig") as f:
            return [line.split() for line in f if line.strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise SourceError(f"video source {spec!r}: cannot read {path}: {err}") from None


def _listed_videos(
    spec: str, roots: Sequence[str], listed: list[tuple[str, int]], classes: Sequence[str]
) -> VideoSource:
    """A source of the listed (relative path, label) pairs found under the first root that
    holds any of them; missing ones are noted."""
    for root in roots:
        found = [(os.path.join(root, p), y) for p, y in listed]
        found = [(p, y) for p, y in found if os.path.isfile(p)]
        if found:
            break
    else:
        raise SourceError(
            f"video source {spec!r}: none of the {len(listed)} listed videos exist under "
            f"{' or '.join(roots)} (first: {listed[0][0] if listed else '-'})"
        )
    notes = []
    if len(found) < len(listed):
        present = {p for p, _ in found}
        missing = [p for p, _ in listed if os.path.join(root, p) not in present]
        notes.append(
            f"{spec}: {len(missing)} of {len(listed)} listed videos are missing under {root} "
            f"(first: {missing[0]})"
        )
    labels = np.array([y for _, y in found], dtype=np.int64)
    return VideoSource(spec, [p for p, _ in found], labels, classes, notes)


def _ucf101_source(spec: str, path: str, split: str, subset: str) -> VideoSource:
    _check_dir(spec, path, "ucf101:/data/UCF101")
    listing = f"{subset}list0{split}.txt"
    index_file, list_file = _find_file(
        spec, ["classInd.txt", listing], [path, os.path.join(path, "ucfTrainTestlist")]
    )
    classes: list[str] = []
    for n, fields in enumerate(_read_lines(spec, index_file), 1):
        if len(fields) != 2 or fields[0] != str(len(classes) + 1):
            raise SourceError(f"video source {spec!r}: {index_file} line {n}: expected '{n} Name'")
        classes.append(fields[1])
    by_name = {c.lower(): i for i, c in enumerate(classes)}
    listed = []
    for n, fields in enumerate(_read_lines(spec, list_file), 1):
        rel = fields[0].replace("\\", "/")
        label = by_name.get(rel.split("/")[0].lower(), -1)
        if len(fields) > 1:
            label = int(fields[1]) - 1 if fields[1].isdigit() else -1
        if len(fields) > 2 or not 0 <= label < len(classes):
            raise SourceError(
                f"video source {spec!r}: {list_file} line {n}: {' '.join(fields)!r} names no "
                f"class of classInd.txt (expected 'Class/video.avi [1..{len(classes)}]')"
            )
        listed.append((rel, label))
    return _listed_videos(spec, [path, os.path.join(path, "UCF-101")], listed, classes)


_HMDB_SPLIT = re.compile(r"^(?P<name>.+)_test_split(?P<split>[123])\.txt$")


def _hmdb51_source(spec: str, path: str, split: str, subset: str) -> VideoSource:
    _check_dir(spec, path, "hmdb51:/data/hmdb51")
    folders = [path, os.path.join(path, "testTrainMulti_7030_splits"), os.path.join(path, "splits")]
    for folder in folders:
        names = os.listdir(folder) if os.path.isdir(folder) else []
        files = {m["name"]: os.path.join(folder, m[0]) for n in names
                 if (m := _HMDB_SPLIT.match(n)) and m["split"] == split}  # fmt: skip
        if files:
            break
    else:
        raise SourceError(
            f"video source {spec!r}: split files not found: looked for "
            f"<class>_test_split{split}.txt in {' and '.join(folders)}"
        )
    classes = sorted(files)
    keep = "1" if subset == "train" else "2"
    listed = []
    for label, name in enumerate(classes):
        for n, fields in enumerate(_read_lines(spec, files[name]), 1):
            if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
                raise SourceError(
                    f"video source {spec!r}: {files[name]} line {n}: expected 'video.avi 0|1|2'"
                )
            if fields[1] == keep:
                listed.append((f"{name}/{fields[0]}", label))
    if not listed:
        raise SourceError(f"video source {spec!r}: the split files list no {subset} videos")
    return _listed_videos(spec, [path, os.path.join(path, "hmdb51")], listed, classes)


def _demo_videos_source(spec: str, opt: dict[str, Any]) -> VideoSource:
    try:
        clips, labels, classes = builtin_videos.demo_videos(
            opt["subset"], opt["count"], opt["frames"], opt["size"], opt["seed"], opt["label"]
        )
    except (OSError, KeyError, ValueError) as err:
        raise SourceError(f"video source {spec!r}: {err}") from None
    return VideoSource(spec, clips, labels, classes)


# Parsing -------------------------------------------------------------------------------------


def parse_video_spec(spec: str) -> tuple[str, str, dict[str, Any]]:
    """Split a video source `KIND:PATH?k=v&...` into (kind, path, options with defaults)."""
    return split_spec(spec, "video", _OPTIONS, _TAKES_PATH)


def open_video_source(spec: str) -> VideoSource:
    """Open a video source from its spec string; raises SourceError with a one-line message.

    videos:/dir          video files below /dir (recursive; .avi .mp4 .mkv .webm ...); if
                         every video lies in a sub-folder, the first-level sub-folders are
                         the classes
    frames:/dir          one folder of frame images per video (sorted naturally: 9 before 10);
                         /dir/<class>/<video>/*.jpg is labelled, /dir/<video>/*.jpg is not
    ucf101:/dir          the official lists (classInd.txt, trainlist0N.txt, testlist0N.txt in
                         /dir or /dir/ucfTrainTestlist), videos in /dir or /dir/UCF-101;
                         ?split=1|2|3&subset=train|test; missing videos are noted
    hmdb51:/dir          <class>_test_splitN.txt (1 train, 2 test) in /dir,
                         /dir/testTrainMulti_7030_splits or /dir/splits; videos in
                         /dir/<class>/ or /dir/hmdb51/<class>/; ?split=1|2|3&subset=train|test
    demo-videos          built-in clips (permrl.data.builtin_videos);
                         ?subset=train|gallery|query&count=120&frames=24&size=96&seed=0
                         &label=event|photo
    prepared-videos:/dir a store written by `permrl prepare --videos` (every frame decoded,
                         resized; see permrl.data.prepared)
    Any kind: ?limit=N keeps the first N videos.
    """
    kind, path, opt = parse_video_spec(spec)
    makers: dict[str, Callable[[], VideoSource]] = {
        "videos": lambda: _videos_source(spec, path),
        "frames": lambda: _frames_source(spec, path),
        "ucf101": lambda: _ucf101_source(spec, path, opt["split"], opt["subset"]),
        "hmdb51": lambda: _hmdb51_source(spec, path, opt["split"], opt["subset"]),
        "demo-videos": lambda: _demo_videos_source(spec, opt),
        "prepared-videos": lambda: VideoSource(spec, *prepared_videos(spec, path)),
    }
    source = makers[kind]()
    if opt["limit"] is not None:
        source = source.head(opt["limit"])
    return source
