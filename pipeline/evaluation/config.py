"""Settings of the evaluation job, importable without torch or Ray.

The variants (paper Table 1 names): ``fcn`` (FCN-8s alone), ``deconvnet``,
``deconvnet+crf``, ``edeconvnet`` (mean of DeconvNet and FCN-8s probabilities),
``edeconvnet+crf``. A proposal sweep adds ``deconvnet@K`` (and ``edeconvnet@K`` with
an FCN), labels with instances the oracle variants ``deconvnet@oracle`` (and
``edeconvnet@oracle``): ``EvalConfig.all_variants``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.evaluation.diagnostics import SIZE_BOUNDS
from pipeline.proposals import ProposalConfig
from pipeline.stage_config import CRFConfig, InferenceConfig

VARIANTS = ("deconvnet", "deconvnet+crf", "edeconvnet", "edeconvnet+crf", "fcn")


@dataclass
class EvalConfig:
    data: str  # VOC root / URL, or a folder with images/ + masks/
    split: str = "val"
    checkpoint: str | None = None  # DeconvNet checkpoint (needed by deconvnet* and edeconvnet* variants)
    fcn_checkpoint: str | None = None  # FCN-8s checkpoint (needed by fcn and edeconvnet* variants)
    variants: tuple[str, ...] = VARIANTS
    proposal_sweep: tuple[int, ...] = ()  # e.g. (5, 10, 25, 50): mean IoU against proposals per image
    max_images: int | None = None  # evaluate only the first N images of the split (quick checks)
    skip_missing_labels: bool = False  # False: images without a label stop the job before any work (all named)
    max_pixels: int = 40_000_000
    proposals: ProposalConfig = field(default_factory=ProposalConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    crf: CRFConfig = field(default_factory=CRFConfig)
    batch_size: int = 4  # images per model-actor call
    diagnostics: bool = True  # labels with instances: proposal recall, oracle variants, mean IoU by object size
    size_bounds: tuple[float, float] = SIZE_BOUNDS  # instance area / image area between small, medium and large
    ray_address: str | None = None  # None: $RAY_ADDRESS (set inside `ray job submit`) or a new local Ray
    stall_minutes: float = 30.0  # stop (exit 6) when no image has been scored for this long; 0: never
    autoscaling: bool = False  # the cluster adds nodes on demand: don't refuse it for what it lacks now

    def needs(self) -> tuple[bool, bool]:
        """(needs DeconvNet, needs FCN) for the requested variants."""
        names = set(self.variants) | ({"deconvnet"} if self.proposal_sweep else set())
        deconv = any(v.startswith(("deconvnet", "edeconvnet")) for v in names)
        fcn = any(v.startswith(("fcn", "edeconvnet")) for v in names)
        return deconv, fcn

    def validate(self) -> None:
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown or not self.variants:
            raise ValueError(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
        deconv, fcn = self.needs()
        if deconv and not self.checkpoint:
            raise ValueError("the requested variants need --checkpoint (a DeconvNet checkpoint)")
        if fcn and not self.fcn_checkpoint:
            raise ValueError("the requested variants need --fcn-checkpoint (an FCN-8s checkpoint)")
        if any(k < 1 for k in self.proposal_sweep):
            raise ValueError("--proposals values must be >= 1")

    def all_variants(self, oracle: bool = False) -> list[str]:
        """Requested variants, then the sweep's ``deconvnet@K`` (and ``edeconvnet@K`` with an ensemble),
        then with ``oracle`` (labels with instances) ``deconvnet@oracle`` (and ``edeconvnet@oracle``)."""
        bases = ["deconvnet"] + (["edeconvnet"] if self.needs()[1] else [])
        sweep = [f"{b}@{k}" for k in self.proposal_sweep for b in bases]
        oracles = [f"{b}@oracle" for b in bases] if oracle and self.needs()[0] else []
        return list(self.variants) + sweep + oracles
