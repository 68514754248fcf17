"""Evaluation job end to end on a generated labelled set, with a real local Ray."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import ray
import torch
from PIL import Image

from models import FCN, DeconvNet, save_checkpoint, voc_palette
from pipeline.crf import dense_crf
from pipeline.evaluation.config import VARIANTS as VARIANTS_ALL
from pipeline.evaluation.config import EvalConfig
from pipeline.evaluation.regression import CLASS_DROP, EXIT_FAILED, EXIT_MISMATCH, EXIT_OK, EXIT_REGRESSION, MIOU_DROP
from pipeline.labelled import open_labelled_set
from pipeline.metrics import ConfusionMatrix
from pipeline.proposals import ProposalConfig, ProposalGenerator, enlarge_boxes
from pipeline.segmenter import InferenceConfig, Segmenter
from pipeline.stage_config import CRFConfig
from pipeline.voc import instance_regions, load_sample

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "jobs"))
import evaluate as evaluate_job  # noqa: E402

NUM_CLASSES = 6  # synthvoc: background + 5 shapes


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=4, include_dashboard=False)
    yield
    if started:
        ray.shutdown()


def _checkpoints(folder: Path, favourite: int, tag: str, bias: float = 4.0, std: float = 0.3) -> tuple[str, str]:
    """Tiny models whose score bias makes them predict ``favourite`` almost everywhere,
    with random input-dependent weights on top: a model biased to the background is
    decent on this data, one biased to an absent class is deliberately worse. A smaller
    bias and larger weights give models that predict several classes."""
    torch.manual_seed(favourite)
    deconv, fcn = DeconvNet(num_classes=NUM_CLASSES, width=1 / 16), FCN(num_classes=NUM_CLASSES, stride=8, width=1 / 16)
    with torch.no_grad():
        for layer in (deconv.score, fcn.score_fr):
            layer.weight.normal_(0.0, std)
            layer.bias.zero_()
            layer.bias[favourite] = bias
    paths = str(folder / f"deconvnet-{tag}.safetensors"), str(folder / f"fcn8s-{tag}.safetensors")
    save_checkpoint(deconv, paths[0])
    save_checkpoint(fcn, paths[1])
    return paths


def _args(data, ckpts, out, *extra):
    return evaluate_job.get_args_parser().parse_args(
        ["--data", data, "--checkpoint", ckpts[0], "--fcn-checkpoint", ckpts[1], "--output", str(out),
         "--top-k", "3", "--micro-batch", "4", "--device", "cpu", "--crf-iterations", "3", *extra]
    )


def test_end_to_end_report_with_all_variants_and_sweep(synth_voc, tmp_path):
    ckpts = _checkpoints(tmp_path, favourite=0, tag="mixed", bias=1.0, std=1.5)  # models with several opinions
    out = tmp_path / "report"
    assert evaluate_job.main(_args(synth_voc, ckpts, out, "--proposals", "1,3")) == EXIT_OK
    for name in ("report.json", "report.md", "per_class_iou.png", "proposals_curve.png"):
        assert (out / name).stat().st_size > 0, name
    report = json.loads((out / "report.json").read_text())
    assert list(report["variants"]) == ["deconvnet", "deconvnet+crf", "edeconvnet", "edeconvnet+crf", "fcn"]
    assert set(report["proposal_sweep"]) == {"deconvnet", "edeconvnet"}
    assert set(report["proposal_sweep"]["deconvnet"]) == {"1", "3"}
    data = open_labelled_set(synth_voc, "val")
    labels = [np.asarray(Image.open(r["label_path"])) for r in data.rows]
    scored_pixels = sum(int((lab != 255).sum()) for lab in labels)
    assert report["dataset"]["images"] == 3 and report["dataset"]["scored"] == 3
    for variant, entry in report["variants"].items():
        assert entry["pixels"] == scored_pixels, variant  # every labelled pixel counted once
        assert 0 <= entry["mean_iou"] <= 1
    # The distributed confusion matrix equals one computed in-process, image by image.
    seg = Segmenter(None, ckpts[1], InferenceConfig(ensemble="fcn", device="cpu"))
    cm = ConfusionMatrix(NUM_CLASSES)
    for row, lab in zip(data.rows, labels):
        image = np.asarray(Image.open(row["path"]).convert("RGB"))
        cm.update(seg.predict([image], [np.zeros((0, 4), np.float32)])[0].argmax(0), lab)
    assert report["confusion_matrices"]["fcn"] == cm.mat.tolist()
    # DeconvNet alone, recomputed in-process with the same proposals.
    seg_d = Segmenter(ckpts[0], None, InferenceConfig(ensemble="deconvnet", micro_batch=4, device="cpu"))
    gen = ProposalGenerator(ProposalConfig(top_k=3))
    cm_d = ConfusionMatrix(NUM_CLASSES)
    for row, lab in zip(data.rows, labels):
        image = np.asarray(Image.open(row["path"]).convert("RGB"))
        cm_d.update(seg_d.predict([image], [gen(image)[0]])[0].argmax(0), lab)
    assert report["confusion_matrices"]["deconvnet"] == cm_d.mat.tolist()
    _check_ensemble_crf_and_sweep(report, data, labels, seg_d, seg, gen)
    md = (out / "report.md").read_text()
    assert "| method | bkg | disc | box | triangle | ring | cross | mean |" in md
    _check_diagnostics(report, md, data, labels, seg_d, seg)


def _check_ensemble_crf_and_sweep(report, data, labels, seg_d, seg_fcn, gen):
    """Every other variant and the sweep's values, recomputed image by image from each model alone."""
    crf_cfg = CRFConfig(iterations=3)
    cms = {v: ConfusionMatrix(NUM_CLASSES) for v in ("deconvnet+crf", "edeconvnet", "edeconvnet+crf")}
    sweep = {(base, k): ConfusionMatrix(NUM_CLASSES) for base in ("deconvnet", "edeconvnet") for k in (1, 3)}
    for row, lab in zip(data.rows, labels):
        image = np.asarray(Image.open(row["path"]).convert("RGB"))
        boxes = gen(image)[0]
        fcn = seg_fcn.predict([image], [np.zeros((0, 4), np.float32)])[0].astype(np.float32)
        for k in (1, 3):
            deconv = seg_d.predict([image], [boxes[:k]])[0].astype(np.float32)
            mean = (deconv + fcn) / 2 if len(boxes[:k]) else fcn
            sweep["deconvnet", k].update(deconv.argmax(0), lab)
            sweep["edeconvnet", k].update(mean.argmax(0), lab)
            if k == 3:  # top-3 is the variants' own proposal count
                cms["deconvnet+crf"].update(dense_crf(image, deconv, crf_cfg), lab)
                cms["edeconvnet"].update(mean.argmax(0), lab)
                cms["edeconvnet+crf"].update(dense_crf(image, mean, crf_cfg), lab)
    for variant, cm in cms.items():
        assert report["confusion_matrices"][variant] == cm.mat.tolist(), variant
        assert report["variants"][variant]["mean_iou"] == pytest.approx(cm.compute()["mean_iou"]), variant
    for (base, k), cm in sweep.items():
        assert report["proposal_sweep"][base][str(k)] == pytest.approx(cm.compute()["mean_iou"]), (base, k)
    for variant in ("edeconvnet", "edeconvnet+crf"):  # not trivially one class everywhere
        assert np.count_nonzero(np.asarray(report["confusion_matrices"][variant]).sum(0)) >= 2, variant
    assert report["confusion_matrices"]["edeconvnet"] != report["confusion_matrices"]["edeconvnet+crf"]


def _check_diagnostics(report, md, data, labels, seg_d, seg_fcn):
    """The labels have instances (SegmentationObject): recall, oracle and by-size IoU, recomputed here."""
    diag = report["diagnostics"]
    samples = [load_sample(str(Path(r["path"]).parent.parent), Path(r["path"]).stem) for r in data.rows]
    regions = [instance_regions(s.objects) for s in samples]
    assert diag["proposal_recall"]["by_size"]["all"]["instances"] == sum(len(ids) for ids, _, _ in regions)
    # The oracle really runs DeconvNet on the ground-truth instance boxes, enlarged 1.2x.
    cm_o = ConfusionMatrix(NUM_CLASSES)
    for s, lab, (_, boxes, _) in zip(samples, labels, regions):
        cm_o.update(seg_d.predict([s.image], [enlarge_boxes(boxes, 1.2)])[0].argmax(0), lab)
    assert report["confusion_matrices"]["deconvnet@oracle"] == cm_o.mat.tolist()
    assert set(diag["oracle"]) == {"deconvnet@oracle", "edeconvnet@oracle"}
    # FCN's mean IoU on the large objects: the other sizes' instances void.
    cm_large = ConfusionMatrix(NUM_CLASSES)
    for s, lab, (ids, _, areas) in zip(samples, labels, regions):
        large = ids[areas >= 0.1 * lab.size]
        sized = np.where(np.isin(s.objects, ids) & ~np.isin(s.objects, large), 255, lab).astype(np.uint8)
        cm_large.update(seg_fcn.predict([s.image], [np.zeros((0, 4), np.float32)])[0].argmax(0), sized)
    assert diag["mean_iou_by_size"]["fcn"]["large"] == pytest.approx(cm_large.compute()["mean_iou"])
    assert set(diag["mean_iou_by_size"]) == {*VARIANTS_ALL, "deconvnet@oracle", "edeconvnet@oracle"}
    assert "## Diagnostics" in md and "| deconvnet@oracle |" in md


def test_baseline_comparison_exit_codes(synth_voc, tmp_path, capsys):
    good = _checkpoints(tmp_path, favourite=0, tag="good")
    worse = _checkpoints(tmp_path, favourite=5, tag="worse")
    quick = ("--variants", "deconvnet,fcn")
    assert evaluate_job.main(_args(synth_voc, good, tmp_path / "base", *quick)) == EXIT_OK
    baseline = str(tmp_path / "base" / "report.json")
    assert evaluate_job.main(_args(synth_voc, good, tmp_path / "same", *quick, "--baseline", baseline)) == EXIT_OK
    worse_args = _args(synth_voc, worse, tmp_path / "worse", *quick, "--baseline", baseline)
    assert evaluate_job.main(worse_args) == EXIT_REGRESSION
    printed = capsys.readouterr().out
    # The FCN labels every pixel, so its bias to an absent class ruins its mean IoU; DeconvNet's
    # zero-initialised canvas keeps the background outside its few proposals, so its drop may show
    # only per class: the FCN line is the one that must be there.
    assert "REGRESSION fcn: mean IoU" in printed
    worse_report = json.loads((tmp_path / "worse" / "report.json").read_text())
    assert worse_report["comparison"]["regressions"]
    # Another split is other data: refused before any work, unless forced.
    other = _args(
        synth_voc, good, tmp_path / "other", *quick, "--split", "train", "--max-images", "2", "--baseline", baseline
    )
    assert evaluate_job.main(other) == EXIT_MISMATCH
    assert not (tmp_path / "other" / "report.json").exists()
    forced = _args(
        synth_voc,
        good,
        tmp_path / "forced",
        *quick,
        "--split",
        "train",
        "--max-images",
        "2",
        "--baseline",
        baseline,
        "--force-compare",
    )
    assert evaluate_job.main(forced) != EXIT_MISMATCH
    assert json.loads((tmp_path / "forced" / "report.json").read_text())["comparison"]["baseline"] == baseline
    # Thresholds loose enough to let the worse models through: the flags reach the comparison.
    loose = _args(
        synth_voc,
        worse,
        tmp_path / "loose",
        *quick,
        "--baseline",
        baseline,
        "--miou-drop",
        "100",
        "--class-drop",
        "100",
    )
    assert evaluate_job.main(loose) == EXIT_OK


def test_bad_arguments_fail_before_work(synth_voc, tmp_path):
    ckpts = _checkpoints(tmp_path, favourite=0, tag="good")
    assert evaluate_job.main(_args(synth_voc, ckpts, tmp_path / "x", "--variants", "deconvnet,bogus")) == 2
    assert evaluate_job.main(_args(str(tmp_path / "nowhere"), ckpts, tmp_path / "x")) == 2
    args = _args(synth_voc, ckpts, tmp_path / "x")
    args.fcn_checkpoint = None
    assert evaluate_job.main(args) == 2  # edeconvnet variants need the FCN
    assert not (tmp_path / "x").exists()


UNKNOWN = (12, 34, 56)  # a colour of no class


def _colour_labels(synth_voc: str, root: Path, layout: str, *, unknown: set[str] = frozenset()) -> list[str]:
    """The val split of ``synth_voc`` with colour labels, as labelling tools export them: RGB in a VOC
    layout (void drawn 224,224,192), RGBA in images/ + masks/ (void left transparent). Images in
    ``unknown`` get a 3x4 patch of a colour of no class. Returns the val ids."""
    ids = Path(synth_voc, "ImageSets", "Segmentation", "val.txt").read_text().split()
    colours = np.array(voc_palette(256), np.uint8)
    images, labels = ("JPEGImages", "SegmentationClass") if layout == "voc" else ("images", "masks")
    for sub in (images, labels):
        (root / sub).mkdir(parents=True)
    shutil.copy(Path(synth_voc, "classes.txt"), root / "classes.txt")
    if layout == "voc":
        (root / "ImageSets" / "Segmentation").mkdir(parents=True)
        (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids) + "\n")
    for image_id in ids:
        shutil.copy(Path(synth_voc, "JPEGImages", f"{image_id}.jpg"), root / images / f"{image_id}.jpg")
        index = np.asarray(Image.open(Path(synth_voc, "SegmentationClass", f"{image_id}.png")))
        rgb = colours[index]
        if image_id in unknown:
            rgb[:3, :4] = UNKNOWN
        if layout == "voc":
            Image.fromarray(rgb, "RGB").save(root / labels / f"{image_id}.png")
        else:
            alpha = np.where(index == 255, 0, 255).astype(np.uint8)
            Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(root / labels / f"{image_id}.png")
    return ids


def _fcn_matrix(fcn_checkpoint: str, synth_voc: str, ids: list[str]) -> list[list[int]]:
    """FCN's confusion matrix over ``ids`` with the index labels, image by image in this process."""
    seg = Segmenter(None, fcn_checkpoint, InferenceConfig(ensemble="fcn", device="cpu"))
    cm = ConfusionMatrix(NUM_CLASSES)
    for image_id in ids:
        image = np.asarray(Image.open(Path(synth_voc, "JPEGImages", f"{image_id}.jpg")).convert("RGB"))
        label = np.asarray(Image.open(Path(synth_voc, "SegmentationClass", f"{image_id}.png")))
        cm.update(seg.predict([image], [np.zeros((0, 4), np.float32)])[0].argmax(0), label)
    return cm.mat.tolist()


def test_colour_labels_in_both_layouts_and_an_unknown_colour_fails_its_image(synth_voc, tmp_path, capsys):
    ckpts = _checkpoints(tmp_path, favourite=0, tag="good")
    ids = Path(synth_voc, "ImageSets", "Segmentation", "val.txt").read_text().split()
    bad = ids[1]
    want = _fcn_matrix(ckpts[1], synth_voc, [i for i in ids if i != bad])
    # VOC layout, RGB labels: the image with the unknown colour fails, so the run exits EXIT_FAILED.
    _colour_labels(synth_voc, tmp_path / "voc", "voc", unknown={bad})
    code = evaluate_job.main(_args(str(tmp_path / "voc"), ckpts, tmp_path / "r1", "--variants", "fcn"))
    printed = capsys.readouterr().out
    assert code == EXIT_FAILED, printed
    assert "FAILED 1 of 3 images failed to score (--max-failed allows 0)" in printed
    report = json.loads((tmp_path / "r1" / "report.json").read_text())
    assert (report["dataset"]["scored"], report["dataset"]["failed"]) == (2, 1)
    assert report["confusion_matrices"]["fcn"] == want  # colours scored exactly as the index labels
    example = report["failures"]["by_class"]["UnknownLabelColour"]["example"]
    assert example.startswith(f"{bad}.jpg: ") and "(12, 34, 56) on 12 pixels" in example
    md = (tmp_path / "r1" / "report.md").read_text()
    assert "**1 of 3 images could not be scored**" in md and "| UnknownLabelColour | 1 |" in md
    # images/ + masks/, RGBA labels with void transparent: the same numbers; --max-failed 1 accepts the failure.
    _colour_labels(synth_voc, tmp_path / "folders", "folders", unknown={bad})
    code = evaluate_job.main(
        _args(str(tmp_path / "folders"), ckpts, tmp_path / "r2", "--variants", "fcn", "--max-failed", "1")
    )
    assert code == EXIT_OK, capsys.readouterr().out
    report = json.loads((tmp_path / "r2" / "report.json").read_text())
    assert report["confusion_matrices"]["fcn"] == want and report["failures"]["count"] == 1


def test_missing_labels_are_named_before_work_and_a_run_where_nothing_scores_exits_5(synth_voc, tmp_path, capsys):
    ckpts = _checkpoints(tmp_path, favourite=0, tag="good")
    root = tmp_path / "folders"
    ids = _colour_labels(
        synth_voc,
        root,
        "folders",
        unknown=set(Path(synth_voc, "ImageSets", "Segmentation", "val.txt").read_text().split()),
    )
    (root / "masks" / f"{ids[0]}.png").unlink()
    (root / "masks" / f"{ids[2]}.png").unlink()
    # Without the flag: exit 2 before any work, every missing label named.
    assert evaluate_job.main(_args(str(root), ckpts, tmp_path / "r0", "--variants", "fcn")) == 2
    err = capsys.readouterr().err
    assert "2 of 3 images" in err and f"masks/{ids[0]}.png" in err and f"masks/{ids[2]}.png" in err
    assert not (tmp_path / "r0").exists()
    # With it: the one labelled image is evaluated, and fails (unknown colour): nothing scored, even with
    # --max-failed 100%, is a failed run; the report is written and says why; no traceback.
    code = evaluate_job.main(
        _args(str(root), ckpts, tmp_path / "r1", "--variants", "fcn", "--skip-missing-labels", "--max-failed", "100%")
    )
    printed = capsys.readouterr().out
    assert code == EXIT_FAILED, printed
    assert "fcn                mean IoU -" in printed and "FAILED no image could be scored (1 of 1 failed)" in printed
    assert "2 images have no label and were skipped" in printed
    report = json.loads((tmp_path / "r1" / "report.json").read_text())
    assert report["dataset"]["scored"] == 0 and report["variants"]["fcn"]["mean_iou"] is None
    assert report["dataset"]["missing_labels"] == 2 and report["missing_label_images"] == [
        f"{ids[0]}.jpg",
        f"{ids[2]}.jpg",
    ]
    md = (tmp_path / "r1" / "report.md").read_text()
    assert "**1 of 1 images could not be scored**" in md and "**2 images have no label**" in md


def test_cli_defaults_are_the_configs_own():
    args = evaluate_job.get_args_parser().parse_args(["--data", "d", "--output", "o", "--checkpoint", "c"])
    assert evaluate_job.config_from_args(args) == EvalConfig(data="d", checkpoint="c")
    assert (args.miou_drop, args.class_drop) == (100 * MIOU_DROP, 100 * CLASS_DROP)


def test_chain_reads_like_the_segment_job_with_bounded_retries_and_its_own_store_limit(synth_voc):
    """The evaluation's chain starts with the segment job's read (listing, read, re-cut to BLOCK_ROWS in one
    task), bounds the retries of every task and actor stage, and sets the split layout's object-store limit
    on this dataset only (no execution needed: the plan says it)."""
    from pipeline.evaluation.job import build_dataset
    from pipeline.segment import BLOCK_ROWS, stage_resources
    from pipeline.segment_config import SegmentConfig

    sizing = SegmentConfig(input="", output="", checkpoint="", layout="split")
    res = stage_resources(sizing, ray.cluster_resources(), NUM_CLASSES)
    rows = open_labelled_set(synth_voc, "val").rows
    items = [{**r, "status": "ok", "error": ""} for r in rows]
    cfg = EvalConfig(data=synth_voc, checkpoint="d.safetensors", fcn_checkpoint="f.safetensors")
    ds = build_dataset(
        cfg,
        res,
        items,
        retries=sizing.task_retries,
        num_classes=NUM_CLASSES,
        variants=cfg.all_variants(oracle=True),
        palette=None,
        instances=True,
    )
    ops, op = [], ds._logical_plan.dag
    while op.input_dependencies:
        ops.append(op)
        op = op.input_dependencies[0]
    args = {o.name: o.ray_remote_args for o in reversed(ops)}
    assert list(args) == [
        "MapBatches(read_files)",
        f"StreamingRepartition[num_rows_per_block={BLOCK_ROWS},strict=True]",
        "MapBatches(decode_images)",
        "MapBatches(ProposalStage)",
        "MapBatches(ground_truth_instances)",
        "MapBatches(VariantProbs)",
        "MapBatches(ScoreVariants)",
    ]
    actors = {"MapBatches(ProposalStage)", "MapBatches(VariantProbs)", "MapBatches(ScoreVariants)"}
    for name, remote in args.items():
        assert remote["num_cpus"] == res.cpu_share, name
        if name in actors:
            assert (remote["max_task_retries"], remote["max_restarts"]) == (sizing.task_retries, -1), name
        else:
            assert remote["max_retries"] == sizing.task_retries, name
    assert ds.context.execution_options.resource_limits.object_store_memory == res.object_store_bytes
    assert ray.data.DataContext.get_current().execution_options.resource_limits.object_store_memory == float("inf")
    assert ds.context.execution_no_progress_timeout_s == -1
