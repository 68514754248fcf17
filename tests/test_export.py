"""Per-pixel confidence in the segment job, and the exports for CVAT, Label Studio and COCO.

One real segment run (local Ray, 2 CPUs, tiny models, good and broken images, with
``--confidence png`` and ``--min-confidence``) feeds every export test. The Label Studio
RLE decoder below is written from the format's description (thi.ng rle-pack, as Label
Studio's docs and converter use it), not from ``pipeline.rle``; COCO's RLE is checked
with pycocotools.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pycocotools.mask as coco_mask
import pytest
import ray
from PIL import Image
from pycocotools.coco import COCO
from segment_fixtures import NUM_CLASSES, make_checkpoints, tiny_config, write_images, write_odd_inputs

from pipeline.confidence import max_probability
from pipeline.crf import CRFStage
from pipeline.export import ExportSpec, export_rows, parquet_parts, read_classes, read_rows, run_export
from pipeline.reference import stage_steps
from pipeline.rle import coco_rle, ls_brush_rle
from pipeline.segment import prepare, run

pytestmark = pytest.mark.slow

_spec_file = importlib.util.spec_from_file_location(
    "export_labels_job", Path(__file__).resolve().parent.parent / "jobs" / "export_labels.py"
)
export_labels = importlib.util.module_from_spec(_spec_file)
_spec_file.loader.exec_module(export_labels)

GOOD = {"a.jpg": (64, 80), "b.png": (56, 72), "sub/c.jpg": (72, 60)}
THRESHOLD = 0.5  # about the median confidence of these tiny random models: voids about half the pixels
VOC_COLOURS = [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]  # the first 4 VOC colours, written out


# --- Label Studio's RLE, decoded independently ------------------------------------------------------------


def ls_decode(data: list[int]) -> np.ndarray:
    """Label Studio RLE bytes -> the flat uint8 values (header: count 32 bits, word size - 1 in 5 bits,
    four field sizes - 1 in 4 bits each; chunks: flag bit, 2-bit field choice, count - 1, then one word
    repeated (flag 1) or count words (flag 0))."""
    bits = "".join(f"{b:08b}" for b in data)
    pos = 0

    def take(n: int) -> int:
        nonlocal pos
        value = int(bits[pos : pos + n], 2)
        pos += n
        return value

    count, word = take(32), take(5) + 1
    sizes = [take(4) + 1 for _ in range(4)]
    out = []
    while len(out) < count:
        repeat = take(1)
        n = take(sizes[take(2)]) + 1
        out += [take(word)] * n if repeat else [take(word) for _ in range(n)]
    assert len(out) == count and len(bits) - pos < 8 and set(bits[pos:]) <= {"0"}  # only padding is left
    return np.array(out, np.uint8)


def ls_mask(data: list[int], height: int, width: int) -> np.ndarray:
    rgba = ls_decode(data).reshape(height, width, 4)
    assert set(np.unique(rgba)) <= {0, 255} and (rgba == rgba[..., :1]).all()  # every channel 0 or 255
    return rgba[..., 3] == 255


def _masks():
    rng = np.random.default_rng(3)
    yield np.zeros((5, 7), bool)
    yield np.ones((1, 1), bool)
    yield np.ones((200, 130), bool)  # one run of 104000 values: longer than a chunk's 2^16
    yield rng.random((31, 17)) < 0.5  # many runs of 4 values
    blob = np.zeros((90, 120), bool)
    blob[10:70, 30:100] = True
    blob[40:50, 0:120] = True
    yield blob


@pytest.mark.parametrize("mask", list(_masks()), ids=lambda m: f"{m.shape}-{int(m.sum())}")
def test_label_studio_rle_round_trip(mask):
    data = ls_brush_rle(mask)
    assert all(0 <= b <= 255 for b in data)
    np.testing.assert_array_equal(ls_mask(data, *mask.shape), mask)
    assert int.from_bytes(bytes(data[:4]), "big") == mask.size * 4  # the header counts RGBA values


@pytest.mark.parametrize("mask", list(_masks()), ids=lambda m: f"{m.shape}-{int(m.sum())}")
def test_coco_rle_round_trip_with_pycocotools(mask):
    rle = coco_rle(mask)
    theirs = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    assert rle["size"] == list(mask.shape) and rle["counts"] == theirs["counts"].decode()
    np.testing.assert_array_equal(coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode()}), mask)


# --- one real segment output ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_session():
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def segmented(tmp_path_factory, ray_session):
    """A segment output with confidence maps and void pixels: (cfg, items, expected statuses)."""
    root = tmp_path_factory.mktemp("export")
    ckpts = make_checkpoints(root / "ckpt")
    inp = root / "images"
    write_images(inp, GOOD, seed=40)
    odd = write_odd_inputs(inp / "odd")
    expected = {k: "ok" for k in GOOD} | {f"odd/{k}": v for k, v in odd.items() if v != "ok"}
    for k, v in odd.items():
        if v == "ok":
            os.remove(inp / "odd" / k)  # only the broken ones: error rows, few images to segment
    cfg = tiny_config(str(inp), str(root / "masks"), ckpts, confidence="png", min_confidence=THRESHOLD)
    items = prepare(cfg).todo
    summary = run(cfg)
    assert summary["last_run"]["processed"] == len(expected)
    return cfg, items, expected


def reference_probs(cfg, item) -> tuple[np.ndarray, np.ndarray]:
    """The image and the ensemble probabilities of one input, computed in this process."""
    batch = {k: np.array([item[k]], dtype=object) for k in ("path", "image_id", "status", "error")}
    for name, step in stage_steps(cfg):
        if name == "crf":
            break
        batch = step(batch)
    return batch["image"][0], batch["probs"][0]


def _rows(cfg) -> dict[str, dict]:
    return {r["image_id"]: r for r in pq.read_table(os.path.join(cfg.output, "_parquet")).to_pylist()}


def _mask(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)))


def test_confidence_map_is_the_max_probability(segmented):
    cfg, items, expected = segmented
    rows = _rows(cfg)
    assert {k: r["status"] for k, r in rows.items()} == expected
    for item in items:
        row = rows[item["image_id"]]
        if row["status"] != "ok":
            assert row["confidence_png"] is None and row["mean_confidence"] is None and row["mean_entropy"] is None
            continue
        _, probs = reference_probs(cfg, item)
        p = probs.astype(np.float64)
        conf = p.max(axis=0)
        stored = Image.open(os.path.join(cfg.output, "_confidence", item["mask_key"]))
        assert stored.mode == "L"
        conf_map = np.asarray(stored)
        assert conf_map.shape == conf.shape == (row["height"], row["width"])
        assert np.abs(conf_map / 255.0 - conf).max() <= 1 / 255
        np.testing.assert_array_equal(_mask(row["confidence_png"]), conf_map)  # the same map in the row
        assert row["mean_confidence"] == pytest.approx(conf.mean(), abs=1e-4)
        assert row["mean_confidence"] == pytest.approx(1.0 - row["uncertainty"], abs=1e-4)
        entropy = -(p * np.log(np.maximum(p, 1e-12))).sum(axis=0).mean()
        assert row["mean_entropy"] == pytest.approx(entropy, abs=1e-3) and 0 < entropy < np.log(NUM_CLASSES)


def test_min_confidence_voids_exactly_the_pixels_below_it(segmented):
    cfg, items, expected = segmented
    voided = kept = 0
    for item in items:
        if expected[item["image_id"]] != "ok":
            continue
        image, probs = reference_probs(cfg, item)
        conf = max_probability(probs)
        batch = {"status": np.array(["ok"], object), "error": np.array([""], object)}
        batch["image"], batch["probs"] = np.empty(1, object), np.empty(1, object)
        batch["image"][0], batch["probs"][0] = image, probs
        plain = CRFStage(cfg.crf)(dict(batch))["mask"][0]
        masked = CRFStage(cfg.crf, min_confidence=THRESHOLD)(dict(batch))["mask"][0]
        below = conf < THRESHOLD
        np.testing.assert_array_equal(masked == 255, below)
        np.testing.assert_array_equal(masked[~below], plain[~below])  # the other pixels keep their class
        voided, kept = voided + below.sum(), kept + (~below).sum()
        # The job's mask: the same rule (up to float rounding between processes, at the threshold itself).
        job = np.asarray(Image.open(os.path.join(cfg.output, item["mask_key"])))
        clear = np.abs(conf - THRESHOLD) > 1e-3
        np.testing.assert_array_equal((job == 255)[clear], below[clear])
    assert voided > 0 and kept > 0  # the threshold splits the pixels


# --- exports ----------------------------------------------------------------------------------------------


def _spec(cfg, fmt: str, out, **kw) -> ExportSpec:
    names, colours = read_classes(cfg.output)
    return ExportSpec(fmt, str(out), names, colours, **kw)


def _ok_rows(cfg) -> dict[str, dict]:
    return {k: r for k, r in _rows(cfg).items() if r["status"] == "ok"}


def _assert_counts(counts: dict, expected: dict[str, str]) -> None:
    errors = Counter(s for s in expected.values() if s != "ok")
    assert counts["rows"] == len(expected) == counts["exported"] + counts["skipped_error_rows"] + counts["failed"]
    assert counts["exported"] == len(expected) - sum(errors.values()) and counts["failed"] == 0
    assert counts["skipped_by_status"] == dict(errors)  # each error row once, by its status


def test_cvat_layout_file_by_file(segmented, tmp_path):
    cfg, _, expected = segmented
    out = tmp_path / "cvat"
    counts = run_export(_spec(cfg, "cvat", out), parquet_parts(cfg.output), batch_size=2)
    _assert_counts(counts, expected)
    ok = _ok_rows(cfg)
    stems = sorted(os.path.splitext(k)[0] for k in ok)
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == sorted(
        ["labelmap.txt", "ImageSets/Segmentation/default.txt", *(f"SegmentationClass/{s}.png" for s in stems)]
    )
    assert (out / "labelmap.txt").read_text() == (
        "# label:color_rgb:parts:actions\n"
        "class_0:0,0,0::\nclass_1:128,0,0::\nclass_2:0,128,0::\nclass_3:128,128,0::\n"
    )
    assert (out / "ImageSets/Segmentation/default.txt").read_text() == "".join(f"{s}\n" for s in stems)
    for image_id, row in ok.items():
        img = Image.open(out / "SegmentationClass" / (os.path.splitext(image_id)[0] + ".png"))
        assert img.mode == "RGB" and img.size == (row["width"], row["height"])
        rgb, mask = np.asarray(img), _mask(row["mask_png"])
        for c, colour in enumerate(VOC_COLOURS):
            assert (rgb[mask == c] == colour).all()
        assert (rgb[mask == 255] == 0).all()  # void: black, CVAT's background


def test_label_studio_tasks_have_the_documented_keys(segmented, tmp_path):
    cfg, _, expected = segmented
    out = tmp_path / "ls"
    spec = _spec(cfg, "labelstudio", out, image_url="s3://photos/{image_id}")
    _assert_counts(export_rows(read_rows(cfg.output), spec), expected)
    tasks = json.loads((out / "tasks.json").read_text())
    ok = _ok_rows(cfg)
    assert [t["data"]["image_id"] for t in tasks] == sorted(ok)
    for task in tasks:
        row = ok[task["data"]["image_id"]]
        assert set(task) == {"data", "predictions"} and task["data"]["image"] == f"s3://photos/{row['image_id']}"
        (pred,) = task["predictions"]
        assert set(pred) == {"model_version", "score", "result"}
        assert pred["model_version"] == row["checkpoint_id"]
        assert pred["score"] == pytest.approx(1.0 - row["uncertainty"], abs=1e-6)
        mask = _mask(row["mask_png"])
        present = sorted(int(c) for c in np.unique(mask) if c != 255)
        assert [r["value"]["brushlabels"] for r in pred["result"]] == [[f"class_{c}"] for c in present]
        assert len({r["id"] for r in pred["result"]}) == len(present)
        for region, c in zip(pred["result"], present):
            assert set(region) == {"id", "from_name", "to_name", "type", "original_width", "original_height",
                                   "image_rotation", "value"}
            assert (region["from_name"], region["to_name"], region["type"]) == ("label", "image", "brushlabels")
            assert (region["original_height"], region["original_width"]) == mask.shape
            assert set(region["value"]) == {"format", "rle", "brushlabels"} and region["value"]["format"] == "rle"
            np.testing.assert_array_equal(ls_mask(region["value"]["rle"], *mask.shape), mask == c)
    view = ET.fromstring((out / "labeling_config.xml").read_text())
    labels = view.find("BrushLabels")
    assert labels.get("name") == "label" and labels.get("toName") == view.find("Image").get("name") == "image"
    assert [(x.get("value"), x.get("background")) for x in labels] == [
        ("class_0", "#000000"), ("class_1", "#800000"), ("class_2", "#008000"), ("class_3", "#808000")
    ]


def test_coco_annotations_decode_to_the_masks(segmented, tmp_path):
    cfg, _, expected = segmented
    out = tmp_path / "coco"
    _assert_counts(export_rows(read_rows(cfg.output), _spec(cfg, "coco", out)), expected)
    coco = COCO(str(out / "annotations.json"))
    assert [(c["id"], c["name"]) for c in coco.loadCats(coco.getCatIds())] == [(i, f"class_{i}") for i in range(4)]
    ok = _ok_rows(cfg)
    images = coco.loadImgs(coco.getImgIds())
    assert sorted(im["file_name"] for im in images) == sorted(ok)
    for im in images:
        mask = _mask(ok[im["file_name"]]["mask_png"])
        assert (im["height"], im["width"]) == mask.shape
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[im["id"]]))
        assert sorted(a["category_id"] for a in anns) == sorted(int(c) for c in np.unique(mask) if c != 255)
        for a in anns:
            region = mask == a["category_id"]
            np.testing.assert_array_equal(coco.annToMask(a), region)
            assert a["area"] == region.sum() and a["iscrowd"] == 0
            assert a["bbox"] == coco_mask.toBbox(coco_mask.encode(np.asfortranarray(region.astype(np.uint8)))).tolist()


def test_ray_export_equals_the_plain_one(segmented, tmp_path):
    """The streamed export (given URLs, read through fsspec) writes the same file as the in-process
    functions; error rows counted once. (The CVAT test above runs on Ray too.)"""
    cfg, _, expected = segmented
    fmt = "labelstudio"
    args = export_labels.get_args_parser().parse_args(
        ["--input", f"file://{cfg.output}", "--output", f"file://{tmp_path / 'ray'}", "--format", fmt,
         "--batch-size", "2"]
    )
    assert export_labels.main(args) == 0
    counts = export_rows(read_rows(cfg.output), _spec(cfg, fmt, tmp_path / "plain"))
    _assert_counts(counts, expected)
    for name in ("tasks.json", "labeling_config.xml"):
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "plain" / name).read_bytes()


def test_rows_that_cannot_be_exported_are_counted_and_bad_arguments_stop_the_job(segmented, tmp_path, capsys):
    cfg, _, _ = segmented
    rows = list(read_rows(cfg.output))
    broken = next(r for r in rows if r["status"] == "ok")
    broken["mask_png"] = b"not a png"
    counts = export_rows(rows, _spec(cfg, "coco", tmp_path / "coco"))
    assert counts["failed"] == 1 and counts["failures"][0]["image_id"] == broken["image_id"]
    assert counts["rows"] == len(rows) == counts["exported"] + counts["skipped_error_rows"] + 1
    images = json.loads((tmp_path / "coco" / "annotations.json").read_text())["images"]
    assert broken["image_id"] not in [im["file_name"] for im in images]
    parser = export_labels.get_args_parser()
    for bad in (
        ["--input", cfg.output, "--output", str(tmp_path / "x"), "--format", "labelstudio", "--image-url", "{path}"],
        ["--input", str(tmp_path / "coco"), "--output", str(tmp_path / "y"), "--format", "cvat"],  # no _parquet
        ["--input", cfg.output, "--output", os.path.join(cfg.output, "review"), "--format", "cvat"],
    ):
        assert export_labels.main(parser.parse_args(bad)) == 2
    assert capsys.readouterr().err.count("export_labels: error:") == 3
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_rerun_restores_a_missing_confidence_map(segmented):
    """A confidence map is an output of its own: a rerun redoes an image whose map is gone (and only that
    one), and the maps never count as masks. Runs last: it rewrites one image of the shared output."""
    cfg, _, expected = segmented
    n_ok = sum(s == "ok" for s in expected.values())
    victim = os.path.join(cfg.output, "_confidence", "sub", "c.png")
    before = np.asarray(Image.open(victim))
    os.remove(victim)
    again = run(cfg)
    assert (again["last_run"]["processed"], again["last_run"]["skipped_existing"]) == (1, len(expected) - 1)
    assert np.abs(np.asarray(Image.open(victim)).astype(int) - before).max() <= 1
    assert again["complete"] and again["totals"]["masks"] == n_ok
    assert sorted(_rows(cfg)) == sorted(expected)  # no second row for the image
