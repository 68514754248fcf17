"""Tiny datasets in SBD's ``dataset/`` layout, written with scipy.io.savemat (helpers, no tests).

The .mat files hold the structs of the real SBD release: ``GTcls`` with ``Boundaries`` (a
20 x 1 cell of sparse boundary maps, one per VOC class), ``Segmentation`` and
``CategoriesPresent``; ``GTinst`` with ``Segmentation``, ``Boundaries`` (one sparse map per
instance) and ``Categories`` (the class of each instance).
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import scipy.io
import scipy.sparse

from pipeline.demo.synthvoc import generate_voc
from pipeline.voc import load_sample, read_split


def _edges(mask: np.ndarray) -> scipy.sparse.csc_matrix:
    inner = mask.copy()
    inner[1:] &= mask[:-1]
    inner[:-1] &= mask[1:]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return scipy.sparse.csc_matrix((mask & ~inner).astype(np.uint8))


def _cells(maps: list[scipy.sparse.csc_matrix]) -> np.ndarray:
    cells = np.empty((len(maps), 1), dtype=object)
    for i, m in enumerate(maps):
        cells[i, 0] = m
    return cells


def write_cls_mat(path: str, label: np.ndarray) -> None:
    present = np.array([c for c in np.unique(label) if 0 < c < 255], np.float64).reshape(-1, 1)
    boundaries = _cells([_edges(label == c) for c in range(1, 21)])
    scipy.io.savemat(path, {"GTcls": {"Boundaries": boundaries, "Segmentation": label.astype(np.uint8),
                                      "CategoriesPresent": present}})


def write_inst_mat(path: str, objects: np.ndarray, categories: list[int]) -> None:
    boundaries = _cells([_edges(objects == k) for k in range(1, len(categories) + 1)])
    scipy.io.savemat(path, {"GTinst": {"Segmentation": objects.astype(np.uint8), "Boundaries": boundaries,
                                       "Categories": np.array(categories, np.float64).reshape(-1, 1)}})


def sbd_from_voc_sample(voc_root: str, voc_id: str, sbd_root: str, sbd_id: str) -> tuple[np.ndarray, np.ndarray]:
    """Write one VOC-layout sample as SBD files (no void, as in SBD); returns the written (label, objects)."""
    s = load_sample(voc_root, voc_id)
    label = np.where(s.label == 255, 0, s.label).astype(np.uint8)
    objects = np.zeros_like(s.objects)
    categories = []
    for k in sorted(set(np.unique(s.objects).tolist()) - {0, 255}):
        under = label[s.objects == k]
        under = under[under > 0]
        if under.size == 0:
            continue  # an instance that is void in the class map: SBD would not list it
        categories.append(int(np.bincount(under).argmax()))
        objects[(s.objects == k) & (label == categories[-1])] = len(categories)
    for sub in ("img", "cls", "inst"):
        os.makedirs(os.path.join(sbd_root, sub), exist_ok=True)
    image = os.path.join(voc_root, "JPEGImages", f"{voc_id}.jpg")
    shutil.copyfile(image, os.path.join(sbd_root, "img", f"{sbd_id}.jpg"))
    write_cls_mat(os.path.join(sbd_root, "cls", f"{sbd_id}.mat"), label)
    write_inst_mat(os.path.join(sbd_root, "inst", f"{sbd_id}.mat"), objects, categories)
    return label, objects


def write_list(path: str, ids: list[str]) -> None:
    with open(path, "w") as f:
        f.write("".join(f"{i}\n" for i in ids))


def make_paper_sets(folder: str, synth_voc: str) -> dict:
    """A VOC layout with VOC's classes (``voc``) and an SBD folder (``sbd``) that overlap like the real ones.

    VOC: the 6 train and 3 val images of ``synth_voc`` (no classes.txt, so the 21 VOC classes).
    SBD train: 3 images of its own, the first VOC val image (``leak``: must never be trained on)
    and the first VOC train image (``dup``: read once, from VOC). SBD val: one image of its own
    and one of SBD train again.
    """
    voc = os.path.join(folder, "VOC2012")
    shutil.copytree(synth_voc, voc)
    os.remove(os.path.join(voc, "classes.txt"))
    other = os.path.join(folder, "other")
    generate_voc(other, n_train=4, n_val=0, size=(96, 128), seed=7, void_border=0)
    sbd = os.path.join(folder, "benchmark_RELEASE", "dataset")
    own = [f"2011_{i:06d}" for i in range(4)]
    for sbd_id, voc_id in zip(own, read_split(other, "train")):
        sbd_from_voc_sample(other, voc_id, sbd, sbd_id)
    leak, dup = read_split(voc, "val")[0], read_split(voc, "train")[0]
    for voc_id in (leak, dup):
        sbd_from_voc_sample(voc, voc_id, sbd, voc_id)
    write_list(os.path.join(sbd, "train.txt"), [own[0], own[1], own[2], leak, dup])
    write_list(os.path.join(sbd, "val.txt"), [own[3], own[1]])
    return {"voc": voc, "sbd": sbd, "own": own, "leak": leak, "dup": dup}
