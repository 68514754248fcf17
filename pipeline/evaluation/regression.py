"""The evaluation job's verdict: did quality regress against a baseline report, and did too many images fail?

A scheduler runs ``jobs/evaluate.py --baseline previous/report.json`` and alerts on
the exit code:

- ``0``  no regression (or no baseline given);
- ``3``  regression: some variant's mean IoU dropped by more than ``miou_drop``, or
  one of its classes' IoU by more than ``class_drop`` (both in IoU points, 0.01 = 1
  point);
- ``4``  refused: the two reports are of different data (fingerprint, split or
  classes differ); ``--force-compare`` compares anyway;
- ``5``  images failed to score: more than ``--max-failed`` allows (default none), or
  no image scored at all (whatever ``--max-failed`` says). It wins over ``3``: metrics
  over a different set of images are not comparable with the baseline's.

``2`` (bad arguments, missing labels) is set by the job before any work.

Only variants and classes present in both reports are compared; a class whose IoU
is undefined in either report is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

EXIT_OK = 0
EXIT_REGRESSION = 3
EXIT_MISMATCH = 4
EXIT_FAILED = 5
# Default regression thresholds of a baseline comparison, in IoU (0.01 = 1 point): the mean IoU of a variant,
# and any one class's IoU.
MIOU_DROP = 0.005
CLASS_DROP = 0.02


class ReportMismatch(ValueError):
    """The reports describe different datasets / splits / class sets."""


@dataclass
class Comparison:
    deltas: dict[str, dict[str, float]] = field(default_factory=dict)  # variant -> {"mean_iou" | class: delta}
    regressions: list[str] = field(default_factory=list)  # human-readable reasons
    lines: list[str] = field(default_factory=list)  # printable delta table

    @property
    def exit_code(self) -> int:
        return EXIT_REGRESSION if self.regressions else EXIT_OK


def check_comparable(current: dict, baseline: dict) -> None:
    a, b = current["dataset"], baseline["dataset"]
    problems = [
        f"{key}: {b.get(key)!r} (baseline) vs {a.get(key)!r} (now)"
        for key in ("fingerprint", "split")
        if a.get(key) != b.get(key)
    ]
    if current["class_names"] != baseline["class_names"]:
        problems.append("class names differ")
    if problems:
        raise ReportMismatch(
            "reports are of different data: " + "; ".join(problems) + " (use --force-compare to compare anyway)"
        )


def compare_reports(
    current: dict, baseline: dict, *, miou_drop: float = MIOU_DROP, class_drop: float = CLASS_DROP, force: bool = False
) -> Comparison:
    """Per-variant, per-class IoU deltas (now - baseline) and the regressions found."""
    if not force:
        check_comparable(current, baseline)
    cmp = Comparison()
    names = [n for n in current["class_names"] if n in baseline["class_names"]]
    cmp.lines.append(f"{'variant':<18} {'mean IoU':>10} {'delta':>8}   worst class delta")
    for variant, now in current["variants"].items():
        before = baseline["variants"].get(variant)
        if before is None or now.get("mean_iou") is None or before.get("mean_iou") is None:
            cmp.lines.append(f"{variant:<18} (not in baseline)")
            continue
        d = {"mean_iou": now["mean_iou"] - before["mean_iou"]}
        for n in names:
            x, y = now["iou"].get(n), before["iou"].get(n)
            if x is not None and y is not None:
                d[n] = x - y
        cmp.deltas[variant] = d
        if d["mean_iou"] < -miou_drop:
            cmp.regressions.append(
                f"{variant}: mean IoU {100 * before['mean_iou']:.2f} -> {100 * now['mean_iou']:.2f} "
                f"({100 * d['mean_iou']:+.2f} points, threshold {100 * miou_drop:.2f})"
            )
        for n in names:
            if n in d and d[n] < -class_drop:
                cmp.regressions.append(
                    f"{variant}/{n}: IoU {100 * before['iou'][n]:.2f} -> {100 * now['iou'][n]:.2f} "
                    f"({100 * d[n]:+.2f} points, threshold {100 * class_drop:.2f})"
                )
        per_class = {k: v for k, v in d.items() if k != "mean_iou"}
        worst = min(per_class.items(), key=lambda kv: kv[1]) if per_class else ("-", 0.0)
        now_pts, delta_pts = 100 * now["mean_iou"], 100 * d["mean_iou"]
        cmp.lines.append(f"{variant:<18} {now_pts:>10.2f} {delta_pts:>+8.2f}   {worst[0]} {100 * worst[1]:+.2f}")
    return cmp


def parse_max_failed(text: str) -> int | float:
    """``--max-failed``: a count of images (``3``) or a fraction of them (``0.05``, ``5%``)."""
    t = str(text).strip()
    try:
        value = float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        raise ValueError(f"--max-failed takes a count (3) or a fraction (0.05 or 5%), got {text!r}") from None
    is_fraction = t.endswith("%") or any(c in t for c in ".eE")
    if value < 0 or (is_fraction and value > 1) or not (is_fraction or value.is_integer()):
        raise ValueError(f"--max-failed must be a count >= 0 or a fraction in [0, 1], got {text!r}")
    return value if is_fraction else int(value)


def allowed_failures(max_failed: int | float, images: int) -> int:
    """How many of ``images`` may fail to score under ``max_failed`` (a count, or a float fraction)."""
    if isinstance(max_failed, float):
        return int(max_failed * images + 1e-9)
    return int(max_failed)


def failure_summary(failed: list[str], *, images: int, scored: int, max_failed: int | float) -> dict:
    """How many images failed to score and why (by error class), against ``--max-failed``.

    ``failed`` holds one line per image: its id, error class and message, tab-separated. The verdict fails when no image
    scored at all, or more failed than ``max_failed`` (a count, or a float fraction) allows.
    """
    by_class: dict[str, dict] = {}
    for line in failed:
        image_id, status, error = (line.split("\t", 2) + ["", ""])[:3]
        entry = by_class.setdefault(status, {"images": 0, "example": f"{image_id}: {error}"})
        entry["images"] += 1
    allowed = allowed_failures(max_failed, images)
    verdict, code = f"{len(failed)} of {images} images failed to score (--max-failed allows {allowed})", EXIT_OK
    if scored == 0:
        verdict, code = f"no image could be scored ({len(failed)} of {images} failed)", EXIT_FAILED
    elif len(failed) > allowed:
        code = EXIT_FAILED
    by_class = dict(sorted(by_class.items(), key=lambda kv: -kv[1]["images"]))
    return {"count": len(failed), "allowed": allowed, "by_class": by_class, "verdict": verdict, "exit_code": code}
