"""Ray Data datasets of training / validation examples for one stage, and the stage-2 proposal cache.

Chains (all CPU tasks; the trainer pulls them through ``ray.train.get_dataset_shard``,
so every epoch re-runs them and draws fresh random crops / mirrors):

    stage 1:      image ids (pipeline.train.training_set) -> instance_examples (one crop per instance) -> augment
    stage 2:      cached proposals -> proposal_examples (IoU rule) -> augment
    FCN:          image ids -> whole_image_examples (random crop/pad) -> augment (mirror)
    validation:   DeconvNet: instance crops, centre window; FCN: whole images, centred

The training images are a :class:`pipeline.train.training_set.TrainingSet` (VOC train and SBD
lists, validation images removed, files checked), each row an ``image_id`` and its
``source`` (``voc`` or ``sbd``). Stage-2 proposals are computed once per run, as Ray
Data tasks, and cached as ``<output>/proposals/<training set name>.parquet`` (image_id,
tight boxes best first, scores; ``train.parquet`` for VOC train alone); a re-run (or a
resumed run) reads the cache instead of recomputing, unless it lacks an image of the
training set.
"""

from __future__ import annotations

import dataclasses
import io
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from models.storage import atomic_write, exists, join, read_url
from pipeline.proposals import ProposalConfig
from pipeline.train.config import Stage, TrainConfig
from pipeline.train.examples import augment, image_proposals, instance_examples, proposal_examples, whole_image_examples
from pipeline.train.training_set import TrainingSet
from pipeline.voc import read_split

COLUMNS = ["image", "label"]  # what reaches the trainer
_IDS_PER_TASK = 4  # images per example-construction batch
# A training "epoch" lists at least this many images (small sets are repeated, each
# repeat with its own random crops): every epoch restarts the streaming split, which
# costs more than a few images, and training is counted in iterations anyway.
MIN_EPOCH_IMAGES = 64


def _ids_dataset(rows: list[dict], cfg: TrainConfig) -> ray.data.Dataset:
    blocks = max(1, min(len(rows), 64, -(-len(rows) // _IDS_PER_TASK)))
    return ray.data.from_items(rows, override_num_blocks=blocks)


def _map(ds: ray.data.Dataset, fn, cfg: TrainConfig, **kwargs) -> ray.data.Dataset:
    return ds.map_batches(fn, fn_kwargs=kwargs, batch_size=_IDS_PER_TASK, num_cpus=cfg.data_cpus, batch_format="numpy")


def proposals_path(cfg: TrainConfig, training: TrainingSet) -> str:
    return join(cfg.output, "proposals", f"{training.name}.parquet")


def training_proposal_config(cfg: TrainConfig) -> ProposalConfig:
    """EdgeBoxes settings of the stage-2 training proposals: tight boxes (enlarged later, with the crops)."""
    return ProposalConfig(
        top_k=cfg.proposal_top_k, min_side=cfg.proposal_min_side, enlarge=1.0, edge_model=cfg.edge_model
    )


def cached_proposals(cfg: TrainConfig, training: TrainingSet) -> list[dict]:
    """Tight proposals of every training image (``image_id``, ``source``, ``boxes``, ``scores``):
    read from the run's cache, or computed once and cached."""
    path = proposals_path(cfg, training)
    sources = {r["image_id"]: r["source"] for r in training.rows}
    if exists(path):
        cached = {r["image_id"]: r for r in pq.read_table(io.BytesIO(read_url(path))).to_pylist()}
        if sources.keys() <= cached.keys():
            print(
                f"[train] stage-2 proposals: using the cache {path} ({len(sources)} of its {len(cached)} images)",
                flush=True,
            )
            return [{**cached[i], "source": s} for i, s in sources.items()]
        print(
            f"[train] stage-2 proposals: the cache {path} lacks {len(sources.keys() - cached.keys())} training "
            "images; recomputing it",
            flush=True,
        )
    print(f"[train] stage-2 proposals: computing EdgeBoxes for {len(sources)} images -> {path}", flush=True)
    ds = _map(
        _ids_dataset(training.rows, cfg),
        image_proposals,
        cfg,
        root=cfg.data,
        sbd=cfg.sbd,
        proposal=dataclasses.asdict(training_proposal_config(cfg)),
    )
    rows = sorted(
        (
            {
                "image_id": str(r["image_id"]),
                "boxes": np.asarray(r["boxes"], np.float32).tolist(),
                "scores": np.asarray(r["scores"], np.float32).tolist(),
            }
            for r in ds.iter_rows()
        ),
        key=lambda r: r["image_id"],
    )
    schema = pa.schema(
        [("image_id", pa.string()), ("boxes", pa.list_(pa.float32())), ("scores", pa.list_(pa.float32()))]
    )
    table = pa.Table.from_pylist(rows, schema=schema)
    sink = io.BytesIO()
    pq.write_table(table, sink)
    atomic_write(path, sink.getvalue())  # the cache is complete or absent
    return [{**r, "source": sources[r["image_id"]]} for r in rows]


def train_dataset(cfg: TrainConfig, stage: Stage, training: TrainingSet) -> ray.data.Dataset:
    if stage.examples == "proposals":
        rows = [
            {"image_id": r["image_id"], "source": r["source"], "boxes": np.asarray(r["boxes"], np.float32)}
            for r in cached_proposals(cfg, training)
        ]
    else:
        rows = [dict(r) for r in training.rows]
    rows = rows * max(1, -(-MIN_EPOCH_IMAGES // max(len(rows), 1)))
    random.Random(0).shuffle(rows)  # spread images over blocks; blocks are re-ordered every epoch
    ds = _ids_dataset(rows, cfg).randomize_block_order()
    if stage.examples == "instances":
        ds = _map(ds, instance_examples, cfg, root=cfg.data, sbd=cfg.sbd, resize=cfg.resize)
    elif stage.examples == "proposals":
        ds = _map(
            ds,
            proposal_examples,
            cfg,
            root=cfg.data,
            sbd=cfg.sbd,
            resize=cfg.resize,
            min_iou=cfg.stage2_iou,
            max_per_image=cfg.stage2_max_per_image,
        )
    else:
        ds = _map(ds, whole_image_examples, cfg, root=cfg.data, sbd=cfg.sbd, size=cfg.fcn_size, train=True)
    crop = cfg.fcn_size if stage.examples == "whole_images" else cfg.crop
    return _map(ds, augment, cfg, crop=crop, mirror=cfg.mirror, train=True).select_columns(COLUMNS)


def val_dataset(cfg: TrainConfig, stage: Stage) -> ray.data.Dataset | None:
    if cfg.data is None or not cfg.val_split:
        return None
    ids = read_split(cfg.data, cfg.val_split)[: cfg.val_max_images]
    if not ids:
        return None
    ds = _ids_dataset([{"image_id": i} for i in ids], cfg)
    if stage.examples == "whole_images":
        ds = _map(ds, whole_image_examples, cfg, root=cfg.data, size=cfg.fcn_size, train=False)
    else:
        ds = _map(ds, instance_examples, cfg, root=cfg.data, resize=cfg.resize)
        ds = _map(ds, augment, cfg, crop=cfg.crop, mirror=False, train=False)
    return ds.select_columns(COLUMNS)
