"""Settings of the stages both jobs share (model stage, dense CRF), importable without torch.

The segmentation job (``pipeline.segment_config.SegmentConfig``) and the evaluation job
(``pipeline.evaluation.config.EvalConfig``) each hold one of these per stage, and the
shared stages take them as they are: ``Segmenter`` an ``InferenceConfig``, the CRF a
``CRFConfig``. The CPU stages (CRF, writer) import this module, so it loads no torch
(its import time and memory per process: BENCHMARKS.md section 3). The proposals'
settings, ``ProposalConfig``, live with the proposal generator (``pipeline.proposals``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class InferenceConfig:
    ensemble: str = "mean"  # "mean" of DeconvNet and FCN-8s probabilities; "deconvnet" or "fcn" alone
    micro_batch: int = 32  # crops per DeconvNet forward pass, mixed across the images of a batch
    precision: str = "bf16"  # autocast dtype on CUDA: "bf16", "fp16" or "fp32"; CPU always runs fp32
    device: str | None = None  # None: "cuda" when available, else "cpu"
    # NHWC activations: faster for the narrow demo networks on CPU (BENCHMARKS.md section 3), the layout
    # tensor cores want on GPU; outputs equal the NCHW ones up to float rounding (~1e-9).
    channels_last: bool = True


@dataclass
class CRFConfig:
    """Fully connected CRF (Krahenbuhl & Koltun 2011) settings of the DeconvNet paper's code."""

    enabled: bool = True  # False: the mask is the argmax of the ensemble probabilities
    iterations: int = 10  # mean-field iterations
    gaussian_sxy: float = 3.0  # smoothness kernel: position std (px)
    gaussian_compat: float = 3.0  # smoothness kernel: Potts weight
    bilateral_sxy: float = 20.0  # appearance kernel: position std (px)
    bilateral_srgb: float = 3.0  # appearance kernel: colour std (0-255 units)
    bilateral_compat: float = 5.0  # appearance kernel: Potts weight
    # Class pruning (see pipeline.crf): a class is dropped before the CRF unless its probability
    # reaches prune_ratio x the leading class's on at least prune_min_area of the pixels; 0: no pruning.
    prune_ratio: float = 0.5
    prune_min_area: float = 0.001
