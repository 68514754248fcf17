"""The evaluation job: segmentation variants scored on a labelled set, as one Ray Data chain.

::

    labelled rows -> read_files, re-cut to BLOCK_ROWS          the segmentation job's read
                                                               (pipeline.segment.read_chain)
      -> decode_images -> ProposalStage                        the segmentation job's stages
      [-> ground_truth_instances]                              labels with instances
      -> VariantProbs: DeconvNet and FCN probabilities,        model actors
         computed once
      -> ScoreVariants: every variant's labels from those      CPU actors
         two maps (argmax, mean ensemble, CRF), per-batch
         confusion matrices
    -> driver sums the partial matrices as they stream in (no mask ever reaches it)

The variants (``pipeline.evaluation.config``) and the stages of their own
(``pipeline.evaluation.stages``) live beside this module. The two models run once per
image whatever the variants; CRF variants reuse the same probabilities. The chain is
sized like the segmentation job's split layout (``pipeline.segment.stage_resources``):
its pool sizes, CPU shares, object-store limit, and bounded retries of dead tasks and
actors (``pipeline.segment.retry_args``, SegmentConfig's default ``task_retries``).

When the labels have instances (VOC ``SegmentationObject``), a stage after the
proposals reads them and the report gains ``pipeline.evaluation.diagnostics``' proposal recall by
object size, the oracle variants ``deconvnet@oracle`` / ``edeconvnet@oracle`` (the
ground-truth instance boxes as proposals) and every variant's mean IoU by object size.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import TYPE_CHECKING

import numpy as np

from pipeline.evaluation.config import EvalConfig
from pipeline.evaluation.diagnostics import (
    RECALL_IOUS,
    SIZES,
    diagnostics_lines,
    diagnostics_section,
    ground_truth_instances,
)
from pipeline.evaluation.regression import CLASS_DROP, MIOU_DROP
from pipeline.evaluation.stages import ScoreVariants, VariantProbs
from pipeline.metrics import ConfusionMatrix

if TYPE_CHECKING:
    from pipeline.segment import StageResources


def evaluate_rows(
    cfg: EvalConfig, *, num_classes: int, rows: list[dict], palette: list[list[int]] | None = None
) -> dict:
    """Run the chain over ``rows`` ({image_id, path, label_path}); return summed metrics per variant.

    ``palette`` (class colours) maps colour label PNGs to classes; index PNGs need none.
    With diagnostics on and an ``object_path`` (instance PNG) in every row, the result
    also holds the ``<variant>#<size>`` matrices, the oracle variants and the summed
    proposal ``recall`` counts (``pipeline.evaluation.diagnostics``).
    """
    import ray

    from pipeline.ray_session import ensure_ray
    from pipeline.segment import stage_resources
    from pipeline.segment_config import SegmentConfig
    from pipeline.stall_guard import JobStalled, Stalled, guarded, stall_message

    ensure_ray(cfg.ray_address)
    sizing = SegmentConfig(input="", output="", checkpoint="", layout="split", autoscaling=cfg.autoscaling)
    res = stage_resources(sizing, ray.cluster_resources(), num_classes)
    instances = cfg.diagnostics and bool(rows) and all(r.get("object_path") for r in rows)
    variants = cfg.all_variants(oracle=instances)
    items = [{**r, "status": "ok", "error": ""} for r in rows]
    start = time.time()
    ds = build_dataset(
        cfg,
        res,
        items,
        retries=sizing.task_retries,
        num_classes=num_classes,
        variants=variants,
        palette=palette,
        instances=instances,
    )
    totals = {v: ConfusionMatrix(num_classes) for v in variants}
    recall = np.zeros((len(SIZES), 1 + len(RECALL_IOUS)), np.int64)
    scored, failed = 0, []

    def describe() -> str:
        return stall_message("evaluate", cfg.stall_minutes, res)

    try:
        for batch in guarded(ds.iter_batches(batch_size=None, batch_format="numpy"), cfg.stall_minutes, describe):
            for variant, mat, n, errs, counts in zip(
                batch["variant"], batch["matrix"], batch["scored"], batch["failed"], batch["recall"]
            ):
                if variant == "":
                    failed += [str(e) for e in errs]
                    recall += np.asarray(counts, np.int64)
                    continue
                totals.setdefault(str(variant), ConfusionMatrix(num_classes))
                totals[str(variant)].merge(np.asarray(mat, np.int64).reshape(num_classes, num_classes))
                if variant == variants[0]:
                    scored += int(n)
    except Stalled as stall:
        raise JobStalled(f"{stall}\nevaluate: stopped; nothing was written, the same command starts over.") from None
    seconds = time.time() - start
    return {
        "metrics": {v: cm.compute() for v, cm in totals.items()},
        "matrices": {v: cm.mat.tolist() for v, cm in totals.items()},
        "scored": scored,
        "failed": failed,
        "seconds": seconds,
        "variants": variants,
        "recall": recall if instances else None,
    }


def build_dataset(
    cfg: EvalConfig,
    res: StageResources,
    items: list[dict],
    *,
    retries: int,
    num_classes: int,
    variants: list[str],
    palette: list[list[int]] | None,
    instances: bool,
):
    """The lazy chain over ``items``: the segmentation job's read (``read_chain``: listing blocks, read, re-cut
    to BLOCK_ROWS), decode, proposals, [instances,] model and scoring stages; every task and actor pool with
    ``retries`` bounded retries of a dead process (``retry_args``), the run under ``res``'s object-store limit
    (``limit_run``)."""
    from pipeline.decode import decode_images
    from pipeline.proposal_stage import ProposalStage
    from pipeline.segment import BLOCK_ROWS, fixed_pool, limit_run, read_chain, retry_args, retry_warnings_off

    share = res.cpu_share
    task_retry, actor_retry = retry_args(retries)

    def pool(size: int, batch: int):  # fixed-size pools (see stage_resources), no actor without a batch
        return fixed_pool(max(1, min(size, math.ceil(len(items) / batch))))

    with retry_warnings_off():
        ds = (
            read_chain(items, share=share, task_retry=task_retry)
            .map_batches(
                decode_images,
                fn_kwargs={"max_pixels": cfg.max_pixels},
                batch_size=BLOCK_ROWS,  # the blocks read_chain cut: a decoded block stays 4 images
                batch_format="numpy",
                num_cpus=share,
                **task_retry,
            )
            .map_batches(
                ProposalStage,
                fn_constructor_kwargs={"cfg": cfg.proposals},
                batch_size=1,
                batch_format="numpy",
                num_cpus=share,
                compute=pool(res.proposal_actors, 1),
                **actor_retry,
            )
        )
        if instances:
            ds = ds.map_batches(
                ground_truth_instances,
                fn_kwargs={"enlarge": cfg.proposals.enlarge, "size_bounds": cfg.size_bounds},
                batch_size=4,
                batch_format="numpy",
                num_cpus=share,
                **task_retry,
            )
        ds = ds.map_batches(
            VariantProbs,
            fn_constructor_kwargs={
                "checkpoint": cfg.checkpoint if cfg.needs()[0] else None,
                "fcn_checkpoint": cfg.fcn_checkpoint if cfg.needs()[1] else None,
                "cfg": cfg.inference,
                "sweep": cfg.proposal_sweep,
            },
            batch_size=cfg.batch_size,
            batch_format="numpy",
            num_cpus=share,
            num_gpus=res.model_gpus,
            compute=pool(res.model_actors, cfg.batch_size),
            **actor_retry,
        ).map_batches(
            ScoreVariants,
            fn_constructor_kwargs={
                "variants": variants,
                "num_classes": num_classes,
                "crf": cfg.crf,
                "palette": palette,
            },
            batch_size=4,
            batch_format="numpy",
            num_cpus=share,
            compute=pool(res.crf_actors, 4),
            **actor_retry,
        )
    return limit_run(ds, res.object_store_bytes)


def run_evaluation(
    cfg: EvalConfig,
    *,
    output: str,
    baseline: str | None = None,
    miou_drop: float = MIOU_DROP,
    class_drop: float = CLASS_DROP,
    force: bool = False,
    max_failed: int | float = 0,
) -> dict:
    """The whole evaluation job: checks, the Ray chain, the report, the baseline comparison.

    Every check that can fail on a bad argument (variants, checkpoints, data layout,
    missing labels, baseline of other data) runs before any work. ``max_failed``: how
    many images (an int) or what fraction of them (a float) may fail to score before
    the exit code is ``EXIT_FAILED``. Returns ``{"report", "paths", "lines", "exit_code"}``.
    """
    from models import read_checkpoint_meta
    from pipeline.evaluation.regression import EXIT_OK, check_comparable, compare_reports, failure_summary
    from pipeline.evaluation.report import read_report, variant_entry, write_report
    from pipeline.labelled import open_labelled_set

    cfg.validate()
    data = open_labelled_set(cfg.data, cfg.split, skip_missing_labels=cfg.skip_missing_labels)
    rows = data.rows[: cfg.max_images] if cfg.max_images else data.rows
    checkpoints, palettes = {}, []
    for key, path in (("deconvnet", cfg.checkpoint), ("fcn", cfg.fcn_checkpoint)):
        if path and cfg.needs()[key == "fcn"]:
            meta = read_checkpoint_meta(path)
            palettes.append([list(c) for c in meta.palette])
            if meta.num_classes != len(data.class_names):
                raise ValueError(
                    f"{path} predicts {meta.num_classes} classes but {cfg.data} has {len(data.class_names)} "
                    f"({data.class_names})"
                )
            checkpoints[key] = {"path": path, "checkpoint_id": meta.checkpoint_id, "architecture": meta.architecture}
    fingerprint = data.fingerprint() + (f"-first{cfg.max_images}" if cfg.max_images else "")
    dataset = {
        "data": cfg.data,
        "split": cfg.split,
        "layout": data.layout,
        "fingerprint": fingerprint,
        "images": len(rows),
    }
    base = None
    if baseline:
        base = read_report(baseline)
        if not force:
            check_comparable({"dataset": dataset, "class_names": data.class_names}, base)

    result = evaluate_rows(cfg, num_classes=len(data.class_names), rows=rows, palette=palettes[0] if palettes else None)
    metrics = result["metrics"]
    oracles = [v for v in result["variants"] if v.endswith("@oracle")]
    report = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "dataset": {
            **dataset,
            "scored": result["scored"],
            "failed": len(result["failed"]),
            "missing_labels": len(data.missing_labels),
        },
        "class_names": data.class_names,
        "variants": {v: variant_entry(metrics[v], data.class_names) for v in cfg.variants},
        "checkpoints": checkpoints,
        "config": dataclasses.asdict(cfg),
        "timings": {"evaluate_s": result["seconds"], "images_per_s": result["scored"] / max(result["seconds"], 1e-9)},
        "confusion_matrices": {v: result["matrices"][v] for v in [*cfg.variants, *oracles]},
        "failed_images": result["failed"][:1000],
        "failures": failure_summary(result["failed"], images=len(rows), scored=result["scored"], max_failed=max_failed),
        "missing_label_images": data.missing_labels[:1000],
    }
    if cfg.proposal_sweep:
        sweep: dict[str, dict[str, float]] = {}
        for name in cfg.all_variants():
            if "@" in name:
                base_name, k = name.split("@")
                sweep.setdefault(base_name, {})[k] = metrics[name]["mean_iou"]
        report["proposal_sweep"] = sweep
    lines = [f"{v:<18} mean IoU {_points(report['variants'][v]['mean_iou'])}" for v in cfg.variants]
    if result["recall"] is not None:
        report["diagnostics"] = diagnostics_section(
            metrics,
            [*cfg.variants, *oracles],
            result["recall"],
            size_bounds=cfg.size_bounds,
            top_k=cfg.proposals.top_k,
            entry=lambda m: variant_entry(m, data.class_names),
        )
        lines += diagnostics_lines(report["diagnostics"])
    exit_code = EXIT_OK
    if base is not None:
        cmp = compare_reports(report, base, miou_drop=miou_drop, class_drop=class_drop, force=True)
        report["comparison"] = {"baseline": baseline, "deltas": cmp.deltas, "regressions": cmp.regressions}
        lines = cmp.lines + [f"REGRESSION {r}" for r in cmp.regressions]
        exit_code = cmp.exit_code
    failures = report["failures"]
    if failures["exit_code"] != EXIT_OK:
        lines.append(f"FAILED {failures['verdict']}")
        exit_code = failures["exit_code"]
    paths = write_report(report, output)
    if data.missing_labels:
        lines.append(
            f"{len(data.missing_labels)} images have no label and were skipped (report.json: missing_label_images)"
        )
    lines.append(
        f"{result['scored']} images scored, {len(result['failed'])} failed, {result['seconds']:.1f} s; "
        f"report: {paths['markdown']}"
    )
    return {"report": report, "paths": paths, "lines": lines, "exit_code": exit_code}


def _points(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"
