"""Labelled-set discovery: VOC layout and images/ + masks/ folders; fingerprints."""

from __future__ import annotations

import fsspec
import pytest

from pipeline.labelled import open_labelled_set


def test_voc_layout(synth_voc):
    data = open_labelled_set(synth_voc, "val")
    assert data.layout == "voc" and len(data.rows) == 3
    assert data.rows[0]["image_id"].endswith(".jpg") and data.rows[0]["label_path"].endswith(".png")
    assert data.class_names[0] == "background"
    assert data.fingerprint() == open_labelled_set(synth_voc, "val").fingerprint()
    assert data.fingerprint() != open_labelled_set(synth_voc, "train").fingerprint()


def test_images_and_masks_folders_with_and_without_split():
    fs = fsspec.filesystem("memory")
    for stem in ("a/x", "a/y", "z"):
        fs.pipe(f"/lab/images/{stem}.jpg", b"img")
        fs.pipe(f"/lab/masks/{stem}.png", b"mask")
    fs.pipe("/lab/images/readme.txt", b"not an image")
    everything = open_labelled_set("memory://lab", "val")
    assert everything.layout == "folders"
    assert [r["image_id"] for r in everything.rows] == ["a/x.jpg", "a/y.jpg", "z.jpg"]
    assert everything.rows[2]["label_path"] == "memory://lab/masks/z.png"
    before = everything.fingerprint()
    fs.pipe("/lab/masks/z.png", b"relabelled mask")
    assert open_labelled_set("memory://lab", "val").fingerprint() != before
    fs.pipe("/lab/val.txt", b"z\na/y\n")
    assert [r["image_id"] for r in open_labelled_set("memory://lab", "val").rows] == ["z.jpg", "a/y.jpg"]
    fs.pipe("/lab/val.txt", b"missing\n")
    with pytest.raises(FileNotFoundError, match="missing"):
        open_labelled_set("memory://lab", "val")
    with pytest.raises(FileNotFoundError, match="neither a VOC layout"):
        open_labelled_set("memory://nothing-here", "val")
