"""EdgeBox proposals with the real cv2.ximgproc EdgeBoxes."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.proposals import ProposalConfig, ProposalGenerator, effective_min_side, enlarge_boxes


def _scene():
    rng = np.random.default_rng(0)
    img = np.full((375, 500, 3), 60, np.uint8)
    img[50:200, 60:260] = 210  # one clear object
    img[230:350, 300:470] = 140  # another
    return np.clip(img + rng.integers(0, 12, img.shape), 0, 255).astype(np.uint8)


def test_enlarge_about_centre():
    out = enlarge_boxes(np.array([[10, 20, 110, 70]]), 1.2)
    assert np.allclose(out, [[0, 15, 120, 75]], atol=1e-4)


def test_paper_settings_find_the_objects():
    boxes, scores = ProposalGenerator()(_scene())
    assert 0 < len(boxes) <= 50 and boxes.dtype == np.float32
    assert np.all(np.diff(scores) <= 0)  # best first
    assert len(scores) >= 2 and scores[0] > scores[-1] > 0  # EdgeBoxes' own scores, not a fallback of ones
    tight = enlarge_boxes(boxes, 1 / 1.2)
    assert np.all(np.minimum(tight[:, 2] - tight[:, 0], tight[:, 3] - tight[:, 1]) >= 112 - 1e-3)

    def best_iou(target):
        x0, y0 = np.maximum(tight[:, 0], target[0]), np.maximum(tight[:, 1], target[1])
        x1, y1 = np.minimum(tight[:, 2], target[2]), np.minimum(tight[:, 3], target[3])
        inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
        area = (tight[:, 2] - tight[:, 0]) * (tight[:, 3] - tight[:, 1])
        return (inter / (area + (target[2] - target[0]) * (target[3] - target[1]) - inter)).max()

    assert best_iou((60, 50, 260, 200)) > 0.7
    assert best_iou((300, 230, 470, 350)) > 0.7


def test_top_k_and_min_side_scale_with_small_images():
    gen = ProposalGenerator(ProposalConfig(top_k=5))
    assert len(gen(_scene())[0]) <= 5
    assert effective_min_side(ProposalConfig(), 100, 125) == pytest.approx(112 * 125 / 500)
    assert effective_min_side(ProposalConfig(), 375, 800) == 112


@pytest.mark.parametrize("shape", [(1, 1, 3), (5, 7, 3), (40, 40, 3)])
def test_no_usable_proposal_falls_back_to_whole_image(shape):
    img = np.full(shape, 128, np.uint8)  # flat: no edges at all
    boxes, scores = ProposalGenerator()(img)
    assert boxes.tolist() == [[0, 0, shape[1], shape[0]]] and scores.tolist() == [0.0]
    none_boxes, _ = ProposalGenerator(ProposalConfig(fallback="none"))(img)
    assert none_boxes.shape == (0, 4)


def test_bad_inputs_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="RGB uint8"):
        ProposalGenerator()(np.zeros((10, 10), np.uint8))
    bad = tmp_path / "model.yml.gz"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="structured-edge model"):
        ProposalGenerator(ProposalConfig(edge_model=str(bad)))
