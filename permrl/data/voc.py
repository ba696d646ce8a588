"""Pascal VOC 2007: annotations, object crops (retrieval, design §7) and whole images (multi-label).

Layout: either `ROOT/VOCdevkit/VOC2007/...` or `ROOT` itself being the VOC2007 folder, which
holds `Annotations/<id>.xml`, `JPEGImages/<id>.jpg` and `ImageSets/Main/<subset>.txt` (one image
id a line; subset trainval, test, train or val). Boxes are VOC's: 1-based, inclusive corners.

Problems with the whole dataset (missing folders, a missing or malformed annotation, an unknown
class) raise SourceError with a one-line message; a missing or unreadable JPEG only makes that
item load as None, like any unreadable image of an ImageSource.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from permrl.data.image_source import ImageSource, SourceError
from permrl.data.images import decode_image

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip

VOC_SUBSETS: tuple[str, ...] = ("trainval", "test", "train", "val")

MIN_CROP_PIXELS = 10_000
"""Object crops with fewer pixels (box width x height) are dropped (design §7, after the paper)."""


@dataclass(frozen=True)
class VocObject:
    """One annotated object: class name, box (xmin, ymin, xmax, ymax) 1-based inclusive."""

    name: str
    bbox: tuple[int, int, int, int]
    difficult: bool = False
    truncated: bool = False

    @property
    def pixels(self) -> int:
        """Box area in pixels with VOC's inclusive corners: (xmax-xmin+1) * (ymax-ymin+1)."""
        xmin, ymin, xmax, ymax = self.bbox
        return max(xmax - xmin + 1, 0) * max(ymax - ymin + 1, 0)


class VocCrop:
    """A lazily loaded object crop: calling it decodes the JPEG and cuts the box out.

    The box is clamped to the decoded image; an empty result or an unreadable file gives None.
    """

    __slots__ = ("path", "bbox")

    def __init__(self, path: str, bbox: tuple[int, int, int, int]) -> None:
        self.path, self.bbox = path, bbox

    def __call__(self) -> np.ndarray | None:
        img = decode_image(self.path)
        if img is None:
            return None
        h, w = img.shape[:2]
        xmin, ymin, xmax, ymax = self.bbox
        x0, y0 = min(max(xmin - 1, 0), w), min(max(ymin - 1, 0), h)
        x1, y1 = min(max(xmax, 0), w), min(max(ymax, 0), h)
        if x1 <= x0 or y1 <= y0:
            return None
        return np.ascontiguousarray(img[y0:y1, x0:x1])

    def __repr__(self) -> str:
        return f"VocCrop({self.path!r}, {self.bbox})"


class VocSource(ImageSource):
    """An ImageSource that describes crops as `path box (x0, y0, x1, y1)` and keeps `targets`
    (multi-label, (N, 20) float32, or None for object crops) through head()."""

    def __init__(self, *args, targets: np.ndarray | None = None, **kwargs) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        self.targets = targets

    def describe(self, i: int) -> str:
        item = self.items[i]
        if isinstance(item, VocCrop):
            return f"{item.path} box {item.bbox}"
        return super().describe(i)

    def head(self, n: int) -> VocSource:
        part = super().head(n)
        targets = None if self.targets is None else self.targets[: len(part)]
        return VocSource(
            part.name, part.items, part.labels, part.classes, part.notes, targets=targets
        )


def find_voc2007(root: str | os.PathLike[str]) -> str:
    """The VOC2007 folder: `root/VOCdevkit/VOC2007`, `root/VOC2007` or `root` itself
    (whichever holds an Annotations folder, in that order); SourceError if none does."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise SourceError(f"Pascal VOC 2007: path does not exist: {root}")
    candidates = [os.path.join(root, "VOCdevkit", "VOC2007"), os.path.join(root, "VOC2007"), root]
    for folder in candidates:
        if os.path.isdir(os.path.join(folder, "Annotations")):
            return folder
    raise SourceError(
        f"Pascal VOC 2007: no Annotations folder in {root} (looked for "
        f"{', '.join(os.path.join(c, 'Annotations') for c in candidates)})"
    )


def _check_folder(folder: str, sub: str) -> str:
    path = os.path.join(folder, *sub.split("/"))
    if not os.path.isdir(path):
        raise SourceError(f"Pascal VOC 2007: missing folder {path}")
    return path


def read_image_ids(root: str | os.PathLike[str], subset: str = "trainval") -> list[str]:
    """Image ids of a subset, from ImageSets/Main/<subset>.txt (first token of each line)."""
    if subset not in VOC_SUBSETS:
        raise SourceError(
            f"Pascal VOC 2007: subset must be one of {', '.join(VOC_SUBSETS)}, not {subset!r}"
        )
    folder = find_voc2007(root)
    path = os.path.join(_check_folder(folder, "ImageSets/Main"), f"{subset}.txt")
    try:
        with open(path, encoding="utf-8") as f:
            ids = [line.split()[0] for line in f if line.strip()]
    except FileNotFoundError:
        raise SourceError(f"Pascal VOC 2007: missing subset file {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise SourceError(f"Pascal VOC 2007: cannot read {path}: {err}") from None
    if not ids:
        raise SourceError(f"Pascal VOC 2007: no image ids in {path}")
    return ids


def _number(obj: ET.Element, tag: str, path: str) -> int:
    text = obj.findtext(tag)
    try:
        return int(round(float(text)))  # a few VOC-style files write "273.5"
    except (TypeError, ValueError):
        raise SourceError(f"Pascal VOC 2007: {path}: bad or missing <{tag}> {text!r}") from None


def _flag(obj: ET.Element, tag: str) -> bool:
    text = (obj.findtext(tag) or "0").strip()
    return text not in ("", "0", "false", "False")


def read_annotation(xml_path: str | os.PathLike[str]) -> list[VocObject]:
    """The objects of one VOC annotation file, in file order.

    Missing <difficult>/<truncated> count as 0. SourceError if the file cannot be read or
    parsed, or an object lacks its name or a box coordinate.
    """
    path = os.fspath(xml_path)
    try:
        tree = ET.parse(path)
    except FileNotFoundError:
        raise SourceError(f"Pascal VOC 2007: missing annotation {path}") from None
    except (OSError, ET.ParseError) as err:
        raise SourceError(f"Pascal VOC 2007: cannot parse {path}: {err}") from None
    objects = []
    for obj in tree.getroot().iter("object"):
        name = (obj.findtext("name") or "").strip()
        box = obj.find("bndbox")
        if not name or box is None:
            raise SourceError(f"Pascal VOC 2007: {path}: an object without <name> or <bndbox>")
        bbox = tuple(_number(box, tag, path) for tag in ("xmin", "ymin", "xmax", "ymax"))
        objects.append(VocObject(name, bbox, _flag(obj, "difficult"), _flag(obj, "truncated")))
    return objects


def _annotated(root: str | os.PathLike[str], subset: str) -> tuple[str, list[tuple[str, list]]]:
    """(VOC2007 folder, [(jpeg path, objects)] for the subset's images, in subset order)."""
    ids = read_image_ids(root, subset)
    folder = find_voc2007(root)
    annotations = _check_folder(folder, "Annotations")
    jpegs = _check_folder(folder, "JPEGImages")
    images = []
    for image_id in ids:
        objects = read_annotation(os.path.join(annotations, f"{image_id}.xml"))
        for obj in objects:
            if obj.name not in VOC_CLASSES:
                raise SourceError(
                    f"Pascal VOC 2007: {os.path.join(annotations, image_id + '.xml')}: "
                    f"unknown class {obj.name!r}"
                )
        images.append((os.path.join(jpegs, f"{image_id}.jpg"), objects))
    return folder, images


def voc_object_crops(
    root: str | os.PathLike[str],
    subset: str = "trainval",
    min_pixels: int = MIN_CROP_PIXELS,
    include_difficult: bool = True,
    name: str | None = None,
) -> VocSource:
    """One item per annotated object box of the subset, labelled by its VOC_CLASSES index.

    Items are VocCrop callables (the JPEG is decoded when loaded; the box is clamped to the
    image). Boxes of fewer than `min_pixels` pixels ((xmax-xmin+1) * (ymax-ymin+1)) are
    dropped and counted in `notes`. Difficult objects are kept by default: retrieval uses all
    annotated objects (the paper names no exclusion); include_difficult=False drops them (also
    counted in `notes`). Order: images in subset order, objects in file order.
    """
    name = name or f"voc2007:{os.fspath(root)}?subset={subset}&mode=objects"
    _, images = _annotated(root, subset)
    items, labels = [], []
    small = difficult = 0
    for path, objects in images:
        for obj in objects:
            if obj.difficult and not include_difficult:
                difficult += 1
            elif obj.pixels < min_pixels:
                small += 1
            else:
                items.append(VocCrop(path, obj.bbox))
                labels.append(VOC_CLASSES.index(obj.name))
    notes = []
    if small:
        noun = "box" if small == 1 else "boxes"
        notes.append(f"{name}: dropped {small} object {noun} under {min_pixels} pixels")
    if difficult:
        noun = "object" if difficult == 1 else "objects"
        notes.append(f"{name}: dropped {difficult} difficult {noun}")
    if not items:
        raise SourceError(
            f"Pascal VOC 2007: no object boxes of at least {min_pixels} pixels in {subset}"
        )
    return VocSource(name, items, np.array(labels, dtype=np.int64), VOC_CLASSES, notes)


def image_targets(objects: Sequence[VocObject]) -> np.ndarray:
    """(20,) float32: 1 if a non-difficult object of the class is present, -1 if the class
    appears only as difficult objects (ignored in AP, the VOC protocol), else 0."""
    row = np.zeros(len(VOC_CLASSES), dtype=np.float32)
    for obj in objects:
        k = VOC_CLASSES.index(obj.name)
        if not obj.difficult:
            row[k] = 1.0
        elif row[k] == 0.0:
            row[k] = -1.0
    return row


def voc_images(
    root: str | os.PathLike[str], subset: str = "trainval", name: str | None = None
) -> tuple[VocSource, np.ndarray]:
    """Whole images of the subset (JPEG paths) and their multi-label targets (N, 20) float32
    in {1, 0, -1} (see image_targets). The source's labels are all -1 (multi-label lives in
    `targets`, also the attribute `source.targets`); its classes are VOC_CLASSES."""
    name = name or f"voc2007:{os.fspath(root)}?subset={subset}&mode=images"
    _, images = _annotated(root, subset)
    targets = np.stack([image_targets(objects) for _, objects in images]).astype(np.float32)
    source = VocSource(name, [path for path, _ in images], None, VOC_CLASSES, targets=targets)
    return source, targets


_PREFIX = "Pascal VOC 2007: "


def open_voc2007(
    spec: str, path: str, subset: str = "trainval", mode: str = "objects",
    min_pixels: int = MIN_CROP_PIXELS,
) -> VocSource:  # fmt: skip
    """The `voc2007:PATH?subset=&mode=&min_pixels=` image source (see open_source); errors are
    SourceErrors worded `image source 'SPEC': ...`."""
    try:
        if not path:
            raise SourceError(_PREFIX + "needs a path, e.g. voc2007:/data/VOCdevkit")
        if mode == "objects":
            return voc_object_crops(path, subset, min_pixels, name=spec)
        if mode == "images":
            return voc_images(path, subset, name=spec)[0]
        raise SourceError(_PREFIX + f"mode must be objects or images, not {mode!r}")
    except SourceError as err:
        message = str(err)
        message = message[len(_PREFIX) :] if message.startswith(_PREFIX) else message
        raise SourceError(f"image source {spec!r}: {message}") from None
