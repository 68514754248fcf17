"""Evaluation diagnostics for labels with instances (VOC ``SegmentationObject``).

The DeconvNet paper's argument is about object sizes: FCN-8s, with its fixed receptive
field, mislabels parts of large objects and loses small ones, while DeconvNet, run on
object proposals, sees each object whole at one scale but only where a proposal
covers it (proposals under 112 px are skipped, so small objects are left to FCN). Three
diagnostics let a report show where each variant wins and why:

- **Proposal recall**: the share of ground-truth instances that one of the image's
  top-K proposals overlaps at IoU >= 0.5 and >= 0.7 (tight boxes: the proposals'
  1.2x enlargement undone; the whole-image fallback box taken as it is).
- **Oracle variants** ``deconvnet@oracle`` and ``edeconvnet@oracle``: DeconvNet on the
  ground-truth instance boxes, enlarged like proposals, in place of EdgeBoxes: what
  perfect proposals would give.
- **Mean IoU by object size**: per size class (``small`` / ``medium`` / ``large``), the
  mean IoU of a confusion matrix in which the pixels of instances of the other sizes
  are void: background pixels and the instances of that size count, so false positives
  on the background still cost.

Sizes are the instance's pixel count over the image's (scale-free, so VOC photos and
small generated images split alike): small under 1%, large at 10% or more
(``EvalConfig.size_bounds``). At a 500x375 VOC image that is about 43x43 px and
137x137 px; a square 112 px proposal covers 6.7% of it.
"""

from __future__ import annotations

import math

import numpy as np

from pipeline.proposals import enlarge_boxes
from pipeline.rows import RowStatus, object_column

SIZES = ("small", "medium", "large")
SIZE_BOUNDS = (0.01, 0.10)  # instance area / image area: small < 1% <= medium < 10% <= large
RECALL_IOUS = (0.5, 0.7)
_NONE, _VOID = 0, 255  # size map values besides 1 + size index


def size_index(area_fraction: np.ndarray, bounds: tuple[float, float] = SIZE_BOUNDS) -> np.ndarray:
    """0 (small), 1 (medium) or 2 (large) for each instance's share of the image."""
    return np.searchsorted(np.asarray(bounds, np.float64), np.asarray(area_fraction, np.float64), side="right")


def size_map(objects: np.ndarray, ids: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Per pixel: 1 + the size index of the instance it belongs to, 0 for none, 255 for void."""
    lut = np.zeros(256, np.uint8)
    lut[_VOID] = _VOID
    lut[ids] = sizes + 1
    return lut[objects]


def label_for_size(label: np.ndarray, sizes_px: np.ndarray, size: int) -> np.ndarray:
    """``label`` with the pixels of instances of every other size made void (255)."""
    out = label.copy()
    out[(sizes_px != _NONE) & (sizes_px != _VOID) & (sizes_px != size + 1)] = _VOID
    return out


def tight_proposals(boxes: np.ndarray, scores: np.ndarray, enlarge: float) -> np.ndarray:
    """Proposal boxes with their enlargement undone; the fallback whole-image box (score 0) as it is."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    shrunk = enlarge_boxes(boxes, 1.0 / enlarge)
    return np.where((np.asarray(scores).reshape(-1) > 0)[:, None], shrunk, boxes)


def recall_counts(proposals: np.ndarray, gt_boxes: np.ndarray, sizes: np.ndarray, ious=RECALL_IOUS) -> np.ndarray:
    """``(len(SIZES), 1 + len(ious))`` int64: per size, the instances and how many a proposal finds at each IoU."""
    from pipeline.train.examples import box_iou

    counts = np.zeros((len(SIZES), 1 + len(ious)), np.int64)
    best = box_iou(gt_boxes, proposals).max(axis=1) if len(proposals) and len(gt_boxes) else np.zeros(len(gt_boxes))
    for s in range(len(SIZES)):
        of_size = sizes == s
        counts[s, 0] = of_size.sum()
        for j, t in enumerate(ious):
            counts[s, 1 + j] = (of_size & (best >= t)).sum()
    return counts


def ground_truth_instances(
    batch: dict[str, np.ndarray], *, enlarge: float, size_bounds: tuple[float, float] = SIZE_BOUNDS
) -> dict[str, np.ndarray]:
    """Ray Data stage after the proposals: each ok row's instances from its ``object_path`` PNG.

    Adds ``oracle_boxes`` (the instance boxes enlarged like proposals), ``size_px`` (the
    per-pixel size map of :func:`size_map`) and ``recall`` (:func:`recall_counts` of
    the row's proposals). A missing or unreadable instance PNG makes the row an error.
    """
    from models.storage import read_url
    from pipeline.voc import decode_label, instance_regions

    def one(i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        objects = decode_label(read_url(str(batch["object_path"][i])))
        h, w = batch["image"][i].shape[:2]
        if objects.shape != (h, w):
            raise ValueError(f"instance map is {objects.shape}, image is {(h, w)}")
        ids, boxes, areas = instance_regions(objects)
        sizes = size_index(areas / float(h * w), size_bounds)
        proposals = tight_proposals(batch["boxes"][i], batch["box_scores"][i], enlarge)
        return enlarge_boxes(boxes, enlarge), size_map(objects, ids, sizes), recall_counts(proposals, boxes, sizes)

    rows = RowStatus(batch, "instances")
    empty = (
        np.zeros((0, 4), np.float32),
        np.zeros((0, 0), np.uint8),
        np.zeros((len(SIZES), 1 + len(RECALL_IOUS)), np.int64),
    )
    results = rows.map(one, empty=empty)
    return {
        **batch,
        **rows.columns(),
        "oracle_boxes": object_column(r[0] for r in results),
        "size_px": object_column(r[1] for r in results),
        "recall": object_column(r[2] for r in results),
    }


def recall_table(counts: np.ndarray, ious=RECALL_IOUS) -> dict[str, dict[str, float | int | None]]:
    """Summed :func:`recall_counts` as ``{size or "all": {"instances": n, "iou_0.5": r, ...}}``."""
    rows = {name: counts[s] for s, name in enumerate(SIZES)}
    rows["all"] = counts.sum(axis=0)
    return {
        name: {
            "instances": int(c[0]),
            **{f"iou_{t:g}": (float(c[1 + j] / c[0]) if c[0] else None) for j, t in enumerate(ious)},
        }
        for name, c in rows.items()
    }


def diagnostics_section(
    metrics: dict[str, dict], variants: list[str], recall: np.ndarray, *, size_bounds, top_k: int, entry
) -> dict:
    """The report's ``diagnostics``: bounds, proposal recall, oracle entries (made by ``entry``)
    and the mean IoU by size of ``variants`` (the requested ones and the oracles)."""
    return {
        "size_bounds": list(size_bounds),
        "proposal_recall": {"top_k": top_k, "by_size": recall_table(recall)},
        "oracle": {v: entry(metrics[v]) for v in variants if v.endswith("@oracle")},
        "mean_iou_by_size": {
            v: {**{size: metrics[f"{v}#{size}"]["mean_iou"] for size in SIZES}, "all": metrics[v]["mean_iou"]}
            for v in variants
        },
    }


def diagnostics_lines(section: dict) -> list[str]:
    """What the job prints of the diagnostics: recall per size, then the oracles' mean IoU."""
    recall = section["proposal_recall"]

    def pct(v: float | None) -> str:
        return "-" if v is None or math.isnan(v) else f"{100 * v:.1f}%"

    by_size = ", ".join(f"{size} {pct(r['iou_0.5'])} of {r['instances']}" for size, r in recall["by_size"].items())
    lines = [f"proposal recall (top {recall['top_k']}, IoU >= 0.5): {by_size}"]
    for v, by in section["mean_iou_by_size"].items():
        if v.endswith("@oracle"):
            lines.append(f"{v:<18} mean IoU {pct(by['all'])} (ground-truth instance boxes as proposals)")
    return lines
