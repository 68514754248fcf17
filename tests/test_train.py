"""Training with a real local Ray (2 CPU workers, gloo) on a tiny generated VOC-layout dataset.

Covers: DeconvNet stage 1 -> stage 2 (loss goes down, checkpoints load, stage 2 starts
from stage 1's exact weights, proposals cached once, a worker process killed part-way is
restarted by Ray Train from the last checkpoint), FCN-32s -> 16s -> 8s through ``jobs/train.py``
with an interrupted run resumed by re-running the same command, and both models on a VOC + SBD
(.mat) training set. Each Ray Train run costs ~30 s of fixed start/stop overhead on a 2-core
machine, so the scenarios share runs.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray
import torch
from safetensors.torch import load_file

from models import load_checkpoint
from models.classes import VOC_CLASSES
from models.fcn import FCN
from pipeline.demo.synthvoc import SYNTH_CLASSES
from pipeline.metrics import ConfusionMatrix
from pipeline.train.config import TrainConfig
from pipeline.train.data import val_dataset
from pipeline.train.run import run_training
from pipeline.train.state import MODEL_FILE, OPTIMIZER_FILE, STATE_FILE, latest_checkpoint, weights_fingerprint

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_local():
    # address="local": never attach to another Ray instance running on this machine.
    # 4 logical CPUs on a 2-core box: 2 train workers + room for Ray Data tasks.
    if ray.is_initialized():  # another module's Ray, sized for its own needs
        ray.shutdown()
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=True)
    yield
    ray.shutdown()


def _job():
    spec = importlib.util.spec_from_file_location("train_job", ROOT / "jobs" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _state(run_dir: str) -> dict:
    ckpt = latest_checkpoint(run_dir)
    assert ckpt is not None, f"no checkpoint under {run_dir}"
    return json.loads(Path(ckpt, STATE_FILE).read_text())


def _tiny(**kw) -> TrainConfig:
    base = dict(width=1 / 16, batch_size=2, global_batch=4, num_workers=2, bn_batches=2, data_cpus=0.5, log_every=1)
    return TrainConfig(**{**base, **kw})


def test_deconvnet_two_stages(ray_local, synth_voc, tmp_path):
    out = str(tmp_path / "run")
    # crash_at=10, crash_exit, max_failures=1: rank 0's process is killed (os._exit, as on a lost
    # node) once in stage 1; Ray Train restarts the worker group from the iteration-8 checkpoint.
    cfg = _tiny(data=synth_voc, output=out, model="deconvnet", iterations=(24, 4), resize=232, crop=224, lr=0.05,
                checkpoint_every=8, proposal_min_side=20, stage2_iou=0.5, crash_at=10, crash_exit=True,
                max_failures=1)
    done = run_training(cfg)
    assert list(done) == ["deconvnet-stage1", "deconvnet-stage2"]

    # Stage 1: restarted once at its checkpoint; the training loss went down.
    s1 = _state(os.path.join(out, "deconvnet-stage1"))
    assert os.path.exists(os.path.join(out, "deconvnet-stage1", "crashed_at_10"))
    assert s1["iteration"] == 24 and s1["starts"] == [0, 8]
    assert [h["iteration"] for h in s1["history"]] == [8, 16, 24]
    losses = [h["loss"] for h in s1["history"]]
    assert losses[-1] < losses[0], losses
    assert all(0 <= h["val_mean_iou"] <= 1 and h["examples_per_s"] > 0 for h in s1["history"])

    # Exported models load with the project's loader, with their provenance and classes.
    model1, meta1 = load_checkpoint(done["deconvnet-stage1"])
    assert (meta1.architecture, meta1.width, meta1.class_names) == ("deconvnet", 1 / 16, SYNTH_CLASSES)
    assert meta1.provenance["iteration"] == 24 and meta1.provenance["stage"] == "deconvnet-stage1"
    # BN running stats are population statistics recomputed over cfg.bn_batches batches just before the
    # export (a cumulative average from reset: the counter restarts at 0), not the training run's moving
    # averages (which would have counted every training step since the restart at iteration 8).
    bns = [m for m in model1.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 29 and all(int(m.num_batches_tracked) == cfg.bn_batches for m in bns)
    assert not torch.allclose(bns[0].running_var, torch.ones_like(bns[0].running_var))
    # The last val mean IoU of the history is the exported model's on the val examples, recomputed here
    # (pooled over the two workers' shards = the whole val set).
    cm = ConfusionMatrix(len(SYNTH_CLASSES), 255)
    mean = torch.tensor(meta1.mean).view(1, 3, 1, 1) * 255
    std = torch.tensor(meta1.std).view(1, 3, 1, 1) * 255
    with torch.no_grad():
        for ex in val_dataset(cfg, cfg.plan()[0]).iter_torch_batches(batch_size=8):
            x = (ex["image"].permute(0, 3, 1, 2).float() - mean) / std
            cm.update(model1.eval()(x).argmax(1), ex["label"].long())
    assert cm.compute()["mean_iou"] == pytest.approx(s1["history"][-1]["val_mean_iou"], abs=1e-3)
    assert cm.compute()["pixel_accuracy"] == pytest.approx(s1["history"][-1]["val_pixel_accuracy"], abs=1e-3)

    # The Ray checkpoint holds the model, the momentum buffers (safetensors) and JSON state.
    ckpt = latest_checkpoint(os.path.join(out, "deconvnet-stage1"))
    assert sorted(os.listdir(ckpt)) == sorted([MODEL_FILE, OPTIMIZER_FILE, STATE_FILE])
    momentum = load_file(os.path.join(ckpt, OPTIMIZER_FILE))
    assert set(momentum) == {n for n, p in model1.named_parameters() if p.requires_grad}
    assert load_checkpoint(os.path.join(ckpt, MODEL_FILE))[1].architecture == "deconvnet"

    # Stage 2 started from exactly stage 1's final weights (fingerprint before its first step).
    s2 = _state(os.path.join(out, "deconvnet-stage2"))
    assert s2["init_fingerprint"] == weights_fingerprint(model1)
    assert s2["iteration"] == 4 and s2["starts"] == [0]
    model2, _ = load_checkpoint(done["deconvnet-stage2"])
    assert weights_fingerprint(model2) != weights_fingerprint(model1)

    # Proposals were computed once and cached; a re-run skips finished stages and reuses them.
    cache = os.path.join(out, "proposals", "train.parquet")
    table = pq.read_table(cache)
    assert table.num_rows == 6 and table.column_names == ["image_id", "boxes", "scores"]
    before = (os.stat(cache).st_mtime_ns, os.stat(done["deconvnet-stage2"]).st_mtime_ns)
    assert run_training(cfg) == done
    assert (os.stat(cache).st_mtime_ns, os.stat(done["deconvnet-stage2"]).st_mtime_ns) == before


def test_fcn_chain_interrupted_and_resumed_through_job(ray_local, synth_voc, tmp_path):
    out = str(tmp_path / "fcn")
    job = _job()
    # Only FCN-16s runs long enough to reach crash_at=3; max_failures=0 makes the job fail there.
    argv = [
        "--data", synth_voc, "--output", out, "--model", "fcn", "--stages", "32,16,8", "--iterations", "2,5,2",
        "--width", "0.0625", "--fcn-size", "64", "--batch-size", "2", "--global-batch", "4", "--num-workers", "2",
        "--lr", "0.01", "--checkpoint-every", "2", "--bn-batches", "0", "--data-cpus", "0.5", "--max-failures", "0",
        "--keep-checkpoints", "1",
    ]
    args = job.get_args_parser().parse_args(argv)
    args.crash_at = 3  # test hook, not a command-line flag
    with pytest.raises(Exception, match="injected failure"):
        job.main(args)
    assert os.path.exists(os.path.join(out, "fcn32s.safetensors"))
    assert not os.path.exists(os.path.join(out, "fcn16s.safetensors"))
    assert _state(os.path.join(out, "fcn16s"))["iteration"] == 2

    # The same command again: FCN-32s is skipped, FCN-16s continues at iteration 2, then FCN-8s.
    done = job.main(args)
    assert list(done) == ["fcn32s", "fcn16s", "fcn8s"]
    s16 = _state(os.path.join(out, "fcn16s"))
    assert s16["starts"] == [0, 2] and s16["iteration"] == 5
    assert [h["iteration"] for h in s16["history"]] == [2, 4, 5]

    models = {name: load_checkpoint(path)[0] for name, path in done.items()}
    assert [m.stride for m in models.values()] == [32, 16, 8]
    assert load_checkpoint(done["fcn16s"])[1].provenance["iteration"] == 5
    # Each finer net started from the coarser one's trained weights (FCN.init_from_coarser).
    for coarse, fine in (("fcn32s", "fcn16s"), ("fcn16s", "fcn8s")):
        expected = FCN(num_classes=len(SYNTH_CLASSES), stride=models[fine].stride, width=1 / 16)
        expected.init_from_coarser(models[coarse])
        assert _state(os.path.join(out, fine))["init_fingerprint"] == weights_fingerprint(expected)
    x = torch.randn(1, 3, 70, 90)
    assert models["fcn8s"](x).shape == (1, len(SYNTH_CLASSES), 70, 90)
    # --keep-checkpoints 1: of FCN-16s's checkpoints at iterations 2, 4 and 5 only the newest is left; each
    # stage's <stage>.json holds its last metrics.
    kept = [p.name for p in Path(out, "fcn16s").glob("checkpoint_*") if p.is_dir()]
    assert kept == [Path(latest_checkpoint(os.path.join(out, "fcn16s"))).name]
    for name in done:
        metrics = json.loads(Path(out, f"{name}.json").read_text())
        assert metrics["stage"] == name and metrics["iteration"] == _state(os.path.join(out, name))["iteration"]


def test_voc_plus_sbd_both_models(ray_local, paper_sets, tmp_path):
    """The papers' training sets in miniature: two iterations of each model from SBD .mat files."""
    voc, sbd, leak, own, dup = (paper_sets[k] for k in ("voc", "sbd", "leak", "own", "dup"))
    voc_train = (Path(voc) / "ImageSets" / "Segmentation" / "train.txt").read_text().split()

    # DeconvNet: VOC train + SBD train + SBD val, minus VOC val (the leak, in SBD train, never trains).
    out = str(tmp_path / "deconvnet")
    cfg = _tiny(data=voc, sbd=sbd, sbd_splits=("train", "val"), output=out, model="deconvnet", iterations=(2, 2),
                resize=232, crop=224, checkpoint_every=2, bn_batches=1, proposal_min_side=20, val_max_images=1)
    done = run_training(cfg)
    assert list(done) == ["deconvnet-stage1", "deconvnet-stage2"]
    record = json.loads(Path(out, "training_set.json").read_text())
    counts = {"voc_train": 6, "sbd_train": 5, "sbd_val": 2, "union": 11, "in_val_removed": 1, "after_val_removal": 10,
              "bad_skipped": 0, "used": 10}
    assert record["counts"] == counts and record["skipped"] == []
    assert record["ids"] == {"voc": voc_train, "sbd": [own[0], own[1], own[2], own[3]]}  # dup read from VOC
    for name in done:
        assert json.loads(Path(out, f"{name}.json").read_text())["training_set"]["counts"] == counts
        model, meta = load_checkpoint(done[name])
        assert meta.class_names == VOC_CLASSES and meta.provenance["training_set"] == counts
        assert _state(os.path.join(out, name))["iteration"] == 2
    # Stage 2's proposals were computed for exactly the training images, SBD's included.
    cache = pq.read_table(os.path.join(out, "proposals", "train+sbd-train+sbd-val.parquet"))
    assert sorted(cache.column("image_id").to_pylist()) == sorted(voc_train + own)

    # FCN through the job: SBD train only, validated on a list of VOC val images (as seg11valid).
    valid = tmp_path / "seg11valid.txt"
    val_ids = (Path(voc) / "ImageSets" / "Segmentation" / "val.txt").read_text().split()[:2]
    valid.write_text("".join(f"{i}\n" for i in val_ids))
    assert leak in val_ids
    fcn_out = str(tmp_path / "fcn")
    job = _job()
    args = job.get_args_parser().parse_args([
        "--data", voc, "--train-split", "", "--val-split", str(valid), "--sbd", sbd, "--sbd-splits", "train",
        "--output", fcn_out, "--model", "fcn", "--stages", "32", "--iterations", "2", "--width", "0.0625",
        "--fcn-size", "64", "--batch-size", "2", "--global-batch", "4", "--num-workers", "2", "--checkpoint-every", "2",
        "--bn-batches", "1", "--data-cpus", "0.5", "--max-bad-examples", "0",
    ])
    done = job.main(args)
    record = json.loads(Path(fcn_out, "training_set.json").read_text())
    assert record["counts"] == {"sbd_train": 5, "union": 5, "in_val_removed": 1, "after_val_removal": 4,
                                "bad_skipped": 0, "used": 4}
    assert record["ids"] == {"sbd": [own[0], own[1], own[2], dup]}
    s32 = _state(os.path.join(fcn_out, "fcn32s"))
    assert s32["iteration"] == 2 and 0 <= s32["history"][-1]["val_mean_iou"] <= 1
    assert load_checkpoint(done["fcn32s"])[1].class_names == VOC_CLASSES
