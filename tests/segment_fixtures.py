"""Tiny checkpoints and image buckets for the segmentation-job tests (helpers, no tests)."""

from __future__ import annotations

import io
import socket
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from models import FCN, DeconvNet, save_checkpoint
from pipeline.proposals import ProposalConfig
from pipeline.segment_config import CRFConfig, SegmentConfig
from pipeline.segmenter import InferenceConfig

NUM_CLASSES = 4


def make_checkpoints(folder: Path, num_classes: int = NUM_CLASSES) -> tuple[str, str]:
    """A tiny DeconvNet and FCN-8s with random (seeded) weights, saved as deconvseg checkpoints."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    deconv, fcn = DeconvNet(num_classes=num_classes, width=1 / 16), FCN(num_classes=num_classes, stride=8, width=1 / 16)
    # Untrained score layers start near zero (uniform probabilities); make them decisive so
    # that masks depend on the input and differences between code paths would show.
    with torch.no_grad():
        for layer in (deconv.score, fcn.score_fr, fcn.score_pool4, fcn.score_pool3):
            layer.weight.normal_(0.0, 1.0)
            layer.bias.normal_(0.0, 0.5)
    paths = str(folder / "deconvnet.safetensors"), str(folder / "fcn8s.safetensors")
    save_checkpoint(deconv, paths[0], data="test")
    save_checkpoint(fcn, paths[1], data="test")
    return paths


def scene(seed: int, height: int, width: int) -> np.ndarray:
    """An RGB uint8 image of a few flat-coloured rectangles on a background, lightly noisy."""
    rng = np.random.default_rng(seed)
    img = np.empty((height, width, 3), np.uint8)
    img[:] = rng.integers(0, 256, 3)
    for _ in range(3):
        y0, x0 = rng.integers(0, height // 2), rng.integers(0, width // 2)
        y1, x1 = y0 + rng.integers(height // 4, height // 2 + 1), x0 + rng.integers(width // 4, width // 2 + 1)
        img[y0:y1, x0:x1] = rng.integers(0, 256, 3)
    noise = rng.integers(-8, 9, img.shape)
    return np.clip(img.astype(np.int32) + noise, 0, 255).astype(np.uint8)


def write_images(folder: Path, names_sizes: dict[str, tuple[int, int]], seed: int = 0) -> None:
    for i, (name, (h, w)) in enumerate(sorted(names_sizes.items())):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(scene(seed + i, h, w)).save(path)


def exif_rotated_jpeg(height: int, width: int, seed: int = 7) -> bytes:
    """JPEG stored as ``height x width`` with EXIF orientation 6 (display rotated 90 degrees clockwise)."""
    img = Image.fromarray(scene(seed, height, width))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif.tobytes(), quality=95)
    return buf.getvalue()


def write_odd_inputs(folder: Path) -> dict[str, str]:
    """Awkward inputs; returns image_id -> expected status ("ok" or the error class)."""
    folder.mkdir(parents=True, exist_ok=True)
    expected = {}
    good = io.BytesIO()
    Image.fromarray(scene(11, 72, 88)).save(good, format="JPEG")
    (folder / "truncated.jpg").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    expected["truncated.jpg"] = "OSError"
    (folder / "empty.png").write_bytes(b"")
    expected["empty.png"] = "EmptyFile"
    (folder / "notes.jpg").write_bytes(b"this is a text file, not an image\n")
    expected["notes.jpg"] = "UnidentifiedImageError"
    Image.fromarray(scene(12, 70, 90)[:, :, 0]).save(folder / "gray.png")
    expected["gray.png"] = "ok"
    rgba = np.dstack([scene(13, 66, 80), np.full((66, 80), 128, np.uint8)])
    Image.fromarray(rgba, mode="RGBA").save(folder / "rgba.png")
    expected["rgba.png"] = "ok"
    deep = (scene(14, 64, 96)[:, :, 1].astype(np.uint16) * 257).astype(np.uint16)
    Image.fromarray(deep).save(folder / "deep16.png")
    expected["deep16.png"] = "ok"
    (folder / "rotated.jpg").write_bytes(exif_rotated_jpeg(64, 96))
    expected["rotated.jpg"] = "ok"
    Image.fromarray(scene(15, 64, 64)).convert("P", palette=Image.Palette.ADAPTIVE).save(folder / "palette.gif")
    expected["palette.gif"] = "ok"
    return expected


def tiny_config(inp: str, out: str, ckpts: tuple[str, str], **kw) -> SegmentConfig:
    """A config sized for 2 CPUs: few proposals, small micro-batches, CRF on."""
    defaults = dict(
        input=inp,
        output=out,
        checkpoint=ckpts[0],
        fcn_checkpoint=ckpts[1],
        proposals=ProposalConfig(top_k=3),
        inference=InferenceConfig(micro_batch=4, device="cpu"),
        crf=CRFConfig(iterations=5),
        batch_size=3,
        write_batch_size=4,
    )
    defaults.update(kw)
    return SegmentConfig(**defaults)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
