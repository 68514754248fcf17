"""The built-in demo: committed checkpoints, and ``make demo`` end to end (as a new user runs it)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from models import load_checkpoint, read_checkpoint_meta
from pipeline.demo.synthvoc import DEMO_DATASET, SYNTH_CLASSES

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "models" / "demo"
VARIANTS = ("deconvnet", "deconvnet+crf", "edeconvnet", "edeconvnet+crf", "fcn")


def model_card_miou() -> dict[str, float]:
    """Mean IoU per variant from the table in models/MODEL_CARD.md (last column, bold)."""
    rows = {}
    for line in (REPO / "models" / "MODEL_CARD.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] in VARIANTS and cells[-1].startswith("**"):
            rows[cells[0]] = float(cells[-1].strip("*"))
    return rows


def test_committed_checkpoints_load_and_fit_in_10_mb():
    paths = [DEMO / "deconvnet.safetensors", DEMO / "fcn8s.safetensors"]
    assert sum(p.stat().st_size for p in paths) <= 10 * 2**20
    for path, arch in zip(paths, ("deconvnet", "fcn8s")):
        meta = read_checkpoint_meta(str(path))
        assert meta.architecture == arch and meta.class_names == SYNTH_CLASSES
        model, _ = load_checkpoint(str(path))
        with torch.no_grad():
            out = model.eval()(torch.zeros(2, 3, 224, 224))
        assert out.shape == (2, len(SYNTH_CLASSES), 224, 224) and torch.isfinite(out).all()
    card = model_card_miou()
    assert set(card) == set(VARIANTS), card


MAKE_VARS = {"MAKELEVEL", "MAKEFLAGS", "MFLAGS", "MAKEOVERRIDES", "MAKE_TERMOUT", "MAKE_TERMERR"}


@pytest.mark.slow
def test_make_demo_labels_the_sample_bucket_and_matches_the_model_card(tmp_path):
    out = tmp_path / "demo"
    # The Makefile's own recipe, hermetic: this test's interpreter (PY=...), never an install (-o: the
    # venv's stamp counts as up to date), and a private Ray head even if the caller has a cluster.
    # Nor the settings of a make that runs this test (`make test`: MAKELEVEL makes the inner make print
    # "Entering directory" lines).
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") and k not in MAKE_VARS}
    make = ["make", "-o", ".venv/.installed-stamp", "demo", f"PY={sys.executable}", f"DEMO_OUT={out}"]
    dry = subprocess.run([*make, "--dry-run"], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    assert "pip install" not in dry.stdout and dry.stdout.startswith(sys.executable), dry.stdout
    done = subprocess.run(make, cwd=REPO, env=env, capture_output=True, text=True, check=False, timeout=1200)
    text = done.stdout + done.stderr
    assert done.returncode == 0, text[-5000:]
    n = DEMO_DATASET["n_val"]
    assert f"segment_dataset: {n} images processed ({n} written, 0 errors" in text, text[-3000:]
    assert "demo: Ray head stopped" in text
    ids = (out / "data" / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    assert len(ids) == n
    for image_id in ids:  # a palette mask of each image's size
        mask = Image.open(out / "masks" / f"{image_id}.png")
        assert mask.mode == "P"
        assert mask.size == Image.open(out / "data" / "JPEGImages" / f"{image_id}.jpg").size
        assert np.asarray(mask).max() < len(SYNTH_CLASSES)
    rows = pq.read_table(out / "masks" / "_parquet").to_pylist()
    assert sorted(r["image_id"] for r in rows) == sorted(f"{i}.jpg" for i in ids)
    assert Image.open(out / "overlay.png").width == 3 * 256
    for name in ("report.md", "report.json", "per_class_iou.png"):
        assert (out / "report" / name).is_file()
    report = json.loads((out / "report" / "report.json").read_text())
    measured = {v: 100 * report["variants"][v]["mean_iou"] for v in VARIANTS}
    card = model_card_miou()
    for variant in VARIANTS:  # the card's numbers are reproduced on the same generated val split
        assert measured[variant] == pytest.approx(card[variant], abs=0.5), (variant, measured, card)
    assert re.search(r"overlay picture\s+\S+overlay\.png", text)
