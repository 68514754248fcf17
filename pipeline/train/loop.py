"""The Ray Train loop run by every worker (``train_loop_per_worker``).

One call trains one stage. It builds the model (resumed from the latest checkpoint,
or initialised from the previous stage / a given checkpoint / ImageNet), wraps it for
data parallelism, and runs SGD for ``stage.iterations`` optimizer steps: each step
accumulates ``cfg.accumulation`` micro-batches of ``cfg.batch_size`` examples per
worker (cross-entropy ignoring 255, mean over labelled pixels). Every
``checkpoint_every`` iterations and at the end it runs the BN population pass
(``pipeline.train.bn``), validates (``ConfusionMatrix``, pooled across workers),
updates the learning-rate schedule, and reports metrics with a checkpoint
(``pipeline.train.state``) through ``ray.train.report``.

Resume: ``ray.train.get_checkpoint()`` (after a worker failure, or when a re-run
finds Ray Train's run snapshot), else the newest complete checkpoint in the stage's
run dir, scanned by each worker as it starts (right after a worker died Ray Train may
not hand back the checkpoint reported just before; the CI once saw a restart from
scratch; a re-run with the same output also finds its checkpoints this way). The
iteration counter, momentum buffers and schedule state continue.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from models import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD, CheckpointMeta, build_model, load_checkpoint
from models.fcn import FCN
from models.storage import atomic_write, exists, join
from pipeline.faults import KILL_EXIT_CODE
from pipeline.metrics import ConfusionMatrix
from pipeline.train.bn import population_statistics
from pipeline.train.config import Stage, TrainConfig
from pipeline.train.state import (
    checkpoint_dir_name,
    latest_checkpoint,
    read_training_checkpoint,
    restore_momentum,
    save_training_checkpoint,
    weights_fingerprint,
)

# --- model initialisation ------------------------------------------------------------------------


def initial_model(
    cfg: TrainConfig, stage: Stage, num_classes: int, init_path: str | None, *, download: bool
) -> nn.Module:
    """The model a stage starts from when there is nothing to resume.

    ``init_path`` (previous stage or ``--init-from``): same architecture -> its weights;
    a coarser FCN -> ``FCN.init_from_coarser`` (32s -> 16s -> 8s). Otherwise the
    backbone weights (only when ``download``; other workers get rank 0's weights from
    DDP's initial broadcast).
    """
    if init_path is None:
        weights = cfg.backbone_weights if download else None
        return build_model(stage.architecture, num_classes=num_classes, width=cfg.width, backbone_weights=weights)
    model = build_model(stage.architecture, num_classes=num_classes, width=cfg.width)
    source, meta = load_checkpoint(init_path)
    if (meta.num_classes, meta.width) != (num_classes, cfg.width):
        raise ValueError(
            f"{init_path}: {meta.num_classes} classes / width {meta.width}, this run has {num_classes} / {cfg.width}"
        )
    if meta.architecture == stage.architecture:
        model.load_state_dict(source.state_dict())
    elif isinstance(model, FCN) and isinstance(source, FCN):
        model.init_from_coarser(source)
    else:
        raise ValueError(f"cannot start {stage.architecture} from a {meta.architecture} checkpoint")
    return model


# --- small helpers -------------------------------------------------------------------------------


class _Normalise:
    def __init__(self, device: torch.device, memory_format: torch.memory_format = torch.contiguous_format) -> None:
        self.mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1) * 255
        self.device = device
        self.memory_format = memory_format

    def __call__(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x = batch["image"].to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        y = batch["label"].to(self.device, non_blocking=True).long()
        return ((x - self.mean) / self.std).contiguous(memory_format=self.memory_format), y


def _batches_forever(shard, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
    # Epoch after epoch of the worker's shard; the shards are equal-sized, so every
    # worker sees the same number of full batches per epoch and they stay in step.
    while True:
        n = 0
        for batch in shard.iter_torch_batches(
            batch_size=batch_size, drop_last=True, local_shuffle_buffer_size=4 * batch_size
        ):
            n += 1
            yield batch
        if n == 0:
            raise RuntimeError(
                f"an epoch of this worker's shard has no full batch of {batch_size} examples: too few training "
                "examples for this many workers (stage 2: too few proposals pass --stage2-iou)"
            )


def _log(message: str) -> None:
    # Straight to the process's stdout (forwarded to the driver by Ray): Ray Train's
    # print patch would otherwise emit every line twice (its logger and a tee).
    stream = sys.__stdout__ or sys.stdout
    stream.write(message + "\n")
    stream.flush()


def _all_reduce(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Sum a CPU tensor over all workers in place (through ``device``: NCCL reduces GPU tensors only)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        on_device = t.to(device)
        dist.all_reduce(on_device)
        t.copy_(on_device.cpu())
    return t


def learning_rate(cfg: TrainConfig, iteration: int, sched: dict[str, Any], total: int) -> float:
    """The rate of ``iteration`` (0-based) of a stage of ``total`` iterations."""
    if cfg.lr_schedule == "step":
        return cfg.lr * cfg.lr_gamma ** (iteration // cfg.lr_step)
    if cfg.lr_schedule == "poly":
        return cfg.lr * max(0.0, 1.0 - iteration / total) ** cfg.lr_power
    return cfg.lr * sched["lr_scale"]


def update_plateau(cfg: TrainConfig, sched: dict[str, Any], val_miou: float) -> None:
    """Drop the learning rate by ``lr_gamma`` after ``lr_patience`` evaluations without a better val mean IoU."""
    if cfg.lr_schedule != "plateau" or math.isnan(val_miou):
        return
    if val_miou > sched["best"] + 1e-4:
        sched["best"], sched["bad"] = val_miou, 0
        return
    sched["bad"] += 1
    if sched["bad"] >= cfg.lr_patience:
        sched["lr_scale"] *= cfg.lr_gamma
        sched["bad"] = 0


@torch.no_grad()
def validate(
    model: nn.Module, val_set, normalise: _Normalise, batch_size: int, num_classes: int, rank: int
) -> dict[str, Any]:
    """Confusion-matrix metrics of the whole validation set, the same on every worker.

    The val set is not split between the workers (``pipeline.train.run.train_stage``): Ray Train's
    split gives equal shards by dropping up to ``workers - 1`` examples, which would leave
    them out of the metrics. Rank 0 scores every example; the matrix reaches the others
    through the same all-reduce (they add zeros), which also keeps the workers in step.
    """
    model.eval()
    cm = ConfusionMatrix(num_classes, IGNORE_INDEX)
    if rank == 0:
        for batch in val_set.iter_torch_batches(batch_size=batch_size, drop_last=False):
            x, y = normalise(batch)
            cm.update(model(x).argmax(1).cpu(), y.cpu())
    model.train()
    pooled = _all_reduce(torch.from_numpy(cm.mat.copy()), normalise.device)
    cm.mat[:] = pooled.numpy()
    return cm.compute()


def _maybe_crash(cfg: TrainConfig, stage: Stage, iteration: int, rank: int) -> None:
    # Test hook: fail once (a marker in the run dir remembers it) to exercise resume.
    if cfg.crash_at is None or iteration != cfg.crash_at or rank != 0:
        return
    marker = join(cfg.output, stage.name, f"crashed_at_{iteration}")
    if exists(marker):
        return
    atomic_write(marker, b"injected failure\n")
    if cfg.crash_exit:  # the process dies as on a lost node or an OOM kill: no exception reaches Ray Train
        os._exit(KILL_EXIT_CODE)
    raise RuntimeError(f"injected failure at iteration {iteration} (crash_at)")


# --- the loop ------------------------------------------------------------------------------------


def train_loop_per_worker(config: dict[str, Any]) -> None:
    cfg = TrainConfig(**config["cfg"])
    stage = Stage(**config["stage"])
    class_names: list[str] = config["class_names"]
    num_classes = len(class_names)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(1234 + rank)

    # Model: resume > previous stage / --init-from > backbone weights.
    checkpoint = ray.train.get_checkpoint()
    resumed = None
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            resumed = read_training_checkpoint(d)
    elif resume_from := latest_checkpoint(join(cfg.output, stage.name)):
        # Looked up here, not only on the driver: after a worker died, Ray Train may not yet hand
        # back the checkpoint the workers reported just before, but it is complete on disk.
        resumed = read_training_checkpoint(resume_from)
    if resumed is not None:
        model = build_model(stage.architecture, num_classes=num_classes, width=cfg.width)
        model.load_state_dict(resumed[0])
        state = resumed[2]
        _log(f"[{stage.name}] rank {rank}: resuming at iteration {state['iteration']}")
    else:
        model = initial_model(cfg, stage, num_classes, config.get("init"), download=rank == 0)
        state = {"iteration": 0, "sched": {"lr_scale": 1.0, "best": -1.0, "bad": 0}, "history": [], "starts": []}
    state["starts"].append(state["iteration"])

    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    model = ray.train.torch.prepare_model(model)  # DDP when world > 1 (broadcasts rank 0's weights)
    module = model.module if hasattr(model, "module") else model
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if resumed is not None:
        restore_momentum(module, optimizer, resumed[1])
    if "init_fingerprint" not in state:
        state["init_fingerprint"] = weights_fingerprint(module)  # what the first step starts from

    normalise = _Normalise(device, memory_format)
    train_batches = _batches_forever(ray.train.get_dataset_shard("train"), cfg.batch_size)
    val_set = ray.train.get_dataset_shard("val") if config.get("has_val") else None  # whole, not split
    meta = CheckpointMeta(
        architecture=stage.architecture, num_classes=num_classes, width=cfg.width, class_names=class_names
    )
    accum = cfg.accumulation
    examples_per_step = cfg.batch_size * accum * world
    window = torch.zeros(3, dtype=torch.float64)  # loss sum, correct pixels, labelled pixels
    window_steps, window_time = 0, 0.0
    reported_at = None
    model.train()

    def report() -> None:
        nonlocal window, window_steps, window_time, reported_at
        it = state["iteration"]
        population_statistics(module, lambda: normalise(next(train_batches))[0], cfg.bn_batches)
        val = validate(module, val_set, normalise, cfg.batch_size, num_classes, rank) if val_set is not None else None
        metrics = {
            "stage": stage.name,
            "iteration": it,
            "loss": float(window[0] / max(window[2], 1)) if window_steps else float("nan"),
            "pixel_accuracy": float(window[1] / max(window[2], 1)) if window_steps else float("nan"),
            "val_mean_iou": val["mean_iou"] if val else float("nan"),
            "val_pixel_accuracy": val["pixel_accuracy"] if val else float("nan"),
            "lr": learning_rate(cfg, it, state["sched"], stage.iterations),
            "examples_per_s": examples_per_step * window_steps / window_time if window_time else float("nan"),
        }
        if val:
            update_plateau(cfg, state["sched"], val["mean_iou"])
        state["history"].append(metrics)
        with tempfile.TemporaryDirectory() as d:
            ckpt = None
            if rank == 0:
                meta.provenance = {
                    "data": cfg.data,
                    "stage": stage.name,
                    "iteration": it,
                    "metrics": metrics,
                    "train_split": cfg.train_split,
                    "val_iou": val["iou"] if val else None,
                    "sbd": cfg.sbd,
                    "sbd_splits": list(cfg.sbd_splits) if cfg.sbd else None,
                    "training_set": config.get("training_set"),
                }
                save_training_checkpoint(d, module, optimizer, state, meta)
                ckpt = ray.train.Checkpoint.from_directory(d)
            ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=checkpoint_dir_name(it))
        if rank == 0:
            _log(
                f"[{stage.name}] checkpoint at iteration {it}: loss {metrics['loss']:.4f} "
                f"pixel acc {metrics['pixel_accuracy']:.3f} val mIoU {metrics['val_mean_iou']:.3f}"
            )
        window = torch.zeros(3, dtype=torch.float64)
        window_steps, window_time = 0, 0.0
        reported_at = it

    while state["iteration"] < stage.iterations:
        t0 = time.perf_counter()
        lr = learning_rate(cfg, state["iteration"], state["sched"], stage.iterations)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        step = torch.zeros(3, dtype=torch.float64)
        for micro in range(accum):
            x, y = normalise(next(train_batches))
            sync = contextlib.nullcontext() if micro == accum - 1 or world == 1 else model.no_sync()
            with sync:
                logits = model(x)
                loss_sum = F.cross_entropy(logits, y, ignore_index=IGNORE_INDEX, reduction="sum")
                labelled = (y != IGNORE_INDEX).sum()
                (loss_sum / labelled.clamp(min=1) / accum).backward()
            correct = ((logits.argmax(1) == y) & (y != IGNORE_INDEX)).sum()
            step += torch.stack([loss_sum.detach().double().cpu(), correct.double().cpu(), labelled.double().cpu()])
        optimizer.step()
        state["iteration"] += 1
        it = state["iteration"]
        _all_reduce(step, device)
        dt = time.perf_counter() - t0
        window += step
        window_steps += 1
        window_time += dt
        if rank == 0 and (it % cfg.log_every == 0 or it == stage.iterations):
            _log(
                f"[{stage.name}] iter {it}/{stage.iterations} loss {float(step[0] / max(step[2], 1)):.4f} "
                f"lr {lr:.3g} {examples_per_step / dt:.1f} examples/s"
            )
        _maybe_crash(cfg, stage, it, rank)
        if it % cfg.checkpoint_every == 0 or it == stage.iterations:
            report()
    if reported_at != state["iteration"]:
        report()  # resumed at (or past) the end: hand the final state back to the driver
