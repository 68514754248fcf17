"""Typed configuration of the segmentation job (``jobs/segment_dataset.py``).

One dataclass per concern: ``CRFConfig`` (dense CRF) and ``InferenceConfig`` (the model
stage), shared with the evaluation job in ``pipeline.stage_config`` (torch-free, so the CPU
stages that import this module never load torch), ``ProposalConfig`` (``pipeline.proposals``),
gathered in ``SegmentConfig``. ``config_hash`` covers exactly the settings that change what is written for an image.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

from pipeline.proposals import ProposalConfig
from pipeline.stage_config import CRFConfig, InferenceConfig

FORMATS = ("png", "parquet", "both")
CONFIDENCE_OUTPUTS = ("none", "png")
LAYOUTS = ("auto", "fused", "split")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm")


@dataclass
class SegmentConfig:
    input: str  # directory, glob, fsspec URL or manifest (.txt/.csv/.parquet list of paths)
    output: str  # directory or fsspec URL; masks at <output>/<image_id stem>.png
    checkpoint: str  # DeconvNet checkpoint (path or URL)
    fcn_checkpoint: str | None = None  # FCN-8s checkpoint; needed unless inference.ensemble == "deconvnet"
    format: str = "both"  # "png", "parquet" or "both"
    skip_existing: bool = True  # inputs that already have every requested output (or an error row) are skipped
    max_pixels: int = 40_000_000  # larger images become ImageTooLarge error rows
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS  # file suffixes listed from a folder/URL; () = every file
    # "png": a uint8 confidence map per image (max ensemble probability x 255, before the CRF), at
    # <output>/_confidence/<mask key> and in the Parquet rows' confidence_png; "none": no map.
    confidence: str = "none"
    # Pixels whose confidence (max ensemble probability, 0-1) is below this are void (255) in the mask; 0: none.
    min_confidence: float = 0.0
    proposals: ProposalConfig = field(default_factory=ProposalConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    crf: CRFConfig = field(default_factory=CRFConfig)
    # Execution (no effect on results).
    ray_address: str | None = None  # None: $RAY_ADDRESS (set inside `ray job submit`) or a new local Ray
    batch_size: int = 4  # images per model-actor call (split layout); their crops share DeconvNet micro-batches
    write_batch_size: int = 64  # rows per Parquet part file
    # "fused": decode, proposals, model and CRF of an image in one CPU actor, one actor per CPU; "split": one
    # actor pool per stage (model actors on GPUs); "auto": split with GPUs or --proposal/crf-actors, else fused.
    layout: str = "auto"
    model_actors: int | None = None  # None: one per GPU (split), one per CPU (fused), or from the CPUs
    model_gpus: float | None = None  # GPUs per model actor; None: 1 if the cluster has GPUs at start, else 0
    proposal_actors: int | None = None  # None: from the cluster's CPUs
    crf_actors: int | None = None  # None: from the cluster's CPUs
    # Object-store memory the run's queued data may use (Ray Data resource limit); None: room for a few
    # blocks of VOC-size images per actor (pipeline.segment.stage_resources). Bounds the data in flight.
    object_store_mb: float | None = None
    # Ray retries of a task / actor call whose process died (lost node, OOM kill, crash);
    # bounded so that an input that kills its worker every time fails the job, not hangs it.
    task_retries: int = 3
    progress_interval: float = 30.0  # seconds between rewrites of <output>/_progress.json and its driver-log line
    # Stop the job (exit 6) when no data moves between its stages for this long; 0 waits forever.
    stall_minutes: float = 30.0
    # The cluster adds nodes on demand: don't refuse it at start for what its nodes lack now.
    autoscaling: bool = False

    @property
    def formats(self) -> tuple[str, ...]:
        return ("png", "parquet") if self.format == "both" else (self.format,)

    @property
    def outputs(self) -> tuple[str, ...]:
        """``formats``, plus ``"confidence"`` when confidence maps are written as files (what a rerun checks)."""
        return self.formats + (("confidence",) if self.confidence == "png" and "png" in self.formats else ())

    def validate(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"--format must be one of {FORMATS}, got {self.format!r}")
        if self.inference.ensemble not in ("mean", "deconvnet", "fcn"):
            raise ValueError(f"ensemble must be mean, deconvnet or fcn, got {self.inference.ensemble!r}")
        if self.inference.ensemble != "deconvnet" and not self.fcn_checkpoint:
            raise ValueError(
                f"ensemble {self.inference.ensemble!r} needs --fcn-checkpoint "
                "(or use --ensemble deconvnet for DeconvNet alone)"
            )
        if self.confidence not in CONFIDENCE_OUTPUTS:
            raise ValueError(f"--confidence must be one of {CONFIDENCE_OUTPUTS}, got {self.confidence!r}")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ValueError(f"--min-confidence must be between 0 and 1 (a probability), got {self.min_confidence}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"--layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.layout == "fused" and (self.model_gpus or self.proposal_actors or self.crf_actors):
            raise ValueError(
                "--layout fused runs every stage in one pool of CPU actors (sized by --model-actors): "
                "--model-gpus, --proposal-actors and --crf-actors need --layout split"
            )
        if self.object_store_mb is not None and self.object_store_mb < 16:
            raise ValueError("object_store_mb must be >= 16 (MiB)")
        for name in ("batch_size", "write_batch_size", "max_pixels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.task_retries < 0:
            raise ValueError("task_retries must be >= 0")
        if not self.stall_minutes >= 0:
            raise ValueError("stall_minutes must be >= 0 (0: no limit)")
        if not self.progress_interval > 0:
            raise ValueError("progress_interval must be > 0 (seconds)")
        if self.inference.micro_batch < 1:
            raise ValueError("micro_batch must be >= 1")

    def result_settings(self) -> dict:
        """The settings that determine a mask or another output (checkpoints are identified by their own ids)."""
        return {
            "max_pixels": self.max_pixels,
            "confidence": self.confidence,
            "min_confidence": self.min_confidence,
            "proposals": dataclasses.asdict(self.proposals),
            "ensemble": self.inference.ensemble,
            "precision": self.inference.precision,
            "crf": dataclasses.asdict(self.crf),
        }

    def config_hash(self) -> str:
        blob = json.dumps(self.result_settings(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]
