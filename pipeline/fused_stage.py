"""Decode, proposals, model and CRF of each image in one actor: the job's CPU-only layout.

Without GPUs the split layout (one actor pool per stage) runs 4 single-threaded actors
on 2 cores and hands each image's 2.8-7.9 MB of probabilities from the model actor to
a CRF actor through the object store. One actor per CPU that runs every step of an
image itself keeps each core on one process and the probabilities in that process,
and is faster than the split layout on CPUs (BENCHMARKS.md section 4a).
The steps are exactly the reference chain's (``pipeline.reference.stage_steps``), so
the masks are the same; with GPUs the model stays in its own GPU actors (split layout).
"""

from __future__ import annotations

import numpy as np

from pipeline.reference import stage_steps
from pipeline.segment_config import SegmentConfig


class FusedStage:
    """Turns read rows (their ``bytes`` column) into masked rows, like decode -> proposals -> model -> CRF.

    Every step catches its own per-row failures into ``status``/``error``, so an image
    that fails anywhere becomes an error row and the rest of the batch goes on.

    Args:
        cfg: the job's settings (proposals, inference, CRF, max pixels).
    """

    def __init__(self, cfg: SegmentConfig) -> None:
        self.steps = [step for name, step in stage_steps(cfg) if name != "read"]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for step in self.steps:
            batch = step(batch)
        return batch
