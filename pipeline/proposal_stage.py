"""EdgeBox proposals as a Ray Data stage (the generator itself is ``pipeline.proposals``)."""

from __future__ import annotations

import numpy as np

from pipeline.faults import inject
from pipeline.proposals import ProposalConfig, ProposalGenerator
from pipeline.rows import RowStatus, object_column


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
        rows = RowStatus(batch, "proposals")
        found = rows.map(
            lambda i: tuple(a.astype(np.float32) for a in self.generate(batch["image"][i])),
            empty=(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)),
        )
        return {
            **batch,
            **rows.columns(),
            "boxes": object_column([b for b, _ in found]),
            "box_scores": object_column([s for _, s in found]),
        }
