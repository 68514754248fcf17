"""VOC layout reading: local folders and fsspec URLs, instances from SegmentationObject."""

from __future__ import annotations

import io
import os

import fsspec
import numpy as np
import pytest
from PIL import Image

from models.classes import VOC_CLASSES, voc_palette
from pipeline.demo.synthvoc import SYNTH_CLASSES
from pipeline.voc import (
    UnknownLabelColour,
    decode_label,
    instances,
    join,
    load_sample,
    read_class_names,
    read_split,
)


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


def _png(pixels: np.ndarray, mode: str) -> bytes:
    buf = io.BytesIO()
    img = Image.fromarray(pixels, mode if mode != "P" else "L")
    if mode == "P":
        img = img.convert("P")
        img.putpalette([c for rgb in voc_palette(256) for c in rgb])
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_colour_labels_map_through_the_palette():
    palette = voc_palette(4)  # a 4-class checkpoint's colours
    index = np.array([[0, 1, 2, 3, 255, 0], [1, 1, 0, 2, 3, 255]], np.uint8)
    colours = np.array(voc_palette(256), np.uint8)[index]  # void drawn as VOC's 224,224,192
    assert tuple(colours[0, 4]) == (224, 224, 192)
    np.testing.assert_array_equal(decode_label(_png(colours, "RGB"), palette), index)
    # RGBA: opaque pixels by their colour, fully transparent ones are unlabelled whatever their colour
    rgba = np.dstack([colours, np.full(index.shape, 255, np.uint8)])
    rgba[0, 0, 3] = 0
    rgba[1, 0] = (9, 9, 9, 0)
    expected = index.copy()
    expected[0, 0] = expected[1, 0] = 255
    np.testing.assert_array_equal(decode_label(_png(rgba, "RGBA"), palette), expected)
    # index PNGs as before: the palette plays no part
    for mode in ("P", "L"):
        np.testing.assert_array_equal(decode_label(_png(index, mode), palette), index)
        np.testing.assert_array_equal(decode_label(_png(index, mode)), index)
    # colours outside the palette: the image is refused, each colour named with its pixel count
    colours[1, :3] = (10, 20, 30)
    colours[0, 5] = np.array(voc_palette(6)[5], np.uint8)  # class 5's colour: not one of these 4 classes
    with pytest.raises(UnknownLabelColour, match=r"\(10, 20, 30\) on 3 pixels, \(128, 0, 128\) on 1 pixels$"):
        decode_label(_png(colours, "RGB"), palette)
    many = np.arange(8 * 3, dtype=np.uint8).reshape(1, 8, 3)
    with pytest.raises(UnknownLabelColour, match="and 3 more colours on 3 pixels"):
        decode_label(_png(many, "RGB"), palette)
    with pytest.raises(ValueError, match="got mode RGB"):  # without a palette (training) colours are refused
        decode_label(_png(colours, "RGB"))
