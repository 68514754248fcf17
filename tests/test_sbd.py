"""SBD's dataset/ folder (.mat files written with scipy.io.savemat) and the training set built from VOC + SBD:
union, no leakage of validation images, bad files as counted skips, the --max-bad-examples stop."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import fsspec
import numpy as np
import pytest
import ray
import scipy.io
from PIL import Image
from sbd_fixtures import write_cls_mat, write_inst_mat, write_list

from pipeline.sbd import decode_inst, load_sbd_sample, read_sbd_split
from pipeline.train.config import TrainConfig
from pipeline.train.training_set import TooManyBadExamples, build_training_set, listed_ids
from pipeline.voc import BadFile, MissingFile, instances, load_sample

ROOT = Path(__file__).resolve().parents[1]

LABEL = np.array([[0, 15, 15, 0, 0], [0, 15, 255, 3, 0], [0, 0, 3, 3, 0]], np.uint8)  # person, boat; one void pixel
OBJECTS = np.array([[0, 1, 1, 0, 0], [0, 1, 0, 2, 0], [0, 0, 2, 2, 0]], np.uint8)


def _tiny_sbd(root: Path, image_id: str = "2008_000123") -> Path:
    for sub in ("img", "cls", "inst"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((3, 5, 3), 128, np.uint8)).save(root / "img" / f"{image_id}.jpg")
    write_cls_mat(str(root / "cls" / f"{image_id}.mat"), LABEL)
    write_inst_mat(str(root / "inst" / f"{image_id}.mat"), OBJECTS, [15, 3])
    write_list(str(root / "train.txt"), [image_id])
    return root


def test_sbd_sample_through_a_url(tmp_path):
    local = _tiny_sbd(tmp_path / "dataset")
    fs = fsspec.filesystem("memory")
    for path in local.rglob("*"):
        if path.is_file():
            fs.pipe(f"/sbdurl/{path.relative_to(local).as_posix()}", path.read_bytes())
    root = "memory://sbdurl"
    assert read_sbd_split(root, "train") == ["2008_000123"]
    s = load_sbd_sample(root, "2008_000123")
    assert s.image.shape == (3, 5, 3) and s.image.dtype == np.uint8
    np.testing.assert_array_equal(s.label, LABEL)  # class indices as written, 255 still void
    np.testing.assert_array_equal(s.objects, OBJECTS)
    boxes, classes = instances(s.label, s.objects)  # the instance boxes of stage 1 / stage 2
    np.testing.assert_array_equal(boxes, [[1, 0, 3, 2], [2, 1, 4, 3]])
    assert classes.tolist() == [15, 3]
    objects, categories = decode_inst((local / "inst" / "2008_000123.mat").read_bytes())
    assert categories.tolist() == [15, 3]
    assert load_sbd_sample(root, "2008_000123", objects=False).objects is None  # FCN reads cls only


def _corrupt(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:200])


@pytest.mark.parametrize(
    "spoil, bad_file, reason",
    [
        (lambda r: _corrupt(r / "cls" / "x.mat"), "cls/x.mat", "unreadable"),
        (lambda r: _corrupt(r / "inst" / "x.mat"), "inst/x.mat", "unreadable"),
        (lambda r: (r / "inst" / "x.mat").unlink(), "inst/x.mat", "missing"),
        (lambda r: (r / "img" / "x.jpg").unlink(), "img/x.jpg", "missing"),
        (lambda r: scipy.io.savemat(str(r / "cls" / "x.mat"), {"S": np.zeros((3, 5))}), "cls/x.mat", "no GTcls struct"),
        (lambda r: write_cls_mat(str(r / "cls" / "x.mat"), np.where(LABEL == 3, 37, LABEL)), "cls/x.mat",
         r"class indices \[37\]"),
        (lambda r: write_inst_mat(str(r / "inst" / "x.mat"), OBJECTS, [15]), "inst/x.mat", "lists 1"),
        (lambda r: write_inst_mat(str(r / "inst" / "x.mat"), OBJECTS, [15, 7]), "inst/x.mat",
         "instance 2 is class 7"),
        (lambda r: write_cls_mat(str(r / "cls" / "x.mat"), LABEL[:2]), "cls/x.mat", "2x5 labels for a 3x5 image"),
    ],
)
def test_bad_sbd_files_name_their_path(tmp_path, spoil, bad_file, reason):
    root = _tiny_sbd(tmp_path / "dataset", "x")
    load_sbd_sample(str(root), "x")  # fine before
    spoil(root)
    with pytest.raises(BadFile, match=reason) as err:
        load_sbd_sample(str(root), "x")
    assert err.value.path == str(root / bad_file)
    assert isinstance(err.value, MissingFile) == (reason == "missing")


def test_voc_bad_files_name_their_path(tmp_path, synth_voc):
    root = tmp_path / "voc"
    shutil.copytree(synth_voc, root)
    image_id = sorted(os.listdir(root / "JPEGImages"))[0].removesuffix(".jpg")
    _corrupt(root / "SegmentationObject" / f"{image_id}.png")
    load_sample(str(root), image_id, objects=False)  # FCN does not read the instances
    with pytest.raises(BadFile, match="unreadable") as err:
        load_sample(str(root), image_id)
    assert err.value.path == str(root / "SegmentationObject" / f"{image_id}.png")


@pytest.fixture(scope="module")
def ray_local():
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def _spoilt_sbd(tmp_path, paper_sets) -> tuple[str, str, str]:
    """A copy of the paper sets' SBD with one corrupt inst .mat and one listed id without files."""
    sbd = tmp_path / "dataset"
    shutil.copytree(paper_sets["sbd"], sbd)
    corrupt = paper_sets["own"][2]
    _corrupt(sbd / "inst" / f"{corrupt}.mat")
    with open(sbd / "val.txt", "a") as f:
        f.write("2011_999999\n")  # listed, never shipped
    return str(sbd), corrupt, "2011_999999"


def read_ids(root: str, split: str) -> list[str]:
    return (Path(root) / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()


def test_training_set_union_without_leakage_and_bad_files_skipped(ray_local, tmp_path, paper_sets):
    sbd, corrupt, absent = _spoilt_sbd(tmp_path, paper_sets)
    voc, leak, dup, own = paper_sets["voc"], paper_sets["leak"], paper_sets["dup"], paper_sets["own"]
    base = dict(data=voc, sbd=sbd, output=str(tmp_path / "run"), data_cpus=0.5, max_bad_examples=2)

    # Before any file is read: 6 VOC train + 5 SBD train + 3 SBD val listed, 12 distinct, the VOC val image removed.
    rows, counts = listed_ids(TrainConfig(**base))
    assert counts == {"voc_train": 6, "sbd_train": 5, "sbd_val": 3, "union": 12, "in_val_removed": 1,
                      "after_val_removal": 11}
    assert leak not in {r["image_id"] for r in rows}
    assert {r["image_id"]: r["source"] for r in rows}[dup] == "voc"  # in both: VOC's own annotation wins
    assert len({r["image_id"] for r in rows}) == len(rows)  # own[1] is in both SBD lists, listed once

    # DeconvNet reads inst: the corrupt .mat and the id without files are the two counted skips.
    ts = build_training_set(TrainConfig(**base), objects=True)
    assert ts.name == "train+sbd-train+sbd-val"
    assert ts.counts == {**counts, "bad_skipped": 2, "used": 9}
    assert [(s["image_id"], s["path"]) for s in ts.skipped] == [
        (corrupt, os.path.join(sbd, "inst", f"{corrupt}.mat")), (absent, os.path.join(sbd, "img", f"{absent}.jpg"))]
    assert ts.skipped[0]["error"].startswith("unreadable") and ts.skipped[1]["error"] == "missing"
    used = {r["image_id"] for r in ts.rows}
    assert used == set(read_ids(voc, "train")) | {own[0], own[1], own[3]}
    assert leak not in used

    # FCN reads cls only: the corrupt inst .mat does not matter to it.
    fcn = build_training_set(TrainConfig(**base, model="fcn"), objects=False)
    assert fcn.counts["bad_skipped"] == 1 and corrupt in {r["image_id"] for r in fcn.rows}

    # One bad image more than allowed stops the run, naming the files.
    with pytest.raises(TooManyBadExamples, match=r"2 of 11 training images .* more than --max-bad-examples 1") as err:
        build_training_set(TrainConfig(**{**base, "max_bad_examples": 1}), objects=True)
    assert os.path.join(sbd, "inst", f"{corrupt}.mat") in str(err.value)
    assert os.path.join(sbd, "img", f"{absent}.jpg") in str(err.value)


def test_job_stops_with_a_clear_message(ray_local, tmp_path, paper_sets):
    sbd, corrupt, absent = _spoilt_sbd(tmp_path, paper_sets)
    spec = importlib.util.spec_from_file_location("train_job", ROOT / "jobs" / "train.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    with pytest.raises(SystemExit) as err:  # the message is what the command prints (exit status 1)
        job.cli(["--sbd", sbd, "--val-split", "", "--model", "fcn", "--output", str(tmp_path / "run"),
                 "--max-bad-examples", "0", "--data-cpus", "0.5"])
    message = str(err.value.code)
    assert message.startswith("train: stopped: 1 of 7 training images have missing or unreadable files, "
                              "more than --max-bad-examples 0")
    assert f"{os.path.join(sbd, 'img', absent + '.jpg')}: missing" in message
    assert not (tmp_path / "run" / "fcn32s").exists()  # stopped before any training
    with pytest.raises(SystemExit) as usage:
        job.cli(["--output", str(tmp_path / "run")])
    assert usage.value.code == 2  # neither --data nor --sbd
