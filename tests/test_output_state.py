"""Outputs as users meet them: file modes under a umask, the folder's totals, the progress record.

The in-process tests call the real writers (masks, Parquet parts, reports, checkpoints, the
summary and progress records) under umask 022 and 077; the end-to-end test runs
``jobs/segment_dataset.py`` under each umask, so the files its Ray workers write are checked too.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from segment_fixtures import make_checkpoints, write_images

from models import DeconvNet, save_checkpoint
from models.storage import atomic_write
from pipeline.evaluation.report import write_report
from pipeline.progress import ProgressReporter, format_duration
from pipeline.sources import assign_outputs, output_totals, scan_output
from pipeline.writers import write_outputs

REPO = Path(__file__).resolve().parent.parent
UMASKS = [0o022, 0o077]
UMASK_IDS = ["umask022", "umask077"]


def _modes(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in root.rglob("*") if p.is_file()}


def _batch(ids: list[str], statuses: list[str]) -> dict[str, np.ndarray]:
    masks = np.empty(len(ids), dtype=object)
    masks[:] = [np.array([[0, 1], [1, 1]], np.uint8) if s == "ok" else np.zeros((0, 0), np.uint8) for s in statuses]

    def objects(values):
        return np.array(values, dtype=object)

    return {
        "image_id": objects(ids),
        "path": objects([f"/in/{i}" for i in ids]),
        "mask_key": objects([os.path.splitext(i)[0] + ".png" for i in ids]),
        "status": objects(statuses),
        "error": objects(["" if s == "ok" else "decode: broken" for s in statuses]),
        "height": np.array([2 if s == "ok" else 0 for s in statuses], np.int32),
        "width": np.array([2 if s == "ok" else 0 for s in statuses], np.int32),
        "mask": masks,
        "uncertainty": np.array([0.25] * len(ids), np.float32),
        "mean_confidence": np.array([0.75] * len(ids), np.float32),
        "mean_entropy": np.array([0.5] * len(ids), np.float32),
        "needs_row": np.ones(len(ids), bool),
    }


WRITE = {
    "formats": ("png", "parquet"), "class_names": ["bg", "fg"], "palette": [[0, 0, 0], [9, 9, 9]],
    "checkpoint_id": "c1", "fcn_checkpoint_id": None, "config_hash": "h1",
}


@pytest.fixture
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


@pytest.mark.parametrize("umask", UMASKS, indirect=True, ids=UMASK_IDS)
def test_every_writer_creates_files_as_open_would(tmp_path, umask):
    """Masks, Parquet parts, the summary and progress records, reports and checkpoints: 0666 & ~umask."""
    write_outputs(_batch(["a.jpg", "sub/b.jpg", "c.jpg"], ["ok", "ok", "EmptyFile"]), output=str(tmp_path), **WRITE)
    with ProgressReporter(str(tmp_path / "_progress.json"), 3, interval=60, echo=lambda line: None):
        pass
    atomic_write(str(tmp_path / "_summary.json"), b"{}")
    report = {
        "created": "now", "dataset": {"data": "d", "split": "val", "fingerprint": "f", "images": 1},
        "class_names": ["bg"], "variants": {"v": {"iou": {"bg": 0.5}, "mean_iou": 0.5, "pixel_accuracy": 1.0,
                                                  "mean_accuracy": 1.0, "fw_iou": 0.5}},
    }
    write_report(report, str(tmp_path / "report"))
    save_checkpoint(DeconvNet(num_classes=2, width=1 / 32), str(tmp_path / "ckpt" / "model.safetensors"))
    modes = _modes(tmp_path)
    kinds = {"a.png", "sub/b.png", "_progress.json", "_summary.json", "report/report.json", "report/report.md",
             "report/per_class_iou.png", "ckpt/model.safetensors"}
    assert (
        kinds <= set(modes)
        and any(k.startswith("_parquet/") for k in modes)
        and any(k.startswith("_errors/") for k in modes)
    )
    assert not [k for k in modes if os.path.basename(k).startswith(".")]  # no temporary file left
    assert set(modes.values()) == {0o666 & ~umask}, modes
    # Folders are made as os.makedirs makes them.
    assert stat.S_IMODE((tmp_path / "sub").stat().st_mode) == 0o777 & ~umask
    # A rewrite replaces the file atomically and keeps the same mode.
    atomic_write(str(tmp_path / "_summary.json"), b'{"again": 1}')
    assert stat.S_IMODE((tmp_path / "_summary.json").stat().st_mode) == 0o666 & ~umask


def test_folder_totals_count_every_run_and_the_missing_inputs(tmp_path):
    out = str(tmp_path)
    items = assign_outputs([{"image_id": i, "path": f"/in/{i}"} for i in ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"]])
    write_outputs(_batch(["a.jpg", "b.jpg"], ["ok", "EmptyFile"]), output=out, **WRITE)  # a first run
    write_outputs(_batch(["c.jpg"], ["ok"]), output=out, **WRITE)  # a second one
    (tmp_path / "_errors" / ".tmp-half").write_bytes(b"")  # a killed write's leftover counts for nothing
    both = ("png", "parquet")
    totals = output_totals(scan_output(out, both), items, both)
    assert totals == {
        "inputs": 5,
        "done": 3,
        "missing": 2,
        "ok_rows": 2,
        "error_rows": 1,
        "error_classes": {"EmptyFile": 1},
        "masks": 2,
    }
    os.remove(tmp_path / "c.png")  # a mask deleted after its run: that input is missing again
    totals = output_totals(scan_output(out, both), items, both)
    assert (totals["done"], totals["missing"], totals["masks"], totals["ok_rows"]) == (2, 3, 1, 2)
    assert output_totals(scan_output(out, ("parquet",)), items, ("parquet",))["masks"] is None
    assert output_totals(scan_output(str(tmp_path / "none"), both), items, both)["missing"] == 5


def test_progress_record_counts_rate_and_eta(tmp_path):
    now = [100.0]
    lines: list[str] = []
    url = tmp_path / "_progress.json"
    rep = ProgressReporter(str(url), 10, skipped=4, interval=60, clock=lambda: now[0], echo=lines.append)
    first = rep.publish()
    assert (first["done"], first["total"], first["images_per_second"], first["eta_s"]) == (0, 10, None, None)
    assert lines[-1] == "progress: 0/10 images (0 errors), - images/s, ETA unknown"
    now[0] += 8
    rep.add(np.array(["ok", "OSError", "ok", "ok"], dtype=object))
    rec = rep.publish()
    assert (rec["done"], rec["ok"], rec["errors"], rec["skipped_existing"]) == (4, 3, 1, 4)
    assert (rec["elapsed_s"], rec["images_per_second"], rec["eta_s"]) == (8.0, 0.5, 12.0)
    assert lines[-1] == "progress: 4/10 images (1 errors), 0.50 images/s, ETA 12s"
    assert json.loads(url.read_text()) == rec  # the file holds what the log line says
    now[0] += 12
    rep.add(["ok"] * 6)
    assert (
        ProgressReporter.line(rep.record("finished"))
        == "progress: 10/10 images (1 errors), 0.50 images/s, ETA 0s [finished]"
    )
    assert [format_duration(s) for s in (None, 12.4, 440, 3900)] == ["unknown", "12s", "7m20s", "1h05m"]


def test_progress_is_rewritten_while_running_and_ends_with_the_outcome(tmp_path):
    url = tmp_path / "_progress.json"
    lines: list[str] = []
    seen = threading.Event()

    def echo(line: str) -> None:
        lines.append(line)
        if len(lines) >= 4:
            seen.set()

    with ProgressReporter(str(url), 3, interval=0.05, echo=echo) as rep:
        rep.add(["ok"])
        assert seen.wait(30), lines  # the thread keeps rewriting it while the block runs
        assert json.loads(url.read_text())["state"] == "running"
    assert json.loads(url.read_text())["state"] == "finished" and lines[-1].endswith("[finished]")
    with pytest.raises(RuntimeError), ProgressReporter(str(url), 3, interval=60, echo=lines.append):
        raise RuntimeError("worker died")
    rec = json.loads(url.read_text())
    assert rec["state"] == "failed" and rec["error"] == "RuntimeError: worker died"
    # A progress record that cannot be written is logged; the job goes on.
    (tmp_path / "file").write_bytes(b"")
    with ProgressReporter(str(tmp_path / "file" / "_progress.json"), 1, interval=60, echo=lines.append) as rep:
        rep.add(["ok"])
    assert lines[-1].endswith("[finished]")


@pytest.mark.slow
@pytest.mark.parametrize("mask", UMASKS, ids=UMASK_IDS)
def test_segment_job_under_a_umask_writes_readable_outputs_and_reports_progress(tmp_path, mask):
    """``jobs/segment_dataset.py`` started under the umask (its private Ray's workers inherit it):
    masks, Parquet parts, ``_summary.json`` and ``_progress.json`` get 0666 & ~umask; the driver's
    log shows the progress line the record holds."""
    ckpts = make_checkpoints(tmp_path / "ckpt")
    inp, out = tmp_path / "images", tmp_path / "out"
    write_images(inp, {"one.jpg": (40, 48), "sub/two.png": (36, 40)})
    (inp / "broken.jpg").write_bytes(b"not an image")
    cmd = [
        sys.executable,
        str(REPO / "jobs" / "segment_dataset.py"),
        "--input",
        str(inp),
        "--output",
        str(out),
        "--checkpoint",
        ckpts[0],
        "--ensemble",
        "none",
        "--crf",
        "off",
        "--top-k",
        "1",
        "--micro-batch",
        "2",
        "--progress-interval",
        "0.5",
        "--write-batch-size",
        "1",
    ]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run(cmd, capture_output=True, text=True, umask=mask, env=env, timeout=600, check=False)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    modes = _modes(out)
    assert {"one.png", "sub/two.png", "_summary.json", "_progress.json"} <= set(modes), modes
    assert any(k.startswith("_parquet/") for k in modes) and any(k.startswith("_errors/") for k in modes)
    assert set(modes.values()) == {0o666 & ~mask}, modes
    progress = [line for line in log.splitlines() if line.startswith("progress: ")]
    assert len(progress) >= 2 and progress[0].startswith("progress: 0/3 images"), log[-4000:]
    assert progress[-1].startswith("progress: 3/3 images (1 errors), ") and progress[-1].endswith("[finished]")
    record = json.loads((out / "_progress.json").read_text())
    assert ProgressReporter.line(record) == progress[-1]
    assert "segment_dataset: output complete: 3 of 3 inputs done (1 error rows), 0 missing" in log
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["complete"] and summary["totals"]["masks"] == 2 and summary["last_run"]["written"] == 2


def test_stall_guard_stops_rows_that_stopped_and_spares_rows_that_come():
    from pipeline.stall_guard import Stalled, guarded

    def rows(n: int, then_wait: float, every: float = 0.0):
        for i in range(n):
            time.sleep(every)
            yield i
        time.sleep(then_wait)  # a run waiting for resources: no error, no row

    got = []
    with pytest.raises(Stalled, match="stage X waits for 1 GPU"):
        for row in guarded(rows(3, then_wait=60), 0.3 / 60, lambda: "stage X waits for 1 GPU", poll=0.05):
            got.append(row)
    assert got == [0, 1, 2]  # every row that came was handed over first
    # Rows every 0.05 s for 1 s, then the end: never idle for 0.3 s.
    assert list(guarded(rows(20, then_wait=0, every=0.05), 0.3 / 60, lambda: "never asked", poll=0.05)) == list(
        range(20)
    )

    def failing():
        yield 1
        raise OSError("the run failed")

    with pytest.raises(OSError, match="the run failed"):  # an error of the run reaches the caller as it is
        list(guarded(failing(), 0.3 / 60, lambda: "never asked", poll=0.05))
    assert list(guarded(rows(2, then_wait=0.5), 0, lambda: "never asked")) == [0, 1]  # 0: no limit
