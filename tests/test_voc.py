"""VOC layout reading: local folders and fsspec URLs, instances from SegmentationObject."""

from __future__ import annotations

import os

import fsspec
import numpy as np
import pytest
from PIL import Image

from models.classes import VOC_CLASSES
from pipeline.synthvoc import SYNTH_CLASSES
from pipeline.voc import instances, join, load_sample, read_class_names, read_split


def test_split_classes_and_sample(synth_voc):
    ids = read_split(synth_voc, "train")
    assert len(ids) == 6 and len(read_split(synth_voc, "val")) == 3
    assert read_class_names(synth_voc) == SYNTH_CLASSES
    s = load_sample(synth_voc, ids[0])
    assert s.image.dtype == np.uint8 and s.image.ndim == 3 and s.image.shape[2] == 3
    assert s.label.shape == s.objects.shape == s.image.shape[:2]
    assert set(np.unique(s.label)) <= set(range(len(SYNTH_CLASSES))) | {255}


def test_instances_boxes_and_classes():
    label = np.zeros((10, 12), np.uint8)
    objects = np.zeros((10, 12), np.uint8)
    objects[2:5, 3:7] = 1
    label[2:5, 3:7] = 4
    objects[6, 9] = 2  # a one-pixel instance
    label[6, 9] = 2
    objects[0, 0] = 255
    label[0, 0] = 255
    objects[2, 3] = 255  # void pixel on the outline of instance 1 does not change its class
    label[2, 3] = 255
    boxes, classes = instances(label, objects)
    np.testing.assert_array_equal(boxes, [[3, 2, 7, 5], [9, 6, 10, 7]])
    np.testing.assert_array_equal(classes, [4, 2])


def test_fsspec_url_and_default_classes(synth_voc):
    # Copy two samples to an in-memory filesystem without classes.txt: read through a URL.
    fs = fsspec.filesystem("memory")
    image_id = read_split(synth_voc, "train")[0]
    for sub, ext in (("JPEGImages", "jpg"), ("SegmentationClass", "png"), ("SegmentationObject", "png")):
        with open(os.path.join(synth_voc, sub, f"{image_id}.{ext}"), "rb") as f:
            fs.pipe(f"/vocurl/{sub}/{image_id}.{ext}", f.read())
    fs.pipe("/vocurl/ImageSets/Segmentation/train.txt", f"{image_id}\n".encode())
    root = "memory://vocurl"
    assert read_split(root, "train") == [image_id]
    assert read_class_names(root) == VOC_CLASSES
    a, b = load_sample(root, image_id), load_sample(synth_voc, image_id)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.objects, b.objects)
    assert join("s3://b/voc/", "JPEGImages", "x.jpg") == "s3://b/voc/JPEGImages/x.jpg"


def test_rgb_label_refused(tmp_path, synth_voc):
    image_id = read_split(synth_voc, "train")[0]
    root = tmp_path / "voc"
    for sub in ("JPEGImages", "SegmentationClass", "SegmentationObject"):
        (root / sub).mkdir(parents=True)
    img = Image.open(os.path.join(synth_voc, "JPEGImages", f"{image_id}.jpg"))
    img.save(root / "JPEGImages" / f"{image_id}.jpg")
    Image.open(os.path.join(synth_voc, "SegmentationClass", f"{image_id}.png")).convert("RGB").save(
        root / "SegmentationClass" / f"{image_id}.png"
    )
    with pytest.raises(ValueError, match="palette or greyscale"):
        load_sample(str(root), image_id)
