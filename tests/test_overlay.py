"""The demo's overlay picture: input | prediction | ground truth rows."""

from __future__ import annotations

import numpy as np
import pytest

from models.classes import voc_palette
from pipeline.demo.overlay import IGNORE_COLOUR, blend, colourise, overlay_grid


def test_colourise_and_blend_use_the_palette():
    palette = voc_palette(3)
    labels = np.array([[0, 1], [2, 255]], np.uint8)
    rgb = colourise(labels, palette)
    assert rgb[0, 1].tolist() == list(palette[1]) and rgb[1, 1].tolist() == list(IGNORE_COLOUR)
    image = np.full((2, 2, 3), 100, np.uint8)
    out = blend(image, labels, palette, alpha=1.0)
    assert out[0, 0].tolist() == [100, 100, 100]  # background keeps the image
    assert out[1, 0].tolist() == list(palette[2])


def test_overlay_grid_has_three_columns_one_row_per_image():
    palette, names = voc_palette(3), ["background", "a", "b"]
    rng = np.random.default_rng(0)
    rows = []
    for k, (h, w) in enumerate(((30, 40), (50, 40))):
        image = np.full((h, w, 3), rng.integers(60, 200), np.uint8)  # flat: resampling cannot differ
        pred = np.zeros((h, w), np.uint8)
        pred[5:15, 5:15] = 1
        rows.append((f"img{k}", image, pred, None if k else pred.copy()))
    pic = overlay_grid(rows, palette, names, cell_width=80)
    assert pic.width == 3 * 80
    assert pic.height > 80 * 30 / 40 + 80 * 50 / 40  # both rows, plus titles and legend
    arr = np.asarray(pic).astype(int)
    head = 18  # column titles, then each row's title above its images
    row0 = arr[2 * head : 2 * head + 60]
    inp, pred = row0[:, :80], row0[:, 80:160]
    # predicted class 1 (rows 5..15 of 30 -> 10..30 of 60) is tinted; background is untouched
    assert np.abs(pred[12:28, 12:28] - inp[12:28, 12:28]).mean() > 20
    assert np.abs(pred[40:, 40:] - inp[40:, 40:]).max() <= 2
    row1 = arr[3 * head + 60 : 3 * head + 60 + 100]
    assert (row1[:, 160:] == 128).all()  # no ground truth: a grey cell
    with pytest.raises(ValueError, match="prediction"):
        overlay_grid([("x", rows[0][1], np.zeros((3, 3), np.uint8), None)], palette, names)
