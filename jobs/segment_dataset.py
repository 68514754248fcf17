"""Label every image of a bucket with DeconvNet + FCN-8s (+ dense CRF), streaming on Ray Data.

On a cluster (or a local head started with ``ray start --head``)::

    ray job submit --working-dir . -- python jobs/segment_dataset.py \\
        --input s3://bucket/images --output s3://bucket/masks \\
        --checkpoint deconvnet.safetensors --fcn-checkpoint fcn8s.safetensors --format both

On a laptop the same command without ``ray job submit --working-dir . --`` starts a
local Ray. Writes ``<output>/<image_id stem>.png`` palette masks and/or
``<output>/_parquet/*.parquet`` rows (with ``--confidence png`` also
``<output>/_confidence/<image_id stem>.png`` confidence maps), ``<output>/_errors/*.parquet`` for inputs that
failed, ``<output>/_progress.json`` while it runs (every ``--progress-interval``
seconds, with the same line in the log) and ``<output>/_summary.json`` (the folder's
totals over all runs, and this run's counts). Rerunning skips what is already written.
Exit codes: 0 done, 1 inputs missing from the output after the run, 2 bad arguments
or a cluster that cannot run the job, 6 stalled (no image finished for --stall-minutes).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python jobs/segment_dataset.py`: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.cli_args import (  # noqa: E402
    ENSEMBLE_CHOICES,
    add_crf_args,
    add_inference_args,
    add_proposal_args,
    crf_config,
    inference_config,
    proposal_config,
)
from pipeline.ray_session import add_cluster_guard_args, add_ray_address_arg  # noqa: E402
from pipeline.segment_config import CONFIDENCE_OUTPUTS, FORMATS, LAYOUTS, SegmentConfig  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    d = SegmentConfig(input="", output="", checkpoint="")  # every default comes from the config
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--input", required=True, help="folder, glob, fsspec URL (s3://, gs://...) or manifest (.txt/.csv/.parquet)"
    )
    p.add_argument("--output", required=True, help="output folder or fsspec URL (must not be inside the input)")
    p.add_argument("--checkpoint", required=True, help="DeconvNet checkpoint (.safetensors, path or URL)")
    p.add_argument("--fcn-checkpoint", default=None, help="FCN-8s checkpoint; required unless --ensemble deconvnet")
    p.add_argument("--format", default=d.format, choices=FORMATS)
    p.add_argument(
        "--ensemble",
        default=d.inference.ensemble,
        choices=ENSEMBLE_CHOICES,
        help="mean: average DeconvNet and FCN-8s probabilities (EDeconvNet); deconvnet: DeconvNet alone (also "
        "spelled none); fcn: FCN alone",
    )
    p.add_argument("--crf", default="on", choices=["on", "off"], help="dense CRF refinement")
    p.add_argument(
        "--confidence",
        default=d.confidence,
        choices=CONFIDENCE_OUTPUTS,
        help="png: a uint8 confidence map per image (max ensemble probability x 255, before the CRF) at "
        "<output>/_confidence/<mask> and in the Parquet rows (confidence_png)",
    )
    p.add_argument(
        "--min-confidence",
        type=float,
        default=d.min_confidence,
        metavar="T",
        help="write 255 (void) into the mask wherever the max ensemble probability is below T (0-1), for "
        "pseudo-labels; default 0: no void",
    )
    p.add_argument(
        "--skip-existing",
        default=d.skip_existing,
        action=argparse.BooleanOptionalAction,
        help="skip inputs whose outputs (or error row) already exist (default on)",
    )
    p.add_argument(
        "--extensions",
        default=",".join(d.extensions),
        help="comma-separated suffixes listed from folders/URLs ('' = every file)",
    )
    p.add_argument("--write-batch-size", type=int, default=d.write_batch_size, help="rows per Parquet part file")
    p.add_argument(
        "--progress-interval",
        type=float,
        default=d.progress_interval,
        help="seconds between rewrites of <output>/_progress.json (done/total, errors, images/s, ETA) and the "
        "same line in the log (default 30)",
    )
    add_proposal_args(p)
    add_inference_args(p, batch_size=d.batch_size, max_pixels=d.max_pixels)
    add_crf_args(p)
    g = p.add_argument_group("cluster")
    add_ray_address_arg(g)
    g.add_argument(
        "--layout",
        default=d.layout,
        choices=LAYOUTS,
        help="fused: one CPU actor per CPU runs decode, proposals, model and CRF of its images; split: one actor "
        "pool per stage (model actors on GPUs); auto (default): split with GPUs or --proposal/--crf-actors, else fused",
    )
    g.add_argument(
        "--model-actors", type=int, default=None, help="default: one per GPU (split), one per CPU (fused)"
    )
    g.add_argument(
        "--model-gpus",
        type=float,
        default=None,
        help="GPUs per model actor (default: 1 if the cluster has GPUs when the job starts, else 0)",
    )
    g.add_argument("--proposal-actors", type=int, default=None, help="default: from the cluster's CPUs")
    g.add_argument("--crf-actors", type=int, default=None, help="default: from the cluster's CPUs")
    g.add_argument(
        "--object-store-mb",
        type=float,
        default=None,
        help="object-store memory (MiB) the run's data in flight may use; default: room for 4 blocks of "
        "VOC-size images per actor (split layout: about 43 MiB per actor with 6 classes, 129 with 21; "
        "fused: 3 MiB), at least 128 MiB",
    )
    add_cluster_guard_args(g, d.stall_minutes)
    g.add_argument(
        "--task-retries",
        type=int,
        default=d.task_retries,
        help="retries of a task or actor call whose worker process died (lost node, OOM kill); default 3",
    )
    return p


def config_from_args(args: argparse.Namespace) -> SegmentConfig:
    return SegmentConfig(
        input=args.input,
        output=args.output,
        checkpoint=args.checkpoint,
        fcn_checkpoint=args.fcn_checkpoint,
        format=args.format,
        skip_existing=args.skip_existing,
        max_pixels=args.max_pixels,
        confidence=args.confidence,
        min_confidence=args.min_confidence,
        extensions=tuple(e.strip() for e in args.extensions.split(",") if e.strip()),
        proposals=proposal_config(args),
        inference=inference_config(args, ensemble=args.ensemble),
        crf=crf_config(args, enabled=args.crf == "on"),
        batch_size=args.batch_size,
        write_batch_size=args.write_batch_size,
        ray_address=args.ray_address,
        layout=args.layout,
        model_actors=args.model_actors,
        model_gpus=args.model_gpus,
        proposal_actors=args.proposal_actors,
        crf_actors=args.crf_actors,
        object_store_mb=args.object_store_mb,
        task_retries=args.task_retries,
        progress_interval=args.progress_interval,
        stall_minutes=args.stall_minutes,
        autoscaling=args.autoscaling,
    )


def main(args: argparse.Namespace) -> int:
    from pipeline.segment import ClusterTooSmall, prepare, run
    from pipeline.stall_guard import JobStalled

    cfg = config_from_args(args)
    try:
        plan = prepare(cfg)  # every argument check, before any work starts
    except (ValueError, FileNotFoundError, PermissionError) as exc:
        print(f"segment_dataset: error: {exc}", file=sys.stderr)
        return 2
    try:
        summary = run(cfg, plan)
    except ClusterTooSmall as exc:  # checked once Ray is up, before any work
        print(f"segment_dataset: error: {exc}", file=sys.stderr)
        return 2
    except JobStalled as exc:
        print(exc, file=sys.stderr)
        return exc.exit_code
    last, totals = summary["last_run"], summary["totals"]
    print(
        f"segment_dataset: {last['processed']} images processed ({last['written']} written, "
        f"{last['errors']} errors, {last['skipped_existing']} skipped as existing) in {last['seconds']:.1f} s, "
        f"{last['images_per_second'] or 0:.2f} images/s -> {cfg.output}"
    )
    print(
        f"segment_dataset: output {'complete' if summary['complete'] else 'INCOMPLETE'}: {totals['done']} of "
        f"{totals['inputs']} inputs done ({totals['error_rows']} error rows), {totals['missing']} missing"
    )
    return 1 if last["missing"] or last["duplicates"] or totals["missing"] else 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
