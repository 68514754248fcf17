"""The built-in demo (``make demo``): label sample data end to end with ``ray job submit``.

::

    make demo                       # or: .venv/bin/python jobs/demo.py --output build/demo

1. Writes the sample bucket: the val split of the demo dataset (``pipeline.demo.synthvoc``,
   ``DEMO_DATASET``: 20 images with class and instance labels), the very images the
   committed checkpoints were evaluated on in ``models/MODEL_CARD.md``.
2. Starts a private local Ray head (free ports, own temp dir, token auth), unless
   ``RAY_ADDRESS`` names a running cluster's job address (``http://host:8265``).
3. ``ray job submit`` ``jobs/segment_dataset.py`` on the images with the committed
   DeconvNet and FCN-8s checkpoints (EdgeBox proposals, DeconvNet on each, max
   aggregation, FCN-8s ensemble, dense CRF): PNG masks + Parquet rows.
4. ``ray job submit`` ``jobs/evaluate.py`` on the labels: report.json, report.md (every
   variant, paper Table 1 layout), per_class_iou.png.
5. Draws overlay.png (input | prediction | ground truth), prints where everything is
   and stops the Ray head it started.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python jobs/demo.py`: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from models import read_checkpoint_meta  # noqa: E402
from pipeline.demo.local_head import Head, leftover_processes, local_head  # noqa: E402
from pipeline.demo.overlay import overlay_grid  # noqa: E402
from pipeline.demo.synthvoc import DEMO_DATASET, generate_voc  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEMO_MODELS = REPO / "models" / "demo"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--output", default=str(REPO / "build" / "demo"), help="demo folder (emptied first)")
    p.add_argument("--checkpoint", default=str(DEMO_MODELS / "deconvnet.safetensors"))
    p.add_argument("--fcn-checkpoint", default=str(DEMO_MODELS / "fcn8s.safetensors"))
    p.add_argument("--overlay-rows", type=int, default=4, help="images in overlay.png")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local head (default: the machine's)")
    return p


def _submit(head: Head, args: list[str], what: str) -> str:
    print(f"\n== ray job submit: {what}", flush=True)
    done = head.submit(["python", *args], working_dir=str(REPO))
    if done.returncode != 0 or "succeeded" not in done.stdout.lower():
        raise SystemExit(f"demo: the {what} job failed (exit {done.returncode}); its log is above")
    return done.stdout


def _overlay(data: Path, masks: Path, checkpoint: str, rows: int, out: Path) -> None:
    meta = read_checkpoint_meta(checkpoint)
    ids = (data / "ImageSets" / "Segmentation" / "val.txt").read_text().split()[:rows]
    cells = []
    for image_id in ids:
        image = np.asarray(Image.open(data / "JPEGImages" / f"{image_id}.jpg").convert("RGB"))
        pred = np.asarray(Image.open(masks / f"{image_id}.png"))
        truth = np.asarray(Image.open(data / "SegmentationClass" / f"{image_id}.png"))
        cells.append((image_id, image, pred, truth))
    overlay_grid(cells, meta.palette, meta.class_names).save(out)


def main(args: argparse.Namespace) -> int:
    start = time.time()
    out = Path(args.output).resolve()
    for path in (args.checkpoint, args.fcn_checkpoint):
        if not Path(path).is_file():
            print(f"demo: checkpoint {path} not found (models/demo/ holds the committed ones)", file=sys.stderr)
            return 2
    if out.exists():
        shutil.rmtree(out)
    data, masks, report = out / "data", out / "masks", out / "report"
    generate_voc(str(data), **DEMO_DATASET, splits=("val",))
    n_images = len((data / "ImageSets" / "Segmentation" / "val.txt").read_text().split())
    print(f"demo: sample bucket of {n_images} images (with labels) at {data}", flush=True)
    segment = [
        "jobs/segment_dataset.py", "--input", str(data / "JPEGImages"), "--output", str(masks),
        "--checkpoint", args.checkpoint, "--fcn-checkpoint", args.fcn_checkpoint, "--format", "both",
    ]
    evaluate = [
        "jobs/evaluate.py", "--data", str(data), "--split", "val", "--output", str(report),
        "--checkpoint", args.checkpoint, "--fcn-checkpoint", args.fcn_checkpoint,
    ]
    address = os.environ.get("RAY_ADDRESS", "")
    if address.startswith("http"):
        print(f"demo: submitting to the Ray cluster at {address}", flush=True)
        head = Head(url=address, env=dict(os.environ), tmpdir="")
        _submit(head, segment, "segment the sample bucket")
        _submit(head, evaluate, "evaluate on the sample labels")
    else:
        print("demo: starting a local Ray head (stopped at the end)", flush=True)
        with local_head(num_cpus=args.num_cpus) as head:
            print(f"demo: Ray head up, dashboard {head.url}", flush=True)
            _submit(head, segment, "segment the sample bucket")
            _submit(head, evaluate, "evaluate on the sample labels")
        left = leftover_processes(head.tmpdir)
        print(f"demo: Ray head stopped{f' (processes still running: {left})' if left else ''}", flush=True)
    _overlay(data, masks, args.checkpoint, args.overlay_rows, out / "overlay.png")
    summary = json.loads((masks / "_summary.json").read_text())
    print("\n" + (report / "report.md").read_text())
    print(f"demo: done in {time.time() - start:.0f} s")
    print(f"  sample images + labels  {data}")
    totals = summary["totals"]
    print(f"  PNG masks               {masks}/*.png ({totals['masks']} masks, {totals['error_rows']} error rows)")
    print(f"  Parquet rows            {masks}/_parquet/")
    print(f"  run summary             {masks}/_summary.json (and _progress.json)")
    print(f"  evaluation report       {report}/report.md, report.json, per_class_iou.png")
    print(f"  overlay picture         {out}/overlay.png")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
