"""Training-example construction: crop geometry, padding, the stage-2 IoU rule, augmentation."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.proposals import enlarge_boxes
from pipeline.train.examples import (
    ENLARGE,
    augment,
    box_iou,
    crop_box,
    image_proposals,
    instance_examples,
    pad_or_crop,
    proposal_examples,
    select_proposals,
    whole_image_examples,
)
from pipeline.voc import instances, load_sample, read_split


def _scene(h=120, w=160, box=(50, 30, 110, 70), cls=3):
    image = np.full((h, w, 3), 100, np.uint8)
    label = np.zeros((h, w), np.uint8)
    x0, y0, x1, y1 = box
    image[y0:y1, x0:x1] = 200
    label[y0:y1, x0:x1] = cls
    return image, label


def _extent(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


@pytest.mark.parametrize("size", [240, 96])
def test_stage1_crop_centres_instance_at_one_over_1_2(size):
    image, label = _scene()
    objects = (label > 0).astype(np.uint8)
    tight, classes = instances(label, objects)
    np.testing.assert_array_equal(tight, [[50, 30, 110, 70]])
    assert classes.tolist() == [3]
    img, lab = crop_box(image, label, enlarge_boxes(tight, ENLARGE)[0], size)
    assert img.shape == (size, size, 3) and lab.shape == (size, size)
    x0, y0, x1, y1 = _extent(lab == 3)
    # The object spans 1/1.2 of the crop in both directions and sits in the middle.
    expected = size / ENLARGE
    assert abs((x1 - x0) - expected) <= 1 and abs((y1 - y0) - expected) <= 1
    assert abs((x0 + x1) / 2 - size / 2) <= 0.5 and abs((y0 + y1) / 2 - size / 2) <= 0.5
    # Everything inside the image is labelled (no void), and the object pixels are bright.
    assert not (lab == 255).any()
    assert img[lab == 3].mean() > 190


def test_crop_outside_image_pads_image_0_label_255():
    image, label = _scene(box=(0, 0, 40, 30))  # object in the corner: its enlarged box leaves the image
    box = enlarge_boxes(np.array([[0, 0, 40, 30]], np.float32), ENLARGE)[0]
    assert box[0] < 0 and box[1] < 0
    size = 120
    img, lab = crop_box(image, label, box, size)
    # The left 0.1/1.2 and top 0.1/1.2 of the crop are outside the image.
    pad = int(size * 0.1 / 1.2)  # 10 px
    # Nearest labels: exactly the outside rows/columns are void. Bilinear pixels are 0
    # wherever their whole footprint is outside (the pixel next to the border blends).
    assert (lab[:, :pad] == 255).all() and (lab[:pad] == 255).all()
    assert (lab[pad:, pad:] != 255).all()
    assert (img[:, : pad - 2] == 0).all() and (img[: pad - 2] == 0).all()
    assert (img[pad:, pad:] > 0).all()
    assert (lab == 3).sum() > 0.6 * (size / ENLARGE) ** 2


def test_box_iou_exact():
    a = np.array([[0, 0, 10, 10]], np.float32)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 5, 5]], np.float32)
    np.testing.assert_allclose(box_iou(a, b), [[1.0, 50 / 150, 0.0, 25 / 100]])


def test_stage2_selection_keeps_only_iou_rule_passes():
    gt = np.array([[10, 10, 50, 50], [100, 20, 140, 100]], np.float32)
    proposals = np.array(
        [
            [10, 10, 50, 50],  # exact: IoU 1
            [14, 10, 54, 50],  # shifted 4 of 40: IoU 36/44 = 0.818
            [30, 10, 70, 50],  # shifted half: IoU 20/60 = 0.333 -> dropped
            [100, 20, 140, 60],  # top half of the second instance: IoU 0.5 -> kept (>=)
            [100, 20, 140, 59],  # just under half: IoU 0.4875 -> dropped
            [200, 200, 260, 260],  # nowhere: dropped
            [0, 0, 150, 150],  # whole scene: IoU 0.071 / 0.142 -> dropped
        ],
        np.float32,
    )
    keep = select_proposals(proposals, gt, min_iou=0.5)
    assert keep.tolist() == [True, True, False, True, False, False, False]
    assert select_proposals(proposals, gt, min_iou=0.9).tolist() == [True] + [False] * 6
    assert select_proposals(proposals, np.zeros((0, 4), np.float32)).tolist() == [False] * 7


def test_pad_or_crop():
    image, label = _scene(h=50, w=80)
    img, lab = pad_or_crop(image, label, 64, rng=None)  # taller pad (7 top), wider crop (8 left)
    assert (lab[:7] == 255).all() and (img[:7] == 0).all() and (lab[57:] == 255).all()
    np.testing.assert_array_equal(lab[7:57], label[:, 8:72])
    rng = np.random.default_rng(0)
    for _ in range(5):
        img, lab = pad_or_crop(image, label, 64, rng)
        assert img.shape == (64, 64, 3) and (lab != 255).sum() == 50 * 64


def test_augment_crop_and_mirror():
    batch = {
        "image": np.arange(2 * 8 * 8 * 3, dtype=np.uint8).reshape(2, 8, 8, 3),
        "label": np.tile(np.arange(8, dtype=np.uint8), (2, 8, 1)),
        "image_id": np.array(["a", "b"], dtype=object),
    }
    out = augment(batch, crop=6, mirror=False, train=False)
    np.testing.assert_array_equal(out["label"][0], batch["label"][0, 1:7, 1:7])
    seen_mirror = seen_plain = False
    for _ in range(40):
        out = augment(batch, crop=8, mirror=True, train=True)
        row = out["label"][0, 0]
        seen_mirror |= row.tolist() == list(range(7, -1, -1))
        seen_plain |= row.tolist() == list(range(8))
        # Image and label are mirrored together.
        flipped = row[0] == 7
        ref = batch["image"][0, :, ::-1] if flipped else batch["image"][0]
        np.testing.assert_array_equal(out["image"][0], ref)
    assert seen_mirror and seen_plain


def test_batch_stages_on_voc(synth_voc):
    ids = read_split(synth_voc, "train")[:3]
    batch = {"image_id": np.array(ids, dtype=object)}
    n_inst = sum(len(instances(s.label, s.objects)[0]) for s in (load_sample(synth_voc, i) for i in ids))
    out = instance_examples(batch, root=synth_voc, resize=40)
    assert out["image"].shape == (n_inst, 40, 40, 3) and out["label"].shape == (n_inst, 40, 40)
    props = image_proposals(batch, root=synth_voc, proposal={"top_k": 20, "min_side": 20})
    assert props["image_id"] == ids and all(len(b) % 4 == 0 and len(b) > 0 for b in props["boxes"])
    # Stage 2 with the ground-truth boxes themselves as "proposals": all pass, same crops as stage 1.
    gt_flat = [instances(s.label, s.objects)[0].reshape(-1).tolist() for s in (load_sample(synth_voc, i) for i in ids)]
    gt_batch = {"image_id": np.array(ids, dtype=object), "boxes": np.array(gt_flat, dtype=object)}
    out2 = proposal_examples(gt_batch, root=synth_voc, resize=40)
    np.testing.assert_array_equal(out2["label"], out["label"])
    whole = whole_image_examples(batch, root=synth_voc, size=64, train=True)
    assert whole["image"].shape == (3, 64, 64, 3)
    empty = proposal_examples({"image_id": np.array(ids[:1], dtype=object), "boxes": np.array([[]], dtype=object)},
                              root=synth_voc, resize=40)
    assert empty["image"].shape == (0, 40, 40, 3)
