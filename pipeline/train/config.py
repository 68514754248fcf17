"""What a training run does: ``TrainConfig`` and the stages it expands to.

DeconvNet trains in two stages (1: ground-truth instance crops, 2: proposal crops,
initialised from stage 1). FCN trains as the paper's chain FCN-32s -> FCN-16s ->
FCN-8s, each initialised from the coarser one. A run directory (``output``) holds
one Ray Train run per stage plus the exported model of each finished stage.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

MODELS = ("deconvnet", "fcn")
STAGES = {"deconvnet": ("1", "2"), "fcn": ("32", "16", "8")}
# DeconvNet: 20k then 40k iterations (paper / released code). FCN: the paper gives no
# per-stage count for its 20-image batches; 10k iterations each is a starting point.
DEFAULT_ITERATIONS = {"1": 20000, "2": 40000, "32": 10000, "16": 10000, "8": 10000}
DEFAULT_GLOBAL_BATCH = {"deconvnet": 64, "fcn": 20}  # DeconvNet: 64 crops (8 x 8 accumulated); FCN: 20 images
LR_SCHEDULES = ("plateau", "step", "poly")
DEFAULT_LR = {"deconvnet": 0.01, "fcn": 1e-4}  # both papers' SGD rates (FCN-VGG16: 1e-4)


@dataclass
class TrainConfig:
    data: str | None  # VOC 2012 layout root: local folder or fsspec URL; None = SBD only, no validation
    output: str  # run directory (local or URL): Ray Train runs, proposal cache, exported models
    model: str = "deconvnet"  # "deconvnet" or "fcn"
    stages: tuple[str, ...] = ()  # subset of STAGES[model] in order; empty = all
    iterations: tuple[int, ...] = ()  # per stage; empty = DEFAULT_ITERATIONS
    backbone_weights: str | None = None  # None, "imagenet" or a torchvision VGG16(-BN) .pth path
    init_from: str | None = None  # checkpoint the first stage starts from (instead of backbone_weights)
    width: float = 1.0  # channel multiplier; 1.0 = the paper's networks
    train_split: str | None = "train"  # ImageSets/Segmentation/<split>.txt (or a .txt path/URL); None = no VOC images
    val_split: str | None = "val"  # None = no validation; its images are never trained on
    val_max_images: int | None = None  # validate on the first N val images only
    # SBD (pipeline.sbd): its dataset/ folder and the lists whose images join the training set.
    sbd: str | None = None
    sbd_splits: tuple[str, ...] = ("train", "val")  # <sbd>/<split>.txt (or .txt paths/URLs)
    max_bad_examples: int = 10  # training images with missing/unreadable files skipped before the run stops
    # Example geometry (paper: 250 then a random 224 crop; FCN images fit into fcn_size).
    resize: int = 250
    crop: int = 224
    fcn_size: int = 500  # FCN whole images are randomly cropped / padded to this square
    mirror: bool = True
    # Stage 2: EdgeBox proposals kept when IoU(tight proposal, tight instance box) >= stage2_iou.
    stage2_iou: float = 0.5
    stage2_max_per_image: int | None = None  # best-scoring kept proposals per image; None = all
    proposal_top_k: int = 50
    proposal_min_side: float = 112.0  # at a 500 px long side, like pipeline.proposals
    edge_model: str | None = None  # structured-edge model.yml.gz; None = built-in gradient edges
    # Optimisation (SGD as the papers).
    batch_size: int = 8  # per worker and micro-step; DeconvNet's 1x1 BN maps need >= 2
    global_batch: int | None = None  # None = DEFAULT_GLOBAL_BATCH; reached by gradient accumulation
    lr: float | None = None  # None = DEFAULT_LR
    momentum: float = 0.9
    weight_decay: float = 5e-4
    # "plateau": x lr_gamma when val mean IoU stalls; "step": x lr_gamma every lr_step iterations;
    # "poly": lr x (1 - iteration / stage iterations) ** lr_power (DeepLab's schedule, for short runs)
    lr_schedule: str = "plateau"
    lr_gamma: float = 0.1
    lr_patience: int = 3  # evaluations without improvement before a plateau drop
    lr_step: int = 10000
    lr_power: float = 0.9
    # Checkpoints, BN, cluster.
    checkpoint_every: int = 1000  # report metrics + checkpoint every K iterations (and at the end)
    keep_checkpoints: int = 2  # Ray Train keeps the newest K checkpoints of a stage
    bn_batches: int = 50  # batches per worker in the BN population-statistics pass before each checkpoint
    num_workers: int = 1
    use_gpu: bool | None = None  # None = GPUs when the cluster has one per worker
    cpus_per_worker: float = 1.0
    data_cpus: float = 1.0  # CPUs per Ray Data example-construction task
    max_failures: int = 3  # worker failures Ray Train recovers from (from the latest checkpoint)
    log_every: int = 1  # iteration log line every N iterations (rank 0)
    # NHWC activations and weights: faster CPU training of the narrow demo networks (BENCHMARKS.md
    # section 6), the layout tensor cores want on GPU; same maths.
    channels_last: bool = True
    crash_at: int | None = None  # testing only: fail once at this iteration, to exercise resume
    crash_exit: bool = False  # testing only: at crash_at, kill the worker process (os._exit) instead of raising

    def __post_init__(self) -> None:
        # Ray Train runs workers in their own working directory: local paths must be absolute.
        self.data, self.output, self.sbd = _absolute(self.data), _absolute(self.output), _absolute(self.sbd)
        self.train_split, self.val_split = self.train_split or None, self.val_split or None
        self.sbd_splits = tuple(str(s) for s in self.sbd_splits)
        if self.data is None and self.sbd is None:
            raise ValueError("no training data: give a VOC layout (data), an SBD folder (sbd), or both")
        if self.data is None and self.val_split is not None:
            raise ValueError(f"the validation split {self.val_split!r} is read from the VOC layout: give data, "
                             "or no validation (val_split None, --val-split '')")
        if not ((self.data is not None and self.train_split) or (self.sbd is not None and self.sbd_splits)):
            raise ValueError("no training images: no VOC train split and no SBD split")
        if self.max_bad_examples < 0:
            raise ValueError(f"max_bad_examples must be >= 0, got {self.max_bad_examples}")
        self.init_from, self.edge_model = _absolute(self.init_from), _absolute(self.edge_model)
        if self.backbone_weights not in (None, "imagenet"):
            self.backbone_weights = _absolute(self.backbone_weights)
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {self.model!r}")
        self.stages = tuple(str(s) for s in self.stages) or STAGES[self.model]
        unknown = [s for s in self.stages if s not in STAGES[self.model]]
        if unknown:
            raise ValueError(f"{self.model} has stages {STAGES[self.model]}, not {unknown}")
        order = [STAGES[self.model].index(s) for s in self.stages]
        if order != sorted(order) or len(set(order)) != len(order):
            raise ValueError(f"stages must be in order without repeats: {self.stages}")
        self.iterations = tuple(int(i) for i in self.iterations) or tuple(DEFAULT_ITERATIONS[s] for s in self.stages)
        if len(self.iterations) != len(self.stages):
            raise ValueError(f"{len(self.iterations)} iteration counts for {len(self.stages)} stages")
        if self.crop > self.resize:
            raise ValueError(f"crop {self.crop} is larger than resize {self.resize}")
        if self.model == "deconvnet" and self.batch_size < 2:
            raise ValueError("DeconvNet's BatchNorm after fc6/fc7 sees 1x1 maps: batch_size must be >= 2")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.global_batch is None:
            self.global_batch = DEFAULT_GLOBAL_BATCH[self.model]
        if self.lr is None:
            self.lr = DEFAULT_LR[self.model]

    @property
    def accumulation(self) -> int:
        """Micro-steps per optimizer step so that batch_size x workers x steps ~ global_batch."""
        return max(1, math.ceil(self.global_batch / (self.batch_size * self.num_workers) - 1e-9))

    def plan(self) -> list[Stage]:
        return [stage(self.model, s, n) for s, n in zip(self.stages, self.iterations)]


def _absolute(path: str | None) -> str | None:
    """Local paths made absolute; URLs (``scheme://``) and None unchanged."""
    if path is None or "://" in path:
        return path
    return os.path.abspath(path)


@dataclass
class Stage:
    name: str  # Ray Train run name and exported model name: "deconvnet-stage1", "fcn32s", ...
    key: str  # "1", "2", "32", "16", "8"
    architecture: str  # models.checkpoint architecture: "deconvnet", "fcn32s", ...
    examples: str  # "instances", "proposals" or "whole_images"
    iterations: int


def stage(model: str, key: str, iterations: int) -> Stage:
    if model == "deconvnet":
        return Stage(f"deconvnet-stage{key}", key, "deconvnet", "instances" if key == "1" else "proposals", iterations)
    return Stage(f"fcn{key}s", key, f"fcn{key}s", "whole_images", iterations)
