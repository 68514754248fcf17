"""Driver side of a training run: one Ray Train ``TorchTrainer`` per stage, chained.

Run directory layout (``cfg.output``, local or URL)::

    training_set.json                the training images (VOC train + SBD lists - validation), counts, skips
    proposals/<training set>.parquet stage-2 proposal cache (DeconvNet)
    <stage>/checkpoint_<iteration>/  Ray Train checkpoints of a stage (newest kept)
    <stage>.safetensors              the stage's final model, exported when it finishes
    <stage>.json                     its final metrics

Re-running the same command with the same output skips finished stages (their
exported model exists), resumes an unfinished one from its latest checkpoint, and
starts the next stage from the previous one's exported model.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import ray
from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from models.classes import VOC_CLASSES
from models.storage import atomic_write, exists, join, read_url
from pipeline.train.config import Stage, TrainConfig
from pipeline.train.config import stage as make_stage
from pipeline.train.data import train_dataset, val_dataset
from pipeline.train.loop import train_loop_per_worker
from pipeline.train.state import MODEL_FILE
from pipeline.train.training_set import TrainingSet, build_training_set, write_training_set
from pipeline.voc import read_class_names


def _storage_path(output: str) -> str:
    return output if "://" in output else os.path.abspath(output)


# A later stage starts from the one before it (paper: stage 2 from stage 1; FCN-16s from 32s, 8s from 16s).
PREVIOUS_STAGE = {"2": "1", "16": "32", "8": "16"}


def stage_init(cfg: TrainConfig, stage: Stage, init: str | None) -> str | None:
    """What ``stage`` starts from: ``init`` if given, else for a later stage the earlier stage's
    model in the same output (``--stages 2`` after ``--stages 1``), else None (with a warning)."""
    if init is not None or stage.key not in PREVIOUS_STAGE:
        return init
    earlier = final_model_path(cfg, make_stage(cfg.model, PREVIOUS_STAGE[stage.key], 0))
    if exists(earlier):
        return earlier
    print(f"[train] warning: {stage.name} normally starts from the previous stage's model; none given and "
          f"no {earlier} (list the earlier stage too, or pass --init-from)", flush=True)
    return None


def final_model_path(cfg: TrainConfig, stage: Stage) -> str:
    return join(cfg.output, f"{stage.name}.safetensors")


def use_gpu(cfg: TrainConfig) -> bool:
    if cfg.use_gpu is not None:
        return cfg.use_gpu
    return ray.cluster_resources().get("GPU", 0) >= cfg.num_workers


def train_stage(cfg: TrainConfig, stage: Stage, class_names: list[str], init: str | None,
                training: TrainingSet) -> dict:
    """Train one stage with Ray Train (resuming if it has checkpoints); returns its last metrics."""
    val = val_dataset(cfg, stage)
    datasets = {"train": train_dataset(cfg, stage, training)}
    if val is not None:
        datasets["val"] = val
    gpu = use_gpu(cfg)
    resources = {"CPU": cfg.cpus_per_worker, **({"GPU": 1} if gpu else {})}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "cfg": dataclasses.asdict(cfg),
            "stage": dataclasses.asdict(stage),
            "class_names": class_names,
            "init": init,
            "has_val": val is not None,
            "training_set": training.counts,
        },
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=gpu, resources_per_worker=resources),
        run_config=RunConfig(
            storage_path=_storage_path(cfg.output),
            name=stage.name,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
        ),
        datasets=datasets,
        # Only the training set is split (equal shards keep the workers in step); the val set is scored
        # whole by rank 0, since an equal split would drop up to num_workers - 1 of its examples.
        dataset_config=DataConfig(datasets_to_split=["train"]),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"{stage.name}: training finished without a checkpoint")
    with result.checkpoint.as_directory() as d:
        with open(os.path.join(d, MODEL_FILE), "rb") as f:
            atomic_write(final_model_path(cfg, stage), f.read())
    return {**(result.metrics or {}), "training_set": training.summary()}


class TrainingRefused(ValueError):
    """A setting the cluster cannot train with, found before any training (the job exits 2)."""


@ray.remote(num_cpus=0, num_gpus=1)
def _torch_sees_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def check_gpus_usable(cfg: TrainConfig) -> None:
    """Refuse GPU training when the cluster's GPUs are not CUDA devices torch can use.

    A node started with ``ray start --num-gpus=1`` but without a GPU (or without its
    driver) advertises a GPU that Ray will hand to a trainer, whose first CUDA call would
    then fail on every worker after the run started. One task on a GPU asks torch first.
    With no GPU in the cluster yet (an autoscaling cluster before its GPU nodes are up)
    there is nothing to ask; the trainers wait for the GPUs as Ray Train does.
    """
    if not use_gpu(cfg) or ray.cluster_resources().get("GPU", 0) < 1:
        return
    if not ray.get(_torch_sees_cuda.remote()):
        raise TrainingRefused(
            "the cluster advertises GPUs, but torch on a GPU node sees no CUDA device (a GPU declared with "
            "`ray start --num-gpus` on a machine without one, or without its driver); train on the CPUs with "
            "--use-gpu false"
        )


def check_paths_and_resources(cfg: TrainConfig) -> None:
    """Refuse what cannot work on a cluster; warn when Ray Data would have no CPU left."""
    for name, url in (("--data", cfg.data), ("--sbd", cfg.sbd), ("--output", cfg.output)):
        if url is not None and url.startswith("memory://"):
            raise TrainingRefused(f"{name} {url}: memory:// lives in one process; Ray workers cannot see it")
    check_gpus_usable(cfg)
    cpus = ray.cluster_resources().get("CPU", 0)
    free = cpus - cfg.num_workers * cfg.cpus_per_worker
    if free < cfg.data_cpus:
        print(f"[train] warning: {cpus:g} CPUs, {cfg.num_workers} x {cfg.cpus_per_worker:g} for the trainers leave "
              f"{free:g} for example construction, which asks {cfg.data_cpus:g} per task; unless the cluster "
              "scales up, lower --cpus-per-worker / --data-cpus or training will wait for data forever", flush=True)


def run_class_names(cfg: TrainConfig) -> list[str]:
    """The VOC layout's classes; with SBD they must be VOC's 21 (SBD's labels are VOC class indices)."""
    names = read_class_names(cfg.data) if cfg.data is not None else list(VOC_CLASSES)
    if cfg.sbd is not None and names != VOC_CLASSES:
        raise ValueError(f"SBD's labels are the 21 VOC classes, but {join(cfg.data, 'classes.txt')} lists {names}")
    return names


def run_training(cfg: TrainConfig) -> dict[str, str]:
    """Train every stage of ``cfg`` in order; returns ``{stage name: exported model path}``."""
    check_paths_and_resources(cfg)
    class_names = run_class_names(cfg)
    init = cfg.init_from
    done: dict[str, str] = {}
    training = None
    for stage in cfg.plan():
        final = final_model_path(cfg, stage)
        if exists(final):
            print(f"[train] {stage.name}: already finished ({final}), skipping", flush=True)
        else:
            if training is None:  # once per run, and only when a stage is left to train
                training = build_training_set(cfg, objects=cfg.model == "deconvnet")
                write_training_set(cfg, training)
            init = stage_init(cfg, stage, init)
            print(f"[train] {stage.name}: {stage.iterations} iterations on {cfg.num_workers} worker(s), "
                  f"global batch {cfg.batch_size * cfg.num_workers * cfg.accumulation} "
                  f"({cfg.batch_size} x {cfg.num_workers} workers x {cfg.accumulation} accumulated), "
                  f"starting from {init or cfg.backbone_weights or 'random init'}", flush=True)
            t0 = time.time()
            metrics = train_stage(cfg, stage, class_names, init, training)
            atomic_write(join(cfg.output, f"{stage.name}.json"), json.dumps(metrics, indent=1, default=str).encode())
            print(f"[train] {stage.name}: done in {time.time() - t0:.0f}s -> {final}", flush=True)
        done[stage.name] = final
        init = final
    return done


def stage_metrics(cfg: TrainConfig, stage_name: str) -> dict:
    return json.loads(read_url(join(cfg.output, f"{stage_name}.json")))
