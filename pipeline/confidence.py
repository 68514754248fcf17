"""Per-pixel confidence of the ensemble: the map, the void rule for pseudo-labels, per-image means.

Confidence is the ensemble's max class probability at a pixel, taken **before the
dense CRF**. The CRF's mean-field marginals are not the model's probabilities: the
Potts messages reward agreeing with the neighbours, so they grow sharper with every
iteration whatever the model believed; the CRF sees only the classes that survive
pruning; with a single kept class it is skipped altogether (there are no marginals);
and ``--crf off`` must not change the confidence. The
ensemble's softmax is what the model believes, the same quantity ``uncertainty``
summarises (mean confidence = 1 - uncertainty), and it does not change with the
CRF settings. Where the CRF relabels a pixel, its confidence is that of the model's
own leading class there, which is low at exactly such pixels (the CRF flips pixels
whose classes are close), so thresholding it voids them too.

The uint8 map holds ``round(confidence x 255)``; ``--min-confidence`` compares the
float confidence itself, so a pixel is void exactly when its confidence is below the
threshold.
"""

from __future__ import annotations

import numpy as np

from models.classes import IGNORE_INDEX

_TINY = 1e-12


def max_probability(probs: np.ndarray) -> np.ndarray:
    """``(H, W)`` float32 max class probability of ``(C, H, W)`` probabilities."""
    return np.asarray(probs, dtype=np.float32).max(axis=0)


def confidence_map(confidence: np.ndarray) -> np.ndarray:
    """``(H, W)`` uint8 ``round(confidence x 255)`` of a float confidence in [0, 1]."""
    return np.clip(np.rint(np.asarray(confidence, np.float32) * 255.0), 0, 255).astype(np.uint8)


def void_below(mask: np.ndarray, confidence: np.ndarray, threshold: float) -> np.ndarray:
    """``mask`` with ``IGNORE_INDEX`` (255, void) wherever ``confidence < threshold`` (a copy)."""
    out = np.array(mask, dtype=np.uint8, copy=True)
    if threshold > 0:
        out[np.asarray(confidence) < threshold] = IGNORE_INDEX
    return out


def mean_entropy(probs: np.ndarray) -> float:
    """Mean over pixels of the entropy ``-sum_c p log p`` of the class probabilities, in nats
    (0 = certain; at most log C, the uniform distribution)."""
    p = np.asarray(probs, dtype=np.float32)
    return float(np.mean(-(p * np.log(np.maximum(p, _TINY))).sum(axis=0)))
