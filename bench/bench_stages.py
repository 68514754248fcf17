"""Per-stage isolated throughput on this machine's CPU: one process, no Ray.

    .venv/bin/python bench/bench_stages.py [--images 20] [--crf-images 8] [--paper-width]

On generated VOC-size (500x375) images of the benchmark bucket (``bench/common.py``):
JPEG decode, EdgeBoxes proposals (built-in gradient edges, paper settings), DeconvNet
crops/s and FCN-8s images/s (tiny width 1/16; ``--paper-width`` adds width 1.0, a few
crops only on a CPU), the whole model stage per image with the committed demo
checkpoints (up to 50 proposals + FCN-8s + aggregation + ensemble), the dense CRF with
all classes against the class-pruned CRF (speed-up and share of identical pixels) and
the palette-PNG write. Two tables: stages, then the CRF pruning.

CRF inputs: (1) the demo models' real EDeconvNet probabilities (6 classes), and (2)
VOC-like 21-class EDeconvNet-shaped probabilities built from the ground truth: an
FCN-like map (blurred one-hot logits with spatially smooth noise) averaged with a
DeconvNet-like map that is another such draw inside the proposal boxes and uniform
outside them (the zero canvas). No trained 21-class model ships with the project.
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile

import numpy as np
import torch
from common import VOC_SIZE, demo_checkpoints, print_table, sample, timed
from PIL import Image

from models import FCN, DeconvNet
from models.classes import voc_palette
from models.storage import atomic_write
from models.summary import forward_flops
from pipeline.crf import dense_crf, kept_classes
from pipeline.decode import decode_image
from pipeline.proposals import ProposalGenerator
from pipeline.segmenter import InferenceConfig, Segmenter
from pipeline.stage_config import CRFConfig
from pipeline.writers import encode_mask


def smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float, scale: float) -> np.ndarray:
    """Gaussian noise low-pass filtered in space (network errors are blobs, not salt and pepper)."""
    import cv2

    noise = rng.normal(0, 1, shape).astype(np.float32)
    out = np.stack([cv2.GaussianBlur(c, (0, 0), sigma) for c in noise])
    return out * (scale / max(float(out.std()), 1e-6))


def soft_probs(label: np.ndarray, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Confident-where-a-network-is class probabilities from a label map (C, H, W)."""
    import cv2

    lab = np.where(label == 255, 0, label)
    onehot = np.zeros((num_classes, *label.shape), np.float32)
    onehot[lab, np.arange(label.shape[0])[:, None], np.arange(label.shape[1])] = 1
    logits = np.stack([cv2.GaussianBlur(c, (0, 0), 4) for c in onehot]) * 6
    logits += smooth_noise(rng, logits.shape, 8, 1.0)
    e = np.exp(logits - logits.max(0, keepdims=True))
    return e / e.sum(0, keepdims=True)


def edeconvnet_like(label: np.ndarray, boxes: np.ndarray, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    fcn = soft_probs(label, num_classes, rng)
    deconv = np.full_like(fcn, 1.0 / num_classes)  # softmax of the zero canvas
    inside = soft_probs(label, num_classes, rng)
    covered = np.zeros(label.shape, bool)
    for x1, y1, x2, y2 in np.asarray(boxes, dtype=int):
        covered[max(y1, 0) : y2, max(x1, 0) : x2] = True
    deconv[:, covered] = inside[:, covered]
    return ((fcn + deconv) / 2).astype(np.float16)


def old_rule_kept(probs: np.ndarray) -> int:
    """Classes the earlier rule kept (max probability >= 0.01 anywhere, or some pixel's argmax)."""
    keep = probs.reshape(len(probs), -1).max(axis=1) >= 0.01
    keep[np.unique(probs.argmax(axis=0))] = True
    return int(keep.sum())


def network_rows(width: float, n_crops: int, repeat: int) -> list[list]:
    tag = "tiny 1/16" if width < 1 else "paper 1.0"
    deconv = DeconvNet(num_classes=21, width=width).eval()
    fcn = FCN(num_classes=21, stride=8, width=width).eval()
    crops, image = torch.randn(n_crops, 3, 224, 224), torch.randn(1, 3, *VOC_SIZE)
    with torch.inference_mode():
        per_batch, _ = timed(deconv, [crops], repeat=repeat)
        per_image, _ = timed(fcn, [image], repeat=repeat)
    d_flops = forward_flops(DeconvNet(num_classes=21, width=width), (1, 3, 224, 224))
    f_flops = forward_flops(FCN(num_classes=21, stride=8, width=width), (1, 3, *VOC_SIZE))
    rate = n_crops / per_batch
    return [
        [f"DeconvNet 224x224 crops (batch {n_crops})", tag, rate, "crops/s", f"{rate * d_flops / 1e9:.1f} GFLOP/s"],
        ["FCN-8s on a 500x375 image", tag, 1 / per_image, "images/s", f"{f_flops / per_image / 1e9:.1f} GFLOP/s"],
    ]



def crf_rows(name: str, images, probs, cfg: CRFConfig) -> list:
    idx = list(range(len(images)))
    full_t, full = timed(lambda i: dense_crf(images[i], probs[i], cfg, prune=False), idx)
    pruned_t, pruned = timed(lambda i: dense_crf(images[i], probs[i], cfg, prune=True), idx)
    same = sum(int((a == b).sum()) for a, b in zip(full, pruned)) / sum(a.size for a in full)
    kept = np.mean([len(kept_classes(p, cfg.prune_ratio, cfg.prune_min_area)) for p in probs])
    old = np.mean([old_rule_kept(np.asarray(p, np.float32)) for p in probs])
    n_classes = probs[0].shape[0]
    return [name, n_classes, f"{old:.1f}", f"{kept:.1f}", 1 / full_t, 1 / pruned_t, f"{full_t / pruned_t:.2f}x",
            f"{100 * same:.3f}%"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=20, help="images for decode, proposals and write")
    ap.add_argument("--crf-images", type=int, default=8, help="images for the model stage and the CRF")
    ap.add_argument("--paper-width", action="store_true", help="also time the paper-width (1.0) networks")
    ap.add_argument("--checkpoints", nargs=2, metavar=("DECONVNET", "FCN"), help="default: the demo checkpoints")
    args = ap.parse_args()
    samples = [sample(i) for i in range(args.images)]
    images = [s[0] for s in samples]
    jpegs = []
    for im in images:
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="JPEG", quality=90)
        jpegs.append(buf.getvalue())
    rows: list[list] = []
    t, _ = timed(lambda b: decode_image(b, 40_000_000), jpegs)
    rows.append(["decode JPEG 500x375", "-", 1 / t, "images/s", ""])
    gen = ProposalGenerator()
    t, proposals = timed(gen, images)
    boxes = [p[0] for p in proposals]
    rows.append(["EdgeBoxes proposals", "-", 1 / t, "images/s", f"{np.mean([len(b) for b in boxes]):.1f} boxes/image"])
    rows += network_rows(1 / 16, 32, 3)
    if args.paper_width:
        rows += network_rows(1.0, 4, 1)
    ckpts = args.checkpoints or demo_checkpoints()
    seg = Segmenter(*ckpts, InferenceConfig(device="cpu"))
    n = min(args.crf_images, len(images))
    nchw = Segmenter(*ckpts, InferenceConfig(device="cpu", channels_last=False))
    t, _ = timed(lambda i: nchw.predict([images[i]], [boxes[i]])[0], list(range(n)))
    rows.append(["model stage, NCHW (channels_last=False)", "demo 1/16", 1 / t, "images/s", "before channels_last"])
    unfolded = Segmenter(*ckpts, InferenceConfig(device="cpu"), fold_bn=False)
    t_unfolded, unfolded_probs = timed(lambda i: unfolded.predict([images[i]], [boxes[i]])[0], list(range(n)))
    t, probs = timed(lambda i: seg.predict([images[i]], [boxes[i]])[0], list(range(n)))
    same = np.mean([(a.argmax(0) == b.argmax(0)).mean() for a, b in zip(probs, unfolded_probs)])
    rows.append(["model stage, BatchNorm not folded (fold_bn=False)", "demo 1/16", 1 / t_unfolded, "images/s",
                 f"before BN folding; {100 * same:.3f}% same argmax"])
    crops = sum(len(b) for b in boxes[:n]) / n
    rows.append(["model stage (crops+DeconvNet+aggregate+FCN+ensemble)", "demo 1/16", 1 / t, "images/s",
                 f"{crops:.1f} crops/image"])
    cfg = CRFConfig()
    t, _ = timed(lambda i: dense_crf(images[i], probs[i], cfg), list(range(n)))
    rows.append(["dense CRF (class-pruned, 10 iterations)", "demo 1/16", 1 / t, "images/s", "real demo-model output"])
    palette = voc_palette(21)
    with tempfile.TemporaryDirectory() as tmp:
        t, _ = timed(lambda i: atomic_write(os.path.join(tmp, f"{i}.png"), encode_mask(samples[i][1], palette)),
                     list(range(len(samples))))
    rows.append(["write palette PNG (local disk)", "-", 1 / t, "images/s", ""])

    rng = np.random.default_rng(0)
    voc_like = [edeconvnet_like(samples[i][1], boxes[i], 21, rng) for i in range(n)]
    crf = [
        crf_rows("demo models, EDeconvNet", images[:n], probs, cfg),
        crf_rows("VOC-like 21 classes, EDeconvNet-shaped", images[:n], voc_like, cfg),
    ]
    print(f"\nCPU: {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, images 500x375")
    print_table(["stage", "model", "per second", "unit", "notes"], rows)
    print(f"\nDense CRF, all classes vs class-pruned (ratio {cfg.prune_ratio}), {n} images:")
    print_table(["probabilities", "classes", "kept (old 0.01 rule)", "kept (ratio rule)", "all classes img/s",
                 "pruned img/s", "speed-up", "identical pixels"], crf)


if __name__ == "__main__":
    main()
