"""Reliability and security of the segmentation job: hostile inputs, killed processes, failing storage, resume.

Each guarantee of docs/failures.md has a test here that could fail:

- hostile inputs (14 files: ``write_hostile_inputs`` and the failing ``write_odd_inputs``)
  each become one result or one clear error row in a real Ray run; 9 hostile ``image_id``s
  (``..``, absolute, drive letters, reserved names) never write outside the output root;
- a model actor and a write task killed mid-run (``pipeline.faults``: the process exits,
  as on an OOM kill) change nothing in the output; an input that kills its worker every
  time fails the job after ``task_retries`` instead of hanging it;
- the job's driver killed part-way (``jobs/segment_dataset.py`` as a subprocess, its
  private Ray killed with it), then the same command again: the output equals an
  uninterrupted run's, byte for byte;
- an output store that drops writes (``flaky://``, a real local filesystem that writes
  half a file and raises; the hostile run writes through it, every write failing once) is
  retried, and no partial file remains;
- checkpoints and configs never make the job fetch anything it was not given; a pickle
  checkpoint is refused before any work (``tests/test_models.py`` checks the loader itself).

A training worker killed part-way is covered by ``tests/test_train.py::test_deconvnet_two_stages``
(its rank-0 process exits at iteration 10; Ray Train resumes from the iteration-8 checkpoint).

One Ray session (2 CPUs) serves the module, started with the fault hook's folder and
``flaky://`` known to every worker process.
"""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
import torch
from botocore.exceptions import EndpointConnectionError
from PIL import Image
from segment_fixtures import (
    NON_UTF8_NAME,
    FlakyFileSystem,
    make_checkpoints,
    register_flaky_fs,
    scene,
    tiny_config,
    write_hostile_inputs,
    write_images,
    write_odd_inputs,
)

from models.checkpoint import CheckpointError
from models.storage import atomic_write, is_transient
from pipeline import faults
from pipeline.decode import decode_image
from pipeline.segment import prepare, run
from pipeline.sources import RESERVED
from pipeline.writers import _part_name, write_outputs

pytestmark = pytest.mark.fault

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
MAX_PIXELS = 100 * 100


# --- fixtures and helpers ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fault_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("faults")


@pytest.fixture(scope="module")
def ray_session(tmp_path_factory, fault_dir):
    """A private local Ray whose workers inherit the fault hook's folder and know ``flaky://``."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(faults.ENV, str(fault_dir))
        mp.setenv("FLAKY_FS_STATE", str(tmp_path_factory.mktemp("flaky")))
        mp.setenv("FLAKY_FS_FAILS", "1")
        mp.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])))
        register_flaky_fs()
        if ray.is_initialized():  # another module's Ray has neither
            ray.shutdown()
        ray.init(
            address="local",  # never join a running cluster
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"worker_process_setup_hook": "segment_fixtures.register_flaky_fs"},
        )
        yield
        ray.shutdown()


@contextlib.contextmanager
def armed(fault_dir: Path, **specs: dict):
    """Arm ``pipeline.faults`` points (``model_batch={"kill_at_call": 2}``); yields kills per point."""
    for f in fault_dir.iterdir():
        f.unlink()
    for point, spec in specs.items():
        (fault_dir / f"{point}.json").write_text(json.dumps(spec))
    kills: dict[str, int] = {}
    try:
        yield kills
    finally:
        for point in specs:
            (fault_dir / f"{point}.json").unlink()
            kills[point] = len(list(fault_dir.glob(f"{point}.killed-*")))


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    return make_checkpoints(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def bucket(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """The hostile bucket and image_id -> expected status.

    ``write_hostile_inputs`` plus the failing ``write_odd_inputs`` (truncated, empty, text);
    the odd inputs that decode (gray, RGBA, 16-bit gray, EXIF, palette) run end to end in
    test_segment_pipeline.py and are left out here to keep the runs short.
    """
    images = tmp_path_factory.mktemp("bucket") / "images"
    expected = write_hostile_inputs(images, MAX_PIXELS)
    for name, status in write_odd_inputs(images / "odd").items():
        if status == "ok":
            (images / "odd" / name).unlink()
        else:
            expected[f"odd/{name}"] = status
    return images, expected


@pytest.fixture(scope="module")
def baseline(ray_session, bucket, ckpts, tmp_path_factory):
    """An uninterrupted run over the hostile bucket, whose every write fails once (``flaky://``).

    Its output is the one every other faulty run must reproduce.
    """
    images, _ = bucket
    out = tmp_path_factory.mktemp("baseline") / "out"
    summary = run(tiny_config(str(images), f"flaky://{out}", ckpts, max_pixels=MAX_PIXELS))
    return out, summary, outputs(out)


def outputs_masks(out: Path) -> dict[str, bytes]:
    """Mask files under an output folder (temporary files of a killed run left out) and their bytes."""
    masks = {}
    for p in out.rglob("*.png"):
        rel = p.relative_to(out).as_posix()
        if rel.split("/")[0] not in RESERVED and not any(part.startswith(".") for part in rel.split("/")):
            masks[rel] = p.read_bytes()
    return masks


def outputs(out: Path) -> dict:
    """What a user reads from an output folder: mask files (bytes), result rows and error rows by image_id."""
    masks = outputs_masks(out)
    tables = {name: pq.read_table(out / name).to_pylist() for name in ("_parquet", "_errors")}
    for name, rows in tables.items():
        ids = [r["image_id"] for r in rows]
        assert len(ids) == len(set(ids)), f"duplicate rows in {name}"
    return {"masks": masks, **{name: {r["image_id"]: r for r in rows} for name, rows in tables.items()}}


def assert_same_outputs(got: dict, want: dict) -> None:
    assert sorted(got["masks"]) == sorted(want["masks"])
    for key, data in want["masks"].items():
        assert got["masks"][key] == data, f"mask {key} differs"
    for name in ("_parquet", "_errors"):
        assert sorted(got[name]) == sorted(want[name])
        for image_id, row in want[name].items():
            other = dict(got[name][image_id])
            for column in ("uncertainty", "mean_confidence", "mean_entropy"):  # float rounding between processes
                if row.get(column) is not None:
                    assert other.pop(column) == pytest.approx(row[column], abs=1e-4)
            assert other == {k: v for k, v in row.items() if k in other}, image_id


def assert_every_input_once(out: dict, expected: dict[str, str]) -> None:
    assert {i: r["status"] for i, r in out["_parquet"].items()} == expected
    assert sorted(out["_errors"]) == sorted(i for i, s in expected.items() if s != "ok")
    assert len(out["masks"]) == sum(s == "ok" for s in expected.values())


# --- hostile inputs ---------------------------------------------------------------------------------------


def test_hostile_bucket_gives_every_input_exactly_once(baseline, bucket):
    root, summary, out = baseline
    _, expected = bucket
    last, totals = summary["last_run"], summary["totals"]
    assert (last["inputs"], last["processed"]) == (len(expected), len(expected))
    assert last["missing"] == last["duplicates"] == 0
    n_errors = sum(s != "ok" for s in expected.values())
    counts = (totals["inputs"], totals["done"], totals["missing"], summary["complete"])
    assert counts == (len(expected),) * 2 + (0, True)
    assert (
        (totals["ok_rows"], totals["error_rows"])
        == (len(expected) - n_errors, n_errors)
        == (last["written"], last["errors"])
    )
    assert totals["error_classes"] == last["error_classes"]
    assert_every_input_once(out, expected)
    rows = out["_parquet"]
    for image_id, row in rows.items():
        if row["status"] == "ok":
            mask = np.asarray(Image.open(root / (os.path.splitext(image_id)[0] + ".png")))
            assert mask.shape == (row["height"], row["width"]), image_id
        else:  # a clear error: its class and a message saying what was wrong, nothing else written
            assert row["error"] and row["mask_png"] is None and "object at 0x" not in row["error"], image_id
    assert (rows["one-pixel.png"]["height"], rows["one-pixel.png"]["width"]) == (1, 1)
    assert (rows["unicode/动画 фото ü.gif"]["height"], rows["unicode/动画 фото ü.gif"]["width"]) == (48, 64)
    assert (rows["control/tab\tnew\nline 1-row.png"]["height"], rows["control/tab\tnew\nline 1-row.png"]["width"]) == (
        1,
        150,
    )
    assert "max_pixels 10000" in rows["too_large.png"]["error"]
    assert "10000000000 pixels" in rows["bomb.png"]["error"]  # the declared size; no pixel was decoded
    bad_name = NON_UTF8_NAME.decode("utf-8", "backslashreplace")
    assert "not valid UTF-8" in rows[bad_name]["error"] and rows[bad_name]["source"].endswith(bad_name)
    assert (root / "unicode" / "动画 фото ü.png").is_file() and (root / "dots" / "a..b..rgb48.png").is_file()


def test_flaky_store_gets_every_file_whole(baseline, bucket):
    root, summary, out = baseline
    files = [p for p in root.rglob("*") if p.is_file()]
    assert not [p for p in files if p.name.startswith(".")]  # no temporary file left
    assert {p.parent.name for p in files if p.suffix == ".parquet"} == {"_parquet", "_errors"}
    others = {p.relative_to(root).as_posix() for p in files if p.suffix != ".parquet"}
    assert others == set(out["masks"]) | {"_summary.json", "_progress.json"}
    assert len(out["masks"]) == summary["last_run"]["written"] == summary["totals"]["masks"]
    for p in files:  # dropped once (half written), then whole; the progress record is rewritten, once per record
        attempts = FlakyFileSystem.attempts(f"flaky://{p}")
        assert attempts >= 2 if p.name == "_progress.json" else attempts == 2, p
    for image_id, row in out["_parquet"].items():  # each mask file holds every byte of its mask
        if row["status"] == "ok":
            assert (root / (os.path.splitext(image_id)[0] + ".png")).read_bytes() == row["mask_png"]
    assert json.loads((root / "_summary.json").read_text())["totals"]["inputs"] == len(bucket[1])
    assert json.loads((root / "_progress.json").read_text())["state"] == "finished"


def test_decoded_pixels_of_unusual_formats(bucket):
    images, _ = bucket
    gif = images / "unicode" / "动画 фото ü.gif"
    assert Image.open(gif).n_frames == 3
    first = np.asarray(Image.open(gif).convert("RGB"))
    np.testing.assert_array_equal(decode_image(gif.read_bytes(), MAX_PIXELS), first)
    rgb48 = decode_image((images / "dots" / "a..b..rgb48.png").read_bytes(), MAX_PIXELS)
    np.testing.assert_array_equal(rgb48, scene(34, 50, 70))  # 16 bits per channel, high byte kept
    cmyk = decode_image((images / "with spaces" / "cmyk photo.jpg").read_bytes(), MAX_PIXELS).astype(int)
    assert np.abs(cmyk - scene(33, 60, 80)).mean() < 12  # JPEG loss only, colours right


def test_output_names_never_leave_the_output_root(tmp_path, ckpts):
    images = tmp_path / "bucket" / "images"
    write_images(images, {"x.jpg": (8, 8)})
    hostile = {
        "../../escape.jpg": "escape.png",
        "/etc/abs.jpg": "etc/abs.png",
        "C:\\Windows\\win.jpg": "C_/Windows/win.png",
        "sub/../../../up.jpg": "sub/up.png",
        "..\\..\\back.jpg": "back.png",
        "~/home.jpg": "~/home.png",
        "with space/ü 猫.jpg": "with space/ü 猫.png",
        "..": None,  # names no file: an InvalidImageId row
        "_errors/x.jpg": None,  # a reserved output name
    }
    manifest = tmp_path / "bucket" / "list.csv"
    lines = ["path,image_id"] + [f'images/x.jpg,"{i}"' for i in hostile]
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "bucket" / "deep" / "out"  # two '..' from here is tmp_path/bucket
    before = {p for p in tmp_path.rglob("*")}
    plan = prepare(tiny_config(str(manifest), str(out), ckpts))
    assert sorted(i["image_id"] for i in plan.todo) == sorted(hostile)
    n = len(plan.todo)
    masks = np.empty(n, dtype=object)
    masks[:] = [np.ones((8, 8), np.uint8) for _ in range(n)]
    batch = {k: np.array([i[k] for i in plan.todo], dtype=object) for k in plan.todo[0]}
    batch.update(
        mask=masks,
        height=np.full(n, 8, np.int32),
        width=np.full(n, 8, np.int32),
        uncertainty=np.zeros(n, np.float32),
        mean_confidence=np.ones(n, np.float32),
        mean_entropy=np.zeros(n, np.float32),
    )
    palette = [[0, 0, 0], [9, 9, 9]]
    write_outputs(
        batch,
        output=str(out),
        formats=("png", "parquet"),
        class_names=["bg", "fg"],
        palette=palette,
        checkpoint_id="c",
        fcn_checkpoint_id="f",
        config_hash="h",
    )
    written = {p for p in tmp_path.rglob("*") if p.is_file()} - before
    assert written and all(out in p.parents for p in written), sorted(map(str, written))
    masks_written = {p.relative_to(out).as_posix() for p in written if p.suffix == ".png"}
    assert masks_written == {k for k in hostile.values() if k}
    rows = {r["image_id"]: r["status"] for r in pq.read_table(out / "_parquet").to_pylist()}
    assert rows == {i: "ok" if k else "InvalidImageId" for i, k in hostile.items()}  # ids kept as given


def test_part_names_tell_every_id_list_apart():
    # Ids may hold any character: a part of ["a\nb"] must not replace the part of ["a", "b"].
    assert _part_name(["a\nb"]) != _part_name(["a", "b"])
    assert _part_name(["b", "a"]) == _part_name(["a", "b"])  # a retried batch rewrites its own part


# --- killed processes -------------------------------------------------------------------------------------


def test_killed_fused_actor_and_write_task_change_nothing(baseline, bucket, ckpts, fault_dir, tmp_path):
    """The fused layout (these 2 CPUs): the model point runs in the fused actor, so this kills that actor.
    Each stage's own task or actor is killed in the split layout by tests/test_cluster_shapes.py."""
    _, _, want = baseline
    images, expected = bucket
    killed_cfg = tiny_config(str(images), str(tmp_path / "out"), ckpts, max_pixels=MAX_PIXELS)
    # The 2nd model batch kills its actor; the 2nd write task dies after its PNGs, before its rows.
    with armed(fault_dir, model_batch={"kill_at_call": 2}, write_rows={"kill_at_call": 2}) as kills:
        summary = run(killed_cfg)
    assert kills == {"model_batch": 1, "write_rows": 1}
    last = summary["last_run"]
    assert last["missing"] == last["duplicates"] == 0 and last["processed"] == len(expected)
    got = outputs(tmp_path / "out")
    assert_every_input_once(got, expected)
    assert_same_outputs(got, want)


@pytest.mark.timeout(400)
@pytest.mark.parametrize(
    "point", ["model_batch", "read_task"]
)  # an actor call (max_task_retries), a task (max_retries)
def test_input_that_kills_its_worker_every_time_fails_the_job_not_hangs(ray_session, ckpts, fault_dir, tmp_path, point):
    """The bound on retries reaches both the actors and the tasks: without it (Ray's default, or a Ray
    that drops the options, see pipeline.segment.retry_args) this run would retry forever."""
    images = tmp_path / "images"
    write_images(images, {"poison.jpg": (40, 48)})
    cfg = tiny_config(str(images), str(tmp_path / "out"), ckpts, task_retries=1)
    with armed(fault_dir, **{point: {"kill_on_id": "poison.jpg"}}) as kills, pytest.raises(Exception) as failure:
        run(cfg)
    assert kills == {point: 2}  # the first try and task_retries=1 retry, then the job stops
    assert any("--task-retries (1)" in note and "resumes" in note for note in failure.value.__notes__)


def _job_args(images: Path, out: Path, ckpts: tuple[str, str]) -> list[str]:
    """``jobs/segment_dataset.py``'s arguments for ``tiny_config``'s settings (so its output equals the baseline's)."""
    return [
        *("--input", str(images), "--output", str(out), "--checkpoint", ckpts[0], "--fcn-checkpoint", ckpts[1]),
        *("--top-k", "3", "--micro-batch", "4", "--device", "cpu", "--crf-iterations", "5"),
        *("--batch-size", "3", "--write-batch-size", "4", "--max-pixels", str(MAX_PIXELS)),
    ]


def _run_job(cmd: list[str], until, timeout: float = 300) -> tuple[int, str]:
    """Run the job with its own private Ray in its own process group; SIGKILL it once ``until()`` holds.

    Killing the whole group (driver, then its Ray processes) is what a lost node or a
    preempted job looks like: no process of the first run can write after the kill.
    """
    ray_tmp = tempfile.mkdtemp(prefix="rf", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = ray_tmp
    log = open(Path(ray_tmp) / "job.log", "w+")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
    deadline = time.time() + timeout
    try:
        while proc.poll() is None and time.time() < deadline:
            if until():
                os.kill(proc.pid, signal.SIGKILL)  # the driver first, as when its node goes
                break
            time.sleep(0.05)
        proc.wait(timeout=max(1.0, deadline - time.time()))
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # its private Ray (same process group)
        time.sleep(1)
        leftovers = subprocess.run(["pgrep", "-f", ray_tmp], capture_output=True, text=True).stdout.split()
        for pid in leftovers:  # Ray processes of this run that left the group
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        log.seek(0)
        output = log.read()
        log.close()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    return proc.returncode, output


def test_job_killed_part_way_then_rerun_equals_an_uninterrupted_run(baseline, bucket, ckpts, tmp_path):
    _, _, want = baseline
    images, expected = bucket
    out = tmp_path / "out"
    argv = _job_args(images, out, ckpts)

    def masks() -> set[str]:
        return set(outputs_masks(out)) if out.is_dir() else set()

    code, log = _run_job([sys.executable, str(REPO / "jobs" / "segment_dataset.py"), *argv], until=masks)
    assert code == -signal.SIGKILL, log[-3000:]
    assert masks() < set(want["masks"]) and not (out / "_summary.json").exists()  # it died part-way
    # The same command again, in this process (it joins the module's Ray rather than starting one).
    spec = importlib.util.spec_from_file_location("segment_dataset_job", REPO / "jobs" / "segment_dataset.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    assert job.main(job.get_args_parser().parse_args(argv)) == 0
    summary = json.loads((out / "_summary.json").read_text())
    last = summary["last_run"]
    assert last["skipped_existing"] > 0 and last["processed"] > 0, summary
    assert last["skipped_existing"] + last["processed"] == last["inputs"] == len(expected)
    assert last["missing"] == last["duplicates"] == 0
    # The folder as a whole: both runs' rows, every input done.
    assert summary["complete"] and summary["totals"]["done"] == summary["totals"]["inputs"] == len(expected)
    got = outputs(out)
    assert_every_input_once(got, expected)
    assert_same_outputs(got, want)


# --- failing storage --------------------------------------------------------------------------------------


def test_transient_and_permanent_errors_are_told_apart():
    assert is_transient(ConnectionResetError(errno.ECONNRESET, "reset"))
    assert is_transient(TimeoutError("slow"))
    assert is_transient(OSError(errno.EIO, "I/O error"))
    assert is_transient(EndpointConnectionError(endpoint_url="https://s3.example.invalid"))
    for exc in (
        PermissionError(errno.EACCES, "denied"),
        FileNotFoundError(errno.ENOENT, "no parent"),
        OSError(errno.ENOSPC, "disk full"),
        OSError(errno.ENAMETOOLONG, "name too long"),
        ValueError("bad data"),
    ):
        assert not is_transient(exc), exc


def test_atomic_write_retries_and_never_leaves_a_partial_file(tmp_path, monkeypatch):
    register_flaky_fs()
    monkeypatch.setenv("FLAKY_FS_STATE", str(tmp_path / "state"))
    (tmp_path / "state").mkdir()
    data = bytes(range(256)) * 64
    monkeypatch.setenv("FLAKY_FS_FAILS", "2")
    url = f"flaky://{tmp_path}/out/a.bin"
    atomic_write(url, data)  # two dropped uploads, then success
    assert FlakyFileSystem.attempts(url) == 3
    assert (tmp_path / "out" / "a.bin").read_bytes() == data
    monkeypatch.setenv("FLAKY_FS_FAILS", "99")  # the store stays down: give up, and leave no half file
    url = f"flaky://{tmp_path}/out/b.bin"
    with pytest.raises(ConnectionResetError) as info:
        atomic_write(url, data)
    assert FlakyFileSystem.attempts(url) == 5
    assert any("gave up after 5 attempts" in note for note in info.value.__notes__)
    assert not (tmp_path / "out" / "b.bin").exists()
    (tmp_path / "file").write_bytes(b"x")  # a file where the folder should be: a permanent error
    url = f"flaky://{tmp_path}/file/c.bin"
    with pytest.raises((NotADirectoryError, FileExistsError)):
        atomic_write(url, data)
    assert FlakyFileSystem.attempts(url) == 1  # not retried


def test_storage_that_stays_down_gives_error_rows_and_reads_are_retried(ray_session, ckpts, tmp_path):
    """Input reads are retried like writes. What still fails after the retries becomes that input's error
    row: an input that cannot be read, a mask that cannot be written. No input is lost."""
    images, out = tmp_path / "images", tmp_path / "out"
    write_images(
        images, dict.fromkeys(("flaky-read-a.jpg", "broken-read-b.jpg", "broken-write-c.jpg", "d.jpg"), (40, 48))
    )
    summary = run(tiny_config(f"flaky://{images}", f"flaky://{out}", ckpts))
    rows = outputs(out)["_parquet"]
    assert {i: r["status"] for i, r in rows.items()} == {
        "flaky-read-a.jpg": "ok",  # dropped twice, then read whole
        "broken-read-b.jpg": "ConnectionResetError",
        "broken-write-c.jpg": "ConnectionResetError",
        "d.jpg": "ok",
    }
    assert FlakyFileSystem.read_attempts(f"flaky://{images}/flaky-read-a.jpg") == 3
    assert FlakyFileSystem.read_attempts(f"flaky://{images}/broken-read-b.jpg") == 5  # then given up
    assert FlakyFileSystem.attempts(f"flaky://{out}/broken-write-c.png") == 5
    assert "connection reset while reading" in rows["broken-read-b.jpg"]["error"]
    assert rows["broken-write-c.jpg"]["error"].startswith("write: ") and rows["broken-write-c.jpg"]["mask_png"] is None
    assert sorted(p.name for p in out.glob("*.png")) == ["d.png", "flaky-read-a.png"]  # no half-written mask
    assert summary["complete"] and summary["totals"]["error_rows"] == 2


def test_a_parquet_part_that_cannot_be_written_stops_the_job_and_a_rerun_resumes(ray_session, ckpts, tmp_path):
    images, out = tmp_path / "images", tmp_path / "out"
    write_images(images, {f"p{i}.jpg": (40, 48) for i in range(3)})
    cfg = tiny_config(str(images), f"flaky://{out}", ckpts)
    broken = Path(os.environ["FLAKY_FS_STATE"]) / "broken-parquet"
    broken.touch()  # every Parquet part upload fails
    try:
        with pytest.raises(Exception) as failure:
            run(cfg)
    finally:
        broken.unlink()
    assert "connection reset while writing" in str(failure.value)
    assert any("resumes" in note for note in getattr(failure.value, "__notes__", []))
    assert not list(out.glob("_parquet/*.parquet"))  # no part, not even half of one
    summary = run(cfg)  # the store is back: the rerun writes what is missing
    assert summary["complete"] and summary["totals"]["done"] == 3
    assert sorted(r["image_id"] for r in pq.read_table(out / "_parquet").to_pylist()) == ["p0.jpg", "p1.jpg", "p2.jpg"]


# --- security ---------------------------------------------------------------------------------------------


NETWORK_PROBE = r"""
import json, sys
network, opened = [], set()

def audit(event, args):
    if event.split(".")[0] in ("socket", "urllib", "http", "ftplib", "smtplib"):
        network.append(event)
    elif event == "open" and isinstance(args[0], str):
        opened.add(args[0])

sys.addaudithook(audit)
import contextlib, socket
with contextlib.suppress(OSError):  # the probe must see a connection attempt
    socket.create_connection(("127.0.0.1", 9), timeout=0.2)
assert "socket.connect" in network, network
network.clear()
import numpy as np
from models import load_checkpoint, read_checkpoint_meta
from pipeline.proposals import ProposalGenerator
from pipeline.segment import prepare
from pipeline.segmenter import Segmenter
from segment_fixtures import tiny_config

images, out, ckpt, fcn_ckpt = sys.argv[1:5]
read_checkpoint_meta(ckpt)
load_checkpoint(ckpt)
image = np.full((40, 48, 3), 120, np.uint8)
boxes, _ = ProposalGenerator()(image)
Segmenter(ckpt, fcn_ckpt).predict([image], [boxes])
prepare(tiny_config(images, out, (ckpt, fcn_ckpt)))
print(json.dumps({"network": network, "opened": sorted(opened)}))
"""


def test_checkpoints_and_configs_never_fetch_anything(tmp_path, ckpts):
    from models import DeconvNet, save_checkpoint

    # A checkpoint whose metadata names remote weights and data: none of it may be read.
    ckpt = str(tmp_path / "remote-minded.safetensors")
    save_checkpoint(
        DeconvNet(num_classes=4, width=1 / 16),
        ckpt,
        backbone_weights="imagenet",
        init_from="https://example.com/weights.pth",
        data="s3://someone-elses-bucket/VOC2012",
    )
    images = tmp_path / "images"
    write_images(images, {"a.jpg": (32, 32)})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(REPO)])}
    probe = [sys.executable, "-c", NETWORK_PROBE, str(images), str(tmp_path / "out"), ckpt, ckpts[1]]
    done = subprocess.run(probe, env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["network"] == []  # no socket, no URL opened
    system = tuple(os.path.realpath(p) for p in {sys.prefix, sys.base_prefix, str(REPO), "/proc", "/sys", "/dev"})
    data_files = {p for p in report["opened"] if not os.path.realpath(p).startswith(system)}
    assert data_files == {ckpt, ckpts[1]}  # the two checkpoints it was given, nothing else (no cache, no config)


RAY_START_PROBE = r"""
import ipaddress, json, os, sys
connected = []

def audit(event, args):
    if event == "socket.connect" and isinstance(args[1], tuple):
        connected.append(args[1][0])

sys.addaudithook(audit)
import ray

if sys.argv[1] == "job":
    from pipeline.ray_session import ensure_ray

    ensure_ray()  # no address, no $RAY_ADDRESS: what a job run directly does, a private local Ray
else:  # what the multi-node tests start (ray.cluster_utils does not turn usage stats off by itself)
    import conftest  # noqa: F401
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, connect=True, head_node_args={"num_cpus": 1})
own = {ray.util.get_node_ip_address()}
children = []
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        with open(f"/proc/{pid}/stat") as f:
            ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        if ppid == os.getpid():
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = dict(v.split(b"=", 1) for v in f.read().split(b"\0") if b"=" in v)
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                name = f.read().replace(b"\0", b" ")[:200].decode()
            children.append({"cmd": name, "usage_stats": env.get(b"RAY_USAGE_STATS_ENABLED", b"").decode()})
    except (FileNotFoundError, ProcessLookupError):
        pass
ray.shutdown()
if sys.argv[1] != "job":
    cluster.shutdown()
remote = sorted({a for a in connected if a not in own and not ipaddress.ip_address(a).is_loopback})
print(json.dumps({"remote": remote, "children": children}))
"""


@pytest.mark.parametrize("starter", ["job", "test-cluster"])
def test_every_ray_the_project_starts_turns_off_usage_stats(tmp_path, starter):
    # Ray's dashboard posts usage statistics to Ray's server about a minute after start unless told
    # not to; every process of a Ray that a job (or a test) starts must carry the opt-out, and the
    # driver itself connects only to this machine.
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_USAGE_STATS_ENABLED")}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(REPO)])
    done = subprocess.run(
        [sys.executable, "-c", RAY_START_PROBE, starter],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["remote"] == []
    names = " ".join(c["cmd"] for c in report["children"])
    assert "gcs_server" in names and "dashboard" in names, report  # Ray's own processes, started by the job
    assert all(c["usage_stats"] == "0" for c in report["children"]), report


def test_pickle_checkpoint_is_refused_before_any_work(tmp_path, ckpts):
    # tests/test_models.py::test_pickle_checkpoint_is_refused_without_unpickling checks the loader;
    # here the job's entry refuses it (exit code 2 in the CLI) and the payload never runs.
    sentinel = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(sentinel), "w"))

    images = tmp_path / "images"
    write_images(images, {"a.jpg": (16, 16)})
    for name, save in {
        "pickle.safetensors": lambda p: p.write_bytes(pickle.dumps(Payload())),
        "torch-save.safetensors": lambda p: torch.save({"model": Payload()}, p),
    }.items():
        path = tmp_path / name
        save(path)
        with pytest.raises(CheckpointError, match="pickle"):
            prepare(tiny_config(str(images), str(tmp_path / "out"), (str(path), ckpts[1])))
    assert not sentinel.exists() and not (tmp_path / "out").exists()
