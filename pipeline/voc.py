"""Reading a PASCAL VOC 2012 layout dataset from a local folder or any fsspec URL.

Layout under ``root`` (local path, ``s3://bucket/VOC2012``, ``memory://voc`` ...)::

    JPEGImages/<id>.jpg
    SegmentationClass/<id>.png     palette PNG: class index per pixel, 255 = void (or colours: decode_label)
    SegmentationObject/<id>.png    palette PNG: instance index 1..n per pixel, 0 = none, 255 = void
    ImageSets/Segmentation/<split>.txt
    classes.txt                    optional, one class name per line (VOC has none: 21 VOC classes)

Instances come from ``SegmentationObject``; each one's class is the most frequent
class under it in ``SegmentationClass`` (VOC gives every instance one class).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from models.classes import IGNORE_INDEX, VOC_CLASSES
from models.storage import exists, join, read_url


def read_class_names(root: str) -> list[str]:
    """``classes.txt`` when the dataset has one, else the 21 PASCAL VOC classes."""
    path = join(root, "classes.txt")
    if not exists(path):
        return list(VOC_CLASSES)
    names = [line.strip() for line in read_url(path).decode().splitlines() if line.strip()]
    if not names:
        raise ValueError(f"{path} lists no classes")
    return names


def read_split(root: str, split: str) -> list[str]:
    """Image ids of ``ImageSets/Segmentation/<split>.txt`` (or ``split`` itself if it is a path/URL to such a list)."""
    path = split if split.endswith(".txt") else join(root, "ImageSets", "Segmentation", f"{split}.txt")
    if not exists(path):
        raise FileNotFoundError(f"no image list for split {split!r}: {path}")
    return [line.split()[0] for line in read_url(path).decode().splitlines() if line.strip()]


VOID_COLOUR = (224, 224, 192)  # the VOC colour of label 255 (void), as colour-coded label PNGs draw it


class UnknownLabelColour(ValueError):
    """A colour label PNG has pixels whose colour is neither a class colour nor the void colour."""


def decode_label(data: bytes, palette: Sequence[Sequence[int]] | None = None) -> np.ndarray:
    """A label PNG as ``uint8 (H, W)`` class indices, 255 = void.

    Palette ('P') and greyscale ('L') PNGs hold the indices themselves. RGB and RGBA
    PNGs hold colours (the usual export of labelling tools): with ``palette`` (RGB per
    class index, e.g. a checkpoint's) each pixel gets the class of its colour, the void
    colour (224, 224, 192) and fully transparent pixels get 255, and a colour that is
    neither raises :class:`UnknownLabelColour` naming each such colour and its pixel
    count. Without a palette a colour PNG is refused rather than guessed.
    """
    img = Image.open(io.BytesIO(data))
    if img.mode in ("P", "L"):
        return np.asarray(img, dtype=np.uint8)
    if img.mode not in ("RGB", "RGBA") or palette is None:
        raise ValueError(
            f"label PNG must be palette or greyscale (indices), or RGB/RGBA colours with a palette; got mode {img.mode}"
        )
    return _colours_to_indices(np.asarray(img), palette)


def _colours_to_indices(rgb: np.ndarray, palette: Sequence[Sequence[int]]) -> np.ndarray:
    def pack(c) -> int:
        return (int(c[0]) << 16) | (int(c[1]) << 8) | int(c[2])

    lut = {pack(VOID_COLOUR): IGNORE_INDEX}
    for index, colour in reversed(list(enumerate(palette[:IGNORE_INDEX]))):  # the lowest index wins a shared colour
        lut[pack(colour)] = index
    c = rgb[..., :3].astype(np.uint32)
    packed = (c[..., 0] << 16) | (c[..., 1] << 8) | c[..., 2]
    transparent = 1 << 24  # not a colour: fully transparent pixels are unlabelled
    if rgb.shape[-1] == 4:
        packed[rgb[..., 3] == 0] = transparent
    lut[transparent] = IGNORE_INDEX
    colours, inverse, counts = np.unique(packed, return_inverse=True, return_counts=True)
    index = np.array([lut.get(int(v), -1) for v in colours], dtype=np.int16)
    unknown = np.flatnonzero(index < 0)
    if unknown.size:
        worst = unknown[np.argsort(-counts[unknown], kind="stable")]
        named = ", ".join(
            f"({v >> 16}, {(v >> 8) & 255}, {v & 255}) on {counts[k]} pixels"
            for k, v in zip(worst[:5], colours[worst[:5]])
        )
        more = f" and {unknown.size - 5} more colours on {counts[worst[5:]].sum()} pixels" if unknown.size > 5 else ""
        raise UnknownLabelColour(
            f"label colours not in the palette ({min(len(palette), IGNORE_INDEX)} class colours + void "
            f"{VOID_COLOUR}): {named}{more}"
        )
    return index[inverse].reshape(packed.shape).astype(np.uint8)


class BadFile(ValueError):
    """A file of a sample cannot be used; ``path`` names it and ``reason`` says why."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


class MissingFile(BadFile, FileNotFoundError):
    """A file of a sample does not exist."""


def read_decoded(path: str, decode: Callable[[bytes], Any]) -> Any:
    """``decode(bytes of path)``: a missing file raises :class:`MissingFile`, a corrupt one :class:`BadFile`."""
    try:
        data = read_url(path)
    except FileNotFoundError:
        raise MissingFile(path, "missing") from None
    try:
        return decode(data)
    except BadFile:
        raise
    except Exception as exc:  # whatever the decoder raises on a corrupt file (PIL, scipy, numpy)
        raise BadFile(path, f"unreadable ({type(exc).__name__}: {exc})") from exc


def decode_sample_image(data: bytes) -> np.ndarray:
    """A training / labelled-set JPEG as RGB uint8 ``(H, W, 3)`` (the job's inputs go through ``pipeline.decode``)."""
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)


@dataclass
class VOCSample:
    image_id: str
    image: np.ndarray  # uint8 (H, W, 3) RGB
    label: np.ndarray  # uint8 (H, W) class index, 255 = void
    objects: np.ndarray | None  # uint8 (H, W) instance index, 0 = none, 255 = void; None if not loaded


def load_sample(root: str, image_id: str, *, objects: bool = True) -> VOCSample:
    """One image with its class labels (and instance labels when ``objects``).

    A missing or undecodable file raises :class:`BadFile` (:class:`MissingFile`) naming its path.
    """
    image = read_decoded(join(root, "JPEGImages", f"{image_id}.jpg"), decode_sample_image)
    label_path = join(root, "SegmentationClass", f"{image_id}.png")
    obj_path = join(root, "SegmentationObject", f"{image_id}.png")
    label = read_decoded(label_path, decode_label)
    obj = read_decoded(obj_path, decode_label) if objects else None
    return checked_sample(VOCSample(image_id, image, label, obj), label_path, obj_path)


def checked_sample(s: VOCSample, label_path: str, objects_path: str) -> VOCSample:
    """``s`` when its label maps have the image's size, else :class:`BadFile` naming the wrong file."""
    for path, arr in ((label_path, s.label), (objects_path, s.objects)):
        if arr is not None and arr.shape != s.image.shape[:2]:
            (h, w), (ih, iw) = arr.shape, s.image.shape[:2]
            raise BadFile(path, f"{h}x{w} labels for a {ih}x{iw} image")
    return s


def instance_regions(objects: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every instance of an instance map: its index, tight box and pixel count.

    Returns ``ids`` uint8 ``(N,)`` (the values 1..254 present in ``objects``), ``boxes``
    float32 ``(N, 4)`` as ``x0, y0, x1, y1`` (x1/y1 exclusive, so the box of a one-pixel
    object at (x, y) is ``x, y, x+1, y+1``) and ``areas`` int64 ``(N,)``.
    """
    ids = np.array([k for k in np.unique(objects) if k not in (0, IGNORE_INDEX)], np.uint8)
    boxes, areas = [], []
    for k in ids:
        ys, xs = np.nonzero(objects == k)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        areas.append(len(ys))
    return ids, np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(areas, np.int64)


def instances(label: np.ndarray, objects: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tight boxes and classes of the object instances.

    Returns ``boxes`` float32 ``(N, 4)`` as in :func:`instance_regions` and ``classes``
    int64 ``(N,)``. Instances whose pixels are all void in the class map are skipped.
    """
    ids, all_boxes, _ = instance_regions(objects)
    boxes, classes = [], []
    for k, box in zip(ids, all_boxes):
        cls = label[objects == k]
        cls = cls[(cls != IGNORE_INDEX) & (cls != 0)]
        if cls.size == 0:
            continue
        boxes.append(box)
        classes.append(np.bincount(cls).argmax())
    return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(classes, np.int64)
