"""Helpers shared by the benchmark scripts: the generated bucket, timing, payload sizes, tables.

Imports only numpy, PIL and the project's ``models`` / ``pipeline.demo.synthvoc`` (no ray,
cv2 or pydensecrf), so ``bench_gpu.py`` can use it on a machine without them.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

VOC_SIZE = (375, 500)  # (H, W) of a typical PASCAL VOC image
DEMO_CHECKPOINTS = (ROOT / "models/demo/deconvnet.safetensors", ROOT / "models/demo/fcn8s.safetensors")


def sample(i: int, size: tuple[int, int] = VOC_SIZE, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Generated image ``i`` of the benchmark bucket and its class labels (deterministic)."""
    from pipeline.demo.synthvoc import render_sample

    image, labels, _ = render_sample(np.random.default_rng([seed, i]), size, 5, 1)
    return image, labels


def make_bucket(folder: str | os.PathLike, n: int, size: tuple[int, int] = VOC_SIZE) -> list[str]:
    """``n`` generated JPEGs (quality 90) in ``folder``, reused when already there; returns their paths."""
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"img_{i:04d}.jpg"
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            Image.fromarray(sample(i, size)[0]).save(tmp, format="JPEG", quality=90)
            os.replace(tmp, path)
        paths.append(str(path))
    return paths


def demo_checkpoints() -> tuple[str, str]:
    """The committed demo DeconvNet and FCN-8s (trained, so their probabilities look like real ones)."""
    missing = [str(p) for p in DEMO_CHECKPOINTS if not p.exists()]
    if missing:
        raise FileNotFoundError(
            f"demo checkpoints not found: {missing} (they are committed; `make demo-models` rebuilds them)"
        )
    return str(DEMO_CHECKPOINTS[0]), str(DEMO_CHECKPOINTS[1])


def timed(fn, items: list, repeat: int = 1, warmup: bool = True) -> tuple[float, list]:
    """Median seconds per item over ``repeat`` passes (after one warm-up call) and the last pass's results."""
    if warmup:
        fn(items[0])
    runs, results = [], []
    for _ in range(repeat):
        t = time.perf_counter()
        results = [fn(x) for x in items]
        runs.append((time.perf_counter() - t) / len(items))
    return statistics.median(runs), results


def payload_bytes(value) -> int:
    """Bytes of the arrays a batch (dict of columns) carries: what one stage hands the next."""
    if isinstance(value, dict):
        return sum(payload_bytes(v) for v in value.values())
    if isinstance(value, np.ndarray) and value.dtype == object:
        return sum(payload_bytes(v) for v in value.ravel())
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, (str, bytes)):
        return len(value)
    return 8


def print_table(headers: list[str], rows: list[list]) -> None:
    """A Markdown table (floats with 3 significant digits), ready to paste into BENCHMARKS.md."""

    def cell(v) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    table = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in table)) for i, h in enumerate(headers)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in table:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
