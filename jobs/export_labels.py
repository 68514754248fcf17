"""Export a segment_dataset output for review in CVAT, Label Studio or as COCO JSON, streaming on Ray Data.

On a cluster::

    ray job submit --working-dir . -- python jobs/export_labels.py \\
        --input s3://bucket/masks --output s3://bucket/review/cvat --format cvat

On a laptop the same command without ``ray job submit --working-dir . --`` starts a
local Ray. ``--input`` is the ``--output`` of ``jobs/segment_dataset.py`` written with
``--format parquet`` or ``both`` (the export reads its Parquet rows). Writes, under
``--output``: ``cvat``: ``labelmap.txt``, ``SegmentationClass/*.png``,
``ImageSets/Segmentation/default.txt`` (zip the folder and import it as "Segmentation
mask 1.1"); ``labelstudio``: ``tasks.json`` and ``labeling_config.xml``; ``coco``:
``annotations.json``. Error rows are counted and never exported; the last line is the
counts as JSON. Exit codes: 0 done, 1 rows that could not be exported, 2 bad arguments.
Reference: docs/export.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python jobs/export_labels.py`: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.export import EXPORT_FORMATS, ExportSpec, parquet_parts, read_classes, run_export  # noqa: E402
from pipeline.ray_session import add_ray_address_arg  # noqa: E402
from pipeline.sources import check_output_location  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--input", required=True, help="a segment_dataset output folder or URL (with _parquet/ rows)")
    p.add_argument("--output", required=True, help="export folder or fsspec URL (not inside the input)")
    p.add_argument("--format", required=True, choices=EXPORT_FORMATS)
    p.add_argument(
        "--image-url",
        default=ExportSpec.image_url,
        help="labelstudio: data.image of each task, a pattern over {image_id}, {source} (the input URL the job "
        "read), {stem}, {name}; e.g. 's3://bucket/images/{image_id}' or '/data/local-files/?d=images/{image_id}' "
        "(default: {source})",
    )
    p.add_argument("--from-name", default=ExportSpec.from_name, help="labelstudio: the BrushLabels tag's name")
    p.add_argument("--to-name", default=ExportSpec.to_name, help="labelstudio: the Image tag's name")
    p.add_argument(
        "--checkpoint", default=None, help="take class names and colours from this checkpoint instead of the "
        "output's _summary.json"
    )
    p.add_argument("--batch-size", type=int, default=16, help="rows per export task")
    add_ray_address_arg(p)
    return p


def prepare(args: argparse.Namespace) -> tuple[ExportSpec, list[str]]:
    """Every argument check, before any work; raises ValueError / FileNotFoundError."""
    parts = parquet_parts(args.input)
    names, colours = read_classes(args.input, args.checkpoint)
    spec = ExportSpec(args.format, args.output, names, colours, args.image_url, args.from_name, args.to_name)
    spec.validate()
    if args.batch_size < 1:
        raise ValueError("--batch-size must be >= 1")
    check_output_location(args.input, args.output)
    return spec, parts


def main(args: argparse.Namespace) -> int:
    try:
        spec, parts = prepare(args)
    except (ValueError, FileNotFoundError, PermissionError) as exc:
        print(f"export_labels: error: {exc}", file=sys.stderr)
        return 2
    counts = run_export(spec, parts, batch_size=args.batch_size, ray_address=args.ray_address)
    print(
        f"export_labels: {counts['rows']} rows: {counts['exported']} exported, {counts['skipped_error_rows']} "
        f"error rows skipped, {counts['failed']} failed -> {spec.output} ({spec.format})"
    )
    print(json.dumps(counts))
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
