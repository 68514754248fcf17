"""The GPU stage in-process (no ray, cv2 or pydensecrf): DeconvNet crops/s against the device's peak,
and the model actor's whole job per image.

    python bench/bench_gpu.py                      # on a GPU machine: paper width, batches 16..256
    python bench/bench_gpu.py --smoke              # anywhere: tiny width, small batches, CPU if no GPU

1. Matrix-multiply peak of the device, measured (fp32 and bf16 ``torch.mm``).
2. DeconvNet (``--width``, paper = 1.0) on 224x224 crops: crops/s for fp32, bf16 autocast,
   bf16 + channels_last, then with BatchNorm folded into the convolutions (what the model
   actor runs), and that + ``torch.compile``, per batch size; achieved FLOP/s (FLOPs per
   crop from ``models.summary``, the unfolded network's) as a share of the bf16 peak.
3. The model actor's job per image (``pipeline.segmenter.Segmenter``, random weights of
   the same width, 21 classes): 50 proposals + FCN-8s on a 500x375 image + aggregation +
   ensemble; images/s and the share of time spent outside the two networks' forward passes.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch
from common import print_table

from models import FCN, DeconvNet, fold_batchnorm, save_checkpoint
from models.summary import forward_flops
from pipeline.segmenter import InferenceConfig, Segmenter


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def rate(fn, device: torch.device, min_seconds: float, warmup: int = 3) -> float:
    """Calls per second of ``fn`` (after ``warmup`` calls), run for at least ``min_seconds``."""
    for _ in range(warmup):
        fn()
    sync(device)
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        sync(device)
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds and calls >= 3:
            return calls / elapsed


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, min_seconds: float) -> float:
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    return rate(lambda: torch.mm(a, b), device, min_seconds) * 2 * n**3


def deconvnet_rows(args, device: torch.device, bf16_peak: float) -> list[list]:
    flops = forward_flops(DeconvNet(num_classes=21, width=args.width), (1, 3, 224, 224))
    # (name, autocast dtype, channels_last, BN folded as the model actor does (models.fold), torch.compile)
    variants = [("fp32", None, False, False, False), ("bf16 autocast", torch.bfloat16, False, False, False),
                ("bf16 + channels_last", torch.bfloat16, True, False, False),
                ("bf16 + channels_last + BN folded", torch.bfloat16, True, True, False)]
    if not args.no_compile:
        variants.append(("bf16 + channels_last + BN folded + compile", torch.bfloat16, True, True, True))
    rows = []
    for name, dtype, channels_last, folded, compiled in variants:
        model = DeconvNet(num_classes=21, width=args.width).to(device).eval()
        if folded:
            fold_batchnorm(model)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        model = model.to(memory_format=fmt)
        run_model = torch.compile(model) if compiled else model
        for batch in args.batches:
            x = torch.randn(batch, 3, 224, 224, device=device).to(memory_format=fmt)

            def step(model=run_model, x=x, dtype=dtype):
                with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                    model(x)

            try:
                crops = rate(step, device, args.seconds) * batch
            except torch.OutOfMemoryError:
                rows.append([name, batch, "out of memory", "", ""])
                continue
            achieved = crops * flops
            rows.append([name, batch, crops, achieved / 1e12, f"{100 * achieved / bf16_peak:.1f}%"])
    return rows


def actor_row(args, device: torch.device, tmp: str) -> list:
    torch.manual_seed(0)
    paths = os.path.join(tmp, "d.safetensors"), os.path.join(tmp, "f.safetensors")
    save_checkpoint(DeconvNet(num_classes=21, width=args.width), paths[0])
    save_checkpoint(FCN(num_classes=21, stride=8, width=args.width), paths[1])
    precision = "bf16" if device.type == "cuda" else "fp32"
    seg = Segmenter(paths[0], paths[1], InferenceConfig(device=str(device), precision=precision,
                                                        micro_batch=args.micro_batch))
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)
    sides = rng.uniform(112, 375, (50, 2))
    x1, y1 = rng.uniform(-20, 500 - sides[:, 0]), rng.uniform(-20, 375 - sides[:, 1])
    boxes = np.stack([x1, y1, x1 + sides[:, 0], y1 + sides[:, 1]], 1).astype(np.float32)
    net_seconds = [0.0]
    timed_calls = {"on": False}

    def timed_forward(module):
        inner = module.forward

        def forward(*a, **k):
            if not timed_calls["on"]:
                return inner(*a, **k)
            sync(device)
            t = time.perf_counter()
            out = inner(*a, **k)
            sync(device)
            net_seconds[0] += time.perf_counter() - t
            return out

        module.forward = forward

    timed_forward(seg.deconvnet)
    timed_forward(seg.fcn)
    images_per_s = rate(lambda: seg.predict([image], [boxes]), device, args.seconds)
    timed_calls["on"] = True
    calls, start = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - start < args.seconds:
        seg.predict([image], [boxes])
        calls += 1
    total = time.perf_counter() - start
    outside = 1 - net_seconds[0] / total
    return ["50 proposals + FCN-8s, 500x375, " + precision, images_per_s, f"{100 * outside:.1f}%"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny width, batches 2,4, short runs, no compile")
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--batches", default="16,32,64,128,256")
    ap.add_argument("--seconds", type=float, default=3.0, help="minimum measuring time per figure")
    ap.add_argument("--micro-batch", type=int, default=64, help="the model actor's DeconvNet micro-batch")
    ap.add_argument("--no-compile", action="store_true")
    args = ap.parse_args()
    if args.smoke:
        args.width, args.batches, args.seconds, args.no_compile, args.micro_batch = 1 / 16, "2,4", 0.2, True, 8
    args.batches = [int(b) for b in args.batches.split(",")]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    n = 8192 if device.type == "cuda" and not args.smoke else 512
    fp32_peak = matmul_peak(device, torch.float32, n, args.seconds)
    bf16_peak = matmul_peak(device, torch.bfloat16, n, args.seconds)
    print(f"\n{name}, torch {torch.__version__}, DeconvNet width {args.width}")
    print(f"measured matmul peak ({n}x{n}): fp32 (TF32 allowed on GPU) {fp32_peak / 1e12:.1f} TFLOP/s, "
          f"bf16 {bf16_peak / 1e12:.1f} TFLOP/s\n")
    print_table(["DeconvNet 224x224", "batch", "crops/s", "TFLOP/s", "of bf16 peak"],
                deconvnet_rows(args, device, bf16_peak))
    with tempfile.TemporaryDirectory() as tmp:
        row = actor_row(args, device, tmp)
    print()
    print_table(["model actor job per image", "images/s", "time outside the networks"], [row])
    heavy = sorted(m for m in ("ray", "cv2", "pydensecrf") if m in sys.modules)
    print(f"\nmodules imported from ray/cv2/pydensecrf: {heavy or 'none'}")


if __name__ == "__main__":
    main()
