"""Evaluation of segmentation variants on a labelled set, as one Ray Data chain.

::

    labelled rows -> read_files -> decode_images -> ProposalStage     (the segmentation job's stages)
      -> VariantProbs: DeconvNet and FCN probabilities, computed once  model actors
      -> ScoreVariants: every variant's labels from those two maps     CPU actors
         (argmax, mean ensemble, CRF), per-batch confusion matrices
    -> driver sums the partial matrices as they stream in (no mask ever reaches it)

Variants (paper Table 1 names): ``fcn`` (FCN-8s alone), ``deconvnet``,
``deconvnet+crf``, ``edeconvnet`` (mean of DeconvNet and FCN-8s probabilities),
``edeconvnet+crf``. The two models run once per image whatever the variants; CRF
variants reuse the same probabilities. A proposal sweep adds ``deconvnet@K`` and
``edeconvnet@K`` variants that use only the top K proposals.

When the labels have instances (VOC ``SegmentationObject``), a stage after the
proposals reads them and the report gains ``pipeline.evaluation.diagnostics``' proposal recall by
object size, the oracle variants ``deconvnet@oracle`` / ``edeconvnet@oracle`` (the
ground-truth instance boxes as proposals) and every variant's mean IoU by object size.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field

import numpy as np

from pipeline.evaluation.diagnostics import (
    RECALL_IOUS,
    SIZE_BOUNDS,
    SIZES,
    diagnostics_lines,
    diagnostics_section,
    ground_truth_instances,
    label_for_size,
)
from pipeline.evaluation.regression import CLASS_DROP, MIOU_DROP
from pipeline.metrics import ConfusionMatrix
from pipeline.proposals import ProposalConfig
from pipeline.rows import RowStatus, object_column
from pipeline.segment_config import CRFConfig
from pipeline.segmenter import InferenceConfig

VARIANTS = ("deconvnet", "deconvnet+crf", "edeconvnet", "edeconvnet+crf", "fcn")


@dataclass
class EvalConfig:
    data: str  # VOC root / URL, or a folder with images/ + masks/
    split: str = "val"
    checkpoint: str | None = None  # DeconvNet checkpoint (needed by deconvnet* and edeconvnet* variants)
    fcn_checkpoint: str | None = None  # FCN-8s checkpoint (needed by fcn and edeconvnet* variants)
    variants: tuple[str, ...] = VARIANTS
    proposal_sweep: tuple[int, ...] = ()  # e.g. (5, 10, 25, 50): mean IoU against proposals per image
    max_images: int | None = None  # evaluate only the first N images of the split (quick checks)
    skip_missing_labels: bool = False  # False: images without a label stop the job before any work (all named)
    max_pixels: int = 40_000_000
    proposals: ProposalConfig = field(default_factory=ProposalConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    crf: CRFConfig = field(default_factory=CRFConfig)
    batch_size: int = 4  # images per model-actor call
    diagnostics: bool = True  # labels with instances: proposal recall, oracle variants, mean IoU by object size
    size_bounds: tuple[float, float] = SIZE_BOUNDS  # instance area / image area between small, medium and large
    ray_address: str | None = None  # None: $RAY_ADDRESS (set inside `ray job submit`) or a new local Ray
    stall_minutes: float = 30.0  # stop (exit 6) when no image has been scored for this long; 0: never
    autoscaling: bool = False  # the cluster adds nodes on demand: don't refuse it for what it lacks now

    def needs(self) -> tuple[bool, bool]:
        """(needs DeconvNet, needs FCN) for the requested variants."""
        names = set(self.variants) | ({"deconvnet"} if self.proposal_sweep else set())
        deconv = any(v.startswith(("deconvnet", "edeconvnet")) for v in names)
        fcn = any(v.startswith(("fcn", "edeconvnet")) for v in names)
        return deconv, fcn

    def validate(self) -> None:
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown or not self.variants:
            raise ValueError(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
        deconv, fcn = self.needs()
        if deconv and not self.checkpoint:
            raise ValueError("the requested variants need --checkpoint (a DeconvNet checkpoint)")
        if fcn and not self.fcn_checkpoint:
            raise ValueError("the requested variants need --fcn-checkpoint (an FCN-8s checkpoint)")
        if any(k < 1 for k in self.proposal_sweep):
            raise ValueError("--proposals values must be >= 1")

    def all_variants(self, oracle: bool = False) -> list[str]:
        """Requested variants, then the sweep's ``deconvnet@K`` (and ``edeconvnet@K`` with an ensemble),
        then with ``oracle`` (labels with instances) ``deconvnet@oracle`` (and ``edeconvnet@oracle``)."""
        bases = ["deconvnet"] + (["edeconvnet"] if self.needs()[1] else [])
        sweep = [f"{b}@{k}" for k in self.proposal_sweep for b in bases]
        oracles = [f"{b}@oracle" for b in bases] if oracle and self.needs()[0] else []
        return list(self.variants) + sweep + oracles


class VariantProbs:
    """Model stage: adds ``deconvnet`` / ``fcn`` probability maps (and ``deconvnet@K``).

    Args:
        checkpoint, fcn_checkpoint: the models (either may be None if not needed).
        cfg: inference settings (micro-batch, precision, device).
        sweep: proposal counts K for ``deconvnet@K`` maps.
    """

    def __init__(
        self, checkpoint: str | None, fcn_checkpoint: str | None, cfg: InferenceConfig, sweep: tuple[int, ...] = ()
    ) -> None:
        from pipeline.segmenter import Segmenter

        ensemble = "mean" if checkpoint and fcn_checkpoint else ("deconvnet" if checkpoint else "fcn")
        self.seg = Segmenter(checkpoint, fcn_checkpoint, dataclasses.replace(cfg, ensemble=ensemble))
        self.sweep = tuple(sweep)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = RowStatus(batch, "model stage")
        parts = rows.map(lambda i: self._parts(batch, i), empty={})
        out = {k: v for k, v in batch.items() if k not in ("boxes", "box_scores", "oracle_boxes")}
        out.update(rows.columns(), parts=object_column(parts))
        return out

    def _parts(self, batch: dict[str, np.ndarray], i: int) -> dict:
        boxes = batch["boxes"][i]
        oracle = {"oracle": [batch["oracle_boxes"][i]]} if "oracle_boxes" in batch else None
        parts = self.seg.predict_parts([batch["image"][i]], [boxes], prefixes=self.sweep, other_boxes=oracle)[0]
        parts["n_boxes"] = len(boxes)
        if oracle:
            parts["n_boxes@oracle"] = len(oracle["oracle"][0])
        return parts


def variant_labels(name: str, parts: dict[str, np.ndarray], image: np.ndarray, crf_cfg: CRFConfig) -> np.ndarray:
    """Labels ``(H, W)`` of one variant from the model stage's probability maps."""
    from pipeline.crf import dense_crf

    base, _, k = name.partition("@")
    crf = base.endswith("+crf")
    base = base.removesuffix("+crf")
    deconv = parts.get(f"deconvnet@{k}" if k else "deconvnet")
    n_boxes = parts.get(f"n_boxes@{k}", parts.get("n_boxes", 0))
    if base == "fcn":
        probs = parts["fcn"]
    elif base == "deconvnet":
        probs = deconv
    elif base == "edeconvnet":
        # as the segmentation job: without any proposal, DeconvNet's map is uniform and FCN decides
        probs = parts["fcn"] if n_boxes == 0 else (deconv.astype(np.float32) + parts["fcn"].astype(np.float32)) / 2
    else:
        raise ValueError(f"unknown variant {name!r}")
    if crf:
        return dense_crf(image, probs, crf_cfg)
    return np.asarray(probs).argmax(axis=0).astype(np.uint8)


class ScoreVariants:
    """Scoring stage: one output row per variant per batch with its partial confusion matrix.

    Rows that carry a size map (``size_px``, from ``pipeline.evaluation.diagnostics``) add one row
    per variant and object size, named ``<variant>#<size>``, whose matrix counts only
    the background and the instances of that size. One more row (variant ``""``)
    carries the batch's per-image errors and its summed proposal ``recall`` counts, so
    the driver can report which images could not be evaluated.

    Args:
        variants: variant names (with ``@K`` sweep variants).
        num_classes: classes of the models and labels.
        crf: CRF settings for ``+crf`` variants.
        palette: class colours (the checkpoint's) for colour label PNGs (``pipeline.voc.decode_label``).
    """

    def __init__(
        self, variants: list[str], num_classes: int, crf: CRFConfig, palette: list[list[int]] | None = None
    ) -> None:
        self.variants = list(variants)
        self.num_classes = num_classes
        self.crf = crf
        self.palette = palette

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from models.storage import read_url
        from pipeline.voc import decode_label

        mats = {v: ConfusionMatrix(self.num_classes) for v in self.variants}
        by_size = {f"{v}#{size}": ConfusionMatrix(self.num_classes) for v in self.variants for size in SIZES}
        recall = np.zeros((len(SIZES), 1 + len(RECALL_IOUS)), np.int64)
        with_sizes = "size_px" in batch
        failed, scored = [], 0
        for i, image_id in enumerate(batch["image_id"]):
            status, error = str(batch["status"][i]), str(batch["error"][i])
            if status == "ok":
                try:
                    label = decode_label(read_url(str(batch["label_path"][i])), self.palette)
                    image = batch["image"][i]
                    if label.shape != image.shape[:2]:
                        raise ValueError(f"label is {label.shape}, image is {image.shape[:2]}")
                    preds = {v: variant_labels(v, batch["parts"][i], image, self.crf) for v in self.variants}
                    for v, pred in preds.items():
                        mats[v].update(pred, label)
                    if with_sizes:
                        for s, size in enumerate(SIZES):
                            sized = label_for_size(label, batch["size_px"][i], s)
                            for v, pred in preds.items():
                                by_size[f"{v}#{size}"].update(pred, sized)
                        recall += batch["recall"][i]
                    scored += 1
                    continue
                except Exception as exc:
                    status, error = type(exc).__name__, f"scoring: {exc}"
            failed.append(f"{image_id}\t{status}\t{error}")
        if with_sizes:
            mats.update(by_size)
        names = list(mats) + [""]
        return {
            "variant": np.array(names, dtype=object),
            "matrix": object_column([m.mat.reshape(-1) for m in mats.values()] + [np.zeros(0, np.int64)]),
            "scored": np.array([scored] * len(mats) + [0], dtype=np.int64),
            "failed": object_column([[] for _ in mats] + [failed]),
            "recall": object_column([np.zeros_like(recall)] * len(mats) + [recall]),
        }


def evaluate_rows(cfg: EvalConfig, *, num_classes: int, rows: list[dict], palette: list[list[int]] | None = None) -> dict:
    """Run the chain over ``rows`` ({image_id, path, label_path}); return summed metrics per variant.

    ``palette`` (class colours) maps colour label PNGs to classes; index PNGs need none.
    With diagnostics on and an ``object_path`` (instance PNG) in every row, the result
    also holds the ``<variant>#<size>`` matrices, the oracle variants and the summed
    proposal ``recall`` counts (``pipeline.evaluation.diagnostics``).
    """
    import ray

    from pipeline.decode import decode_images, read_files
    from pipeline.proposal_stage import ProposalStage
    from pipeline.ray_session import ensure_ray
    from pipeline.segment import fixed_pool, stage_resources
    from pipeline.segment_config import SegmentConfig
    from pipeline.stall_guard import JobStalled, Stalled, guarded, stall_message

    ensure_ray(cfg.ray_address)
    sizing = SegmentConfig(input="", output="", checkpoint="", layout="split", autoscaling=cfg.autoscaling)
    res = stage_resources(sizing, ray.cluster_resources(), num_classes)
    share = res.cpu_share
    instances = cfg.diagnostics and bool(rows) and all(r.get("object_path") for r in rows)
    variants = cfg.all_variants(oracle=instances)
    items = [{**r, "status": "ok", "error": ""} for r in rows]

    def pool(size: int, batch: int):  # fixed-size pools (see stage_resources), no actor without a batch
        return fixed_pool(max(1, min(size, math.ceil(len(items) / batch))))

    start = time.time()
    ds = (
        ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 16)))
        .map_batches(read_files, batch_size=8, batch_format="numpy", num_cpus=share)
        .map_batches(decode_images, fn_kwargs={"max_pixels": cfg.max_pixels}, batch_size=8, batch_format="numpy", num_cpus=share)
        .map_batches(
            ProposalStage, fn_constructor_kwargs={"cfg": cfg.proposals}, batch_size=1, batch_format="numpy",
            num_cpus=share, compute=pool(res.proposal_actors, 1),
        )
    )
    if instances:
        ds = ds.map_batches(
            ground_truth_instances, fn_kwargs={"enlarge": cfg.proposals.enlarge, "size_bounds": cfg.size_bounds},
            batch_size=4, batch_format="numpy", num_cpus=share,
        )
    ds = (
        ds.map_batches(
            VariantProbs,
            fn_constructor_kwargs={
                "checkpoint": cfg.checkpoint if cfg.needs()[0] else None,
                "fcn_checkpoint": cfg.fcn_checkpoint if cfg.needs()[1] else None,
                "cfg": cfg.inference,
                "sweep": cfg.proposal_sweep,
            },
            batch_size=cfg.batch_size, batch_format="numpy",
            num_cpus=share, num_gpus=res.model_gpus, compute=pool(res.model_actors, cfg.batch_size),
        )
        .map_batches(
            ScoreVariants,
            fn_constructor_kwargs={"variants": variants, "num_classes": num_classes, "crf": cfg.crf, "palette": palette},
            batch_size=4, batch_format="numpy", num_cpus=share, compute=pool(res.crf_actors, 4),
        )
    )
    ds.context.execution_no_progress_timeout_s = -1  # the guard below decides (pipeline.stall_guard)
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
                    f"{path} predicts {meta.num_classes} classes but {cfg.data} has {len(data.class_names)} ({data.class_names})"
                )
            checkpoints[key] = {"path": path, "checkpoint_id": meta.checkpoint_id, "architecture": meta.architecture}
    fingerprint = data.fingerprint() + (f"-first{cfg.max_images}" if cfg.max_images else "")
    dataset = {"data": cfg.data, "split": cfg.split, "layout": data.layout, "fingerprint": fingerprint, "images": len(rows)}
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
            **dataset, "scored": result["scored"], "failed": len(result["failed"]),
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
            metrics, [*cfg.variants, *oracles], result["recall"], size_bounds=cfg.size_bounds, top_k=cfg.proposals.top_k,
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
        lines.append(f"{len(data.missing_labels)} images have no label and were skipped (report.json: missing_label_images)")
    lines.append(f"{result['scored']} images scored, {len(result['failed'])} failed, {result['seconds']:.1f} s; report: {paths['markdown']}")
    return {"report": report, "paths": paths, "lines": lines, "exit_code": exit_code}


def _points(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"
