"""Ray Data datasets of training / validation examples for one stage, and the stage-2 proposal cache.

Chains (all CPU tasks; the trainer pulls them through ``ray.train.get_dataset_shard``,
so every epoch re-runs them and draws fresh random crops / mirrors):

    stage 1:      image ids -> instance_examples (one crop per instance) -> augment
    stage 2:      cached proposals -> proposal_examples (IoU rule) -> augment
    FCN:          image ids -> whole_image_examples (random crop/pad) -> augment (mirror)
    validation:   DeconvNet: instance crops, centre window; FCN: whole images, centred

Stage-2 proposals are computed once per run, as Ray Data tasks, and cached as
``<output>/proposals/<split>.parquet`` (image_id, tight boxes best first, scores);
a re-run (or a resumed run) reads the cache instead of recomputing.
"""

from __future__ import annotations

import dataclasses
import io
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from models.storage import atomic_write
from pipeline.examples import augment, image_proposals, instance_examples, proposal_examples, whole_image_examples
from pipeline.proposals import ProposalConfig
from pipeline.train_config import Stage, TrainConfig
from pipeline.voc import exists, join, read_bytes, read_split

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


def proposals_path(cfg: TrainConfig) -> str:
    return join(cfg.output, "proposals", f"{cfg.train_split.rsplit('/', 1)[-1].removesuffix('.txt')}.parquet")


def proposal_config(cfg: TrainConfig) -> ProposalConfig:
    return ProposalConfig(top_k=cfg.proposal_top_k, min_side=cfg.proposal_min_side, enlarge=1.0, edge_model=cfg.edge_model)


def cached_proposals(cfg: TrainConfig) -> list[dict]:
    """Tight proposals of every training image: read from the run's cache, or computed once and cached."""
    path = proposals_path(cfg)
    if exists(path):
        table = pq.read_table(io.BytesIO(read_bytes(path)))
        print(f"[train] stage-2 proposals: using the cache {path} ({table.num_rows} images)", flush=True)
        return table.to_pylist()
    ids = read_split(cfg.data, cfg.train_split)
    print(f"[train] stage-2 proposals: computing EdgeBoxes for {len(ids)} images -> {path}", flush=True)
    ds = _map(_ids_dataset([{"image_id": i} for i in ids], cfg), image_proposals, cfg,
              root=cfg.data, proposal=dataclasses.asdict(proposal_config(cfg)))
    rows = sorted(
        ({"image_id": str(r["image_id"]), "boxes": np.asarray(r["boxes"], np.float32).tolist(),
          "scores": np.asarray(r["scores"], np.float32).tolist()} for r in ds.iter_rows()),
        key=lambda r: r["image_id"],
    )
    schema = pa.schema([("image_id", pa.string()), ("boxes", pa.list_(pa.float32())), ("scores", pa.list_(pa.float32()))])
    table = pa.Table.from_pylist(rows, schema=schema)
    sink = io.BytesIO()
    pq.write_table(table, sink)
    atomic_write(path, sink.getvalue())  # the cache is complete or absent
    return rows


def train_dataset(cfg: TrainConfig, stage: Stage) -> ray.data.Dataset:
    if stage.examples == "proposals":
        rows = cached_proposals(cfg)
        rows = [{"image_id": r["image_id"], "boxes": np.asarray(r["boxes"], np.float32)} for r in rows]
    else:
        rows = [{"image_id": i} for i in read_split(cfg.data, cfg.train_split)]
    rows = rows * max(1, -(-MIN_EPOCH_IMAGES // max(len(rows), 1)))
    random.Random(0).shuffle(rows)  # spread images over blocks; blocks are re-ordered every epoch
    ds = _ids_dataset(rows, cfg).randomize_block_order()
    if stage.examples == "instances":
        ds = _map(ds, instance_examples, cfg, root=cfg.data, resize=cfg.resize)
    elif stage.examples == "proposals":
        ds = _map(ds, proposal_examples, cfg, root=cfg.data, resize=cfg.resize, min_iou=cfg.stage2_iou,
                  max_per_image=cfg.stage2_max_per_image)
    else:
        ds = _map(ds, whole_image_examples, cfg, root=cfg.data, size=cfg.fcn_size, train=True)
    crop = cfg.fcn_size if stage.examples == "whole_images" else cfg.crop
    return _map(ds, augment, cfg, crop=crop, mirror=cfg.mirror, train=True).select_columns(COLUMNS)


def val_dataset(cfg: TrainConfig, stage: Stage) -> ray.data.Dataset | None:
    if not cfg.val_split:
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
