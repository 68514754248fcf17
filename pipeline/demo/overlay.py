"""A picture to look at: rows of input | prediction | ground truth, labels coloured by palette."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

IGNORE_COLOUR = (224, 224, 192)  # VOC's colour for void (255)


def colourise(labels: np.ndarray, palette: list[list[int]]) -> np.ndarray:
    """RGB uint8 picture of a label map; 255 (void) in VOC's cream colour."""
    table = np.zeros((256, 3), np.uint8)
    table[: len(palette)] = np.asarray(palette, np.uint8)[:256]
    table[255] = IGNORE_COLOUR
    return table[np.asarray(labels, np.uint8)]


def blend(image: np.ndarray, labels: np.ndarray, palette: list[list[int]], alpha: float = 0.6) -> np.ndarray:
    """The label colours laid over the image; background (0) pixels keep the image."""
    colours = colourise(labels, palette).astype(np.float32)
    out = image.astype(np.float32)
    fg = (labels != 0)[..., None]
    return np.where(fg, (1 - alpha) * out + alpha * colours, out).clip(0, 255).astype(np.uint8)


def overlay_grid(
    rows: list[tuple[str, np.ndarray, np.ndarray, np.ndarray | None]],
    palette: list[list[int]],
    class_names: list[str],
    cell_width: int = 256,
) -> Image.Image:
    """One row per ``(image_id, image, prediction, ground truth or None)``: input | prediction | truth.

    Every cell is resized to ``cell_width`` wide (nearest for labels); a legend of the
    classes present in any row sits at the bottom.
    """
    if not rows:
        raise ValueError("overlay_grid needs at least one row")
    head = 18
    cells = []
    present: set[int] = set()
    for image_id, image, pred, truth in rows:
        h, w = image.shape[:2]
        if pred.shape != (h, w) or (truth is not None and truth.shape != (h, w)):
            raise ValueError(
                f"{image_id}: image {h}x{w}, prediction {pred.shape}, truth {getattr(truth, 'shape', None)}"
            )
        size = (cell_width, max(1, round(h * cell_width / w)))
        parts = [image, blend(image, pred, palette)]
        parts.append(blend(image, truth, palette) if truth is not None else np.full_like(image, 128))
        resized = [Image.fromarray(p).resize(size, Image.NEAREST if i else Image.BILINEAR) for i, p in enumerate(parts)]
        cells.append((image_id, resized))
        present |= set(np.unique(pred).tolist()) | (set(np.unique(truth).tolist()) if truth is not None else set())
    present = {c for c in present if c < len(class_names)}
    total_h = head + sum(r[1][0].height + head for r in cells) + 24
    canvas = Image.new("RGB", (3 * cell_width, total_h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, title in enumerate(("input", "prediction", "ground truth")):
        draw.text((i * cell_width + 4, 3), title, fill=(0, 0, 0))
    y = head
    for image_id, parts in cells:
        draw.text((4, y + 2), image_id, fill=(0, 0, 0))
        y += head
        for i, part in enumerate(parts):
            canvas.paste(part, (i * cell_width, y))
        y += parts[0].height
    x = 4
    for c in sorted(present):
        draw.rectangle([x, y + 6, x + 12, y + 18], fill=tuple(int(v) for v in palette[c]), outline=(0, 0, 0))
        draw.text((x + 16, y + 6), class_names[c], fill=(0, 0, 0))
        x += 22 + 7 * len(class_names[c])
    return canvas
