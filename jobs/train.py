"""Train DeconvNet (two stages) or FCN (32s -> 16s -> 8s) on PASCAL VOC 2012 (+ SBD) with Ray Train.

DeconvNet's training set (VOC 2012 train + SBD train + SBD val, minus VOC 2012 val):

    ray job submit --working-dir . -- python jobs/train.py \
        --data s3://bucket/VOC2012 --sbd s3://bucket/benchmark_RELEASE/dataset --sbd-splits train,val \
        --model deconvnet --stages 1,2 \
        --backbone-weights imagenet --num-workers 8 --output s3://bucket/runs/deconvnet

FCN's (SBD train, validated on the seg11valid list of VOC 2011 val images):

    ray job submit --working-dir . -- python jobs/train.py \
        --data s3://bucket/VOC2011 --train-split "" --val-split s3://bucket/lists/seg11valid.txt \
        --sbd s3://bucket/benchmark_RELEASE/dataset --sbd-splits train \
        --model fcn --stages 32,16,8 \
        --backbone-weights imagenet --num-workers 8 --output s3://bucket/runs/fcn

Re-running the same command with the same ``--output`` resumes: finished stages are
skipped, an unfinished one continues from its latest checkpoint. Each stage's model
ends up at ``<output>/<stage>.safetensors`` (``deconvnet-stage2.safetensors``,
``fcn8s.safetensors``, ...), loadable with ``models.load_checkpoint``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python jobs/train.py`: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.ray_session import add_ray_address_arg, ensure_ray  # noqa: E402
from pipeline.train.config import LR_SCHEDULES, TrainConfig  # noqa: E402
from pipeline.train.run import TrainingRefused, run_training  # noqa: E402
from pipeline.train.training_set import TooManyBadExamples  # noqa: E402


def _csv(kind):
    return lambda s: tuple(kind(v) for v in s.split(",") if v.strip())


def get_args_parser() -> argparse.ArgumentParser:
    d = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--data",
        default=None,
        help="VOC 2012 layout root (local path or fsspec URL): its train split is trained on, its val "
        "split validates; optional with --sbd",
    )
    p.add_argument("--output", required=True, help="run directory (local path or URL); same value = resume")
    p.add_argument("--model", default=d["model"], choices=["deconvnet", "fcn"])
    p.add_argument("--stages", type=_csv(str), default=(), help="deconvnet: 1,2; fcn: 32,16,8 (default: all)")
    p.add_argument("--iterations", type=_csv(int), default=(), help="per stage, e.g. 20000,40000 (default: paper)")
    p.add_argument("--backbone-weights", default=None, help='"imagenet" or a torchvision VGG16(-BN) .pth file')
    p.add_argument(
        "--init-from", default=None, help="checkpoint the first stage starts from (e.g. a stage-1 or FCN-32s model)"
    )
    p.add_argument("--width", type=float, default=d["width"], help="channel multiplier (1.0 = paper)")
    p.add_argument("--train-split", default=d["train_split"], help='VOC images trained on; "" for none (SBD only)')
    p.add_argument(
        "--val-split",
        default=d["val_split"],
        help='a split name or a .txt list (path/URL) of --data images, never trained on; "" for no validation',
    )
    p.add_argument("--val-max-images", type=int, default=None)
    p.add_argument("--sbd", default=None, help="SBD's dataset/ folder (img/, cls/, inst/, train.txt, val.txt)")
    p.add_argument(
        "--sbd-splits",
        type=_csv(str),
        default=d["sbd_splits"],
        help="SBD lists added to the training set (names or .txt paths/URLs)",
    )
    p.add_argument(
        "--max-bad-examples",
        type=int,
        default=d["max_bad_examples"],
        help="training images with missing or unreadable files that are skipped (each logged with its "
        "path); one more stops the run before training",
    )
    p.add_argument("--resize", type=int, default=d["resize"], help="DeconvNet crops are warped to this square")
    p.add_argument("--crop", type=int, default=d["crop"], help="random training window of the resized crops")
    p.add_argument("--fcn-size", type=int, default=d["fcn_size"], help="FCN images are cropped/padded to this square")
    p.add_argument("--no-mirror", dest="mirror", action="store_false")
    p.add_argument(
        "--stage2-iou", type=float, default=d["stage2_iou"], help="keep proposals with IoU >= this with an instance"
    )
    p.add_argument("--stage2-max-per-image", type=int, default=None)
    p.add_argument("--proposal-top-k", type=int, default=d["proposal_top_k"])
    p.add_argument("--proposal-min-side", type=float, default=d["proposal_min_side"])
    p.add_argument("--edge-model", default=None, help="structured-edge model.yml.gz for EdgeBoxes")
    p.add_argument("--batch-size", type=int, default=d["batch_size"], help="per worker and micro-step")
    p.add_argument("--global-batch", type=int, default=None, help="default 64 (DeconvNet) / 20 (FCN), via accumulation")
    p.add_argument("--lr", type=float, default=None, help="default 0.01 (DeconvNet) / 1e-4 (FCN)")
    p.add_argument("--momentum", type=float, default=d["momentum"])
    p.add_argument("--weight-decay", type=float, default=d["weight_decay"])
    p.add_argument("--lr-schedule", default=d["lr_schedule"], choices=LR_SCHEDULES)
    p.add_argument("--lr-gamma", type=float, default=d["lr_gamma"])
    p.add_argument("--lr-patience", type=int, default=d["lr_patience"])
    p.add_argument("--lr-step", type=int, default=d["lr_step"])
    p.add_argument("--lr-power", type=float, default=d["lr_power"], help="exponent of the poly schedule")
    p.add_argument("--checkpoint-every", type=int, default=d["checkpoint_every"])
    p.add_argument("--keep-checkpoints", type=int, default=d["keep_checkpoints"])
    p.add_argument("--bn-batches", type=int, default=d["bn_batches"])
    p.add_argument("--num-workers", type=int, default=d["num_workers"])
    p.add_argument("--use-gpu", default=None, type=lambda s: s.lower() in ("1", "true", "yes"), help="default: auto")
    p.add_argument("--cpus-per-worker", type=float, default=d["cpus_per_worker"])
    p.add_argument("--data-cpus", type=float, default=d["data_cpus"])
    p.add_argument("--max-failures", type=int, default=d["max_failures"])
    p.add_argument("--log-every", type=int, default=d["log_every"])
    p.add_argument(
        "--no-channels-last",
        dest="channels_last",
        action="store_false",
        help="NCHW tensors in training (default NHWC: faster on CPU for narrow networks, BENCHMARKS.md section 6)",
    )
    add_ray_address_arg(p)
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(**{k: v for k, v in vars(args).items() if k != "ray_address"})  # "" splits become None


def main(args: argparse.Namespace) -> dict[str, str]:
    cfg = config_from_args(args)
    ensure_ray(args.ray_address)
    done = run_training(cfg)
    print(json.dumps(done, indent=1))
    return done


def cli(argv: list[str] | None = None) -> None:
    """The command line: usage errors exit 2, too many bad training images exit 1 with the files named."""
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.data is None and args.sbd is None:
        parser.error("give --data (a VOC layout), --sbd (SBD's dataset/ folder) or both")
    try:
        main(args)
    except TooManyBadExamples as exc:
        sys.exit(f"train: stopped: {exc}")
    except TrainingRefused as exc:  # before any training: GPUs torch cannot see, memory:// paths
        print(f"train: error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    cli()
