"""Stages of the segmentation job, in-process (no Ray): decode, listing, model stage, CRF, writer, checks."""

from __future__ import annotations

import copy
import dataclasses
import io
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from segment_fixtures import NUM_CLASSES, make_checkpoints, scene, tiny_config, write_images, write_odd_inputs

from models.storage import atomic_write
from pipeline.crf import CRFStage, dense_crf, kept_classes, uncertainty
from pipeline.decode import decode_images, read_files
from pipeline.segment import (
    BLOCK_ROWS,
    MIN_STORE_MB,
    STORE_BLOCKS_PER_ACTOR,
    fused_actor_bytes,
    prepare,
    stage_resources,
)
from pipeline.segmenter import InferenceConfig, Segmenter, crop_boxes, paste_max, pixel_box
from pipeline.sources import (
    assign_outputs,
    check_output_location,
    existing_results,
    list_inputs,
    mark_pending,
    mask_key,
    safe_relpath,
)
from pipeline.stage_config import CRFConfig
from pipeline.writers import ERROR_SCHEMA, RESULT_SCHEMA, encode_mask, write_outputs


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    return make_checkpoints(tmp_path_factory.mktemp("ckpt"))


def _batch(items: list[dict]) -> dict[str, np.ndarray]:
    return {k: np.array([it[k] for it in items], dtype=object) for k in ("path", "image_id", "status", "error")}


# --- decode -------------------------------------------------------------------------------------------


def test_decode_odd_inputs(tmp_path):
    expected = write_odd_inputs(tmp_path)
    items = [{"path": str(tmp_path / n), "image_id": n, "status": "ok", "error": ""} for n in sorted(expected)]
    out = decode_images(read_files(_batch(items)), max_pixels=10**6)
    got = dict(zip(out["image_id"], out["status"]))
    assert got == expected
    by_id = {i: k for k, i in enumerate(out["image_id"])}
    for name, status in expected.items():
        image = out["image"][by_id[name]]
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert (image.size > 0) == (status == "ok")
        assert (out["error"][by_id[name]] == "") == (status == "ok")
    # EXIF orientation 6: stored 64 high x 96 wide, shown (and decoded) 96 high x 64 wide.
    assert out["image"][by_id["rotated.jpg"]].shape == (96, 64, 3)
    # 16-bit gray is rescaled to 8 bits, not clipped: v * 257 -> v.
    deep = out["image"][by_id["deep16.png"]]
    assert np.array_equal(deep[:, :, 0], scene(14, 64, 96)[:, :, 1]) and np.array_equal(deep[:, :, 0], deep[:, :, 2])
    gray = out["image"][by_id["gray.png"]]
    assert np.array_equal(gray[:, :, 1], scene(12, 70, 90)[:, :, 0])
    assert np.array_equal(out["image"][by_id["rgba.png"]], scene(13, 66, 80))
    assert list(out["height"][[by_id["gray.png"], by_id["empty.png"]]]) == [70, 0]


def test_decode_too_large_and_read_error(tmp_path):
    write_images(tmp_path, {"big.png": (50, 60)})
    items = [
        {"path": str(tmp_path / "big.png"), "image_id": "big.png", "status": "ok", "error": ""},
        {"path": str(tmp_path / "gone.png"), "image_id": "gone.png", "status": "ok", "error": ""},
        {"path": "x", "image_id": "pre", "status": "OutputCollision", "error": "earlier"},
    ]
    out = decode_images(read_files(_batch(items)), max_pixels=50 * 60 - 1)
    assert list(out["status"]) == ["ImageTooLarge", "FileNotFoundError", "OutputCollision"]
    assert "3000 pixels" in out["error"][0] and out["error"][2] == "earlier"


# --- listing and output names ----------------------------------------------------------------------------


def test_list_folder_glob_and_manifests(tmp_path):
    root = tmp_path / "bucket"
    write_images(root, {"a.jpg": (8, 8), "sub/b.png": (8, 8), "sub/deeper/c.JPG": (8, 8)})
    (root / "readme.txt").write_text("not listed")
    (root / ".hidden").mkdir()
    write_images(root / ".hidden", {"x.jpg": (8, 8)})
    r, items = list_inputs(str(root), (".jpg", ".png"))
    assert r == str(root)
    assert [i["image_id"] for i in items] == ["a.jpg", "sub/b.png", "sub/deeper/c.JPG"]
    assert items[1]["path"] == str(root / "sub" / "b.png")
    _, items = list_inputs(str(root / "sub" / "*.png"))
    assert [i["image_id"] for i in items] == ["b.png"]
    _, items = list_inputs(str(root) + "/**/*.JPG")
    assert [i["image_id"] for i in items] == ["sub/deeper/c.JPG"]
    (root / "list.txt").write_text("# images\na.jpg\nsub/b.png\n\n")
    _, items = list_inputs(str(root / "list.txt"))
    assert [(i["image_id"], i["path"]) for i in items] == [
        ("a.jpg", str(root / "a.jpg")),
        ("sub/b.png", str(root / "sub/b.png")),
    ]
    (root / "list.csv").write_text(f"path,image_id\n{root / 'sub/deeper/c.JPG'},c-id\nsub/b.png,\n")
    _, items = list_inputs(str(root / "list.csv"))
    assert [i["image_id"] for i in items] == ["c-id", "b.png"]
    pq.write_table(pa.table({"path": ["a.jpg", "sub/b.png"]}), root / "list.parquet")
    _, items = list_inputs(str(root / "list.parquet"))
    assert [i["image_id"] for i in items] == ["a.jpg", "sub/b.png"]
    with pytest.raises(FileNotFoundError, match="input not found"):
        list_inputs(str(tmp_path / "nope"))


@pytest.mark.parametrize(
    "image_id, key",
    [
        ("a/b.jpg", "a/b.png"),
        ("../../etc/passwd.jpg", "etc/passwd.png"),
        ("/abs/x.JPEG", "abs/x.png"),
        ("C:\\pics\\y.jpg", "C_/pics/y.png"),
        ("..", ""),
        ("noext", "noext.png"),
    ],
)
def test_mask_key_never_escapes(image_id, key):
    assert mask_key(image_id) == key
    assert ".." not in safe_relpath(image_id).split("/")
    assert not safe_relpath(image_id).startswith("/")


def test_assign_outputs_collisions_and_reserved():
    items = assign_outputs([{"image_id": i, "path": i} for i in ["a.jpg", "a.png", "_errors/x.jpg", "../", "b.jpg"]])
    assert [i["status"] for i in items] == ["ok", "OutputCollision", "InvalidImageId", "InvalidImageId", "ok"]
    assert "a.jpg" in items[1]["error"]


def test_skip_existing_per_format(tmp_path):
    items = assign_outputs([{"image_id": i, "path": i} for i in ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]])
    write_images(tmp_path, {"a.png": (4, 4), "b.png": (4, 4)})  # masks of a and b
    (tmp_path / "_parquet").mkdir()
    rows = pa.table({"image_id": ["a.jpg", "c.jpg"], "status": ["ok", "ok"]})
    pq.write_table(rows, tmp_path / "_parquet" / "part-1.parquet")
    (tmp_path / "_errors").mkdir()
    pq.write_table(pa.table({"image_id": ["d.jpg"], "status": ["OSError"]}), tmp_path / "_errors" / "part-2.parquet")

    def pending(formats):
        todo = mark_pending([dict(i) for i in items], existing_results(str(tmp_path), formats), formats)
        return {i["image_id"]: i["needs_row"] for i in todo}

    assert pending(("png",)) == {"c.jpg": False}  # d.jpg failed before: an error row counts as done
    assert pending(("parquet",)) == {"b.jpg": True}
    assert pending(("png", "parquet")) == {"b.jpg": True, "c.jpg": False}  # c: restore the PNG, keep its one row
    assert pending(("parquet", "png")) == {"b.jpg": True, "c.jpg": False}  # the order of the formats is irrelevant
    assert existing_results(str(tmp_path / "none"), ("png",)) == set()


def test_output_inside_input_refused(tmp_path):
    check_output_location(str(tmp_path / "in"), str(tmp_path / "out"))
    with pytest.raises(ValueError, match="inside the input"):
        check_output_location(str(tmp_path / "in"), str(tmp_path / "in" / "masks"))
    with pytest.raises(ValueError, match="inside the input"):
        check_output_location("s3://bucket/images", "s3://bucket/images/out")
    check_output_location("s3://bucket/images", "s3://bucket/images-out")


# --- model stage ----------------------------------------------------------------------------------------


def test_crop_boxes_is_bilinear_resize_with_zero_padding():
    torch.manual_seed(0)
    image = torch.rand(3, 30, 40)
    whole = crop_boxes(image, torch.tensor([[0.0, 0.0, 40.0, 30.0]]), size=56)
    ref = F.interpolate(image[None], size=(56, 56), mode="bilinear", align_corners=False)
    torch.testing.assert_close(whole, ref, atol=1e-5, rtol=0)
    # A box hanging far outside on the left: the outside part is zero, the inside part is image.
    crop = crop_boxes(image, torch.tensor([[-40.0, 0.0, 40.0, 30.0]]), size=80)[0]
    assert torch.all(crop[:, :, :38] == 0)
    torch.testing.assert_close(crop[:, :, 41:], F.interpolate(image[None], size=(80, 40), mode="bilinear")[0][:, :, 1:])


def test_paste_max_exact():
    canvas = torch.zeros(2, 4, 5)
    scores = torch.full((2, 3, 3), -1.0)
    scores[1] = 2.0
    paste_max(canvas, scores, (3, 2, 6, 5))  # hangs over the right and bottom edges
    expected = torch.zeros(2, 4, 5)
    expected[1, 2:4, 3:5] = 2.0  # negative class-0 scores lose against the zero canvas
    torch.testing.assert_close(canvas, expected)
    paste_max(canvas, torch.full((2, 2, 2), 5.0), (-10, -10, -8, -8))  # fully outside: nothing changes
    torch.testing.assert_close(canvas, expected)
    assert pixel_box(np.array([0.4, 1.6, 0.6, 1.7])) == (0, 2, 1, 3)  # at least one pixel


def test_segmenter_mixes_images_without_mixing_results(ckpts):
    images = [scene(1, 70, 90), scene(2, 96, 64), scene(3, 80, 80)]
    boxes = [
        np.array([[0, 0, 90, 70], [10, 5, 60, 50], [-20, -10, 50, 40]], np.float32),
        np.array([[5, 5, 60, 90]], np.float32),
        np.zeros((0, 4), np.float32),
    ]
    seg = Segmenter(*ckpts, InferenceConfig(micro_batch=3, device="cpu"))
    together = seg.predict(images, boxes)  # 4 crops -> micro-batches [img0 x3], [img1]... mixed with micro_batch 3
    alone = [seg.predict([im], [b])[0] for im, b in zip(images, boxes)]
    for t, a, im in zip(together, alone, images):
        assert t.shape == (NUM_CLASSES, *im.shape[:2]) and t.dtype == np.float16
        np.testing.assert_allclose(t.astype(np.float32), a.astype(np.float32), atol=2e-3)
        np.testing.assert_allclose(t.astype(np.float32).sum(0), 1.0, atol=1e-2)
    # No proposal: the ensemble falls back to FCN alone.
    fcn_only = Segmenter(None, ckpts[1], InferenceConfig(ensemble="fcn", device="cpu")).predict(
        [images[2]], [boxes[2]]
    )[0]
    np.testing.assert_array_equal(together[2], fcn_only)
    # DeconvNet alone: pixels no box covers have a zero canvas -> uniform probabilities.
    deconv = Segmenter(ckpts[0], None, InferenceConfig(ensemble="deconvnet", device="cpu")).predict(
        images[1:2], boxes[1:2]
    )[0]
    np.testing.assert_allclose(deconv[:, 0, 0].astype(np.float32), 1 / NUM_CLASSES, atol=1e-3)
    assert not np.allclose(deconv[:, 40, 30].astype(np.float32), 1 / NUM_CLASSES, atol=1e-3)
    # The ensemble is the mean of the two.
    fcn1 = Segmenter(None, ckpts[1], InferenceConfig(ensemble="fcn", device="cpu")).predict(images[1:2], boxes[1:2])[0]
    np.testing.assert_allclose(together[1].astype(np.float32), (deconv.astype(np.float32) + fcn1) / 2, atol=2e-3)
    # The NHWC (channels_last, default) and NCHW layouts give the same probabilities up to float16 rounding.
    nchw = Segmenter(*ckpts, InferenceConfig(micro_batch=3, device="cpu", channels_last=False)).predict(images, boxes)
    for t, a in zip(together, nchw):
        np.testing.assert_allclose(t.astype(np.float32), a.astype(np.float32), atol=1e-3)
    # DeconvNet's BatchNorms are folded into its convolutions by default: same probabilities.
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in seg.deconvnet.modules())
    unfolded = Segmenter(*ckpts, InferenceConfig(micro_batch=3, device="cpu"), fold_bn=False)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in unfolded.deconvnet.modules())
    for t, a in zip(together, unfolded.predict(images, boxes)):
        np.testing.assert_allclose(t.astype(np.float32), a.astype(np.float32), atol=1e-3)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=0, keepdims=True))
    return e / e.sum(axis=0, keepdims=True)


def test_aggregation_and_ensemble_equal_a_plain_per_box_loop(ckpts):
    # Written apart from the Segmenter: the models loaded as saved (BatchNorm not folded, NCHW), one
    # box at a time, scores resized with OpenCV and maxed into a zero canvas with numpy, softmax and
    # the mean of the two models in numpy.
    from models import load_checkpoint

    image = scene(8, 70, 90)
    boxes = np.array([[0, 0, 90, 70], [10, 5, 60, 50], [-20, -10, 50, 40], [70, 50, 130, 100]], np.float32)
    deconvnet, dmeta = load_checkpoint(ckpts[0])
    fcn, fmeta = load_checkpoint(ckpts[1])
    pixels = torch.from_numpy(image).permute(2, 0, 1).float() / 255

    def normalised(x, meta):
        return (x - torch.tensor(meta.mean).view(-1, 3, 1, 1)) / torch.tensor(meta.std).view(-1, 3, 1, 1)

    canvas = np.zeros((NUM_CLASSES, 70, 90), np.float32)
    with torch.no_grad():
        for box in boxes:
            crop = normalised(crop_boxes(pixels, torch.from_numpy(box[None])), dmeta)
            scores = deconvnet.eval()(crop)[0].numpy().transpose(1, 2, 0)  # (224, 224, C)
            x0, y0, x1, y1 = (int(round(float(v))) for v in box)
            resized = cv2.resize(scores, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)
            cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, 90), min(y1, 70)
            region = resized[:, cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
            canvas[:, cy0:cy1, cx0:cx1] = np.maximum(canvas[:, cy0:cy1, cx0:cx1], region)
        fcn_probs = _softmax(fcn.eval()(normalised(pixels[None], fmeta))[0].numpy())
    deconv_probs = _softmax(canvas)
    parts = Segmenter(*ckpts, InferenceConfig(micro_batch=3, device="cpu")).predict_parts([image], [boxes])[0]
    # float16 outputs: half a float16 step at these values is 1.2e-4 (nearest-pixel resizing would give 7e-4).
    np.testing.assert_allclose(parts["deconvnet"].astype(np.float32), deconv_probs, atol=3e-4)
    np.testing.assert_allclose(parts["fcn"].astype(np.float32), fcn_probs, atol=5e-4)
    assert (deconv_probs.argmax(0) != fcn_probs.argmax(0)).any()  # two different opinions to average
    for ensemble, want in [("mean", (deconv_probs + fcn_probs) / 2), ("deconvnet", deconv_probs), ("fcn", fcn_probs)]:
        got = Segmenter(*ckpts, InferenceConfig(ensemble=ensemble, device="cpu")).predict([image], [boxes])[0]
        np.testing.assert_allclose(got.astype(np.float32), want, atol=5e-4, err_msg=ensemble)


def test_segmenter_stage_passes_error_rows(ckpts):
    seg = Segmenter(*ckpts, InferenceConfig(micro_batch=2, device="cpu"))
    images = np.empty(2, dtype=object)
    images[:] = [np.zeros((0, 0, 3), np.uint8), scene(4, 40, 50)]
    boxes = np.empty(2, dtype=object)
    boxes[:] = [np.zeros((0, 4), np.float32), np.array([[0, 0, 50, 40]], np.float32)]
    out = seg(
        {
            "status": np.array(["EmptyFile", "ok"], dtype=object),
            "error": np.array(["e", ""], dtype=object),
            "image": images,
            "boxes": boxes,
            "image_id": np.array(["a", "b"], dtype=object),
        }
    )
    assert "boxes" not in out and list(out["status"]) == ["EmptyFile", "ok"]
    assert out["probs"][0].size == 0 and out["probs"][1].shape == (NUM_CLASSES, 40, 50)


def test_segmenter_stage_isolates_a_failing_image(ckpts):
    seg = Segmenter(*ckpts, InferenceConfig(micro_batch=4, device="cpu"))
    images = np.empty(3, dtype=object)
    images[:] = [scene(5, 40, 50), scene(6, 48, 40), scene(7, 44, 44)]
    boxes = np.empty(3, dtype=object)
    boxes[:] = [
        np.array([[0, 0, 50, 40]], np.float32),
        np.array([1.0, 2.0, 3.0], np.float32),
        np.zeros((0, 4), np.float32),
    ]
    out = seg(
        {
            "status": np.array(["ok"] * 3, dtype=object),
            "error": np.array([""] * 3, dtype=object),
            "image": images,
            "boxes": boxes,
        }
    )
    assert list(out["status"]) == ["ok", "ValueError", "ok"] and out["error"][1].startswith("model stage:")
    np.testing.assert_array_equal(out["probs"][0], seg.predict([images[0]], [boxes[0]])[0])
    assert out["probs"][1].size == 0 and out["probs"][2].shape == (NUM_CLASSES, 44, 44)


def test_segmenter_imports_no_ray_cv2_or_crf():
    code = "import sys, pipeline.segmenter; print(sorted(m for m in ('ray', 'cv2', 'pydensecrf') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- CRF ------------------------------------------------------------------------------------------------


def _two_region_case(num_classes: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    h, w = 40, 60
    truth = np.zeros((h, w), np.int64)
    truth[:, 30:] = 2
    image = np.where(truth[..., None] == 2, 200, 40).astype(np.uint8).repeat(3, axis=2)
    logits = rng.normal(0, 1.0, (num_classes, h, w))
    logits[0] += np.where(truth == 0, 1.2, 0)
    logits[2] += np.where(truth == 2, 1.2, 0)
    logits[3:] -= 8  # classes 3.. are clearly absent
    probs = np.exp(logits) / np.exp(logits).sum(0)
    return image, probs.astype(np.float32), truth


def test_crf_pruning_gives_same_mask_and_cleans_noise():
    image, probs, truth = _two_region_case()
    cfg = CRFConfig()
    assert list(kept_classes(probs, cfg.prune_ratio)) == [0, 1, 2]
    pruned, full = dense_crf(image, probs, cfg), dense_crf(image, probs, cfg, prune=False)
    assert pruned.dtype == np.uint8 and pruned.shape == truth.shape
    np.testing.assert_array_equal(pruned, full)
    argmax_acc = (probs.argmax(0) == truth).mean()
    crf_acc = (pruned == truth).mean()
    assert argmax_acc < 0.8 and crf_acc > 0.97, (argmax_acc, crf_acc)


def test_crf_pruning_sees_through_the_uniform_floor_of_an_ensemble():
    # EDeconvNet averages the FCN with a DeconvNet canvas that is zero outside proposals, whose
    # softmax is uniform: every class has at least 1/(2C) everywhere, so only a relative rule prunes.
    image, probs, truth = _two_region_case(num_classes=21)
    probs[1] = np.minimum(probs[1], 0.01)
    probs /= probs.sum(0, keepdims=True)
    ensemble = 0.5 * probs + 0.5 / 21
    assert ensemble.min() > 0.02
    assert list(kept_classes(ensemble, 0.5)) == [0, 2]
    assert list(kept_classes(ensemble, 0.0)) == list(range(21))
    np.testing.assert_array_equal(
        dense_crf(image, ensemble, CRFConfig()), dense_crf(image, ensemble, CRFConfig(), prune=False)
    )
    # A class that leads at one pixel is a contender there; the minimum area drops such specks.
    ensemble[7, 5, 5] = 1.0
    assert 7 in kept_classes(ensemble, 0.5) and 7 not in kept_classes(ensemble, 0.5, min_area=0.001)
    ensemble[7, :3, :3] = 1.0  # 9 of 2400 pixels: more than 0.1%
    assert 7 in kept_classes(ensemble, 0.5, min_area=0.001)
    # Whatever the thresholds, the class leading most pixels stays.
    leader = np.bincount(ensemble.argmax(0).ravel()).argmax()
    assert list(kept_classes(ensemble, 0.5, min_area=0.99)) == [leader]


def test_crf_stage_equals_pydensecrf_called_directly():
    # The paper code's CRF written out with pydensecrf's own helpers, on hand-made probabilities whose
    # labels depend on every setting (each of the six, changed, moves 16-116 of the 2400 pixels here).
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    rng = np.random.default_rng(1)
    h, w = 40, 60
    yy, xx = np.mgrid[:h, :w]
    image = np.zeros((h, w, 3), np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = xx * 4, np.where(yy > 20, 150, 60), rng.integers(0, 40, (h, w))
    logits = rng.normal(0, 1.5, (3, h, w)) + [(xx < 25) * 1.0, (xx >= 35) * 1.0, (yy > 20) * 0.8]
    probs = (np.exp(logits) / np.exp(logits).sum(0)).astype(np.float16)
    crf = dcrf.DenseCRF2D(w, h, 3)
    crf.setUnaryEnergy(unary_from_softmax(probs.astype(np.float32)))
    crf.addPairwiseGaussian(sxy=3, compat=3)
    crf.addPairwiseBilateral(sxy=20, srgb=3, rgbim=image, compat=5)
    direct = np.argmax(crf.inference(10), axis=0).reshape(h, w)
    assert 0.3 < (direct == probs.argmax(0)).mean() < 0.7  # the CRF changed much of the argmax
    for cfg in (CRFConfig(prune_ratio=0.0), CRFConfig()):  # unpruned, and pruned (all 3 classes contend)
        batch = {k: np.empty(1, dtype=object) for k in ("status", "error", "image_id", "image", "probs")}
        batch["status"][0], batch["error"][0], batch["image_id"][0] = "ok", "", "a"
        batch["image"][0], batch["probs"][0] = image, probs
        out = CRFStage(cfg)(batch)
        np.testing.assert_array_equal(out["mask"][0], direct)
        assert out["uncertainty"][0] == pytest.approx(np.mean(1 - probs.astype(np.float32).max(0)), abs=1e-4)


def test_crf_single_class_and_uncertainty():
    probs = np.zeros((3, 5, 6), np.float32)
    probs[1] = 1.0
    assert np.all(dense_crf(np.zeros((5, 6, 3), np.uint8), probs, CRFConfig()) == 1)
    assert uncertainty(probs) == 0.0
    assert uncertainty(np.full((4, 2, 2), 0.25, np.float32)) == pytest.approx(0.75)


# --- writer ---------------------------------------------------------------------------------------------


def test_encode_mask_palette_roundtrip():
    mask = np.array([[0, 1, 2], [3, 3, 0]], np.uint8)
    palette = [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]
    img = Image.open(io.BytesIO(encode_mask(mask, palette)))
    assert img.mode == "P" and img.size == (3, 2)
    np.testing.assert_array_equal(np.asarray(img), mask)
    assert img.getpalette()[:12] == [c for rgb in palette for c in rgb]


def test_write_outputs_rows_and_atomicity(tmp_path):
    masks = np.empty(2, dtype=object)
    masks[:] = [np.array([[0, 1], [1, 1]], np.uint8), np.zeros((0, 0), np.uint8)]
    batch = {
        "image_id": np.array(["d/x.jpg", "bad.jpg"], dtype=object),
        "path": np.array(["/in/d/x.jpg", "/in/bad.jpg"], dtype=object),
        "mask_key": np.array(["d/x.png", "bad.png"], dtype=object),
        "status": np.array(["ok", "EmptyFile"], dtype=object),
        "error": np.array(["", "decode: file is empty"], dtype=object),
        "height": np.array([2, 0], np.int32),
        "width": np.array([2, 0], np.int32),
        "mask": masks,
        "uncertainty": np.array([0.25, np.nan], np.float32),
        "mean_confidence": np.array([0.75, np.nan], np.float32),
        "mean_entropy": np.array([0.5, np.nan], np.float32),
        "needs_row": np.array([True, True]),
    }
    kw = dict(
        output=str(tmp_path),
        formats=("png", "parquet"),
        class_names=["bg", "fg"],
        palette=[[0, 0, 0], [9, 9, 9]],
        checkpoint_id="c1",
        fcn_checkpoint_id="f1",
        config_hash="h1",
    )
    out = write_outputs(batch, **kw)
    assert list(out["status"]) == ["ok", "EmptyFile"]
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == sorted(
        ["x.png", next((tmp_path / "_parquet").iterdir()).name, next((tmp_path / "_errors").iterdir()).name]
    )
    rows = pq.read_table(tmp_path / "_parquet")
    assert rows.schema.equals(RESULT_SCHEMA)
    r = {row["image_id"]: row for row in rows.to_pylist()}
    assert r["d/x.jpg"]["classes"] == [
        {"id": 0, "name": "bg", "fraction": 0.25},
        {"id": 1, "name": "fg", "fraction": 0.75},
    ]
    assert r["bad.jpg"]["mask_png"] is None and r["bad.jpg"]["height"] is None and r["bad.jpg"]["status"] == "EmptyFile"
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(r["d/x.jpg"]["mask_png"]))), masks[0])
    assert pq.read_table(tmp_path / "_errors").schema.equals(ERROR_SCHEMA)
    # A retried batch rewrites the same part files (named by content) instead of adding rows.
    write_outputs(batch, **kw)
    assert pq.read_table(tmp_path / "_parquet").num_rows == 2
    atomic_write(str(tmp_path / "a" / "f.bin"), b"123")
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["f.bin"]


# --- argument checks ------------------------------------------------------------------------------------


def test_prepare_fails_fast_on_bad_arguments(tmp_path, ckpts):
    inp = tmp_path / "in"
    write_images(inp, {"a.jpg": (32, 32)})
    out = str(tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        prepare(tiny_config(str(inp), out, (str(tmp_path / "missing.safetensors"), ckpts[1])))
    with pytest.raises(ValueError, match="not deconvnet"):
        prepare(tiny_config(str(inp), out, (ckpts[1], ckpts[1])))
    with pytest.raises(FileNotFoundError, match="input not found"):
        prepare(tiny_config(str(tmp_path / "nowhere"), out, ckpts))
    with pytest.raises(ValueError, match="inside the input"):
        prepare(tiny_config(str(inp), str(inp / "masks"), ckpts))
    with pytest.raises(ValueError, match="needs --fcn-checkpoint"):
        prepare(tiny_config(str(inp), out, (ckpts[0], None)))
    with pytest.raises(ValueError, match="private to one process"):
        prepare(tiny_config("memory://bucket/images", out, ckpts))
    assert not (tmp_path / "out").exists()  # nothing was started or written
    plan = prepare(tiny_config(str(inp), out, ckpts))
    assert [i["image_id"] for i in plan.todo] == ["a.jpg"] and plan.n_skipped == 0
    assert plan.model_bytes == sum(os.path.getsize(c) for c in ckpts)  # what a fused actor's memory cap counts


def test_stage_resources_leave_cpu_headroom():
    cfg = tiny_config("in", "out", ("a", "b"), layout="split")
    small = stage_resources(cfg, {"CPU": 2.0})
    reserved = small.cpu_share * (small.model_actors + small.proposal_actors + small.crf_actors)
    assert small.layout == "split" and small.model_gpus == 0 and reserved <= 0.65 * 2 + 1e-9
    # Without GPUs the pools follow the measured cost per image: the CRF's is the largest.
    assert (small.proposal_actors, small.model_actors, small.crf_actors, small.fused_actors) == (1, 1, 2, 0)
    cpu_only = stage_resources(cfg, {"CPU": 32.0})
    assert cpu_only.cpu_share * (cpu_only.model_actors + cpu_only.proposal_actors + cpu_only.crf_actors) <= 0.65 * 32
    assert cpu_only.crf_actors > cpu_only.model_actors > cpu_only.proposal_actors
    big = stage_resources(tiny_config("in", "out", ("a", "b")), {"CPU": 64.0, "GPU": 4.0})  # auto: GPUs -> split
    assert big.layout == "split" and big.model_actors == 4 and big.model_gpus == 1.0 and big.proposal_actors >= 10
    assert big.cpu_share * (big.proposal_actors + big.crf_actors) <= 0.65 * 64


def test_without_gpus_the_stages_run_fused_one_actor_per_cpu():
    cfg = tiny_config("in", "out", ("a", "b"))
    small = stage_resources(cfg, {"CPU": 2.0, "memory": 16 * 2**30})
    assert (small.layout, small.fused_actors, small.model_gpus) == ("fused", 2, 0)
    assert (small.proposal_actors, small.model_actors, small.crf_actors) == (0, 0, 0)
    assert small.fused_cpus * small.fused_actors <= 0.65 * 2  # read and write tasks still find CPU slots
    node = stage_resources(cfg, {"CPU": 64.0, "memory": 512 * 2**30})
    assert node.fused_actors == 64 and node.fused_cpus * 64 <= 0.65 * 64 + 1e-9
    # Every fused actor holds the models: the cluster's memory caps the pool (paper-width checkpoints, 1.6 GB).
    paper = 1_600_000_000
    capped = stage_resources(cfg, {"CPU": 64.0, "memory": 100 * 2**30}, model_bytes=paper)
    assert capped.fused_actors == 100 * 2**30 // fused_actor_bytes(paper) < 64
    assert stage_resources(cfg, {"CPU": 4.0, "memory": 2**30}, model_bytes=paper).fused_actors == 1
    assert stage_resources(cfg, {"CPU": 64.0}, images=3).fused_actors == 3  # no idle actors
    sized = tiny_config("in", "out", ("a", "b"), model_actors=40)
    assert stage_resources(sized, {"CPU": 64.0, "memory": 100 * 2**30}, model_bytes=paper).fused_actors == 40
    # Hand-sized CPU pools or GPU model actors mean the split layout; fused with them is a clear error.
    assert stage_resources(tiny_config("in", "out", ("a", "b"), crf_actors=3), {"CPU": 2.0}).layout == "split"
    gpus_coming = tiny_config("in", "out", ("a", "b"), model_gpus=1.0, autoscaling=True)
    assert stage_resources(gpus_coming, {"CPU": 8.0}).model_gpus == 1.0
    for bad in ({"crf_actors": 2}, {"proposal_actors": 1}, {"model_gpus": 1.0}):
        with pytest.raises(ValueError, match="need --layout split"):
            tiny_config("in", "out", ("a", "b"), layout="fused", **bad).validate()
    with pytest.raises(ValueError, match="--layout must be one of"):
        tiny_config("in", "out", ("a", "b"), layout="pipelined").validate()


def test_object_store_limit_follows_the_actor_pools_and_classes():
    cfg = tiny_config("in", "out", ("a", "b"), layout="split")
    per_image_6 = 500 * 375 * (2 * 6 + 3)  # 6-class float16 probabilities + the RGB image
    small = stage_resources(cfg, {"CPU": 2.0}, num_classes=6)  # 4 actors
    assert small.object_store_bytes == 4 * STORE_BLOCKS_PER_ACTOR * BLOCK_ROWS * per_image_6  # ~172 MiB
    voc = stage_resources(cfg, {"CPU": 2.0}, num_classes=21)
    assert voc.object_store_bytes > 2.5 * small.object_store_bytes
    big = stage_resources(cfg, {"CPU": 64.0, "GPU": 4.0}, num_classes=6)
    assert big.object_store_bytes > 10 * small.object_store_bytes
    assert stage_resources(cfg, {"CPU": 2.0}, num_classes=1).object_store_bytes == MIN_STORE_MB * 2**20
    # Fused: no probabilities cross the store (only the bytes read and the masks), whatever the classes.
    fused = stage_resources(tiny_config("in", "out", ("a", "b")), {"CPU": 2.0}, num_classes=21)
    assert fused.object_store_bytes == MIN_STORE_MB * 2**20
    override = tiny_config("in", "out", ("a", "b"), object_store_mb=48)
    assert stage_resources(override, {"CPU": 2.0}).object_store_bytes == 48 * 2**20
    with pytest.raises(ValueError, match="object_store_mb"):
        tiny_config("in", "out", ("a", "b"), object_store_mb=4).validate()


def test_cpu_stages_do_not_load_torch():
    """The decode, CRF and writer processes import only what they use: torch would cost each ~650 MB."""
    code = (
        "import sys; import pipeline.decode, pipeline.crf, pipeline.writers, pipeline.segment_config, models.storage; "
        "print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_evaluation_scoring_stages_do_not_load_torch():
    """The evaluation's scoring actors (and its settings) load no torch: only its model stage does, when it starts.
    ``pipeline.voc`` is what a scoring actor imports on its first batch (label decoding)."""
    code = (
        "import sys; import pipeline.evaluation.stages, pipeline.evaluation.config, pipeline.voc; "
        "print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))"
    )
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=root)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def _changed(value):
    """Another valid-looking value of a setting's type (a different one, whatever the value)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value * 2 + 1
    if value is None:
        return "other/edges.yml.gz"
    return {"image": "none", "none": "image", "mean": "fcn", "bf16": "fp32"}.get(value, value + "-other")


def test_confidence_settings_are_checked(tmp_path):
    cfg = tiny_config(str(tmp_path / "in"), str(tmp_path / "out"), ("a.safetensors", "b.safetensors"))
    for bad in (dict(confidence="jpeg"), dict(min_confidence=1.5), dict(min_confidence=-0.1)):
        with pytest.raises(ValueError, match="confidence"):
            dataclasses.replace(cfg, **bad).validate()


def test_config_hash_changes_with_every_setting_that_changes_a_mask(tmp_path):
    base = tiny_config(str(tmp_path / "in"), str(tmp_path / "out"), ("a.safetensors", "b.safetensors"))
    seen = {base.config_hash()}
    # Every field of the proposal and CRF settings, the ensemble, the precision, the pixel limit.
    changes = [("max_pixels", None), ("min_confidence", None), ("confidence", None)]
    changes += [(f.name, "proposals") for f in dataclasses.fields(base.proposals)]
    changes += [(f.name, "crf") for f in dataclasses.fields(base.crf)]
    changes += [("ensemble", "inference"), ("precision", "inference")]
    for name, part in changes:
        cfg = copy.deepcopy(base)
        owner = getattr(cfg, part) if part else cfg
        setattr(owner, name, _changed(getattr(owner, name)))
        h = cfg.config_hash()
        assert h not in seen, f"{part}.{name} does not change config_hash"
        seen.add(h)
    # Execution settings never change a mask, so they keep the hash (and skip-existing keeps working).
    for name, value in [
        ("output", str(tmp_path / "elsewhere")),
        ("input", "s3://b/x"),
        ("batch_size", 7),
        ("write_batch_size", 3),
        ("layout", "split"),
        ("model_actors", 5),
        ("object_store_mb", 99.0),
        ("task_retries", 0),
        ("progress_interval", 2.0),
        ("format", "png"),
        ("skip_existing", False),
    ]:
        assert dataclasses.replace(base, **{name: value}).config_hash() == base.config_hash(), name
    cfg = copy.deepcopy(base)
    cfg.inference.micro_batch = 3
    assert cfg.config_hash() == base.config_hash()
    assert len(base.config_hash()) == 16 and int(base.config_hash(), 16) >= 0
