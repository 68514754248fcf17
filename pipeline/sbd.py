"""Reading the Semantic Boundaries Dataset (SBD; Hariharan et al., ICCV 2011) from a local folder or any fsspec URL.

SBD re-annotates 11,355 PASCAL VOC 2011 images with the 20 VOC classes; both papers
add it to VOC's training set. Layout of its ``dataset/`` folder (``root``)::

    img/<id>.jpg
    cls/<id>.mat     GTcls.Segmentation: uint8 class index per pixel (0 background, 1..20 VOC)
                     (also GTcls.Boundaries, GTcls.CategoriesPresent: not used)
    inst/<id>.mat    GTinst.Segmentation: instance index per pixel (0 none, k = instance k)
                     GTinst.Categories: the class of instance k at position k (1-based)
                     (also GTinst.Boundaries: not used)
    train.txt, val.txt

A sample is a :class:`pipeline.voc.VOCSample`, like a VOC image's: the class map from
``cls`` (255 kept as void, though SBD has none) and the instances from ``inst``. The
.mat files are MATLAB v5 files read with ``scipy.io.loadmat``; one that does not load,
lacks the struct or field, or holds indices outside the VOC classes raises
:class:`pipeline.voc.BadFile` with its path.
"""

from __future__ import annotations

import io

import numpy as np
import scipy.io

from models.classes import IGNORE_INDEX, VOC_CLASSES
from models.storage import exists, join, read_url
from pipeline.voc import BadFile, VOCSample, checked_sample, decode_sample_image, read_decoded

NUM_CLASSES = len(VOC_CLASSES)  # SBD labels are VOC's: background + 20


def read_sbd_split(root: str, split: str) -> list[str]:
    """Image ids of ``<root>/<split>.txt`` (or ``split`` itself if it is a path/URL to such a list)."""
    path = split if split.endswith(".txt") else join(root, f"{split}.txt")
    if not exists(path):
        raise FileNotFoundError(f"no SBD image list for split {split!r}: {path}")
    return [line.split()[0] for line in read_url(path).decode().splitlines() if line.strip()]


def _struct_fields(data: bytes, name: str, fields: tuple[str, ...]) -> list[np.ndarray]:
    mat = scipy.io.loadmat(io.BytesIO(data), squeeze_me=True, struct_as_record=False)
    if name not in mat:
        raise ValueError(f"no {name} struct (variables: {sorted(k for k in mat if not k.startswith('__'))})")
    missing = [f for f in fields if not hasattr(mat[name], f)]
    if missing:
        raise ValueError(f"{name} has no field {', '.join(missing)}")
    return [np.asarray(getattr(mat[name], f)) for f in fields]


def _index_map(values: np.ndarray, what: str) -> np.ndarray:
    if values.ndim != 2 or values.size == 0:
        raise ValueError(f"{what} is not a 2-D map: shape {values.shape}")
    if not np.issubdtype(values.dtype, np.number) or values.min() < 0 or values.max() > IGNORE_INDEX:
        raise ValueError(f"{what} holds values outside 0..{IGNORE_INDEX}")
    return values.astype(np.uint8)


def decode_cls(data: bytes) -> np.ndarray:
    """``GTcls.Segmentation`` of a ``cls/<id>.mat`` as ``uint8 (H, W)`` class indices (255 = void)."""
    (seg,) = _struct_fields(data, "GTcls", ("Segmentation",))
    label = _index_map(seg, "GTcls.Segmentation")
    bad = np.setdiff1d(np.unique(label), [*range(NUM_CLASSES), IGNORE_INDEX])
    if bad.size:
        raise ValueError(f"GTcls.Segmentation has class indices {bad.tolist()} outside 0..{NUM_CLASSES - 1} and 255")
    return label


def decode_inst(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """``GTinst`` of an ``inst/<id>.mat``: the instance map ``uint8 (H, W)`` (0 = none) and the
    class of each instance ``int64 (N,)`` (``classes[k - 1]`` for instance ``k``)."""
    seg, categories = _struct_fields(data, "GTinst", ("Segmentation", "Categories"))
    objects = _index_map(seg, "GTinst.Segmentation")
    classes = np.atleast_1d(categories).astype(np.int64).reshape(-1) if categories.size else np.zeros(0, np.int64)
    present = np.setdiff1d(np.unique(objects), [0, IGNORE_INDEX])
    if present.size and present.max() > len(classes):
        raise ValueError(f"GTinst.Segmentation has instance {present.max()} but GTinst.Categories lists {len(classes)}")
    if classes.size and (classes.min() < 1 or classes.max() >= NUM_CLASSES):
        raise ValueError(f"GTinst.Categories holds {classes.tolist()}, not VOC classes 1..{NUM_CLASSES - 1}")
    return objects, classes


def load_sbd_sample(root: str, image_id: str, *, objects: bool = True) -> VOCSample:
    """One SBD image with its class map (``cls``) and, when ``objects``, its instance map (``inst``).

    A missing, unreadable or inconsistent file raises :class:`pipeline.voc.BadFile` naming its path.
    """
    image = read_decoded(join(root, "img", f"{image_id}.jpg"), decode_sample_image)
    cls_path, inst_path = join(root, "cls", f"{image_id}.mat"), join(root, "inst", f"{image_id}.mat")
    label = read_decoded(cls_path, decode_cls)
    obj, classes = read_decoded(inst_path, decode_inst) if objects else (None, None)
    sample = checked_sample(VOCSample(image_id, image, label, obj), cls_path, inst_path)
    # The instance classes of GTinst.Categories and the class map must tell the same story.
    for k, cls in enumerate(classes if objects else [], start=1):
        under = label[obj == k]
        if under.size and not np.any(under == cls):
            raise BadFile(inst_path, f"instance {k} is class {cls} but cls/{image_id}.mat has none under it")
    return sample
