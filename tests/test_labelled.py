"""Labelled-set discovery: VOC layout and images/ + masks/ folders; fingerprints."""

from __future__ import annotations

import fsspec
import pytest

from pipeline.labelled import MissingLabels, open_labelled_set


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


@pytest.mark.parametrize("layout", ["voc", "folders"])
def test_missing_labels_are_all_named_before_any_work_or_skipped(layout):
    fs = fsspec.filesystem("memory")
    root = f"/missing-{layout}"
    stems = ["a", "b", "c", "d"]
    for stem in stems:
        if layout == "voc":
            fs.pipe(f"{root}/JPEGImages/{stem}.jpg", b"img")
            if stem in ("a", "c"):
                fs.pipe(f"{root}/SegmentationClass/{stem}.png", b"mask")
        else:
            fs.pipe(f"{root}/images/{stem}.jpg", b"img")
            if stem in ("a", "c"):
                fs.pipe(f"{root}/masks/{stem}.png", b"mask")
    if layout == "voc":
        fs.pipe(f"{root}/ImageSets/Segmentation/val.txt", "\n".join(stems).encode())
    url = f"memory://{root.lstrip('/')}"
    with pytest.raises(MissingLabels, match="2 of 4 images") as info:
        open_labelled_set(url, "val")
    label_dir = "SegmentationClass" if layout == "voc" else "masks"
    assert f"{label_dir}/b.png" in str(info.value) and f"{label_dir}/d.png" in str(info.value)
    assert isinstance(info.value, FileNotFoundError)  # the job's exit 2
    data = open_labelled_set(url, "val", skip_missing_labels=True)
    assert [r["image_id"] for r in data.rows] == ["a.jpg", "c.jpg"]
    assert data.missing_labels == ["b.jpg", "d.jpg"]
