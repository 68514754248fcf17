"""Metrics: hand-computed values on known matrices and a plain NumPy reference."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.metrics import ConfusionMatrix, scores


def test_known_matrix_hand_computed():
    # gt rows, pred cols: class 0: 3 right, 1 as class 1; class 1: 2 right; class 2 absent.
    mat = np.array([[3, 1, 0], [0, 2, 0], [0, 0, 0]])
    s = scores(mat)
    assert s["pixel_accuracy"] == pytest.approx(5 / 6)
    assert s["mean_accuracy"] == pytest.approx((3 / 4 + 2 / 2) / 2)
    assert s["iou"][0] == pytest.approx(3 / 4) and s["iou"][1] == pytest.approx(2 / 3)
    assert math.isnan(s["iou"][2])  # absent from both: excluded from the mean
    assert s["mean_iou"] == pytest.approx((3 / 4 + 2 / 3) / 2)
    assert s["fw_iou"] == pytest.approx((4 * 3 / 4 + 2 * 2 / 3) / 6)


def test_predicted_but_absent_class_counts_zero():
    s = scores(np.array([[1, 1], [0, 0]]))
    assert s["iou"] == [0.5, 0.0] and s["mean_iou"] == pytest.approx(0.25)


def test_update_ignores_void_and_matches_numpy_reference():
    rng = np.random.default_rng(0)
    n = 5
    cm = ConfusionMatrix(n)
    ref = np.zeros((n, n), np.int64)
    for _ in range(4):
        gt = rng.integers(0, n, (17, 23))
        gt[rng.random(gt.shape) < 0.1] = 255
        pred = np.where(rng.random(gt.shape) < 0.6, gt % 255 % n, rng.integers(0, n, gt.shape))
        cm.update(pred, gt)
        for g, p in zip(gt.ravel(), pred.ravel()):
            if g != 255:
                ref[g, p] += 1
    assert np.array_equal(cm.mat, ref)
    s = cm.compute()
    iou_ref = [ref[i, i] / (ref[i].sum() + ref[:, i].sum() - ref[i, i]) for i in range(n)]
    assert s["iou"] == pytest.approx(iou_ref)
    assert s["mean_iou"] == pytest.approx(np.mean(iou_ref))
    assert s["pixel_accuracy"] == pytest.approx(np.trace(ref) / ref.sum())


def test_merge_of_partials_equals_whole_and_rejects_bad_labels():
    rng = np.random.default_rng(1)
    gt, pred = rng.integers(0, 3, 100), rng.integers(0, 3, 100)
    whole = ConfusionMatrix(3).update(pred, gt)
    parts = ConfusionMatrix(3).update(pred[:40], gt[:40]) + ConfusionMatrix(3).update(pred[40:], gt[40:])
    assert np.array_equal(whole.mat, parts.mat)
    with pytest.raises(ValueError):
        ConfusionMatrix(3).update(np.array([0]), np.array([7]))
    with pytest.raises(ValueError):
        ConfusionMatrix(3).update(np.array([0, 1]), np.array([1]))
