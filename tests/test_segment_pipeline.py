"""The segmentation job end to end on a real local Ray: real files, PNG, Parquet, S3 (moto server).

One Ray session (2 CPUs, like the CI machine) serves every test of this module.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
from PIL import Image
from segment_fixtures import NUM_CLASSES, free_port, make_checkpoints, tiny_config, write_images, write_odd_inputs

from pipeline.reference import reference_results
from pipeline.segment import BLOCK_ROWS, FUSED_BLOCK_ROWS, build_dataset, prepare, run, stage_resources
from pipeline.segmenter import InferenceConfig
from pipeline.stage_config import CRFConfig

pytestmark = pytest.mark.slow

# The published output format, written out here rather than imported, so that a change to it fails a test.
RESULT_COLUMNS = [
    "image_id", "source", "height", "width", "status", "error", "mask_png", "confidence_png", "classes", "uncertainty",
    "mean_confidence", "mean_entropy", "checkpoint_id", "fcn_checkpoint_id", "config_hash",
]
VOC_COLOURS = [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128], [128, 0, 128], [0, 128, 128]]

GOOD = {"a.jpg": (64, 80), "b.png": (96, 64), "sub/c.jpg": (72, 72), "sub/deeper/d.png": (80, 100)}


@pytest.fixture(scope="module")
def s3_server():
    """A local S3 emulator (moto server) that Ray's worker processes can reach over HTTP."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "FSSPEC_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env["AWS_ENDPOINT_URL"]
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.stop()


@pytest.fixture(scope="module")
def ray_session(s3_server):
    # Started after the S3 variables are set, so every worker process inherits them; a Ray
    # left running by an earlier module would not have them, so this module owns its session.
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)  # never join a running cluster
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    return make_checkpoints(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, ckpts, ray_session):
    root = tmp_path_factory.mktemp("bucket")
    inp, out = root / "images", root / "masks"
    write_images(inp, GOOD)
    expected = {k: "ok" for k in GOOD}
    expected.update({f"odd/{k}": v for k, v in write_odd_inputs(inp / "odd").items()})
    cfg = tiny_config(str(inp), str(out), ckpts)
    items = prepare(cfg).todo
    summary = run(cfg)
    return cfg, items, expected, summary


def _png(path) -> np.ndarray:
    img = Image.open(path)
    assert img.mode == "P"
    return np.asarray(img)


def test_end_to_end_both_formats(first_run):
    cfg, items, expected, summary = first_run
    out = cfg.output
    n_ok = sum(s == "ok" for s in expected.values())
    errors = {}
    for s in expected.values():
        if s != "ok":
            errors[s] = errors.get(s, 0) + 1
    last = summary["last_run"]
    assert last["inputs"] == last["processed"] == len(expected)
    assert (last["written"], last["errors"], last["skipped_existing"]) == (n_ok, len(expected) - n_ok, 0)
    assert last["error_classes"] == errors and last["missing"] == last["duplicates"] == 0
    assert json.load(open(os.path.join(out, "_summary.json")))["last_run"]["written"] == n_ok

    rows = pq.read_table(os.path.join(out, "_parquet"))
    assert rows.schema.names == RESULT_COLUMNS
    assert {r["config_hash"] for r in rows.to_pylist()} == {cfg.config_hash()}
    assert re.fullmatch(r"[0-9a-f]{16}", cfg.config_hash())
    by_id = {r["image_id"]: r for r in rows.to_pylist()}
    assert len(by_id) == rows.num_rows == len(expected)  # every input exactly once
    assert {k: r["status"] for k, r in by_id.items()} == expected
    palette = [c for rgb in VOC_COLOURS[:NUM_CLASSES] for c in rgb]
    for image_id, status in expected.items():
        row = by_id[image_id]
        png = os.path.join(out, os.path.splitext(image_id)[0] + ".png")
        assert row["checkpoint_id"] and row["fcn_checkpoint_id"]
        if status != "ok":
            assert not os.path.exists(png) and row["mask_png"] is None and row["error"]
            continue
        mask = _png(png)
        assert Image.open(png).getpalette()[: len(palette)] == palette
        h, w = GOOD.get(image_id, (row["height"], row["width"]))
        assert mask.shape == (h, w) == (row["height"], row["width"])
        assert mask.max() < NUM_CLASSES
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(row["mask_png"]))), mask)
        assert sum(c["fraction"] for c in row["classes"]) == pytest.approx(1.0)
        assert 0.0 <= row["uncertainty"] <= 1.0 - 1.0 / NUM_CLASSES + 1e-6
    assert (by_id["odd/rotated.jpg"]["height"], by_id["odd/rotated.jpg"]["width"]) == (96, 64)  # EXIF applied
    errs = pq.read_table(os.path.join(out, "_errors"))
    assert errs.schema.names == ["image_id", "source", "status", "error", "checkpoint_id", "config_hash"]
    assert sorted(errs.column("image_id").to_pylist()) == sorted(k for k, s in expected.items() if s != "ok")
    leftovers = [f for _, _, files in os.walk(out) for f in files if f.startswith(".")]
    assert leftovers == []  # no temporary files left behind


def test_ray_result_equals_in_process_reference(first_run):
    cfg, items, expected, _ = first_run
    ref = reference_results(cfg, items)
    assert {k: r["status"] for k, r in ref.items()} == expected
    rows = {r["image_id"]: r for r in pq.read_table(os.path.join(cfg.output, "_parquet")).to_pylist()}
    n_classes_seen = set()
    for image_id, r in ref.items():
        if r["status"] != "ok":
            continue
        mask = _png(os.path.join(cfg.output, os.path.splitext(image_id)[0] + ".png"))
        np.testing.assert_array_equal(mask, r["mask"], err_msg=image_id)
        assert rows[image_id]["uncertainty"] == pytest.approx(r["uncertainty"], abs=1e-4)
        n_classes_seen.update(np.unique(mask).tolist())
    assert len(n_classes_seen) >= 2  # the comparison is not between trivially constant masks


def test_rerun_skips_existing_and_restores_only_what_is_missing(first_run):
    cfg, _, expected, _ = first_run
    n_errors = sum(s != "ok" for s in expected.values())
    again = run(cfg)
    assert (again["last_run"]["processed"], again["last_run"]["skipped_existing"]) == (0, len(expected))
    # A rerun that resumed everything still describes the whole folder: nothing processed, all done.
    totals = again["totals"]
    assert again["complete"] and (totals["inputs"], totals["done"], totals["missing"]) == (len(expected),) * 2 + (0,)
    n_ok = len(expected) - n_errors
    assert (totals["ok_rows"], totals["error_rows"], totals["masks"]) == (n_ok, n_errors, n_ok)
    assert json.load(open(os.path.join(cfg.output, "_progress.json")))["state"] == "finished"
    victim = os.path.join(cfg.output, "sub", "c.png")
    before = _png(victim)
    os.remove(victim)
    third = run(cfg)["last_run"]
    assert (third["processed"], third["written"], third["skipped_existing"]) == (1, 1, len(expected) - 1)
    np.testing.assert_array_equal(_png(victim), before)
    ids = pq.read_table(os.path.join(cfg.output, "_parquet")).column("image_id").to_pylist()
    assert sorted(ids) == sorted(expected)  # no duplicated rows
    assert pq.read_table(os.path.join(cfg.output, "_errors")).num_rows == sum(s != "ok" for s in expected.values())


@pytest.mark.parametrize(
    "layout, stages, block_rows",
    [
        ("split", ("decode_images", "ProposalStage", "Segmenter", "CRFStage"), BLOCK_ROWS),
        ("fused", ("FusedStage",), FUSED_BLOCK_ROWS),
    ],
)
def test_blocks_stay_small_and_the_store_limit_is_this_runs(tmp_path, ckpts, ray_session, layout, stages, block_rows):
    """After the read every block holds at most a few images, however long the listing (so what a
    task holds, and what queues between stages, does not grow with the run); the object-store limit is
    set on this run's dataset, not on the process's DataContext. Both layouts write the reference's masks
    (the first run above uses the default, fused, layout on these 2 CPUs; split is the GPU layout)."""
    names = {f"img{i:02d}.jpg": (48, 64) for i in range(40)}
    write_images(tmp_path / "in", names)
    out = tmp_path / "out"
    cfg = tiny_config(str(tmp_path / "in"), str(out), ckpts, format="png", object_store_mb=64, layout=layout)
    res = stage_resources(cfg, ray.cluster_resources())
    assert res.layout == layout
    plan = prepare(cfg)
    ds = build_dataset(cfg, plan, res)
    assert ds.context.execution_options.resource_limits.object_store_memory == res.object_store_bytes == 64 * 2**20
    assert ray.data.DataContext.get_current().execution_options.resource_limits.object_store_memory == float("inf")
    rows = ds.take_all()
    assert sorted(r["image_id"] for r in rows) == sorted(names) and {r["status"] for r in rows} == {"ok"}
    ops = re.findall(r"Operator \d+ ([^:]+):.*?Output num rows per block: (\d+) min, (\d+) max", ds.stats(), re.S)
    largest = {name: int(mx) for name, _, mx in ops}
    for stage in stages:
        sizes = [v for k, v in largest.items() if stage in k]
        assert sizes and max(sizes) <= block_rows, (stage, largest)
    for image_id, r in reference_results(cfg, plan.todo[:8]).items():
        np.testing.assert_array_equal(_png(out / image_id.replace(".jpg", ".png")), r["mask"], err_msg=image_id)


def test_s3_input_and_output_png_only(tmp_path, ckpts, ray_session, s3_server):
    import fsspec

    fs = fsspec.filesystem("s3")
    fs.mkdir("bucket-in")
    fs.mkdir("bucket-out")
    local = tmp_path / "images"
    write_images(local, {"x/one.jpg": (64, 72), "two.png": (70, 60)}, seed=20)
    (local / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    fs.put(str(local) + "/", "bucket-in/images/", recursive=True)
    cfg = tiny_config(
        "s3://bucket-in/images",
        "s3://bucket-out/run1",
        ckpts,
        format="png",
        inference=InferenceConfig(ensemble="deconvnet", micro_batch=2, device="cpu"),
        crf=CRFConfig(enabled=False),
    )
    items = prepare(cfg).todo
    assert sorted(i["path"] for i in items) == [
        "s3://bucket-in/images/broken.jpg",
        "s3://bucket-in/images/two.png",
        "s3://bucket-in/images/x/one.jpg",
    ]
    last = run(cfg)["last_run"]
    assert (last["processed"], last["written"], last["errors"]) == (3, 2, 1)
    fs.invalidate_cache()
    names = sorted(p.split("bucket-out/run1/", 1)[1] for p in fs.find("bucket-out/run1"))
    assert [n for n in names if not n.startswith("_errors/")] == [
        "_progress.json",
        "_summary.json",
        "two.png",
        "x/one.png",
    ]
    assert not any(n.startswith("_parquet") for n in names)
    ref = reference_results(cfg, items)
    for image_id, size in {"x/one.jpg": (64, 72), "two.png": (70, 60)}.items():
        mask = np.asarray(
            Image.open(io.BytesIO(fs.cat_file("bucket-out/run1/" + os.path.splitext(image_id)[0] + ".png")))
        )
        assert mask.shape == size
        np.testing.assert_array_equal(mask, ref[image_id]["mask"])
    assert ref["broken.jpg"]["status"] != "ok"
    again = run(cfg)
    assert again["last_run"]["processed"] == 0  # skip-existing works on object stores too
    assert again["complete"] and again["totals"] == {
        "inputs": 3,
        "done": 3,
        "missing": 0,
        "ok_rows": 0,
        "error_rows": 1,
        "error_classes": {ref["broken.jpg"]["status"]: 1},
        "masks": 2,
    }


def test_single_file_input_parquet_only_then_no_skip_existing(tmp_path, ckpts, ray_session):
    """One file as the input, ``--format parquet`` alone, then a rerun that skips it and one with
    ``--no-skip-existing`` that redoes it without adding a second row."""
    write_images(tmp_path / "in", {"solo.jpg": (40, 52), "other.jpg": (40, 52)}, seed=5)
    out = tmp_path / "out"
    cfg = tiny_config(str(tmp_path / "in" / "solo.jpg"), str(out), ckpts, format="parquet")
    first = run(cfg)["last_run"]
    assert (first["inputs"], first["processed"], first["written"]) == (1, 1, 1)  # other.jpg is not the input
    assert not list(out.rglob("*.png"))  # Parquet alone: no mask files
    rows = pq.read_table(out / "_parquet").to_pylist()
    assert [r["image_id"] for r in rows] == ["solo.jpg"] and _png_bytes_shape(rows[0]["mask_png"]) == (40, 52)
    skipped = run(cfg)["last_run"]
    assert (skipped["processed"], skipped["skipped_existing"]) == (0, 1)
    again = run(dataclasses.replace(cfg, skip_existing=False))["last_run"]
    assert (again["processed"], again["skipped_existing"]) == (1, 0)
    assert [r["image_id"] for r in pq.read_table(out / "_parquet").to_pylist()] == ["solo.jpg"]  # redone, once


def _png_bytes_shape(data: bytes) -> tuple[int, int]:
    return np.asarray(Image.open(io.BytesIO(data))).shape
