"""EdgeBox proposals as a Ray Data stage (the generator itself is ``pipeline.proposals``)."""

from __future__ import annotations

import numpy as np

from pipeline.faults import inject
from pipeline.proposals import ProposalConfig, ProposalGenerator


def _objects(values: list) -> np.ndarray:
    column = np.empty(len(values), dtype=object)
    column[:] = values
    return column


class ProposalStage:
    """Adds ``boxes`` (float32 ``(K, 4)``, enlarged, best first) and their EdgeBoxes
    ``box_scores`` (float32 ``(K,)``; 0 for the whole-image fallback box) to each decoded row.

    A class because a structured-edge model (``cfg.edge_model``) is loaded once per
    actor. Rows in error pass through with no boxes; an image that makes EdgeBoxes
    fail becomes an error row.

    Args:
        cfg: proposal settings (paper defaults).
    """

    def __init__(self, cfg: ProposalConfig | None = None) -> None:
        self.generate = ProposalGenerator(cfg)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        inject("proposal_batch", batch.get("image_id", ()))  # tests only: a killed proposal actor
        status = [str(s) for s in batch["status"]]
        errors = [str(e) for e in batch["error"]]
        boxes, scores = [], []
        for i, image in enumerate(batch["image"]):
            b, s = np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)
            if status[i] == "ok":
                try:
                    b, s = (a.astype(np.float32) for a in self.generate(image))
                except Exception as exc:
                    status[i], errors[i] = type(exc).__name__, f"proposals: {exc}"
            boxes.append(b)
            scores.append(s)
        return {
            **batch,
            "status": np.array(status, dtype=object),
            "error": np.array(errors, dtype=object),
            "boxes": _objects(boxes),
            "box_scores": _objects(scores),
        }
