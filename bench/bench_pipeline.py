"""End to end on this machine: the Ray Data pipeline against a plain sequential run, scaling and memory.

    .venv/bin/python bench/bench_pipeline.py [--images 200] [--scaling 100,400] [--cpus 2]

1. Sequential baseline: the same stage code (``pipeline.reference.stage_steps`` and the
   writer) called image by image in this process (torch with its default threads), on
   the first ``--images`` images of the generated 500x375 bucket; per-stage times and
   the bytes each stage hands the next (per image).
2. Per-core stage profile: the same loop with one torch thread on the same images
   (``--profile-images`` to use fewer), i.e. each stage's isolated throughput per core
   (Ray gives each actor one thread).
3. The pipeline (``pipeline.segment.run``, a local Ray with ``--cpus`` CPUs started
   beforehand and warmed up on 4 images) on the same images, once per ``--layouts``
   (fused: one actor per CPU runs every stage of its images, the default without GPUs;
   split: one actor pool per stage, the GPU layout); its masks must equal the
   baseline's. For each run, the CPU time and peak RSS of every Ray process by role.
4. Scaling: the pipeline on the first N and 4N (``--scaling``) images, sampling the
   driver's RSS and the object store's use (Ray's memory summary: plasma MiB in use)
   every 0.5 s; the peaks are reported. ``--scaling-store-mb M`` also runs the N images
   with the job's object-store limit set to M MiB (e.g. 100000: in effect none), to
   show what the default limit costs in throughput and saves in memory.

Models: the committed demo checkpoints (``--checkpoints`` to use others). Prints tables.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import tempfile
import threading
import time

import numpy as np
import torch
from common import ROOT, demo_checkpoints, make_bucket, payload_bytes, print_table
from PIL import Image

from pipeline.ray_session import disable_usage_stats
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


class Poller:
    """Calls ``poll`` every ``period`` seconds in a thread while a ``with`` block runs, and once at its end."""

    def __init__(self, period: float) -> None:
        self.period = period
        self._stop = threading.Event()

    def poll(self) -> None:
        raise NotImplementedError

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            self.poll()

    def __enter__(self):
        self.poll()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.poll()


class Sampler(Poller):
    """Peak driver RSS and peak object-store (plasma) use while a block runs."""

    def __init__(self, period: float = 0.5) -> None:
        import psutil

        super().__init__(period)
        self.proc = psutil.Process()
        self.peak_rss = self.peak_store = 0

    @staticmethod
    def _store_bytes() -> int:
        """Object-store bytes held now on every node, from Ray's Prometheus endpoint (a public interface;
        ``ray_object_store_memory`` in shared memory or its disk fallback, sealed or not). Ray reports the
        metric every ``RAY_metrics_report_interval_ms`` (set to 500 in ``main``)."""
        import urllib.request

        import ray

        total = 0.0
        for node in ray.nodes():
            if not node["Alive"]:
                continue
            url = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
            for line in urllib.request.urlopen(url, timeout=5).read().decode().splitlines():
                if line.startswith("ray_object_store_memory{") and 'Location="MMAP_' in line:
                    total += float(line.rsplit(" ", 1)[1])
        return int(total)

    def poll(self) -> None:
        self.peak_rss = max(self.peak_rss, self.proc.memory_info().rss)
        self.peak_store = max(self.peak_store, self._store_bytes())


ROLES = (  # (substring of a process's command line, role); the first match wins
    ("FusedStage", "fused actors"),
    ("CRFStage", "CRF actors"),
    ("Segmenter", "model actors"),
    ("ProposalStage", "proposal actors"),
    ("ray::", "task workers (read, decode, write)"),
    ("raylet", "raylet + GCS"),
    ("gcs_server", "raylet + GCS"),
    ("ray", "other Ray processes"),
)


LAYOUT_ROLES = {"fused": ("fused actors",), "split": ("proposal actors", "model actors", "CRF actors")}


def cpu_snapshot() -> dict[int, tuple[str, float, int]]:
    """CPU seconds (user + system) so far and RSS bytes of this process and every Ray process, with its role."""
    import psutil

    found = {}
    for proc in psutil.process_iter(["pid", "cmdline", "cpu_times", "memory_info"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        times, mem = proc.info["cpu_times"], proc.info["memory_info"]
        if times is None or mem is None:
            continue
        role = "driver" if proc.info["pid"] == os.getpid() else next((r for k, r in ROLES if k in cmd), None)
        if role:
            found[proc.info["pid"]] = (role, times.user + times.system, mem.rss)
    return found


class CPUMonitor(Poller):
    """CPU seconds and the largest RSS of one process, by process role, while a block runs.

    Polled every second, because the actors of a stage exit as soon as their stage is
    done: a process that exits between two polls loses at most its last second. A
    process's role is the one its command line last showed (a worker becomes an actor).
    """

    def __init__(self, period: float = 1.0) -> None:
        super().__init__(period)
        self.before: dict[int, tuple[str, float, int]] | None = None
        self.last: dict[int, tuple[str, float, int]] = {}
        self.peak_rss: dict[str, int] = {}

    def poll(self) -> None:
        now = cpu_snapshot()
        if self.before is None:
            self.before = now
        self.last.update(now)
        for role, _, rss in now.values():
            self.peak_rss[role] = max(self.peak_rss.get(role, 0), rss)

    def by_role(self) -> dict[str, float]:
        """A process that started during the block counts whole."""
        used: dict[str, float] = {}
        for pid, (role, cpu, _) in self.last.items():
            used[role] = used.get(role, 0.0) + cpu - self.before.get(pid, (role, 0.0, 0))[1]
        return used


def pipeline_run(cfg: SegmentConfig, sample: bool = True) -> tuple[float, Sampler | None, CPUMonitor]:
    """Seconds, memory peaks (when ``sample``) and CPU use by process role of one run."""
    sampler = Sampler() if sample else contextlib.nullcontext()
    with CPUMonitor() as cpu, sampler:
        t = time.perf_counter()
        summary = run(cfg)
        elapsed = time.perf_counter() - t
    last = summary["last_run"]
    assert last["written"] == last["processed"] and last["missing"] == 0, summary
    return elapsed, sampler if sample else None, cpu


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
    ap.add_argument("--profile-images", type=int, default=0,
                    help="images for the one-thread stage profile (default 0: all of --images)")
    ap.add_argument("--cpus", type=int, default=os.cpu_count())
    ap.add_argument("--layouts", default="fused,split", help="pipeline layouts to run on --images, in this order")
    ap.add_argument("--repeats", type=int, default=1, help="runs of each layout (alternating)")
    ap.add_argument("--scaling-store-mb", type=float, default=0,
                    help="also run the first scaling size with this --object-store-mb (0: don't)")
    ap.add_argument("--checkpoints", nargs=2, metavar=("DECONVNET", "FCN"), help="default: the demo checkpoints")
    ap.add_argument("--bucket", default=str(ROOT / "build/bench/bucket"), help="where the generated JPEGs are kept")
    args = ap.parse_args()
    import ray

    ckpts = tuple(args.checkpoints or demo_checkpoints())
    scaling = [int(x) for x in args.scaling.split(",") if x]
    layouts = [x for x in args.layouts.split(",") if x]
    paths = make_bucket(args.bucket, max([args.images, *scaling]))
    work = tempfile.mkdtemp(prefix="bench-pipeline-")
    try:
        threads = torch.get_num_threads()
        seq_cfg = config(manifest(paths, work, args.images), os.path.join(work, "seq"), ckpts)
        per_stage, volume, seq_total = sequential(seq_cfg)
        torch.set_num_threads(1)
        profile_cfg = config(seq_cfg.input, os.path.join(work, "profile"), ckpts)
        one_core, _, _ = sequential(profile_cfg, args.profile_images or None)
        torch.set_num_threads(threads)

        disable_usage_stats()
        os.environ.setdefault("RAY_metrics_report_interval_ms", "500")  # Sampler's store readings (default 10 s)
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        # Warm-up: the first dataset of a Ray session also pays for starting worker processes
        # and importing torch in them; later runs reuse those workers. Every timed run is warm.
        for layout in layouts:
            pipeline_run(config(manifest(paths, work, 4), os.path.join(work, f"warmup-{layout}"), ckpts, layout=layout))
        pipe_runs = []  # (layout, seconds, CPUMonitor, (equal, compared, pixel share))
        for rep in range(args.repeats):
            for layout in layouts:
                pipe_cfg = config(seq_cfg.input, os.path.join(work, f"pipe-{layout}-{rep}"), ckpts, layout=layout)
                total, _, cpu = pipeline_run(pipe_cfg, sample=False)  # no memory sampling: it costs CPU
                pipe_runs.append((layout, total, cpu, same_masks(seq_cfg.output, pipe_cfg.output)))
        scale_rows = []
        runs = [(n, None) for n in scaling]
        if scaling and args.scaling_store_mb:
            runs.insert(1, (scaling[0], args.scaling_store_mb))
        for n, store_mb in runs:
            cfg = config(manifest(paths, work, n), os.path.join(work, f"scale-{n}-{store_mb}"), ckpts,
                         object_store_mb=store_mb)
            seconds, mem, _ = pipeline_run(cfg)
            limit = "default" if store_mb is None else f"{store_mb:g}"
            scale_rows.append([n, limit, seconds, n / seconds, mem.peak_rss / 2**20, mem.peak_store / 2**20])
        ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(args, threads, ckpts, per_stage, one_core, volume, seq_total, pipe_runs, scale_rows)


def report(args, threads, ckpts, per_stage, one_core, volume, seq_total, pipe_runs, scale_rows) -> None:
    n = args.images
    slowest = max(("proposals", "model", "crf"), key=lambda k: one_core[k])
    bound_slowest = args.cpus / one_core[slowest]
    bound_work = args.cpus / sum(one_core.values())
    seq_rate = n / seq_total
    profiled = args.profile_images or n
    print(f"\n{n} images 500x375, {args.cpus} CPUs, torch threads {threads} (sequential); one-thread profile on "
          f"{profiled} of them; checkpoints {ckpts}")
    print_table(
        ["stage", "sequential s/image", "one-thread s/image", "one-thread images/s per core", "bytes/image out"],
        [[k, per_stage[k], one_core[k], 1 / one_core[k], f"{volume[k]:,.0f}"] for k in STAGES],
    )
    print()
    best = max(n / total for _, total, _, _ in pipe_runs)
    print_table(
        ["run", "seconds", "images/s", "ratio"],
        [
            ["sequential, one process", seq_total, seq_rate, "1.00x"],
            *[
                [
                    f"pipeline, {layout} layout, Ray Data on {args.cpus} CPUs",
                    total,
                    n / total,
                    f"{n / total / seq_rate:.2f}x",
                ]
                for layout, total, _, _ in pipe_runs
            ],
            [
                f"bound: slowest stage ({slowest}) per core x {args.cpus}",
                "-",
                bound_slowest,
                f"best pipeline at {100 * best / bound_slowest:.0f}%",
            ],
            [
                f"bound: all work / {args.cpus} cores",
                "-",
                bound_work,
                f"best pipeline at {100 * best / bound_work:.0f}%",
            ],
        ],
    )
    alone = {
        "proposal actors": one_core["proposals"],
        "model actors": one_core["model"],
        "CRF actors": one_core["crf"],
        "fused actors": sum(one_core[k] for k in ("decode", "proposals", "model", "crf")),
    }
    for layout, total, cpu, (equal, compared, pixel_share) in pipe_runs:
        used = cpu.by_role()
        print(
            f"\n{layout} layout: masks identical to the sequential run: {equal}/{compared} images, "
            f"{100 * pixel_share:.4f}% of pixels. CPU used ({total:.0f} s x {args.cpus} CPUs = "
            f"{total * args.cpus:.0f} CPU-s available):"
        )
        # The other layout's actors of the run before may still be exiting: their rows say so.
        in_use = sum(alone[r] for r in LAYOUT_ROLES[layout])
        print_table(
            [
                "process",
                "CPU s",
                "CPU s/image",
                "one-thread s/image alone",
                "share of available",
                "largest RSS of one process MiB",
            ],
            [
                [
                    role,
                    sec,
                    sec / n,
                    alone[role] if role in LAYOUT_ROLES[layout] else "-",
                    f"{100 * sec / (total * args.cpus):.0f}%",
                    cpu.peak_rss.get(role, 0) / 2**20,
                ]
                for role, sec in sorted(used.items(), key=lambda kv: -kv[1])
                if sec >= 0.01
            ]
            + [
                [
                    "all",
                    sum(used.values()),
                    sum(used.values()) / n,
                    in_use,
                    f"{100 * sum(used.values()) / (total * args.cpus):.0f}%",
                    "-",
                ]
            ],
        )
    if scale_rows:
        print()
        print_table(
            ["images", "--object-store-mb", "seconds", "images/s", "peak driver RSS MiB", "peak object store MiB"],
            scale_rows,
        )
        same = [r for r in scale_rows if r[1] == "default"]
        if len(same) >= 2:
            a, b = same[0], same[-1]
            store = f"x{b[5] / a[5]:.2f}" if a[5] >= 1 else f"{a[5]:.1f} -> {b[5]:.1f} MiB"
            print(
                f"\n{b[0]}/{a[0]} images: time x{b[2] / a[2]:.2f}, driver RSS x{b[4] / a[4]:.2f}, object store {store}"
            )


if __name__ == "__main__":
    main()
