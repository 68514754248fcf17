"""The procedural VOC-layout generator: deterministic and valid."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest
from PIL import Image

from pipeline.demo.synthvoc import SYNTH_CLASSES, generate_voc, main


def _digest(root):
    h = hashlib.sha256()
    for dirpath, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            with open(os.path.join(dirpath, name), "rb") as f:
                h.update(name.encode() + f.read())
    return h.hexdigest()


def test_generator_is_deterministic_from_the_seed(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for root, seed in ((a, 3), (b, 3), (c, 4)):
        generate_voc(str(root), n_train=3, n_val=2, size=(64, 80), seed=seed)
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)


def test_generator_writes_valid_voc_layout(tmp_path):
    classes = generate_voc(str(tmp_path), n_train=6, n_val=3, size=(96, 128), seed=0)
    assert classes == SYNTH_CLASSES
    assert (tmp_path / "classes.txt").read_text().split() == SYNTH_CLASSES
    sets = tmp_path / "ImageSets" / "Segmentation"
    train, val = sets.joinpath("train.txt").read_text().split(), sets.joinpath("val.txt").read_text().split()
    assert len(train) == 6 and len(val) == 3 and not set(train) & set(val)
    assert sets.joinpath("trainval.txt").read_text().split() == train + val
    seen_classes = set()
    for image_id in train + val:
        img = Image.open(tmp_path / "JPEGImages" / f"{image_id}.jpg")
        cls_png = Image.open(tmp_path / "SegmentationClass" / f"{image_id}.png")
        obj_png = Image.open(tmp_path / "SegmentationObject" / f"{image_id}.png")
        assert cls_png.mode == "P" and obj_png.mode == "P"
        cls, obj = np.asarray(cls_png), np.asarray(obj_png)
        assert img.size == cls_png.size == obj_png.size
        # void in one map is void in the other; background has no instance
        assert np.array_equal(cls == 255, obj == 255)
        assert np.all((cls == 0) == (obj == 0))
        for k in np.unique(obj[(obj != 0) & (obj != 255)]):
            labels = np.unique(cls[obj == k])
            assert len(labels) == 1 and 1 <= labels[0] < len(SYNTH_CLASSES)  # one class per instance
            seen_classes.add(int(labels[0]))
        ids = sorted(set(np.unique(obj)) - {0, 255})
        assert ids == list(range(1, len(ids) + 1))  # instances numbered 1..n
    assert len(seen_classes) >= 3


def test_writing_one_split_gives_the_full_runs_images(tmp_path):
    full, val = tmp_path / "full", tmp_path / "val"
    generate_voc(str(full), n_train=3, n_val=2, size=(64, 80), seed=5)
    generate_voc(str(val), n_train=3, n_val=2, size=(64, 80), seed=5, splits=("val",))
    ids = (val / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    assert ids == (full / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    assert sorted(p.stem for p in (val / "JPEGImages").iterdir()) == ids
    assert not (val / "ImageSets" / "Segmentation" / "train.txt").exists()
    for sub, ext in (("JPEGImages", "jpg"), ("SegmentationClass", "png"), ("SegmentationObject", "png")):
        for image_id in ids:
            assert (val / sub / f"{image_id}.{ext}").read_bytes() == (full / sub / f"{image_id}.{ext}").read_bytes()


def test_images_hold_small_and_large_objects_and_background_distractors(tmp_path):
    generate_voc(str(tmp_path), n_train=30, n_val=0, size=(120, 160), seed=1)
    areas = []
    for path in (tmp_path / "SegmentationObject").iterdir():
        obj = np.asarray(Image.open(path))
        areas += [np.mean(obj == k) for k in set(np.unique(obj)) - {0, 255}]
    # log-uniform sizes: tiny objects (< 0.5% of the image) and large ones (> 20%)
    assert min(areas) < 0.005 and max(areas) > 0.2
    assert np.mean(np.array(areas) < 0.01) > 0.1  # and many small ones
    # distractor blobs paint object colours on background: background is not one smooth field
    img = np.asarray(Image.open(next((tmp_path / "JPEGImages").iterdir())), np.float32)
    assert img.std() > 20


def test_the_held_out_preset_shares_no_seed_or_image_with_the_training_preset(tmp_path, capsys):
    from pipeline.demo.synthvoc import DEMO_DATASET, HELDOUT_DATASET

    assert HELDOUT_DATASET["seed"] != DEMO_DATASET["seed"] and HELDOUT_DATASET["n_val"] >= 60
    main([str(tmp_path / "heldout"), "--preset", "heldout"])
    sets = tmp_path / "heldout" / "ImageSets" / "Segmentation"
    assert sorted(p.name for p in sets.iterdir()) == ["val.txt"]  # a test split only, nothing to train on
    ids = (sets / "val.txt").read_text().split()
    assert len(ids) == HELDOUT_DATASET["n_val"]
    # Its first image differs from the demo training set's image with the same index.
    generate_voc(str(tmp_path / "demo"), **{**DEMO_DATASET, "n_train": 1, "n_val": 0}, splits=("train",))
    first = "JPEGImages/synth_00000.jpg"
    assert (tmp_path / "heldout" / first).read_bytes() != (tmp_path / "demo" / first).read_bytes()


@pytest.mark.parametrize("size", ["320", "320,240,3", "a,b", "8,500", ""])
def test_bad_size_is_an_argparse_error(tmp_path, capsys, size):
    with pytest.raises(SystemExit) as info:
        main([str(tmp_path / "x"), "--size", size])
    assert info.value.code == 2
    assert "argument --size:" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_size_sets_the_largest_image(tmp_path):
    main([str(tmp_path), "--train", "1", "--val", "1", "--size", "40,60"])
    for path in (tmp_path / "JPEGImages").iterdir():
        w, h = Image.open(path).size
        assert 32 <= h <= 40 and 48 <= w <= 60
