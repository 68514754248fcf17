"""Settings of the model stage (``pipeline.segmenter.Segmenter``), importable without torch.

``pipeline.segment_config`` gathers every stage's settings, and the CPU stages (CRF,
writer) import it: keeping this dataclass apart from the segmenter means those
processes never load torch (its import time and memory per process: BENCHMARKS.md section 3).
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
