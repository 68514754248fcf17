"""Segmentation metrics from a confusion matrix, as FCN's ``score.py`` and the VOC
devkit define them.

Rows are ground truth, columns predictions; pixels labelled ``ignore_index`` (255,
VOC "void") are not counted. From the matrix ``M`` (``n_ij`` pixels of class i
predicted j, ``t_i = sum_j n_ij``):

- pixel accuracy         ``sum_i n_ii / sum_i t_i``
- mean class accuracy    ``mean_i n_ii / t_i``
- IoU of class i         ``n_ii / (t_i + sum_j n_ji - n_ii)``
- mean IoU               mean of the IoUs
- frequency-weighted IoU ``sum_i t_i * IoU_i / sum_i t_i``

Classes absent from both the ground truth and the predictions have an undefined
(0/0) IoU: they are excluded from the means (reported as ``NaN`` per class). A class
present in the ground truth but never predicted counts with IoU 0, and one predicted
but absent from the ground truth counts with IoU 0 too (VOC's rule). Mean class
accuracy averages over classes present in the ground truth.
"""

from __future__ import annotations

import numpy as np


class ConfusionMatrix:
    """Bincount-based confusion matrix with ``update / merge / compute / reset``.

    Args:
        num_classes: number of classes; labels outside ``[0, num_classes)`` other than
            ``ignore_index`` raise.
        ignore_index: ground-truth label never scored.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.mat = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, pred, target) -> ConfusionMatrix:
        """Add a prediction / ground-truth pair (any matching shapes, numpy or torch)."""
        pred, target = _np(pred).reshape(-1), _np(target).reshape(-1)
        if pred.shape != target.shape:
            raise ValueError(f"prediction and target sizes differ: {pred.shape} vs {target.shape}")
        keep = target != self.ignore_index
        pred, target = pred[keep].astype(np.int64), target[keep].astype(np.int64)
        n = self.num_classes
        if target.size and (target.min() < 0 or target.max() >= n):
            raise ValueError(f"target labels outside [0, {n}) and not {self.ignore_index}")
        if pred.size and (pred.min() < 0 or pred.max() >= n):
            raise ValueError(f"predicted labels outside [0, {n})")
        self.mat += np.bincount(n * target + pred, minlength=n * n).reshape(n, n)
        return self

    def merge(self, other: ConfusionMatrix | np.ndarray) -> ConfusionMatrix:
        mat = other.mat if isinstance(other, ConfusionMatrix) else np.asarray(other)
        if mat.shape != self.mat.shape:
            raise ValueError(f"cannot merge a {mat.shape} matrix into {self.mat.shape}")
        self.mat += mat.astype(np.int64)
        return self

    def __add__(self, other: ConfusionMatrix) -> ConfusionMatrix:
        out = ConfusionMatrix(self.num_classes, self.ignore_index)
        return out.merge(self).merge(other)

    def reset(self) -> None:
        self.mat[:] = 0

    def compute(self) -> dict:
        return scores(self.mat)


def scores(mat: np.ndarray) -> dict:
    """Metrics of a confusion matrix (see module docstring); NaN where undefined."""
    mat = np.asarray(mat, dtype=np.float64)
    diag = np.diag(mat)
    gt = mat.sum(axis=1)
    pred = mat.sum(axis=0)
    total = gt.sum()
    union = gt + pred - diag
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, diag / union, np.nan)
        acc = np.where(gt > 0, diag / gt, np.nan)
        valid = ~np.isnan(iou)
        return {
            "pixel_accuracy": float(diag.sum() / total) if total else float("nan"),
            "mean_accuracy": float(np.nanmean(acc)) if (gt > 0).any() else float("nan"),
            "iou": [float(v) for v in iou],
            "mean_iou": float(iou[valid].mean()) if valid.any() else float("nan"),
            "fw_iou": float((gt[valid] * iou[valid]).sum() / total) if total else float("nan"),
            "pixels": int(total),
        }


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)
