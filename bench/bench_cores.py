"""How much two processes at once get done on this machine, against one: the real parallel bound.

    .venv/bin/python bench/bench_cores.py [--seconds 10]

``bench_pipeline.py``'s "all work / N cores" bound assumes that N processes each run as
fast as one alone. On a shared VM that need not hold (vCPUs that are hyperthreads of
one physical core, memory bandwidth, neighbours). This runs the same work in 1 and
then 2 and 4 processes at once (4: twice as many busy processes as cores, as in the
pipeline on 2 CPUs) and reports, per workload, how long one unit takes in each case
and the capacity ``k x t(alone) / t(k at once)`` (units done per unit time, against
one process alone; 2.0 = two full cores):

- a pure-Python integer loop (no memory traffic: only the cores themselves);
- the class-pruned dense CRF on a generated 500x375 image with 6-class probabilities
  (the pipeline's slowest stage, memory-heavy);
- the model stage (``Segmenter``, one torch thread) on the same image, demo checkpoints.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time

import numpy as np
from common import demo_checkpoints, print_table, sample


def spin(units: int) -> None:
    for _ in range(units):
        x = 0
        for i in range(200_000):
            x += i * i


def _crf_work():
    from pipeline.crf import dense_crf
    from pipeline.stage_config import CRFConfig

    image, labels = sample(0)
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 1, (6, *labels.shape)).astype(np.float32)
    logits[labels.clip(0, 5), *np.indices(labels.shape)] += 3.0
    probs = np.exp(logits) / np.exp(logits).sum(axis=0, keepdims=True)
    cfg = CRFConfig()
    return lambda: dense_crf(image, probs, cfg)


def _model_work():
    import torch

    from pipeline.segmenter import Segmenter

    torch.set_num_threads(1)
    image, _ = sample(0)
    deconvnet, fcn = demo_checkpoints()
    segmenter = Segmenter(deconvnet, fcn)
    h, w = image.shape[:2]
    rng = np.random.default_rng(0)
    x0, y0 = rng.uniform(0, w / 2, 50), rng.uniform(0, h / 2, 50)
    boxes = np.stack([x0, y0, x0 + rng.uniform(112, w / 2, 50), y0 + rng.uniform(112, h / 2, 50)], 1)
    return lambda: segmenter.predict([image], [boxes.astype(np.float32)])


WORKLOADS = {
    "pure-Python loop": None,
    "dense CRF (pruned, 6 classes)": _crf_work,
    "model stage (1 thread)": _model_work,
}


def worker(name: str, repeat: int, ready, out) -> None:
    fn = (lambda: spin(1)) if WORKLOADS[name] is None else WORKLOADS[name]()
    fn()  # warm-up, outside the timed part
    ready.wait()  # every process starts timing together, once all have loaded and warmed up
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    out.put((time.perf_counter() - t) / repeat)


def per_unit(name: str, processes: int, repeat: int) -> float:
    """Mean seconds per unit of work when ``processes`` run it at the same time."""
    ctx = mp.get_context("spawn")
    ready, out = ctx.Barrier(processes), ctx.Queue()
    procs = [ctx.Process(target=worker, args=(name, repeat, ready, out)) for _ in range(processes)]
    for p in procs:
        p.start()
    times = [out.get() for _ in procs]
    for p in procs:
        p.join()
    return float(np.mean(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=6, help="units of work per process (CRF and model)")
    args = ap.parse_args()
    rows = []
    for name in WORKLOADS:
        repeat = args.repeat * (10 if WORKLOADS[name] is None else 1)
        alone, two, four = (per_unit(name, k, repeat) for k in (1, 2, 4))
        rows.append([name, alone, two, 2 * alone / two, four, 4 * alone / four])
    print_table(
        [
            "work",
            "s/unit alone",
            "s/unit, 2 at once",
            "capacity, 2 at once",
            "s/unit, 4 at once",
            "capacity, 4 at once",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
