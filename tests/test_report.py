"""Evaluation reports and baseline comparison (without running a model)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from pipeline.metrics import ConfusionMatrix
from pipeline.regression import EXIT_OK, EXIT_REGRESSION, ReportMismatch, compare_reports
from pipeline.report import markdown_table, read_report, variant_entry, write_report

CLASSES = ["background", "disc", "box"]


def _report(mats: dict[str, np.ndarray], fingerprint="abc", split="val") -> dict:
    variants = {}
    for name, mat in mats.items():
        cm = ConfusionMatrix(3)
        cm.merge(mat)
        variants[name] = variant_entry(cm.compute(), CLASSES)
    return {
        "created": "2026-11-22T00:00:00Z",
        "dataset": {"data": "/data/voc", "split": split, "fingerprint": fingerprint, "images": 4},
        "class_names": CLASSES,
        "variants": variants,
        "checkpoints": {"deconvnet": {"path": "d.safetensors", "checkpoint_id": "0123"}},
        "timings": {"total_s": 1.5},
    }


GOOD = np.array([[50, 0, 0], [5, 20, 0], [0, 0, 0]])  # box absent: IoU undefined
BAD = np.array([[45, 5, 0], [10, 15, 0], [0, 0, 0]])


def test_report_files_and_table_layout(tmp_path):
    rep = _report({"deconvnet": GOOD, "fcn": BAD})
    paths = write_report(rep, str(tmp_path))
    got = read_report(paths["json"])
    assert got["variants"]["deconvnet"]["iou"]["box"] is None  # NaN -> null
    assert got["variants"]["deconvnet"]["mean_iou"] == pytest.approx((50 / 55 + 0.8) / 2)
    table = markdown_table(got).splitlines()
    assert table[0] == "| method | bkg | disc | box | mean |"
    assert table[2].startswith("| deconvnet | 90.9 | 80.0 | - | **85.5** |")
    assert "fcn" in table[3]
    md = (tmp_path / "report.md").read_text()
    assert "fingerprint `abc`" in md and "| deconvnet |" in md
    with Image.open(paths["plot"]) as im:
        assert im.format == "PNG" and im.size[0] > 300
    assert not list(tmp_path.glob("*.tmp-*"))


def test_same_report_is_no_regression_and_worse_model_is():
    good = json.loads(json.dumps(_report({"deconvnet": GOOD})))
    bad = json.loads(json.dumps(_report({"deconvnet": BAD})))
    assert compare_reports(good, good).exit_code == EXIT_OK
    cmp = compare_reports(bad, good)
    assert cmp.exit_code == EXIT_REGRESSION
    assert any("mean IoU" in r for r in cmp.regressions)
    assert cmp.deltas["deconvnet"]["disc"] < 0
    # an improvement is never a regression
    assert compare_reports(good, bad).exit_code == EXIT_OK


def test_class_threshold_catches_a_single_class_drop():
    base = _report({"v": np.array([[100, 0, 0], [0, 50, 0], [0, 0, 50]])})
    now = _report({"v": np.array([[100, 0, 0], [0, 50, 0], [0, 3, 47]])})
    loose = compare_reports(now, base, miou_drop=0.5, class_drop=0.5)
    assert loose.exit_code == EXIT_OK
    strict = compare_reports(now, base, miou_drop=0.5, class_drop=0.01)
    assert strict.exit_code == EXIT_REGRESSION and any("v/box" in r for r in strict.regressions)


def test_different_data_is_refused_unless_forced():
    a = _report({"v": GOOD}, fingerprint="aaa")
    b = _report({"v": GOOD}, fingerprint="bbb")
    with pytest.raises(ReportMismatch, match="fingerprint"):
        compare_reports(a, b)
    with pytest.raises(ReportMismatch, match="split"):
        compare_reports(_report({"v": GOOD}, split="train"), _report({"v": GOOD}))
    assert compare_reports(a, b, force=True).exit_code == EXIT_OK
