"""Labelled sets for evaluation: a VOC layout, or an ``images/`` + ``masks/`` pair.

- VOC 2012 layout (``JPEGImages/``, ``SegmentationClass/``,
  ``ImageSets/Segmentation/<split>.txt``, optional ``classes.txt``; with
  ``SegmentationObject/`` the rows also name each image's instance PNG).
- ``images/`` and ``masks/`` folders side by side: every image under ``images/``
  (any depth) has a label PNG at the same relative path with ``.png`` under
  ``masks/``; ``<split>.txt`` beside them (relative paths without extension) picks a
  subset, else every image is used. Optional ``classes.txt``.

Masks are index PNGs (palette or greyscale), 255 = ignore, or colour PNGs (RGB/RGBA)
that the evaluation maps through the checkpoint's palette (``pipeline.voc.decode_label``).
Paths may be local or any fsspec URL.

Labels are found with one listing of the label folder, before any work: images
without a label are all named at once (:class:`MissingLabels`), or left out and
recorded in ``missing_labels`` when the caller asks to skip them.
"""

from __future__ import annotations

import hashlib
import posixpath
from dataclasses import dataclass, field

from models.storage import exists, join, read_url, url_to_fs
from pipeline.voc import read_class_names, read_split

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@dataclass
class LabelledSet:
    root: str
    split: str
    layout: str  # "voc" or "folders"
    class_names: list[str]
    rows: list[dict]  # {"image_id", "path", "label_path"[, "object_path"]}
    missing_labels: list[str] = field(default_factory=list)  # image ids left out for want of a label
    label_sizes: dict[str, int] = field(default_factory=dict)  # label path -> bytes, from the listing

    def fingerprint(self) -> str:
        """Identity of the evaluation data: split, class names, ids and label file sizes.

        Cheap (one listing, no label reads) and changes when images are added or
        removed or a label file is rewritten with another size.
        """
        h = hashlib.sha256()
        h.update(f"{self.split}\n{','.join(self.class_names)}\n".encode())
        fs, _ = url_to_fs(self.root)
        for row in sorted(self.rows, key=lambda r: r["image_id"]):
            size = self.label_sizes.get(row["label_path"])
            if size is None:
                size = fs.size(url_to_fs(row["label_path"])[1])
            h.update(f"{row['image_id']}\t{size}\n".encode())
        return h.hexdigest()[:16]


class MissingLabels(FileNotFoundError):
    """Images of the split have no label file (all of them are named)."""


def open_labelled_set(root: str, split: str = "val", *, skip_missing_labels: bool = False) -> LabelledSet:
    """Find the layout under ``root`` and list the (image, label) pairs of ``split``.

    Raises :class:`MissingLabels` naming every image without a label, unless
    ``skip_missing_labels``: then those images are left out and listed in ``missing_labels``.
    """
    root = root.rstrip("/")
    if exists(join(root, "JPEGImages")) and exists(join(root, "SegmentationClass")):
        ids = read_split(root, split)
        rows = [
            {
                "image_id": f"{i}.jpg",
                "path": join(root, "JPEGImages", f"{i}.jpg"),
                "label_path": join(root, "SegmentationClass", f"{i}.png"),
            }
            for i in ids
        ]
        if exists(join(root, "SegmentationObject")):  # instances: the evaluation's diagnostics
            for row, i in zip(rows, ids):
                row["object_path"] = join(root, "SegmentationObject", f"{i}.png")
        layout, label_dir = "voc", join(root, "SegmentationClass")
    elif exists(join(root, "images")) and exists(join(root, "masks")):
        rows = _folder_rows(root, split)
        layout, label_dir = "folders", join(root, "masks")
    else:
        raise FileNotFoundError(
            f"{root} is neither a VOC layout (JPEGImages/ + SegmentationClass/) nor images/ + masks/ folders"
        )
    sizes = _file_sizes(label_dir)
    missing = [r for r in rows if r["label_path"] not in sizes]
    if missing and not skip_missing_labels:
        raise MissingLabels(
            f"{len(missing)} of {len(rows)} images of {root} (split {split!r}) have no label in {label_dir} "
            "(--skip-missing-labels evaluates the others):\n" + "\n".join(f"  {r['label_path']}" for r in missing)
        )
    rows = [r for r in rows if r["label_path"] in sizes]
    if not rows:
        raise ValueError(f"no labelled images in {root} (split {split!r})")
    return LabelledSet(
        root, split, layout, read_class_names(root), rows, [r["image_id"] for r in missing],
        {r["label_path"]: sizes[r["label_path"]] for r in rows},
    )


def _file_sizes(folder: str) -> dict[str, int]:
    """Size of every file under ``folder`` (one listing), keyed as ``join(folder, relative path)``."""
    fs, base = url_to_fs(folder)
    base = base.rstrip("/")
    found = fs.find(base, detail=True) if fs.exists(base) else {}
    return {join(folder, posixpath.relpath(p, base)): int(info.get("size") or 0) for p, info in found.items()}


def _folder_rows(root: str, split: str) -> list[dict]:
    fs, images = url_to_fs(join(root, "images"))
    found = {}
    for p in fs.find(images):
        rel = posixpath.relpath(p, images)
        stem, ext = posixpath.splitext(rel)
        if ext.lower() in IMAGE_EXTS:
            found[stem] = (rel, fs.unstrip_protocol(p) if "://" in root else p)
    split_file = join(root, f"{split}.txt")
    if exists(split_file):
        wanted = [line.strip() for line in read_url(split_file).decode().splitlines() if line.strip()]
        missing = [s for s in wanted if s not in found]
        if missing:
            raise FileNotFoundError(f"{split_file} lists images not under images/: {missing[:5]}")
        stems = wanted
    else:
        stems = sorted(found)
    return [
        {"image_id": found[s][0], "path": found[s][1], "label_path": join(root, "masks", f"{s}.png")} for s in stems
    ]
