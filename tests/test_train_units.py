"""Training building blocks without Ray: config, LR schedule, BN population statistics
(pooled across two real gloo processes), checkpoint round trip and resume lookup."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file
from torch import nn

from models import DeconvNet, load_checkpoint
from models.checkpoint import CheckpointMeta
from pipeline.train.bn import population_statistics
from pipeline.train.config import TrainConfig
from pipeline.train.loop import learning_rate, update_plateau
from pipeline.train.state import (
    STATE_FILE,
    checkpoint_dir_name,
    latest_checkpoint,
    read_training_checkpoint,
    restore_momentum,
    save_training_checkpoint,
    weights_fingerprint,
)

ROOT = Path(__file__).resolve().parents[1]


def test_config_defaults_follow_the_papers():
    cfg = TrainConfig(data="d", output="o")
    assert cfg.stages == ("1", "2") and cfg.iterations == (20000, 40000)
    assert (cfg.lr, cfg.momentum, cfg.weight_decay, cfg.global_batch) == (0.01, 0.9, 5e-4, 64)
    assert (cfg.resize, cfg.crop, cfg.stage2_iou) == (250, 224, 0.5)
    assert cfg.accumulation == 8  # 8 per worker x 1 worker x 8 micro-steps = 64
    assert TrainConfig(data="d", output="o", num_workers=4).accumulation == 2
    fcn = TrainConfig(data="d", output="o", model="fcn")
    assert fcn.stages == ("32", "16", "8") and fcn.lr == 1e-4 and fcn.global_batch == 20
    assert [s.name for s in fcn.plan()] == ["fcn32s", "fcn16s", "fcn8s"]
    assert [s.examples for s in cfg.plan()] == ["instances", "proposals"]
    for bad in (dict(stages=("2", "1")), dict(stages=("32",)), dict(batch_size=1), dict(crop=300),
                dict(iterations=(5,)), dict(lr_schedule="cosine")):
        with pytest.raises(ValueError):
            TrainConfig(data="d", output="o", **bad)


def test_job_flags_map_onto_the_config():
    spec = importlib.util.spec_from_file_location("train_job", ROOT / "jobs" / "train.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    args = job.get_args_parser().parse_args(
        ["--data", "s3://b/VOC2012", "--output", "s3://b/run", "--model", "deconvnet", "--stages", "1,2",
         "--backbone-weights", "imagenet", "--iterations", "100,200", "--no-mirror"])
    cfg = job.config_from_args(args)
    assert cfg.stages == ("1", "2") and cfg.iterations == (100, 200) and cfg.backbone_weights == "imagenet"
    assert cfg.mirror is False and cfg.lr == 0.01
    assert "ray job submit --working-dir . -- python jobs/train.py" in job.__doc__
    assert (cfg.sbd, cfg.sbd_splits, cfg.max_bad_examples) == (None, ("train", "val"), 10)
    # FCN's training set: SBD train only, validated on a list file of VOC images.
    fcn = job.config_from_args(job.get_args_parser().parse_args(
        ["--data", "s3://b/VOC2011", "--train-split", "", "--val-split", "s3://b/seg11valid.txt", "--sbd",
         "s3://b/dataset", "--sbd-splits", "train", "--max-bad-examples", "3", "--output", "o", "--model", "fcn"]))
    assert (fcn.train_split, fcn.val_split, fcn.sbd, fcn.sbd_splits, fcn.max_bad_examples) == (
        None, "s3://b/seg11valid.txt", "s3://b/dataset", ("train",), 3)


def test_training_data_must_be_given():
    assert TrainConfig(data=None, sbd="sbd", val_split="", output="o").val_split is None  # SBD alone, no validation
    for bad, match in ((dict(data=None), "no training data"), (dict(data=None, sbd="s"), "read from the VOC layout"),
                       (dict(data="d", train_split=""), "no training images"),
                       (dict(data="d", train_split="", sbd="s", sbd_splits=()), "no training images"),
                       (dict(data="d", max_bad_examples=-1), "max_bad_examples")):
        with pytest.raises(ValueError, match=match):
            TrainConfig(output="o", **bad)


def test_lr_schedules():
    cfg = TrainConfig(data="d", output="o", lr=1.0, lr_patience=2, lr_gamma=0.1)
    sched = {"lr_scale": 1.0, "best": -1.0, "bad": 0}
    for miou in (0.2, 0.3, 0.3, 0.29):  # improves, improves, stalls twice -> drop
        update_plateau(cfg, sched, miou)
    assert learning_rate(cfg, 0, sched, 100) == pytest.approx(0.1) and sched["bad"] == 0
    update_plateau(cfg, sched, float("nan"))  # no validation: no change
    assert sched["lr_scale"] == pytest.approx(0.1)
    step = TrainConfig(data="d", output="o", lr=1.0, lr_schedule="step", lr_step=10)
    assert [learning_rate(step, i, sched, 100) for i in (0, 9, 10, 25)] == pytest.approx([1, 1, 0.1, 0.01])
    poly = TrainConfig(data="d", output="o", lr=2.0, lr_schedule="poly", lr_power=0.9)
    assert [learning_rate(poly, i, sched, 100) for i in (0, 50, 99, 100)] == pytest.approx(
        [2.0, 2.0 * 0.5**0.9, 2.0 * 0.01**0.9, 0.0])


def test_population_statistics_single_worker():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    batches = [torch.randn(2, 3, 5, 5) * (i + 1) + i for i in range(3)]
    with torch.no_grad():
        feats = [net[0](b) for b in batches]
    net.eval()
    assert population_statistics(net, iter(batches), 3) == 1
    assert not net.training and net[1].momentum == 0.1  # mode and momentum restored
    means = torch.stack([f.mean(dim=(0, 2, 3)) for f in feats])
    vars_ = torch.stack([f.transpose(0, 1).reshape(4, -1).var(dim=1, unbiased=True) for f in feats])
    torch.testing.assert_close(net[1].running_mean, means.mean(0))
    torch.testing.assert_close(net[1].running_var, vars_.mean(0))


def _pooled_worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.manual_seed(0)
    bn = nn.BatchNorm1d(3)
    data = torch.randn(8, 3) * (1 + 2 * rank) + 5 * rank  # each worker sees a different distribution
    population_statistics(bn, iter([data]), 1)
    save_file(
        {"mean": bn.running_mean, "var": bn.running_var, "data": data}, os.path.join(out_dir, f"{rank}.safetensors")
    )
    dist.destroy_process_group()


def test_population_statistics_pooled_across_gloo_workers(tmp_path):
    mp.spawn(_pooled_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (load_file(tmp_path / f"{r}.safetensors") for r in (0, 1))
    torch.testing.assert_close(r0["mean"], r1["mean"])
    torch.testing.assert_close(r0["var"], r1["var"])
    # Law of total variance over the two equal-sized batches.
    m = torch.stack([r0["data"].mean(0), r1["data"].mean(0)])
    v = torch.stack([r0["data"].var(0, unbiased=True), r1["data"].var(0, unbiased=True)])
    torch.testing.assert_close(r0["mean"], m.mean(0))
    torch.testing.assert_close(r0["var"], (v + m * m).mean(0) - m.mean(0) ** 2)
    both = torch.cat([r0["data"], r1["data"]])
    torch.testing.assert_close(r0["mean"], both.mean(0))


def test_training_checkpoint_round_trip_and_latest(tmp_path):
    torch.manual_seed(0)
    model = DeconvNet(num_classes=3, width=1 / 32)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 224, 224)).mean().backward()
    opt.step()
    meta = CheckpointMeta(architecture="deconvnet", num_classes=3, width=1 / 32)
    run = tmp_path / "stage"
    for it in (4, 12, 8):
        save_training_checkpoint(str(run / checkpoint_dir_name(it)), model, opt, {"iteration": it}, meta)
    (run / checkpoint_dir_name(20)).mkdir()  # incomplete: ignored
    (run / checkpoint_dir_name(20) / STATE_FILE).write_text(json.dumps({"iteration": 20}))
    latest = latest_checkpoint(str(run))
    assert latest.endswith(checkpoint_dir_name(12))
    assert latest_checkpoint(str(tmp_path / "missing")) is None

    weights, momentum, state = read_training_checkpoint(latest)
    assert state == {"iteration": 12}
    fresh = DeconvNet(num_classes=3, width=1 / 32)
    fresh.load_state_dict(weights)
    assert weights_fingerprint(fresh) == weights_fingerprint(model)
    opt2 = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    restore_momentum(fresh, opt2, momentum)
    for (_, p), (_, q) in zip(model.named_parameters(), fresh.named_parameters()):
        torch.testing.assert_close(opt.state[p]["momentum_buffer"], opt2.state[q]["momentum_buffer"])
    # The model file inside a training checkpoint is a regular project checkpoint.
    loaded, meta2 = load_checkpoint(os.path.join(latest, "model.safetensors"))
    assert meta2.architecture == "deconvnet" and weights_fingerprint(loaded) == weights_fingerprint(model)


def test_memory_urls_are_refused_before_any_work():
    from pipeline.train.run import check_paths_and_resources

    with pytest.raises(ValueError, match="Ray workers cannot see it"):
        check_paths_and_resources(TrainConfig(data="memory://voc", output="/tmp/run"))


def test_local_paths_become_absolute_urls_stay(tmp_path, monkeypatch):
    # Ray Train workers run in a directory of their own: a relative --output broke stage 2's init.
    monkeypatch.chdir(tmp_path)
    cfg = TrainConfig(data="voc", output="runs/x", init_from="a.safetensors", backbone_weights="vgg.pth")
    assert (cfg.data, cfg.output) == (str(tmp_path / "voc"), str(tmp_path / "runs" / "x"))
    assert cfg.init_from == str(tmp_path / "a.safetensors") and cfg.backbone_weights == str(tmp_path / "vgg.pth")
    remote = TrainConfig(data="s3://b/voc", output="gs://b/run", backbone_weights="imagenet")
    assert (remote.data, remote.output, remote.backbone_weights) == ("s3://b/voc", "gs://b/run", "imagenet")


def test_a_later_stage_alone_starts_from_the_earlier_stage_in_the_same_output(tmp_path, capsys):
    from pipeline.train.config import stage
    from pipeline.train.run import stage_init

    cfg = TrainConfig(
        data=str(tmp_path / "voc"), output=str(tmp_path / "run"), model="deconvnet", stages=("2",), iterations=(4,)
    )
    stage2 = stage("deconvnet", "2", 4)
    assert stage_init(cfg, stage2, None) is None  # nothing to start from yet: warned
    assert "normally starts from the previous stage's model" in capsys.readouterr().out
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "deconvnet-stage1.safetensors").write_bytes(b"x")
    assert stage_init(cfg, stage2, None) == str(tmp_path / "run" / "deconvnet-stage1.safetensors")
    assert stage_init(cfg, stage2, "/given.safetensors") == "/given.safetensors"  # --init-from wins
    assert stage_init(cfg, stage("deconvnet", "1", 4), None) is None  # stage 1 starts from scratch
