"""Evaluation diagnostics: object sizes, proposal recall, the per-row instance stage."""

from __future__ import annotations

import numpy as np
from PIL import Image

from pipeline.evaluation.diagnostics import (
    diagnostics_lines,
    ground_truth_instances,
    label_for_size,
    recall_counts,
    recall_table,
    size_index,
    size_map,
    tight_proposals,
)
from pipeline.proposals import enlarge_boxes


def test_size_index_bounds_are_half_open():
    # small < 1% <= medium < 10% <= large
    assert size_index([0.0, 0.0099, 0.01, 0.0999, 0.1, 0.9]).tolist() == [0, 0, 1, 1, 2, 2]
    assert size_index([0.04], bounds=(0.05, 0.5)).tolist() == [0]


def test_size_map_and_label_for_size():
    objects = np.array([[0, 1, 1, 255], [2, 2, 3, 0]], np.uint8)
    sizes_px = size_map(objects, np.array([1, 2, 3], np.uint8), np.array([0, 2, 1]))
    assert sizes_px.tolist() == [[0, 1, 1, 255], [3, 3, 2, 0]]
    label = np.array([[0, 4, 4, 255], [5, 5, 1, 0]], np.uint8)
    # small: instance 1 kept, the large (2) and medium (3) ones void, background and void as they are
    assert label_for_size(label, sizes_px, 0).tolist() == [[0, 4, 4, 255], [255, 255, 255, 0]]
    assert label_for_size(label, sizes_px, 2).tolist() == [[0, 255, 255, 255], [5, 5, 255, 0]]
    assert label.tolist() == [[0, 4, 4, 255], [5, 5, 1, 0]]  # not modified in place


def test_tight_proposals_undo_the_enlargement_but_keep_the_fallback():
    tight = np.array([[10, 20, 50, 40], [0, 0, 8, 8]], np.float32)
    enlarged = enlarge_boxes(tight, 1.2)
    np.testing.assert_allclose(tight_proposals(enlarged, np.array([0.3, 0.1]), 1.2), tight, atol=1e-4)
    whole = np.array([[0, 0, 64, 48]], np.float32)  # the whole-image fallback, score 0, never enlarged
    np.testing.assert_array_equal(tight_proposals(whole, np.array([0.0]), 1.2), whole)


def test_recall_counts_on_known_boxes():
    gt = np.array([[0, 0, 10, 10], [100, 100, 110, 110], [200, 200, 300, 300]], np.float32)
    sizes = np.array([0, 0, 2])
    proposals = np.array(
        [
            [0, 0, 10, 6],  # IoU 0.6 with the first small instance: found at 0.5, not at 0.7
            [100, 100, 110, 108],  # IoU 0.8 with the second: found at both
            [200, 200, 300, 240],  # IoU 0.4 with the large one: not found
        ],
        np.float32,
    )
    counts = recall_counts(proposals, gt, sizes)
    assert counts.tolist() == [[2, 2, 1], [0, 0, 0], [1, 0, 0]]
    table = recall_table(counts)
    assert table["small"] == {"instances": 2, "iou_0.5": 1.0, "iou_0.7": 0.5}
    assert table["medium"] == {"instances": 0, "iou_0.5": None, "iou_0.7": None}
    assert table["all"] == {"instances": 3, "iou_0.5": 2 / 3, "iou_0.7": 1 / 3}
    assert recall_counts(np.zeros((0, 4), np.float32), gt, sizes).tolist() == [[2, 0, 0], [0, 0, 0], [1, 0, 0]]


def test_ground_truth_instances_reads_the_instance_png(tmp_path):
    h, w = 40, 50
    objects = np.zeros((h, w), np.uint8)
    objects[0:2, 0:2] = 1  # 4 px = 0.2% of the image: small
    objects[10:20, 10:20] = 2  # 100 px = 5%: medium
    objects[20:40, 25:50] = 3  # 500 px = 25%: large
    objects[20, 25] = 255  # void pixels are no instance's
    path = tmp_path / "obj.png"
    Image.fromarray(objects, mode="L").save(path)
    tight = np.array([[10, 10, 20, 20], [25, 20, 50, 40]], np.float32)  # the medium and large instances
    batch = {
        "image_id": np.array(["a", "b"], dtype=object),
        "status": np.array(["ok", "DecodeError"], dtype=object),
        "error": np.array(["", "bad"], dtype=object),
        "image": np.array([np.zeros((h, w, 3), np.uint8), np.zeros((0, 0, 3), np.uint8)], dtype=object),
        "object_path": np.array([str(path), str(path)], dtype=object),
        "boxes": np.array([enlarge_boxes(tight, 1.2), np.zeros((0, 4), np.float32)], dtype=object),
        "box_scores": np.array([np.array([0.5, 0.4], np.float32), np.zeros(0, np.float32)], dtype=object),
    }
    out = ground_truth_instances(batch, enlarge=1.2)
    assert list(out["status"]) == ["ok", "DecodeError"]  # an error row passes through untouched
    expected_tight = np.array([[0, 0, 2, 2], [10, 10, 20, 20], [25, 20, 50, 40]], np.float32)
    np.testing.assert_allclose(out["oracle_boxes"][0], enlarge_boxes(expected_tight, 1.2))
    sizes_px = out["size_px"][0]
    assert sizes_px[0, 0] == 1 and sizes_px[15, 15] == 2 and sizes_px[30, 30] == 3
    assert sizes_px[20, 25] == 255 and sizes_px[5, 40] == 0
    assert out["recall"][0].tolist() == [[1, 0, 0], [1, 1, 1], [1, 1, 1]]
    assert "proposal recall (top 50, IoU >= 0.5): small 0.0% of 1, medium 100.0% of 1" in diagnostics_lines(
        {"proposal_recall": {"top_k": 50, "by_size": recall_table(out["recall"][0])}, "mean_iou_by_size": {}}
    )[0]


def test_a_missing_instance_png_makes_an_error_row(tmp_path):
    batch = {
        "image_id": np.array(["a"], dtype=object),
        "status": np.array(["ok"], dtype=object),
        "error": np.array([""], dtype=object),
        "image": np.array([np.zeros((4, 4, 3), np.uint8)], dtype=object),
        "object_path": np.array([str(tmp_path / "missing.png")], dtype=object),
        "boxes": np.array([np.zeros((0, 4), np.float32)], dtype=object),
        "box_scores": np.array([np.zeros(0, np.float32)], dtype=object),
    }
    out = ground_truth_instances(batch, enlarge=1.2)
    assert out["status"][0] == "FileNotFoundError" and "missing.png" in out["error"][0]
