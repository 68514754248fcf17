"""The benchmark scripts still run (smoke sizes; their figures live in BENCHMARKS.md, not here)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> str:
    done = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, check=False, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_bench_gpu_smoke_runs_without_ray_cv2_or_crf():
    out = _run("bench/bench_gpu.py", "--smoke")
    for variant in ("bf16 + channels_last", "bf16 + channels_last + BN folded"):
        assert re.search(rf"\| {re.escape(variant)} +\| 4 +\| [0-9.]+ ", out), variant
    assert "50 proposals + FCN-8s, 500x375" in out
    assert "modules imported from ray/cv2/pydensecrf: none" in out


@pytest.mark.slow
def test_bench_stages_smoke_with_the_demo_checkpoints():
    out = _run("bench/bench_stages.py", "--images", "2", "--crf-images", "1")
    stages = ("EdgeBoxes proposals", "model stage, NCHW", "model stage, BatchNorm not folded",
              "dense CRF (class-pruned", "write palette PNG")
    for stage in stages:
        assert stage in out, stage
    assert "| VOC-like 21 classes, EDeconvNet-shaped | 21 " in out


def test_bench_train_smoke_compares_both_memory_formats():
    out = _run("bench/bench_train.py", "--widths", "0.0625", "--steps", "1")
    for network in ("DeconvNet 1/16", "FCN-8s 1/16"):
        assert re.search(rf"\| {re.escape(network)} +\| [^|]+\| 2 +\| [0-9.]+ +\| [0-9.]+ +\| [0-9.]+ +\|", out), (
            network
        )
