"""Evaluate checkpoints on a labelled set and flag regressions against a baseline report.

::

    ray job submit --working-dir . -- python jobs/evaluate.py \\
        --data s3://bucket/VOC2012 --split val \\
        --checkpoint deconvnet.safetensors --fcn-checkpoint fcn8s.safetensors \\
        --output s3://bucket/reports/2026-11-22 --baseline s3://bucket/reports/2026-11-21/report.json

Writes ``report.json``, ``report.md`` (paper Table 1 layout) and ``per_class_iou.png``
(and ``proposals_curve.png`` with ``--proposals``) under ``--output``. Labels with
instances (VOC ``SegmentationObject``) add diagnostics: proposal recall and mean IoU by
object size, and DeconvNet on the ground-truth boxes (``deconvnet@oracle``). Exit codes:
0 fine, 2 bad arguments or images without a label (all named, before any work),
3 quality regressed against ``--baseline``, 4 baseline is of other data, 5 images
failed to score beyond ``--max-failed`` or none scored (``pipeline.evaluation.regression``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python jobs/evaluate.py`: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.cli_args import (  # noqa: E402
    add_crf_args,
    add_inference_args,
    add_proposal_args,
    crf_config,
    inference_config,
    proposal_config,
)
from pipeline.evaluation.config import VARIANTS, EvalConfig  # noqa: E402
from pipeline.evaluation.regression import (  # noqa: E402
    CLASS_DROP,
    EXIT_MISMATCH,
    EXIT_OK,
    MIOU_DROP,
    ReportMismatch,
    parse_max_failed,
)
from pipeline.ray_session import add_cluster_guard_args, add_ray_address_arg  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    d = EvalConfig(data="")  # every default comes from the config (or the verdict's thresholds)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="VOC root (or URL), or a folder with images/ + masks/")
    p.add_argument(
        "--split",
        default=d.split,
        help="image set: VOC ImageSets/Segmentation/<split>.txt, or <split>.txt beside images/",
    )
    p.add_argument("--checkpoint", default=None, help="DeconvNet checkpoint (.safetensors, path or URL)")
    p.add_argument("--fcn-checkpoint", default=None, help="FCN-8s checkpoint (.safetensors, path or URL)")
    p.add_argument("--output", required=True, help="report folder (path or URL)")
    p.add_argument("--variants", default=",".join(d.variants), help=f"comma-separated, from {', '.join(VARIANTS)}")
    p.add_argument("--proposals", default="", help="proposal-count sweep, e.g. 5,10,25,50 (mean IoU against proposals)")
    p.add_argument("--baseline", default=None, help="previous report.json to compare with")
    p.add_argument(
        "--miou-drop", type=float, default=100 * MIOU_DROP, help="mean IoU drop (points) that counts as a regression"
    )
    p.add_argument(
        "--class-drop",
        type=float,
        default=100 * CLASS_DROP,
        help="per-class IoU drop (points) that counts as a regression",
    )
    p.add_argument("--force-compare", action="store_true", help="compare with a baseline of other data anyway")
    p.add_argument("--max-images", type=int, default=None, help="evaluate only the first N images of the split")
    p.add_argument(
        "--no-diagnostics",
        dest="diagnostics",
        action="store_false",
        help="skip proposal recall, oracle variants and IoU by object size (labels with instances)",
    )
    p.add_argument(
        "--max-failed",
        type=_max_failed,
        default=0,
        help="images that may fail to score (unreadable, unknown label colour...) before the exit code is 5: "
        "a count (3) or a fraction (0.05 or 5%%); default 0. A run where none scores always exits 5",
    )
    p.add_argument(
        "--skip-missing-labels",
        action="store_true",
        default=d.skip_missing_labels,
        help="evaluate the images that have a label and list the others in the report "
        "(default: stop before any work, exit 2, naming every image without one)",
    )
    add_proposal_args(p)
    add_inference_args(p, batch_size=d.batch_size, max_pixels=d.max_pixels)
    add_crf_args(p)
    add_ray_address_arg(p)
    add_cluster_guard_args(p, d.stall_minutes)
    return p


def _max_failed(text: str) -> int | float:
    try:
        return parse_max_failed(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    return EvalConfig(
        data=args.data,
        split=args.split,
        checkpoint=args.checkpoint,
        fcn_checkpoint=args.fcn_checkpoint,
        variants=tuple(v.strip() for v in args.variants.split(",") if v.strip()),
        proposal_sweep=tuple(int(k) for k in args.proposals.split(",") if k.strip()),
        max_images=args.max_images,
        diagnostics=args.diagnostics,
        skip_missing_labels=args.skip_missing_labels,
        max_pixels=args.max_pixels,
        proposals=proposal_config(args),
        inference=inference_config(args),
        crf=crf_config(args),
        batch_size=args.batch_size,
        ray_address=args.ray_address,
        stall_minutes=args.stall_minutes,
        autoscaling=args.autoscaling,
    )


def main(args: argparse.Namespace) -> int:
    from pipeline.evaluation.job import run_evaluation
    from pipeline.stall_guard import JobStalled

    try:
        cfg = config_from_args(args)
        result = run_evaluation(
            cfg,
            output=args.output,
            baseline=args.baseline,
            miou_drop=args.miou_drop / 100,
            class_drop=args.class_drop / 100,
            force=args.force_compare,
            max_failed=args.max_failed,
        )
    except ReportMismatch as exc:
        print(f"evaluate: refused: {exc}", file=sys.stderr)
        return EXIT_MISMATCH
    except JobStalled as exc:
        print(exc, file=sys.stderr)
        return exc.exit_code
    except (ValueError, FileNotFoundError, PermissionError) as exc:
        print(f"evaluate: error: {exc}", file=sys.stderr)
        return 2
    for line in result["lines"]:
        print(line)
    return result.get("exit_code", EXIT_OK)


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
