"""Evaluation reports: ``report.json``, ``report.md`` (paper Table 1 layout) and
``per_class_iou.png`` (plus ``proposals_curve.png`` when a proposal sweep ran).

All numbers in the report are fractions in [0, 1]; the Markdown table shows them
as percentages like the paper. Undefined values (a class absent from both the
ground truth and the predictions) are ``null`` in JSON and "-" in the table.
"""

from __future__ import annotations

import json
import math
from typing import Any

from models.storage import atomic_write, read_url

REPORT_VERSION = 1
# Paper Table 1 column labels for the VOC classes; other names are printed as they are.
_SHORT = {
    "background": "bkg", "aeroplane": "aero", "bicycle": "bike", "bird": "bird", "boat": "boat", "bottle": "bottle",
    "bus": "bus", "car": "car", "cat": "cat", "chair": "chair", "cow": "cow", "diningtable": "table", "dog": "dog",
    "horse": "horse", "motorbike": "mbike", "person": "person", "pottedplant": "plant", "sheep": "sheep",
    "sofa": "sofa", "train": "train", "tvmonitor": "tv",
}


def _clean(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def variant_entry(metrics: dict, class_names: list[str]) -> dict:
    """Report entry of one variant from ``ConfusionMatrix.compute()`` output."""
    return _clean({
        "mean_iou": metrics["mean_iou"],
        "pixel_accuracy": metrics["pixel_accuracy"],
        "mean_accuracy": metrics["mean_accuracy"],
        "fw_iou": metrics["fw_iou"],
        "pixels": metrics["pixels"],
        "iou": dict(zip(class_names, metrics["iou"])),
    })


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def markdown_table(report: dict) -> str:
    """One row per variant, one column per class, mean IoU last (paper Table 1)."""
    names = report["class_names"]
    head = ["method", *(_SHORT.get(n, n) for n in names), "mean"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" + "---:|" * (len(head) - 1)]
    for variant, entry in report["variants"].items():
        cells = [variant, *(_pct(entry["iou"].get(n)) for n in names), f"**{_pct(entry['mean_iou'])}**"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_markdown(report: dict) -> str:
    ds = report["dataset"]
    out = [
        f"# Evaluation: {ds['data']} ({ds['split']}, {ds['images']} images)",
        "",
        f"Created {report['created']}; dataset fingerprint `{ds['fingerprint']}`.",
        "",
        "Per-class IoU (%) and mean IoU, one row per variant (layout of the DeconvNet paper's Table 1):",
        "",
        markdown_table(report),
        "",
        "| method | pixel acc. | mean acc. | mean IoU | f.w. IoU |",
        "|---|---:|---:|---:|---:|",
    ]
    for variant, e in report["variants"].items():
        cells = [_pct(e[k]) for k in ("pixel_accuracy", "mean_accuracy", "mean_iou", "fw_iou")]
        out.append(f"| {variant} | " + " | ".join(cells) + " |")
    sweep = report.get("proposal_sweep")
    if sweep:
        ks = sorted({int(k) for v in sweep.values() for k in v})
        out += [
            "",
            "Mean IoU (%) against the number of proposals per image:",
            "",
            "| method | " + " | ".join(str(k) for k in ks) + " |",
            "|---|" + "---:|" * len(ks),
        ]
        for variant, by_k in sweep.items():
            out.append(f"| {variant} | " + " | ".join(_pct(by_k.get(str(k))) for k in ks) + " |")
    out += failures_section(report)
    if report.get("diagnostics"):
        out += ["", *diagnostics_markdown(report["diagnostics"])]
    ckpts = report.get("checkpoints", {})
    if ckpts:
        out += [
            "",
            "Checkpoints: " + ", ".join(f"{k} `{v.get('checkpoint_id')}` ({v.get('path')})" for k, v in ckpts.items()),
        ]
    timings = report.get("timings", {})
    if timings.get("evaluate_s") is not None:
        out += ["", f"Evaluated in {timings['evaluate_s']:.1f} s ({timings.get('images_per_s') or 0:.2f} images/s)."]
    return "\n".join(out) + "\n"


def diagnostics_markdown(diag: dict) -> list[str]:
    """Proposal recall and mean IoU by object size (``pipeline.evaluation.diagnostics``), as Markdown lines."""
    small, large = diag["size_bounds"]
    recall = diag["proposal_recall"]
    ious = [k for k in next(iter(recall["by_size"].values())) if k.startswith("iou_")]
    out = [
        "## Diagnostics",
        "",
        f"Object sizes by instance area over image area: small < {100 * small:g}%, medium, large >= {100 * large:g}%.",
        "",
        f"Recall of the top {recall['top_k']} proposals (share of instances a proposal overlaps at IoU >= t):",
        "",
        "| size | instances | " + " | ".join(f"IoU >= {k[4:]}" for k in ious) + " |",
        "|---|---:|" + "---:|" * len(ious),
    ]
    for size, row in recall["by_size"].items():
        out.append(f"| {size} | {row['instances']} | " + " | ".join(_pct(row[k]) for k in ious) + " |")
    by_size = diag["mean_iou_by_size"]
    sizes = list(next(iter(by_size.values())))
    out += [
        "",
        "Mean IoU (%) by object size (the other sizes' instances void); `@oracle`: DeconvNet on the "
        "ground-truth instance boxes, enlarged like proposals:",
        "",
        "| method | " + " | ".join(sizes) + " |",
        "|---|" + "---:|" * len(sizes),
    ]
    for variant, row in by_size.items():
        out.append(f"| {variant} | " + " | ".join(_pct(row[s]) for s in sizes) + " |")
    return out


def failures_section(report: dict) -> list[str]:
    """Markdown lines: how many images were not scored and why (one row per error class), missing labels."""
    out = []
    failures, ds = report.get("failures") or {}, report["dataset"]
    if failures.get("count"):
        head = f"**{failures['count']} of {ds['images']} images could not be scored** ({failures['verdict']})"
        out += [
            "",
            f"{head}; they are left out of every number above. By error:",
            "",
            "| error | images | first example |",
            "|---|---:|---|",
        ]
        for status, entry in failures["by_class"].items():
            example = entry["example"].replace("|", "\\|").replace("\n", " ")
            out.append(f"| {status} | {entry['images']} | {example[:300]} |")
        out += ["", "Every failed image with its error: `failed_images` in report.json."]
    if ds.get("missing_labels"):
        shown = report.get("missing_label_images", [])[:20]
        more = ds["missing_labels"] - len(shown)
        listed = ", ".join(f"`{i}`" for i in shown)
        if more > 0:
            listed += f" and {more} more (report.json: `missing_label_images`)"
        out += [
            "",
            f"**{ds['missing_labels']} images have no label** and were skipped (--skip-missing-labels): {listed}",
        ]
    return out


def plot_per_class(report: dict, path: str) -> None:
    """Grouped bar chart: one group per class (mean last), one bar per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = report["class_names"]
    variants = list(report["variants"])
    labels = [_SHORT.get(n, n) for n in names] + ["mean"]
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(labels) * max(1, len(variants)) / 2), 3.6))
    width = 0.8 / max(1, len(variants))
    for i, variant in enumerate(variants):
        e = report["variants"][variant]
        vals = [e["iou"].get(n) for n in names] + [e["mean_iou"]]
        xs = [j + (i - (len(variants) - 1) / 2) * width for j in range(len(labels))]
        ax.bar(xs, [0 if v is None else 100 * v for v in vals], width=width, label=variant)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize="small", ncol=min(5, len(variants)))
    ax.set_title(f"Per-class IoU, {report['dataset']['split']} ({report['dataset']['images']} images)")
    fig.tight_layout()
    _save_fig(fig, path)


def plot_proposal_sweep(report: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for variant, by_k in report["proposal_sweep"].items():
        ks = sorted(by_k, key=int)
        ax.plot([int(k) for k in ks], [100 * (by_k[k] or 0) for k in ks], marker="o", label=variant)
    ax.set_xlabel("proposals per image")
    ax.set_ylabel("mean IoU (%)")
    ax.legend()
    ax.set_title("Benefit of instance-wise prediction")
    fig.tight_layout()
    _save_fig(fig, path)


def _save_fig(fig, path: str) -> None:
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write(path, buf.getvalue())


def write_report(report: dict, out_dir: str) -> dict[str, str]:
    """Write report.json, report.md and the plots under ``out_dir``; returns their paths."""
    report = _clean({"report_version": REPORT_VERSION, **report})
    paths = {
        "json": f"{out_dir.rstrip('/')}/report.json",
        "markdown": f"{out_dir.rstrip('/')}/report.md",
        "plot": f"{out_dir.rstrip('/')}/per_class_iou.png",
    }
    atomic_write(paths["json"], json.dumps(report, indent=2, sort_keys=False).encode())
    atomic_write(paths["markdown"], render_markdown(report).encode())
    plot_per_class(report, paths["plot"])
    if report.get("proposal_sweep"):
        paths["sweep_plot"] = f"{out_dir.rstrip('/')}/proposals_curve.png"
        plot_proposal_sweep(report, paths["sweep_plot"])
    return paths


def read_report(path: str) -> dict:
    report = json.loads(read_url(path))
    if "variants" not in report or "dataset" not in report:
        raise ValueError(f"{path} is not a deconvseg evaluation report")
    return report
