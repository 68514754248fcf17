"""Tiny checkpoints and image buckets for the segmentation-job tests (helpers, no tests)."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import struct
import zlib
from pathlib import Path

import cv2
import fsspec
import numpy as np
import torch
from fsspec.implementations.local import LocalFileSystem
from fsspec.spec import AbstractFileSystem
from PIL import Image

from models import FCN, DeconvNet, save_checkpoint
from pipeline.demo.local_head import free_port  # noqa: F401  (the tests import it from here)
from pipeline.proposals import ProposalConfig
from pipeline.segment_config import SegmentConfig
from pipeline.segmenter import InferenceConfig
from pipeline.stage_config import CRFConfig

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


def png_declaring(width: int, height: int) -> bytes:
    """A valid-looking PNG (correct CRCs) that declares ``width x height`` but holds one short row: a bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    idat = zlib.compress(b"\x00" * (1 + 3 * 64))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


NON_UTF8_NAME = b"latin1-caf\xe9.jpg"  # a Latin-1 file name: not valid UTF-8


def write_hostile_inputs(folder: Path, max_pixels: int) -> dict[str, str]:
    """Inputs an attacker or a messy bucket supplies, beyond ``write_odd_inputs``; image_id -> expected status.

    ``max_pixels`` is the limit the job will run with: ``too_large.png`` exceeds it by one
    row, the bombs declare far more than it (one beyond Pillow's own hard limit).
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    expected = {}

    def put(name: str, data: bytes, status: str) -> None:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        expected[name] = status

    def encoded(array: np.ndarray, fmt: str, mode: str = "RGB", **kw) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(array).convert(mode).save(buf, format=fmt, **kw)
        return buf.getvalue()

    put("noise.jpg", rng.bytes(4096), "UnidentifiedImageError")
    put("noise-with-png-signature.png", b"\x89PNG\r\n\x1a\n" + rng.bytes(4096), "UnidentifiedImageError")
    put("bomb.png", png_declaring(100_000, 100_000), "ImageTooLarge")  # 10 G pixels in 300 bytes
    put("bomb-under-pillow-limit.png", png_declaring(9_000, 9_000), "ImageTooLarge")
    side = int(max_pixels**0.5)
    put("too_large.png", encoded(scene(30, side + 1, side), "PNG"), "ImageTooLarge")
    # Images Pillow reads, with awkward names: spaces, unicode, '..' inside a name, control characters.
    put("one-pixel.png", encoded(np.array([[[200, 30, 90]]], np.uint8), "PNG"), "ok")
    put("control/tab\tnew\nline 1-row.png", encoded(scene(32, 2, 150)[:1], "PNG"), "ok")
    put("with spaces/cmyk photo.jpg", encoded(scene(33, 60, 80), "JPEG", mode="CMYK", quality=95), "ok")
    done, rgb48 = cv2.imencode(".png", (scene(34, 50, 70).astype(np.uint16) * 257)[:, :, ::-1])  # 16 bits per channel
    assert done
    put("dots/a..b..rgb48.png", rgb48.tobytes(), "ok")
    frames = [Image.fromarray(scene(35 + i, 48, 64)) for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=40, loop=0)
    put("unicode/动画 фото ü.gif", buf.getvalue(), "ok")  # animated: its first frame is labelled
    with open(os.path.join(bytes(folder), NON_UTF8_NAME), "wb") as f:
        f.write(encoded(scene(42, 40, 40), "JPEG"))
    expected[NON_UTF8_NAME.decode("utf-8", "backslashreplace")] = "InvalidImageId"
    return expected


class FlakyFileSystem(AbstractFileSystem):
    """A real local filesystem behind ``flaky://`` whose whole-file reads and writes fail on purpose.

    - Writes: the first ``$FLAKY_FS_FAILS`` (default 1) writes of each path write half of
      the data and then raise ``ConnectionResetError`` (a dropped upload on a store that
      does not publish atomically); later writes succeed. A path whose file name starts
      with ``broken-write-``, and every Parquet part under ``_parquet/`` while the file
      ``$FLAKY_FS_STATE/broken-parquet`` exists, fails every time (a store that stays down).
    - Reads: a file named ``flaky-read-*`` fails its first READ_FAILS opens for reading with
      ``ConnectionResetError``, then reads whole; ``broken-read-*`` fails every time. Other
      reads, listings and deletes go straight to the local disk.

    Attempts are counted in files under ``$FLAKY_FS_STATE``, so the counts hold across Ray
    worker processes; ``attempts(path)`` and ``read_attempts(path)`` read them back.
    """

    protocol = "flaky"
    root_marker = "/"
    READ_FAILS = 2

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.local = LocalFileSystem()

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        return "/" + path.removeprefix("flaky://").lstrip("/")

    def ls(self, path, detail=True, **kwargs):
        return self.local.ls(path, detail=detail)

    def info(self, path, **kwargs):
        return self.local.info(path)

    def makedirs(self, path, exist_ok=False):
        self.local.makedirs(path, exist_ok=exist_ok)

    def rm_file(self, path):
        self.local.rm_file(path)

    def _open(self, path, mode="rb", **kwargs):
        if "r" not in mode:
            raise NotImplementedError("flaky:// writes only whole files (pipe_file)")
        path = self._strip_protocol(path)
        name = os.path.basename(path)
        if name.startswith(("flaky-read-", "broken-read-")):
            tries = self._count("read:" + path)
            if name.startswith("broken-read-") or tries <= self.READ_FAILS:
                raise ConnectionResetError(errno.ECONNRESET, f"injected: connection reset while reading {path}")
        return self.local._open(path, mode)

    @staticmethod
    def _counter(key: str) -> str:
        return os.path.join(os.environ["FLAKY_FS_STATE"], hashlib.sha256(key.encode()).hexdigest()[:24])

    @classmethod
    def _count(cls, key: str) -> int:
        """One more attempt at ``key``; returns the attempts so far (one byte per attempt; appends are atomic)."""
        with open(cls._counter(key), "ab") as f:
            f.write(b".")
        return os.path.getsize(cls._counter(key))

    @classmethod
    def attempts(cls, path: str) -> int:
        counter = cls._counter(cls._strip_protocol(path))
        return os.path.getsize(counter) if os.path.exists(counter) else 0

    @classmethod
    def read_attempts(cls, path: str) -> int:
        counter = cls._counter("read:" + cls._strip_protocol(path))
        return os.path.getsize(counter) if os.path.exists(counter) else 0

    def _broken(self, path: str) -> bool:
        if os.path.basename(path).startswith("broken-write-"):
            return True
        return "/_parquet/" in path and os.path.exists(os.path.join(os.environ["FLAKY_FS_STATE"], "broken-parquet"))

    def pipe_file(self, path, value, **kwargs):
        path = self._strip_protocol(path)
        tries = self._count(path)
        self.local.makedirs(os.path.dirname(path), exist_ok=True)
        if self._broken(path) or tries <= int(os.environ.get("FLAKY_FS_FAILS", "1")):
            with open(path, "wb") as f:
                f.write(value[: len(value) // 2])
            raise ConnectionResetError(errno.ECONNRESET, f"injected: connection reset while writing {path}")
        with open(path, "wb") as f:
            f.write(value)


def register_flaky_fs() -> None:
    """Make ``flaky://`` known to fsspec in this process (also a Ray ``worker_process_setup_hook``)."""
    fsspec.register_implementation("flaky", FlakyFileSystem, clobber=True)


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
