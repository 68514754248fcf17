"""Dense CRF refinement (Krahenbuhl & Koltun, NIPS 2011) with ``pydensecrf2``, class-pruned.

Unary = -log p of the ensemble probabilities; a Gaussian (smoothness) kernel and a
bilateral (appearance) kernel with Potts compatibility; mean-field inference. The
defaults are those of the DeconvNet code: Gaussian sxy 3 compat 3, bilateral sxy 20
srgb 3 compat 5, 10 iterations.

Class pruning. Mean-field cost grows linearly with the number of labels, and most
images hold two or three of the 21 VOC classes. Before the CRF, a class is kept only
if it is a *contender* over a visible area: at no fewer than
``CRFConfig.prune_min_area`` of the image's pixels (default 0.001, about 14x14 px
of a 500x375 image) its probability reaches ``CRFConfig.prune_ratio`` (default 0.5)
times the probability of that pixel's leading class, i.e. its unary is within
log(1/0.5) = 0.69 of the best one. The kept classes' probabilities are
renormalised; the class that leads the most pixels is always kept.

Why a ratio and not an absolute floor: outside every proposal the DeconvNet canvas
is zero, so its softmax is uniform (1/C for every class) and the EDeconvNet average
gives every class at least 1/(2C) there (0.024 with 21 classes); an absolute
threshold below that keeps all classes, one above it drops real classes in
uncertain images. Why a minimum area: where two present classes meet and are
nearly tied, noise makes absent classes contenders at a few scattered pixels;
those specks never survive the CRF's smoothing, but they would keep their class in
it. Why dropping the rest is safe in practice: with Potts kernels the pairwise
messages reward a label in proportion to how much the neighbouring pixels already
hold it, so a class that is within a factor 2 of the leader over less than
``prune_min_area`` of the image gathers little support, and at most that area can
change per dropped class; renormalising shifts every kept class's unary at a pixel
by the same constant, which leaves their order unchanged. It is an approximation
(the removed mass no longer enters the messages): ``bench/bench_stages.py``
measures the speed-up and the share of identical pixels against the unpruned CRF
(BENCHMARKS.md section 2), the tests check equality on clear cases, and ``prune_ratio = 0``
disables pruning. With a single kept class the CRF is skipped (its answer is that
class).
"""

from __future__ import annotations

import numpy as np
import pydensecrf.densecrf as dcrf

from pipeline.confidence import confidence_map, max_probability, mean_entropy, void_below
from pipeline.faults import inject
from pipeline.rows import RowStatus, object_column
from pipeline.segment_config import SegmentConfig
from pipeline.stage_config import CRFConfig

_EPS = 1e-8


def kept_classes(probs: np.ndarray, ratio: float, min_area: float = 0.0) -> np.ndarray:
    """Sorted indices of the classes of ``probs`` ``(C, H, W)`` that reach ``ratio`` times the
    leading class's probability on at least ``min_area`` (a fraction) of the pixels, and at
    least one pixel; the class that leads the most pixels is always among them."""
    probs = np.asarray(probs, dtype=np.float32)
    flat = probs.reshape(len(probs), -1)
    contender = (flat >= ratio * flat.max(axis=0)).sum(axis=1)
    keep = contender >= max(1.0, min_area * flat.shape[1])
    keep[np.bincount(flat.argmax(axis=0), minlength=len(flat)).argmax()] = True
    return np.flatnonzero(keep)


def dense_crf(image: np.ndarray, probs: np.ndarray, cfg: CRFConfig, *, prune: bool = True) -> np.ndarray:
    """Refined labels ``(H, W)`` uint8 for an RGB uint8 image and its ``(C, H, W)`` probabilities."""
    probs = np.asarray(probs, dtype=np.float32)
    n_classes, height, width = probs.shape
    classes = kept_classes(probs, cfg.prune_ratio, cfg.prune_min_area) if prune else np.arange(n_classes)
    if len(classes) == 1:
        return np.full((height, width), classes[0], dtype=np.uint8)
    p = np.maximum(probs[classes], _EPS)
    p /= p.sum(axis=0, keepdims=True)
    crf = dcrf.DenseCRF2D(width, height, len(classes))
    crf.setUnaryEnergy(np.ascontiguousarray(-np.log(p).reshape(len(classes), -1), dtype=np.float32))
    crf.addPairwiseGaussian(sxy=cfg.gaussian_sxy, compat=cfg.gaussian_compat)
    crf.addPairwiseBilateral(
        sxy=cfg.bilateral_sxy,
        srgb=cfg.bilateral_srgb,
        rgbim=np.require(image, np.uint8, ["C", "W"]),
        compat=cfg.bilateral_compat,
    )
    q = np.asarray(crf.inference(cfg.iterations), dtype=np.float32).reshape(len(classes), height, width)
    return classes[q.argmax(axis=0)].astype(np.uint8)


def uncertainty(probs: np.ndarray) -> float:
    """Mean over pixels of 1 - max class probability: 0 = certain everywhere, review high values first."""
    probs = np.asarray(probs, dtype=np.float32)
    return float(np.mean(1.0 - probs.max(axis=0)))


class CRFStage:
    """Turns ``probs`` into the final ``mask`` (dense CRF, or argmax when disabled), ``uncertainty``,
    ``mean_confidence`` and ``mean_entropy`` (``pipeline.confidence``), and with ``confidence_maps``
    a uint8 ``confidence`` map per image.

    Drops the ``probs`` and ``image`` columns: only the uint8 mask (and map) travel on. A row
    whose CRF fails becomes an error row.

    Args:
        cfg: CRF settings; ``cfg.enabled = False`` gives the argmax.
        confidence_maps: add the ``confidence`` column (max ensemble probability x 255, before the CRF).
        min_confidence: mask pixels whose max ensemble probability is below this become 255 (void).
    """

    def __init__(
        self, cfg: CRFConfig | None = None, *, confidence_maps: bool = False, min_confidence: float = 0.0
    ) -> None:
        self.cfg = cfg or CRFConfig()
        self.confidence_maps = confidence_maps
        self.min_confidence = min_confidence

    def label(self, image: np.ndarray, probs: np.ndarray) -> np.ndarray:
        if self.cfg.enabled:
            return dense_crf(image, probs, self.cfg)
        return np.asarray(probs).argmax(axis=0).astype(np.uint8)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        inject("crf_batch", batch.get("image_id", ()))  # tests only: a killed CRF actor
        rows = RowStatus(batch, "crf")
        empty = (np.zeros((0, 0), np.uint8), np.zeros((0, 0), np.uint8), np.nan, np.nan, np.nan)
        results = rows.map(lambda i: self._one(batch["image"][i], batch["probs"][i]), empty=empty)
        masks, maps, scores, confidences, entropies = zip(*results) if results else ((),) * 5
        out = {k: v for k, v in batch.items() if k not in ("probs", "image")}
        out.update(
            rows.columns(),
            mask=object_column(masks),
            uncertainty=np.array(scores, dtype=np.float32),
            mean_confidence=np.array(confidences, dtype=np.float32),
            mean_entropy=np.array(entropies, dtype=np.float32),
        )
        if self.confidence_maps:
            out["confidence"] = object_column(maps)
        return out

    def _one(self, image: np.ndarray, probs: np.ndarray) -> tuple:
        """(mask, confidence map or empty, uncertainty, mean confidence, mean entropy) of one image."""
        confidence = max_probability(probs)
        mask = void_below(self.label(image, probs), confidence, self.min_confidence)
        conf_map = confidence_map(confidence) if self.confidence_maps else np.zeros((0, 0), np.uint8)
        return mask, conf_map, uncertainty(probs), float(confidence.mean()), mean_entropy(probs)


def crf_stage_args(cfg: SegmentConfig) -> dict:
    """``CRFStage``'s constructor arguments for the job's settings (CRF, confidence maps, void threshold)."""
    return {"cfg": cfg.crf, "confidence_maps": cfg.confidence == "png", "min_confidence": cfg.min_confidence}

