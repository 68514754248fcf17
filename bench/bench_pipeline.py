"""End to end on this machine: the Ray Data pipeline against a plain sequential run, scaling and memory.

    .venv/bin/python bench/bench_pipeline.py [--images 200] [--scaling 100,400] [--cpus 2]

1. Sequential baseline: the same stage code (``pipeline.reference.stage_steps`` and the
   writer) called image by image in this process (torch with its default threads), on
   the first ``--images`` images of the generated 500x375 bucket; per-stage times and
   the bytes each stage hands the next (per image).
2. Per-core stage profile: the same loop on a few images with one torch thread, i.e.
   each stage's isolated throughput per core (Ray gives each actor one thread).
3. The pipeline (``pipeline.segment.run``, a local Ray with ``--cpus`` CPUs started
   beforehand and warmed up on 4 images) on the same images; its masks must equal the
   baseline's.
4. Scaling: the pipeline on the first N and 4N (``--scaling``) images, sampling the
   driver's RSS and the object store's use (Ray's memory summary: plasma MiB in use)
   every 0.5 s; the peaks are reported.

Models: the committed demo checkpoints (``--checkpoints`` to use others). Prints tables.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import tempfile
import threading
import time

from common import ROOT, demo_checkpoints, make_bucket, payload_bytes, print_table

import numpy as np
import torch
from PIL import Image

from pipeline.reference import stage_steps
from pipeline.segment import prepare, run
from pipeline.segment_config import SegmentConfig
from pipeline.writers import write_outputs

STAGES = ("read", "decode", "proposals", "model", "crf", "write")


def manifest(paths: list[str], folder: str, n: int) -> str:
    path = os.path.join(folder, f"manifest-{n}.txt")
    with open(path, "w") as f:
        f.write("\n".join(paths[:n]) + "\n")
    return path


def config(input_manifest: str, output: str, ckpts: tuple[str, str], **kw) -> SegmentConfig:
    return SegmentConfig(input=input_manifest, output=output, checkpoint=ckpts[0], fcn_checkpoint=ckpts[1],
                         format="png", **kw)


def sequential(cfg: SegmentConfig, limit: int | None = None) -> tuple[dict[str, float], dict[str, float], float]:
    """Seconds per image per stage, bytes per image after each stage, total seconds."""
    plan = prepare(cfg)
    write_kw = dict(output=cfg.output, formats=cfg.formats, class_names=plan.class_names, palette=plan.palette,
                    checkpoint_id=plan.checkpoint_id, fcn_checkpoint_id=plan.fcn_checkpoint_id,
                    config_hash=cfg.config_hash())
    steps = [*stage_steps(cfg), ("write", lambda b: write_outputs(b, **write_kw))]
    items = plan.todo[:limit] if limit else plan.todo
    seconds = dict.fromkeys(STAGES, 0.0)
    volume = dict.fromkeys(STAGES, 0.0)
    start = time.perf_counter()
    for item in items:
        batch = {k: np.array([item[k]], dtype=object) for k in ("path", "image_id", "mask_key", "status", "error")}
        batch["needs_row"] = np.array([True])
        for name, fn in steps:
            t = time.perf_counter()
            batch = fn(batch)
            seconds[name] += time.perf_counter() - t
            volume[name] += payload_bytes(batch)
        assert str(batch["status"][0]) == "ok", batch["error"][0]
    total = time.perf_counter() - start
    n = len(items)
    return {k: v / n for k, v in seconds.items()}, {k: v / n for k, v in volume.items()}, total


class Sampler:
    """Peak driver RSS and peak object-store (plasma) use while a block runs."""

    def __init__(self, period: float = 0.5) -> None:
        import psutil

        self.proc, self.period = psutil.Process(), period
        self.peak_rss = self.peak_store = 0
        self._stop = threading.Event()

    @staticmethod
    def _store_bytes() -> int:
        from ray._private.internal_api import memory_summary

        found = re.search(r"Plasma memory usage (\d+) MiB", memory_summary(stats_only=True))
        return int(found.group(1)) * 2**20 if found else 0

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak_rss = max(self.peak_rss, self.proc.memory_info().rss)
            self.peak_store = max(self.peak_store, self._store_bytes())
            self._stop.wait(self.period)

    def __enter__(self) -> Sampler:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def pipeline_run(cfg: SegmentConfig) -> tuple[float, Sampler]:
    with Sampler() as s:
        t = time.perf_counter()
        summary = run(cfg)
        elapsed = time.perf_counter() - t
    assert summary["written"] == summary["processed"] and summary["missing"] == 0, summary
    return elapsed, s


def same_masks(a: str, b: str) -> tuple[int, int, float]:
    """Images whose PNG masks are equal, images compared, share of equal pixels."""
    names = sorted(n for n in os.listdir(a) if n.endswith(".png"))
    equal, pixels_equal, pixels = 0, 0, 0
    for n in names:
        x, y = np.asarray(Image.open(os.path.join(a, n))), np.asarray(Image.open(os.path.join(b, n)))
        equal += bool(np.array_equal(x, y))
        pixels_equal += int((x == y).sum())
        pixels += x.size
    return equal, len(names), pixels_equal / max(pixels, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=200, help="images for the pipeline-vs-sequential comparison")
    ap.add_argument("--scaling", default="100,400", help="N,4N images for the scaling runs ('' to skip)")
    ap.add_argument("--profile-images", type=int, default=8, help="images for the one-thread stage profile")
    ap.add_argument("--cpus", type=int, default=os.cpu_count())
    ap.add_argument("--alt-model-actors", type=int, default=0,
                    help="also run the pipeline with this many CPU model actors (0: don't)")
    ap.add_argument("--checkpoints", nargs=2, metavar=("DECONVNET", "FCN"), help="default: the demo checkpoints")
    ap.add_argument("--bucket", default=str(ROOT / "build/bench/bucket"), help="where the generated JPEGs are kept")
    args = ap.parse_args()
    import ray

    ckpts = tuple(args.checkpoints or demo_checkpoints())
    scaling = [int(x) for x in args.scaling.split(",") if x]
    paths = make_bucket(args.bucket, max([args.images, *scaling]))
    work = tempfile.mkdtemp(prefix="bench-pipeline-")
    try:
        threads = torch.get_num_threads()
        seq_cfg = config(manifest(paths, work, args.images), os.path.join(work, "seq"), ckpts)
        per_stage, volume, seq_total = sequential(seq_cfg)
        torch.set_num_threads(1)
        one_core, _, _ = sequential(config(seq_cfg.input, os.path.join(work, "profile"), ckpts), args.profile_images)
        torch.set_num_threads(threads)

        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        # Warm-up: the first dataset of a Ray session also pays for starting worker processes
        # and importing torch in them; later runs reuse those workers. Every timed run is warm.
        pipeline_run(config(manifest(paths, work, 4), os.path.join(work, "warmup"), ckpts))
        pipe_cfg = config(seq_cfg.input, os.path.join(work, "pipe"), ckpts)
        pipe_total, _ = pipeline_run(pipe_cfg)
        equal, compared, pixel_share = same_masks(seq_cfg.output, pipe_cfg.output)
        alt_total = None
        if args.alt_model_actors:
            alt_cfg = config(seq_cfg.input, os.path.join(work, "pipe-alt"), ckpts, model_actors=args.alt_model_actors)
            alt_total, _ = pipeline_run(alt_cfg)
        scale_rows = []
        for n in scaling:
            cfg = config(manifest(paths, work, n), os.path.join(work, f"scale-{n}"), ckpts)
            seconds, mem = pipeline_run(cfg)
            scale_rows.append([n, seconds, n / seconds, mem.peak_rss / 2**20, mem.peak_store / 2**20])
        ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    n = args.images
    slowest = max(("proposals", "model", "crf"), key=lambda k: one_core[k])
    bound_slowest = args.cpus / one_core[slowest]
    bound_work = args.cpus / sum(one_core.values())
    pipe_rate, seq_rate = n / pipe_total, n / seq_total
    print(f"\n{n} images 500x375, {args.cpus} CPUs, torch threads {threads} (sequential); checkpoints {ckpts}")
    print_table(
        ["stage", "sequential s/image", "one-thread s/image", "one-thread images/s per core", "bytes/image out"],
        [[k, per_stage[k], one_core[k], 1 / one_core[k], f"{volume[k]:,.0f}"] for k in STAGES],
    )
    print()
    print_table(
        ["run", "seconds", "images/s", "ratio"],
        [
            ["sequential, one process", seq_total, seq_rate, "1.00x"],
            [f"pipeline, Ray Data on {args.cpus} CPUs", pipe_total, pipe_rate, f"{pipe_rate / seq_rate:.2f}x"],
            *([[f"pipeline, {args.alt_model_actors} CPU model actors", alt_total, n / alt_total,
                 f"{n / alt_total / seq_rate:.2f}x"]] if alt_total else []),
            [f"bound: slowest stage ({slowest}) per core x {args.cpus}", "-", bound_slowest,
             f"pipeline at {100 * pipe_rate / bound_slowest:.0f}%"],
            [f"bound: all work / {args.cpus} cores", "-", bound_work, f"pipeline at {100 * pipe_rate / bound_work:.0f}%"],
        ],
    )
    print(f"\nmasks identical to the sequential run: {equal}/{compared} images, {100 * pixel_share:.4f}% of pixels")
    if scale_rows:
        print()
        print_table(["images", "seconds", "images/s", "peak driver RSS MiB", "peak object store MiB"],
                    scale_rows)
        if len(scale_rows) >= 2:
            a, b = scale_rows[0], scale_rows[-1]
            store = f"x{b[4] / a[4]:.2f}" if a[4] >= 1 else f"{a[4]:.1f} -> {b[4]:.1f} MiB"
            print(f"\n{b[0]}/{a[0]} images: time x{b[1] / a[1]:.2f}, driver RSS x{b[3] / a[3]:.2f}, object store {store}")


if __name__ == "__main__":
    main()
