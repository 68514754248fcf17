"""The same steps as the Ray chain, one image at a time, in this process, without Ray.

Used to check that distribution changes nothing (tests compare the two), as the body of
the fused layout's actor (``pipeline.fused_stage``), and handy for debugging one image:
``reference_results(cfg, items)`` returns, per ``image_id``, the status, error, mask and
uncertainty, mean confidence and entropy, and confidence map the job would write.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pipeline.crf import CRFStage, crf_stage_args
from pipeline.decode import decode_images, read_files
from pipeline.proposal_stage import ProposalStage
from pipeline.segment_config import SegmentConfig
from pipeline.segmenter import Segmenter


def stage_steps(cfg: SegmentConfig) -> list[tuple[str, Callable[[dict], dict]]]:
    """The job's stages, named, as in-process callables on one batch (everything but the write)."""
    propose = ProposalStage(cfg.proposals)
    segment = Segmenter(
        cfg.checkpoint if cfg.inference.ensemble != "fcn" else None,
        cfg.fcn_checkpoint if cfg.inference.ensemble != "deconvnet" else None,
        cfg.inference,
    )
    return [
        ("read", read_files),
        ("decode", lambda batch: decode_images(batch, max_pixels=cfg.max_pixels)),
        ("proposals", propose),
        ("model", segment),
        ("crf", CRFStage(**crf_stage_args(cfg))),
    ]


def reference_results(cfg: SegmentConfig, items: list[dict]) -> dict[str, dict]:
    """Run every item (dicts with ``path``, ``image_id``, ``status``, ``error``) through the stages alone."""
    steps = stage_steps(cfg)
    results = {}
    for item in items:
        batch = {k: np.array([item[k]], dtype=object) for k in ("path", "image_id", "status", "error")}
        for _, step in steps:
            batch = step(batch)
        results[item["image_id"]] = {
            "status": str(batch["status"][0]),
            "error": str(batch["error"][0]),
            "mask": batch["mask"][0],
            "uncertainty": float(batch["uncertainty"][0]),
            "mean_confidence": float(batch["mean_confidence"][0]),
            "mean_entropy": float(batch["mean_entropy"][0]),
            "confidence": batch["confidence"][0] if "confidence" in batch else None,
        }
    return results
