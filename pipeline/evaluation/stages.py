"""The evaluation job's own stages: the model stage and the scoring actors.

``VariantProbs`` (model actors) computes the DeconvNet and FCN-8s probabilities of each
image once, whatever the variants; ``ScoreVariants`` (CPU actors) makes every variant's
labels from them (``variant_labels``: argmax, mean ensemble, CRF) and returns per-batch
confusion matrices. Importing this module loads no torch: the model stage imports the
segmenter when an actor starts, and the scoring actors never do.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from pipeline.evaluation.diagnostics import RECALL_IOUS, SIZES, label_for_size
from pipeline.metrics import ConfusionMatrix
from pipeline.rows import RowStatus, object_column
from pipeline.stage_config import CRFConfig, InferenceConfig


class VariantProbs:
    """Model stage: adds ``deconvnet`` / ``fcn`` probability maps (and ``deconvnet@K``).

    Args:
        checkpoint, fcn_checkpoint: the models (either may be None if not needed).
        cfg: inference settings (micro-batch, precision, device).
        sweep: proposal counts K for ``deconvnet@K`` maps.
    """

    def __init__(
        self, checkpoint: str | None, fcn_checkpoint: str | None, cfg: InferenceConfig, sweep: tuple[int, ...] = ()
    ) -> None:
        from pipeline.segmenter import Segmenter

        ensemble = "mean" if checkpoint and fcn_checkpoint else ("deconvnet" if checkpoint else "fcn")
        self.seg = Segmenter(checkpoint, fcn_checkpoint, dataclasses.replace(cfg, ensemble=ensemble))
        self.sweep = tuple(sweep)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = RowStatus(batch, "model stage")
        parts = rows.map(lambda i: self._parts(batch, i), empty={})
        out = {k: v for k, v in batch.items() if k not in ("boxes", "box_scores", "oracle_boxes")}
        out.update(rows.columns(), parts=object_column(parts))
        return out

    def _parts(self, batch: dict[str, np.ndarray], i: int) -> dict:
        boxes = batch["boxes"][i]
        oracle = {"oracle": [batch["oracle_boxes"][i]]} if "oracle_boxes" in batch else None
        parts = self.seg.predict_parts([batch["image"][i]], [boxes], prefixes=self.sweep, other_boxes=oracle)[0]
        parts["n_boxes"] = len(boxes)
        if oracle:
            parts["n_boxes@oracle"] = len(oracle["oracle"][0])
        return parts


def variant_labels(name: str, parts: dict[str, np.ndarray], image: np.ndarray, crf_cfg: CRFConfig) -> np.ndarray:
    """Labels ``(H, W)`` of one variant from the model stage's probability maps."""
    from pipeline.crf import dense_crf

    base, _, k = name.partition("@")
    crf = base.endswith("+crf")
    base = base.removesuffix("+crf")
    deconv = parts.get(f"deconvnet@{k}" if k else "deconvnet")
    n_boxes = parts.get(f"n_boxes@{k}", parts.get("n_boxes", 0))
    if base == "fcn":
        probs = parts["fcn"]
    elif base == "deconvnet":
        probs = deconv
    elif base == "edeconvnet":
        # as the segmentation job: without any proposal, DeconvNet's map is uniform and FCN decides
        probs = parts["fcn"] if n_boxes == 0 else (deconv.astype(np.float32) + parts["fcn"].astype(np.float32)) / 2
    else:
        raise ValueError(f"unknown variant {name!r}")
    if crf:
        return dense_crf(image, probs, crf_cfg)
    return np.asarray(probs).argmax(axis=0).astype(np.uint8)


class ScoreVariants:
    """Scoring stage: one output row per variant per batch with its partial confusion matrix.

    Rows that carry a size map (``size_px``, from ``pipeline.evaluation.diagnostics``) add one row
    per variant and object size, named ``<variant>#<size>``, whose matrix counts only
    the background and the instances of that size. One more row (variant ``""``)
    carries the batch's per-image errors and its summed proposal ``recall`` counts, so
    the driver can report which images could not be evaluated.

    Args:
        variants: variant names (with ``@K`` sweep variants).
        num_classes: classes of the models and labels.
        crf: CRF settings for ``+crf`` variants.
        palette: class colours (the checkpoint's) for colour label PNGs (``pipeline.voc.decode_label``).
    """

    def __init__(
        self, variants: list[str], num_classes: int, crf: CRFConfig, palette: list[list[int]] | None = None
    ) -> None:
        self.variants = list(variants)
        self.num_classes = num_classes
        self.crf = crf
        self.palette = palette

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from models.storage import read_url
        from pipeline.voc import decode_label

        mats = {v: ConfusionMatrix(self.num_classes) for v in self.variants}
        by_size = {f"{v}#{size}": ConfusionMatrix(self.num_classes) for v in self.variants for size in SIZES}
        recall = np.zeros((len(SIZES), 1 + len(RECALL_IOUS)), np.int64)
        with_sizes = "size_px" in batch
        failed, scored = [], 0
        for i, image_id in enumerate(batch["image_id"]):
            status, error = str(batch["status"][i]), str(batch["error"][i])
            if status == "ok":
                try:
                    label = decode_label(read_url(str(batch["label_path"][i])), self.palette)
                    image = batch["image"][i]
                    if label.shape != image.shape[:2]:
                        raise ValueError(f"label is {label.shape}, image is {image.shape[:2]}")
                    preds = {v: variant_labels(v, batch["parts"][i], image, self.crf) for v in self.variants}
                    for v, pred in preds.items():
                        mats[v].update(pred, label)
                    if with_sizes:
                        for s, size in enumerate(SIZES):
                            sized = label_for_size(label, batch["size_px"][i], s)
                            for v, pred in preds.items():
                                by_size[f"{v}#{size}"].update(pred, sized)
                        recall += batch["recall"][i]
                    scored += 1
                    continue
                except Exception as exc:
                    status, error = type(exc).__name__, f"scoring: {exc}"
            failed.append(f"{image_id}\t{status}\t{error}")
        if with_sizes:
            mats.update(by_size)
        names = list(mats) + [""]
        return {
            "variant": np.array(names, dtype=object),
            "matrix": object_column([m.mat.reshape(-1) for m in mats.values()] + [np.zeros(0, np.int64)]),
            "scored": np.array([scored] * len(mats) + [0], dtype=np.int64),
            "failed": object_column([[] for _ in mats] + [failed]),
            "recall": object_column([np.zeros_like(recall)] * len(mats) + [recall]),
        }
