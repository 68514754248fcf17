"""Outputs as users meet them: file modes under a umask.

The tests call the real writers (masks, Parquet parts, reports, checkpoints, the summary)
under umask 022 and 077.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from models import DeconvNet, save_checkpoint
from models.storage import atomic_write
from pipeline.report import write_report
from pipeline.writers import write_outputs

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
    """Masks, Parquet parts, the summary, reports and checkpoints: 0666 & ~umask."""
    write_outputs(_batch(["a.jpg", "sub/b.jpg", "c.jpg"], ["ok", "ok", "EmptyFile"]), output=str(tmp_path), **WRITE)
    atomic_write(str(tmp_path / "_summary.json"), b"{}")
    report = {
        "created": "now", "dataset": {"data": "d", "split": "val", "fingerprint": "f", "images": 1},
        "class_names": ["bg"], "variants": {"v": {"iou": {"bg": 0.5}, "mean_iou": 0.5, "pixel_accuracy": 1.0,
                                                  "mean_accuracy": 1.0, "fw_iou": 0.5}},
    }
    write_report(report, str(tmp_path / "report"))
    save_checkpoint(DeconvNet(num_classes=2, width=1 / 32), str(tmp_path / "ckpt" / "model.safetensors"))
    modes = _modes(tmp_path)
    kinds = {"a.png", "sub/b.png", "_summary.json", "report/report.json", "report/report.md",
             "report/per_class_iou.png", "ckpt/model.safetensors"}
    assert kinds <= set(modes) and any(k.startswith("_parquet/") for k in modes) and any(k.startswith("_errors/") for k in modes)
    assert not [k for k in modes if os.path.basename(k).startswith(".")]  # no temporary file left
    assert set(modes.values()) == {0o666 & ~umask}, modes
    # Folders are made as os.makedirs makes them.
    assert stat.S_IMODE((tmp_path / "sub").stat().st_mode) == 0o777 & ~umask
    # A rewrite replaces the file atomically and keeps the same mode.
    atomic_write(str(tmp_path / "_summary.json"), b'{"again": 1}')
    assert stat.S_IMODE((tmp_path / "_summary.json").stat().st_mode) == 0o666 & ~umask
