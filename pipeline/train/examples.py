"""Training examples for DeconvNet (two stages) and FCN, as Ray Data stages.

DeconvNet is trained on object-centred crops (paper section 3.2 / 4.1):

- **Stage 1**: one example per ground-truth instance: its tight box enlarged 1.2x
  about its centre, so the object sits in the middle and spans 1/1.2 of the crop.
- **Stage 2**: EdgeBox proposals that overlap a ground-truth instance well, enlarged
  1.2x the same way. The rule (``select_proposals``): a proposal is kept when the IoU
  of its *tight* (not enlarged) box with the tight box of at least one instance is
  at least ``min_iou`` (default 0.5, PASCAL's detection criterion), so the kept
  crops are harder than stage 1's (objects off-centre, partly cut, other objects
  around) but still about one object.

Each crop is cut from the image with pixels outside it set to 0 (image) and 255 =
void (label), and warped to ``resize x resize`` (paper 250; bilinear image, nearest
label); training then takes a random ``crop x crop`` window (paper 224) and a random
horizontal mirror. The label of a crop is the class map inside it (every object
there, not only the centred one).

FCN trains on whole images: each is randomly cropped or zero/void-padded to a fixed
square so images batch together, then randomly mirrored.

The batch functions are Ray Data ``map_batches`` stages: a batch of image ids (and
cached proposals for stage 2; optionally a ``source`` per id, ``"voc"`` for the VOC
layout under ``root`` or ``"sbd"`` for SBD's ``dataset/`` folder at ``sbd``)
in, a batch of fixed-size ``image`` ``uint8 (N, S, S, 3)``
and ``label`` ``uint8 (N, S, S)`` out (N may differ from the number of ids).
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from models.classes import IGNORE_INDEX
from pipeline.proposals import ProposalConfig, ProposalGenerator, enlarge_boxes
from pipeline.sbd import load_sbd_sample
from pipeline.voc import BadFile, VOCSample, instances, load_sample

ENLARGE = 1.2  # paper: boxes enlarged 1.2x so the object is centred with context


# --- geometry ------------------------------------------------------------------------------------


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix ``(N, M)`` of boxes ``x0, y0, x1, y1`` (areas as ``(x1 - x0) * (y1 - y0)``)."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def select_proposals(proposals: np.ndarray, gt_boxes: np.ndarray, min_iou: float = 0.5) -> np.ndarray:
    """Boolean mask of the tight proposal boxes whose best IoU with a tight instance box is >= ``min_iou``."""
    proposals = np.asarray(proposals, np.float32).reshape(-1, 4)
    if len(proposals) == 0 or len(gt_boxes) == 0:
        return np.zeros(len(proposals), bool)
    return box_iou(proposals, gt_boxes).max(axis=1) >= min_iou


def crop_box(image: np.ndarray, label: np.ndarray, box, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut ``box`` (``x0, y0, x1, y1``, may reach outside the image) and warp it to ``size x size``.

    Output pixel ``u`` samples the source at ``x0 + (u + 0.5) * (x1 - x0) / size - 0.5``
    (pixel centres map to pixel centres), bilinear for the image and nearest for the
    label; outside the image the image is 0 and the label is 255 (void).
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    sx, sy = (x1 - x0) / size, (y1 - y0) / size
    if sx <= 0 or sy <= 0:
        raise ValueError(f"empty box {box}")
    m = np.array([[sx, 0, x0 + 0.5 * sx - 0.5], [0, sy, y0 + 0.5 * sy - 0.5]], np.float64)
    flags = cv2.WARP_INVERSE_MAP
    img = cv2.warpAffine(
        image, m, (size, size), flags=cv2.INTER_LINEAR | flags, borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0)
    )
    lab = cv2.warpAffine(
        label,
        m,
        (size, size),
        flags=cv2.INTER_NEAREST | flags,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=IGNORE_INDEX,
    )
    return img, lab


def pad_or_crop(
    image: np.ndarray, label: np.ndarray, size: int, rng: np.random.Generator | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Fit a whole image into ``size x size``: crop when larger, pad (0 / 255) when smaller.

    With ``rng`` the window/offset is random (training); without, the image is
    centred (evaluation).
    """
    h, w = label.shape
    out_img = np.zeros((size, size, 3), np.uint8)
    out_lab = np.full((size, size), IGNORE_INDEX, np.uint8)

    def offsets(n: int) -> tuple[int, int]:  # (source start, destination start)
        slack = abs(n - size)
        o = int(rng.integers(0, slack + 1)) if rng is not None else slack // 2
        return (o, 0) if n > size else (0, o)

    (sy, dy), (sx, dx) = offsets(h), offsets(w)
    ch, cw = min(h, size), min(w, size)
    out_img[dy : dy + ch, dx : dx + cw] = image[sy : sy + ch, sx : sx + cw]
    out_lab[dy : dy + ch, dx : dx + cw] = label[sy : sy + ch, sx : sx + cw]
    return out_img, out_lab


# --- Ray Data stages -----------------------------------------------------------------------------


def _batch(images: list[np.ndarray], labels: list[np.ndarray], ids: list[str], size: int) -> dict[str, np.ndarray]:
    if not images:
        return {
            "image": np.zeros((0, size, size, 3), np.uint8),
            "label": np.zeros((0, size, size), np.uint8),
            "image_id": np.array([], dtype=object),
        }
    return {"image": np.stack(images), "label": np.stack(labels), "image_id": np.array(ids, dtype=object)}


def load_example(source: str, image_id: str, *, root: str | None, sbd: str | None, objects: bool = True) -> VOCSample:
    """An image of the training set: from the VOC layout at ``root`` or SBD's folder at ``sbd``."""
    if source not in ("voc", "sbd"):
        raise ValueError(f"unknown source {source!r} of {image_id} (voc or sbd)")
    where = root if source == "voc" else sbd
    if where is None:
        raise ValueError(f"{image_id} comes from {source} but no {source} root was given")
    load = load_sample if source == "voc" else load_sbd_sample
    return load(where, image_id, objects=objects)


def _samples(batch: dict[str, np.ndarray], root: str | None, sbd: str | None, objects: bool = True):
    sources = batch.get("source")
    for i, image_id in enumerate(batch["image_id"]):
        source = "voc" if sources is None else str(sources[i])
        yield i, load_example(source, str(image_id), root=root, sbd=sbd, objects=objects)


def instance_examples(
    batch: dict[str, np.ndarray],
    *,
    root: str | None,
    resize: int,
    enlarge: float = ENLARGE,
    sbd: str | None = None,
) -> dict[str, np.ndarray]:
    """Stage 1: one ``resize x resize`` crop per ground-truth instance of each image id."""
    crops = []
    for _, s in _samples(batch, root, sbd):
        boxes, _ = instances(s.label, s.objects)
        crops += _box_crops(s, enlarge_boxes(boxes, enlarge), resize)
    return _crop_batch(crops, resize)


def proposal_examples(
    batch: dict[str, np.ndarray],
    *,
    root: str | None,
    resize: int,
    min_iou: float = 0.5,
    enlarge: float = ENLARGE,
    max_per_image: int | None = None,
    sbd: str | None = None,
) -> dict[str, np.ndarray]:
    """Stage 2: crops of the cached tight proposals (``boxes``, flattened ``x0, y0, x1, y1``) that pass the IoU rule."""
    crops = []
    for i, s in _samples(batch, root, sbd):
        proposals = np.asarray(batch["boxes"][i], np.float32).reshape(-1, 4)
        gt, _ = instances(s.label, s.objects)
        kept = proposals[select_proposals(proposals, gt, min_iou)]
        if max_per_image is not None:
            kept = kept[:max_per_image]  # proposals are cached best-first
        crops += _box_crops(s, enlarge_boxes(kept, enlarge), resize)
    return _crop_batch(crops, resize)


def _box_crops(s: VOCSample, boxes: np.ndarray, resize: int) -> list[tuple[np.ndarray, np.ndarray, str]]:
    return [(*crop_box(s.image, s.label, box, resize), s.image_id) for box in boxes]


def _crop_batch(crops: list[tuple[np.ndarray, np.ndarray, str]], resize: int) -> dict[str, np.ndarray]:
    images, labels, ids = ([c[k] for c in crops] for k in range(3))
    return _batch(images, labels, ids, resize)


def whole_image_examples(
    batch: dict[str, np.ndarray],
    *,
    root: str | None,
    size: int,
    train: bool,
    sbd: str | None = None,
) -> dict[str, np.ndarray]:
    """FCN: each whole image cropped/padded to ``size x size`` (random placement when ``train``)."""
    rng = np.random.default_rng() if train else None
    images, labels, ids = [], [], []
    for _, s in _samples(batch, root, sbd, objects=False):
        img, lab = pad_or_crop(s.image, s.label, size, rng)
        images.append(img)
        labels.append(lab)
        ids.append(s.image_id)
    return _batch(images, labels, ids, size)


def augment(batch: dict[str, np.ndarray], *, crop: int, mirror: bool, train: bool = True) -> dict[str, np.ndarray]:
    """Random ``crop x crop`` window and random mirror (``train``), or the centre window (evaluation)."""
    images, labels = batch["image"], batch["label"]
    n, h, w = labels.shape
    if h < crop or w < crop:
        raise ValueError(f"examples of {h}x{w} are smaller than the {crop} crop")
    rng = np.random.default_rng()
    out_img = np.empty((n, crop, crop, 3), np.uint8)
    out_lab = np.empty((n, crop, crop), np.uint8)
    for i in range(n):
        y = int(rng.integers(0, h - crop + 1)) if train else (h - crop) // 2
        x = int(rng.integers(0, w - crop + 1)) if train else (w - crop) // 2
        img, lab = images[i, y : y + crop, x : x + crop], labels[i, y : y + crop, x : x + crop]
        if train and mirror and rng.random() < 0.5:
            img, lab = img[:, ::-1], lab[:, ::-1]
        out_img[i], out_lab[i] = img, lab
    return {**batch, "image": out_img, "label": out_lab}


def check_examples(batch: dict[str, np.ndarray], *, root: str | None, sbd: str | None, objects: bool) -> dict[str, Any]:
    """Load every image of the batch as training will: ``error`` and ``path`` say what failed ("" when usable).

    The training set is checked once with this stage before training, so that a missing or
    corrupt file is a counted skip instead of a failed example-construction task.
    """
    out: dict[str, list] = {"image_id": [], "source": [], "error": [], "path": []}
    for i, image_id in enumerate(batch["image_id"]):
        source = str(batch["source"][i])
        error = path = ""
        try:
            load_example(source, str(image_id), root=root, sbd=sbd, objects=objects)
        except BadFile as exc:
            error, path = exc.reason, exc.path
        out["image_id"].append(str(image_id))
        out["source"].append(source)
        out["error"].append(error)
        out["path"].append(path)
    return out


def image_proposals(
    batch: dict[str, np.ndarray],
    *,
    root: str | None,
    proposal: dict[str, Any],
    sbd: str | None = None,
) -> dict[str, Any]:
    """Tight EdgeBox proposals (best first) of each image id, for the stage-2 cache.

    ``proposal`` holds ``ProposalConfig`` fields; ``enlarge`` is forced to 1 because the
    IoU rule compares tight boxes (stage 2 enlarges the kept ones itself).
    """
    generator = ProposalGenerator(ProposalConfig(**{**proposal, "enlarge": 1.0}))
    out: dict[str, list] = {"image_id": [], "boxes": [], "scores": []}
    for _, s in _samples(batch, root, sbd, objects=False):
        boxes, scores = generator(s.image)
        out["image_id"].append(s.image_id)
        out["boxes"].append(boxes.reshape(-1).astype(np.float32).tolist())
        out["scores"].append(scores.astype(np.float32).tolist())
    return out
