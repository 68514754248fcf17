"""The same steps as the Ray chain, one image at a time, in this process, without Ray.

Used to check that distribution changes nothing (tests compare the two) and handy for
debugging one image: ``reference_results(cfg, items)`` returns, per ``image_id``, the
status, error, mask and uncertainty the job would write.
"""

from __future__ import annotations

import numpy as np

from pipeline.crf import CRFStage
from pipeline.decode import decode_images, read_bytes
from pipeline.proposal_stage import ProposalStage
from pipeline.segment_config import SegmentConfig
from pipeline.segmenter import Segmenter


def reference_results(cfg: SegmentConfig, items: list[dict]) -> dict[str, dict]:
    """Run every item (dicts with ``path``, ``image_id``, ``status``, ``error``) through the stages alone."""
    propose = ProposalStage(cfg.proposals)
    segment = Segmenter(
        cfg.checkpoint if cfg.inference.ensemble != "fcn" else None,
        cfg.fcn_checkpoint if cfg.inference.ensemble != "deconvnet" else None,
        cfg.inference,
    )
    refine = CRFStage(cfg.crf)
    results = {}
    for item in items:
        batch = {k: np.array([item[k]], dtype=object) for k in ("path", "image_id", "status", "error")}
        batch = decode_images(read_bytes(batch), max_pixels=cfg.max_pixels)
        batch = refine(segment(propose(batch)))
        results[item["image_id"]] = {
            "status": str(batch["status"][0]),
            "error": str(batch["error"][0]),
            "mask": batch["mask"][0],
            "uncertainty": float(batch["uncertainty"][0]),
        }
    return results
