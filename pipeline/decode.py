"""Read and decode stages: bytes from any fsspec URL, then a validated RGB uint8 image.

Both are stateless Ray Data stages on ``dict[str, np.ndarray]`` batches. Failures are
caught per row and recorded in the ``status`` (error class) and ``error`` (message)
columns (``pipeline.rows``), so one corrupt file never fails a block; later stages pass
such rows through untouched and the writer puts them in ``_errors``.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from models.storage import read_url, retry_transient
from pipeline.faults import inject
from pipeline.rows import RowStatus, object_column


class EmptyFile(ValueError):
    """The input has zero bytes."""


class ImageTooLarge(ValueError):
    """The image has more pixels than the configured maximum."""


def read_files(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Add a ``bytes`` column with each row's file content (rows already in error are skipped).

    Transient storage errors are retried (``models.storage.retry_transient``): a row
    becomes an error row only for a failure that persists.
    """
    inject("read_task", batch.get("image_id", ()))  # tests only: a killed read task
    rows = RowStatus(batch, "read")
    paths = [str(p) for p in batch["path"]]
    data = rows.map(
        lambda i: retry_transient(lambda: read_url(paths[i]), what=f"read {paths[i]}"),
        empty=b"",
        what=lambda i: f"read {paths[i]}",
    )
    return {**batch, **rows.columns(), "bytes": object_column(data)}


def to_rgb(img: Image.Image) -> np.ndarray:
    """EXIF orientation applied, any mode (gray, 16-bit, RGBA, palette, CMYK) to RGB uint8 ``(H, W, 3)``."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        # 16-bit (or 32-bit / float) gray: rescale the 16-bit range to 8 bits.
        arr = np.asarray(img, dtype=np.float64)
        arr = np.clip(np.round(arr / 257.0), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(arr[:, :, None], 3, axis=2))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA").convert("RGB")  # alpha dropped: colours under it are kept
    elif img.mode != "RGB":
        img = img.convert("RGB")
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))


def _open(data: bytes) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:  # declared size beyond Pillow's own hard limit
        raise ImageTooLarge(f"declared size refused by Pillow: {exc}") from exc
    except UnidentifiedImageError as exc:  # Pillow's message names a BytesIO object, not the file
        raise UnidentifiedImageError(
            f"not an image format Pillow reads ({len(data)} bytes, starting {data[:8]!r})"
        ) from exc


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """RGB uint8 ``(H, W, 3)`` of an encoded image; multi-frame files (GIF, TIFF...) give their first frame.

    The declared size is checked against ``max_pixels`` before any pixel is decoded,
    so a decompression bomb (huge declared size, tiny file) costs nothing.
    """
    if len(data) == 0:
        raise EmptyFile("file is empty")
    with warnings.catch_warnings():
        # Pillow warns above its MAX_IMAGE_PIXELS (89 M); max_pixels is the limit that counts here.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        img = _open(data)
        width, height = img.size
        if width * height > max_pixels:
            raise ImageTooLarge(f"{width}x{height} = {width * height} pixels > max_pixels {max_pixels}")
        img.load()  # decode now: truncated files fail here, inside the try of the caller
    rgb = to_rgb(img)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or min(rgb.shape[:2]) < 1:
        raise ValueError(f"decoded to an unusable array of shape {rgb.shape}")
    return rgb


def decode_images(batch: dict[str, np.ndarray], *, max_pixels: int) -> dict[str, np.ndarray]:
    """Replace ``bytes`` by ``image`` (RGB uint8) plus ``height``/``width``; failures become error rows."""
    inject("decode_task", batch.get("image_id", ()))  # tests only: a killed decode task
    rows = RowStatus(batch, "decode")
    images = rows.map(lambda i: decode_image(bytes(batch["bytes"][i]), max_pixels), empty=np.zeros((0, 0, 3), np.uint8))
    out = {k: v for k, v in batch.items() if k != "bytes"}
    out.update(
        rows.columns(),
        image=object_column(images),
        height=np.array([im.shape[0] for im in images], dtype=np.int32),
        width=np.array([im.shape[1] for im in images], dtype=np.int32),
    )
    return out
