"""Training speed on this machine's CPU: NCHW against NHWC (channels_last), in one run.

    .venv/bin/python bench/bench_train.py [--widths 0.0625,0.125] [--steps 6] [--ray-iterations 0]

Table 1, one process, no Ray: SGD steps (forward, cross-entropy ignoring 255,
backward, momentum update) per second of DeconvNet on batches of 224x224 crops and of
FCN-8s on batches of 256x256 images, as ``jobs/train.py`` runs them, with 1 and 2 torch
threads, in both memory formats; the last column is the NHWC speed-up measured in the
same run.

Table 2 (``--ray-iterations N``, N > 0): ``jobs/train.py``'s own path (Ray Data example
construction, Ray Train, 2 CPU workers with gloo, as ``make demo-models`` runs it) for
N iterations of DeconvNet stage 1 at each width, with ``--no-channels-last`` and
without; examples/s as the stage reports them.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch
import torch.nn.functional as F
from common import print_table

from models import FCN, DeconvNet
from pipeline.ray_session import disable_usage_stats

FORMATS = {"NCHW": torch.contiguous_format, "NHWC": torch.channels_last}


def steps_per_s(model: torch.nn.Module, size: int, batch: int, steps: int, memory_format) -> float:
    torch.manual_seed(0)
    model = model.to(memory_format=memory_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=memory_format)
    y = torch.randint(0, model.num_classes, (batch, size, size))
    y[:, :4] = 255
    times = []
    for i in range(steps + 1):
        t = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y, ignore_index=255).backward()
        optimizer.step()
        if i:  # the first step allocates and picks kernels
            times.append(time.perf_counter() - t)
    return len(times) / sum(times)


def in_process(widths: list[float], steps: int) -> None:
    rows = []
    for width in widths:
        nets = (
            ("DeconvNet", lambda w=width: DeconvNet(num_classes=6, width=w), 224, 8),
            ("FCN-8s", lambda w=width: FCN(num_classes=6, stride=8, width=w), 256, 4),
        )
        for name, build, size, batch in nets:
            for threads in (1, 2):
                torch.set_num_threads(threads)
                speed = {f: steps_per_s(build(), size, batch, steps, fmt) for f, fmt in FORMATS.items()}
                rows.append([f"{name} 1/{round(1 / width)}", f"{batch} x {size}x{size}", threads,
                             speed["NCHW"] * batch, speed["NHWC"] * batch, speed["NHWC"] / speed["NCHW"]])
    print_table(["network", "batch", "threads", "NCHW examples/s", "NHWC examples/s", "NHWC / NCHW"], rows)


def with_ray(widths: list[float], iterations: int) -> None:
    import ray

    from pipeline.demo.synthvoc import generate_voc
    from pipeline.train.config import TrainConfig
    from pipeline.train.run import run_training, stage_metrics

    disable_usage_stats()
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        generate_voc(f"{tmp}/voc", n_train=40, n_val=4, size=(240, 320), seed=1)
        for width in widths:
            speeds = {}
            for fmt in FORMATS:
                cfg = TrainConfig(
                    data=f"{tmp}/voc", output=f"{tmp}/run-{width}-{fmt}", model="deconvnet", stages=("1",),
                    iterations=(iterations,), width=width, batch_size=8, global_batch=16, lr=0.05,
                    num_workers=2, cpus_per_worker=0.5, data_cpus=0.5, bn_batches=2, val_split=None,
                    checkpoint_every=iterations, log_every=iterations, channels_last=fmt == "NHWC",
                )
                run_training(cfg)
                speeds[fmt] = stage_metrics(cfg, "deconvnet-stage1")["examples_per_s"]
            rows.append([f"DeconvNet 1/{round(1 / width)}", iterations, speeds["NCHW"], speeds["NHWC"],
                         speeds["NHWC"] / speeds["NCHW"]])
    ray.shutdown()
    print()
    print_table(["jobs/train.py, 2 workers", "iterations", "NCHW examples/s", "NHWC examples/s", "NHWC / NCHW"], rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--widths", default="0.0625,0.125", help="channel multipliers")
    p.add_argument("--steps", type=int, default=6, help="timed SGD steps per cell")
    p.add_argument("--ray-iterations", type=int, default=0, help="also time jobs/train.py for N iterations")
    args = p.parse_args()
    widths = [float(w) for w in args.widths.split(",")]
    print(json.dumps({"torch": torch.__version__, "cpus": torch.get_num_threads()}))
    in_process(widths, args.steps)
    if args.ray_iterations:
        with_ray(widths, args.ray_iterations)


if __name__ == "__main__":
    main()
