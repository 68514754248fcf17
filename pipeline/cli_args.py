"""Command-line options shared by the jobs that run the models (segment, evaluate).

Each ``add_*`` puts one group of options on a parser, with the defaults of the matching
dataclass; the matching ``*_config`` turns the parsed namespace into that dataclass.
"""

from __future__ import annotations

import argparse

from pipeline.proposals import ProposalConfig
from pipeline.stage_config import CRFConfig, InferenceConfig

# --ensemble choices; "none" is the old spelling of "deconvnet" (DeconvNet alone), still accepted.
ENSEMBLE_CHOICES = ("mean", "deconvnet", "fcn", "none")


def add_proposal_args(p: argparse.ArgumentParser) -> None:
    d = ProposalConfig()
    g = p.add_argument_group("proposals (EdgeBoxes)")
    g.add_argument("--top-k", type=int, default=d.top_k, help="proposals per image")
    g.add_argument(
        "--min-side", type=float, default=d.min_side, help="skip proposals shorter than this (px at a 500 px image)"
    )
    g.add_argument("--enlarge", type=float, default=d.enlarge, help="proposal enlargement factor")
    g.add_argument(
        "--edge-model",
        default=d.edge_model,
        help="OpenCV structured-edge model.yml.gz (path or URL); default: gradient edges",
    )
    g.add_argument(
        "--no-proposal-fallback",
        action="store_true",
        help="an image without proposals gets FCN alone instead of the whole image as one box",
    )


def proposal_config(args: argparse.Namespace) -> ProposalConfig:
    return ProposalConfig(
        top_k=args.top_k,
        min_side=args.min_side,
        enlarge=args.enlarge,
        edge_model=args.edge_model,
        fallback="none" if args.no_proposal_fallback else "image",
    )


def add_inference_args(p: argparse.ArgumentParser, *, batch_size: int, max_pixels: int) -> None:
    """Model-stage options; ``batch_size`` and ``max_pixels`` are the job config's own defaults."""
    d = InferenceConfig()
    g = p.add_argument_group("model stage")
    g.add_argument("--batch-size", type=int, default=batch_size, help="images per model-actor call (split layout)")
    g.add_argument("--micro-batch", type=int, default=d.micro_batch, help="crops per DeconvNet forward pass")
    g.add_argument(
        "--precision", default=d.precision, choices=["bf16", "fp16", "fp32"], help="autocast dtype on GPU"
    )
    g.add_argument("--device", default=d.device, help="model device (default: cuda when available)")
    g.add_argument("--max-pixels", type=int, default=max_pixels, help="larger images become error rows")


def inference_config(args: argparse.Namespace, ensemble: str = InferenceConfig.ensemble) -> InferenceConfig:
    """``ensemble`` may be a command-line spelling (``ENSEMBLE_CHOICES``)."""
    return InferenceConfig(
        ensemble="deconvnet" if ensemble == "none" else ensemble,
        micro_batch=args.micro_batch,
        precision=args.precision,
        device=args.device,
    )


def add_crf_args(p: argparse.ArgumentParser) -> None:
    d = CRFConfig()
    g = p.add_argument_group("dense CRF")
    g.add_argument("--crf-iterations", type=int, default=d.iterations)
    g.add_argument(
        "--crf-prune-ratio",
        type=float,
        default=d.prune_ratio,
        help="class pruning before the CRF: a class is kept where its probability reaches this fraction "
        "of the leading class's (0: keep all classes)",
    )
    g.add_argument(
        "--crf-prune-min-area",
        type=float,
        default=d.prune_min_area,
        help="... on at least this fraction of the image's pixels",
    )


def crf_config(args: argparse.Namespace, enabled: bool = True) -> CRFConfig:
    return CRFConfig(
        enabled=enabled,
        iterations=args.crf_iterations,
        prune_ratio=args.crf_prune_ratio,
        prune_min_area=args.crf_prune_min_area,
    )
