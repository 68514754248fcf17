"""Evaluation reports and baseline comparison (without running a model)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from pipeline.evaluation.regression import (
    EXIT_FAILED,
    EXIT_MISMATCH,
    EXIT_OK,
    EXIT_REGRESSION,
    ReportMismatch,
    compare_reports,
    failure_summary,
    parse_max_failed,
)
from pipeline.evaluation.report import markdown_table, read_report, variant_entry, write_report
from pipeline.metrics import ConfusionMatrix

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


def test_max_failed_is_a_count_or_a_fraction():
    assert [parse_max_failed(t) for t in ("0", "3", "0.05", "5%", "1.0", "100%")] == [0, 3, 0.05, 0.05, 1.0, 1.0]
    assert isinstance(parse_max_failed("1"), int) and isinstance(parse_max_failed("1.0"), float)
    for bad in ("-1", "2.5", "101%", "x", "1.5.2"):
        with pytest.raises(ValueError, match="--max-failed"):
            parse_max_failed(bad)
    assert len({EXIT_OK, EXIT_REGRESSION, EXIT_MISMATCH, EXIT_FAILED, 2}) == 5  # every verdict its own code


FAILED = [
    "a.jpg\tUnknownLabelColour\tscoring: label colours not in the palette (...): (10, 20, 30) on 7 pixels",
    "b.jpg\tUnknownLabelColour\tscoring: label colours not in the palette (...): (1, 2, 3) on 1 pixels",
    "c.jpg\tUnidentifiedImageError\tcannot identify image file",
]


def test_failure_gate_by_count_fraction_and_when_nothing_scored():
    s = failure_summary(FAILED, images=20, scored=17, max_failed=0)
    assert (s["count"], s["allowed"], s["exit_code"]) == (3, 0, EXIT_FAILED)
    assert list(s["by_class"]) == ["UnknownLabelColour", "UnidentifiedImageError"]  # most images first
    assert s["by_class"]["UnknownLabelColour"]["images"] == 2
    assert s["by_class"]["UnknownLabelColour"]["example"].startswith("a.jpg: scoring: label colours")
    assert failure_summary(FAILED, images=20, scored=17, max_failed=3)["exit_code"] == EXIT_OK
    assert failure_summary(FAILED, images=20, scored=17, max_failed=2)["exit_code"] == EXIT_FAILED
    assert failure_summary(FAILED, images=20, scored=17, max_failed=0.15)["exit_code"] == EXIT_OK  # 3 of 20
    assert failure_summary(FAILED, images=20, scored=17, max_failed=0.1)["exit_code"] == EXIT_FAILED
    assert failure_summary([], images=20, scored=20, max_failed=0)["exit_code"] == EXIT_OK
    none = failure_summary(FAILED, images=3, scored=0, max_failed=1.0)  # nothing scored: never allowed
    assert none["exit_code"] == EXIT_FAILED and none["verdict"].startswith("no image could be scored")


def test_report_of_a_run_where_nothing_scored_says_why(tmp_path):
    empty = ConfusionMatrix(3).compute()
    rep = _report({})
    rep["variants"] = {"fcn": variant_entry(empty, CLASSES)}
    rep["dataset"].update(images=3, scored=0, failed=3, missing_labels=2)
    rep["failures"] = failure_summary(FAILED, images=3, scored=0, max_failed=0)
    rep["missing_label_images"] = ["m1.jpg", "m2.jpg"]
    paths = write_report(rep, str(tmp_path))
    got = read_report(paths["json"])
    assert got["variants"]["fcn"]["mean_iou"] is None
    assert got["failures"]["by_class"]["UnknownLabelColour"]["images"] == 2
    md = (tmp_path / "report.md").read_text()
    assert "**3 of 3 images could not be scored** (no image could be scored (3 of 3 failed))" in md
    assert (
        "| UnknownLabelColour | 2 | a.jpg: scoring: label colours not in the palette (...): (10, 20, 30) on 7 pixels |"
        in md
    )
    assert "| UnidentifiedImageError | 1 | c.jpg: cannot identify image file |" in md
    assert "**2 images have no label** and were skipped (--skip-missing-labels): `m1.jpg`, `m2.jpg`" in md
    assert "| fcn | - | - | - | **-** |" in md
