"""Export a segmentation output folder for review in labelling tools: CVAT, Label Studio, COCO.

The input is what ``jobs/segment_dataset.py`` wrote (a folder or fsspec URL): its
Parquet rows (``_parquet/``: one per input, the mask PNG, the uncertainty, the
checkpoint ids) and ``_summary.json`` (the checkpoint's classes and colours). Formats:

- ``cvat``: CVAT's "Segmentation mask 1.1" layout: ``labelmap.txt`` (every class and
  its colour), ``SegmentationClass/<image_id stem>.png`` (RGB, the class colours) and
  ``ImageSets/Segmentation/default.txt`` (the names without extension). Void pixels
  (``--min-confidence``) are black, which CVAT reads as background (not annotated).
- ``labelstudio``: ``tasks.json``, one task per image with one prediction whose
  ``result`` holds a ``brushlabels`` region per class present (``pipeline.rle``),
  ``score`` = 1 - uncertainty and ``model_version`` = the DeconvNet checkpoint id (the
  FCN's for FCN-only runs); plus ``labeling_config.xml`` for the project.
- ``coco``: ``annotations.json``, instances-style, one RLE annotation per class
  present per image (``iscrowd`` 0, as COCO-Stuff), category ids = the checkpoint's
  class indices. Void pixels belong to no annotation.

Rows whose status is not ``ok`` (the segment job's error rows) are counted by status
and never exported; an ``ok`` row that cannot be converted (a corrupt mask) is counted
as failed. ``rows = exported + skipped + failed`` always.

``export_rows`` converts rows in this process, without Ray; ``run_export`` streams the
Parquet parts through ``export_batch`` (the same conversion as a Ray Data stage) for many
images; both end with ``finish``, which writes the files that list every image.
"""

from __future__ import annotations

import io
import json
import posixpath
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from xml.sax.saxutils import quoteattr

import numpy as np
from PIL import Image

from models.storage import atomic_write, join, url_to_fs
from pipeline.rle import bbox, coco_rle, ls_brush_rle
from pipeline.sources import PARQUET_DIR, SUMMARY_FILE, mask_key

EXPORT_FORMATS = ("cvat", "labelstudio", "coco")
ROW_COLUMNS = ["image_id", "source", "height", "width", "status", "error", "mask_png", "uncertainty",
               "checkpoint_id", "fcn_checkpoint_id"]
IMAGE_URL_FIELDS = ("image_id", "source", "stem", "name")
CVAT_MASK_DIR = "SegmentationClass"
CVAT_LIST = "ImageSets/Segmentation/default.txt"
CVAT_LABELMAP = "labelmap.txt"
LS_TASKS, LS_CONFIG, COCO_FILE = "tasks.json", "labeling_config.xml", "annotations.json"


@dataclass
class ExportSpec:
    """What to write and where.

    Args:
        format: ``cvat``, ``labelstudio`` or ``coco``.
        output: folder or fsspec URL of the export.
        class_names: the checkpoint's classes (index = class id).
        colours: RGB per class.
        image_url: Label Studio's ``data.image``, a ``str.format`` pattern over ``{image_id}``,
            ``{source}`` (the input URL the job read), ``{stem}`` (the id without extension),
            ``{name}`` (its file name).
        from_name: the ``BrushLabels`` tag's name in the Label Studio project.
        to_name: the ``Image`` tag's name.
    """

    format: str
    output: str
    class_names: list[str]
    colours: list[list[int]]
    image_url: str = "{source}"
    from_name: str = "label"
    to_name: str = "image"

    def validate(self) -> None:
        if self.format not in EXPORT_FORMATS:
            raise ValueError(f"--format must be one of {EXPORT_FORMATS}, got {self.format!r}")
        try:
            self.image_url.format(**{k: "x" for k in IMAGE_URL_FIELDS})
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"--image-url {self.image_url!r}: only the fields {{{'}, {'.join(IMAGE_URL_FIELDS)}}} exist ({exc})"
            ) from exc


@dataclass
class ExportCounts:
    """Every row once: exported, skipped (error rows, by status) or failed (by error class)."""

    rows: int = 0
    exported: int = 0
    skipped: Counter = field(default_factory=Counter)
    failed: Counter = field(default_factory=Counter)
    failures: list[dict] = field(default_factory=list)  # image_id and error of each failed row

    def as_dict(self) -> dict:
        return {
            "rows": self.rows,
            "exported": self.exported,
            "skipped_error_rows": sum(self.skipped.values()),
            "skipped_by_status": dict(sorted(self.skipped.items())),
            "failed": sum(self.failed.values()),
            "failed_by_error": dict(sorted(self.failed.items())),
            "failures": self.failures,
        }


# --- reading the segment output ---------------------------------------------------------------------------


def parquet_parts(folder: str) -> list[str]:
    """URLs of the Parquet parts of a segment output; ValueError when it has none."""
    fs, root = url_to_fs(folder)
    fs.invalidate_cache()
    rows = join(root.rstrip("/"), PARQUET_DIR)
    parts = []
    if fs.isdir(rows):
        parts = sorted(p for p in fs.find(rows) if p.endswith(".parquet") and not posixpath.basename(p).startswith("."))
    if not parts:
        raise ValueError(
            f"{folder!r} has no Parquet rows ({PARQUET_DIR}/): export a segment_dataset output written with "
            "--format parquet or both"
        )
    return [fs.unstrip_protocol(p) if "://" in folder else p for p in parts]


def read_rows(folder: str) -> Iterator[dict]:
    """The rows of a segment output (``ROW_COLUMNS``), part by part, without Ray."""
    import pyarrow.parquet as pq

    for part in parquet_parts(folder):
        fs, path = url_to_fs(part)
        yield from pq.read_table(path, columns=ROW_COLUMNS, filesystem=fs).to_pylist()


def read_classes(folder: str, checkpoint: str | None = None) -> tuple[list[str], list[list[int]]]:
    """Class names and colours: of ``checkpoint`` when given, else from the output's ``_summary.json``
    (its ``classes``, or the checkpoint its ``config`` names)."""
    if checkpoint is None:
        fs, root = url_to_fs(folder)
        try:
            summary = json.loads(fs.cat_file(join(root, SUMMARY_FILE)))
        except FileNotFoundError as exc:
            raise ValueError(f"{folder!r} has no {SUMMARY_FILE}: pass --checkpoint to name the classes") from exc
        if summary.get("classes"):
            classes = summary["classes"]
            return [c["name"] for c in classes], [list(c["colour"]) for c in classes]
        config = summary.get("config") or {}
        checkpoint = config.get("checkpoint") if config.get("inference", {}).get("ensemble") != "fcn" else None
        checkpoint = checkpoint or config.get("fcn_checkpoint")
        if not checkpoint:
            raise ValueError(f"{folder!r}: {SUMMARY_FILE} names no classes and no checkpoint; pass --checkpoint")
    from models import read_checkpoint_meta  # loads torch: only here, in the driver

    meta = read_checkpoint_meta(checkpoint)
    return list(meta.class_names), [list(c) for c in meta.palette[: meta.num_classes]]


def decode_mask(png: bytes) -> np.ndarray:
    """The class-index array of a mask PNG as the segment job writes them (palette or greyscale)."""
    img = Image.open(io.BytesIO(png))
    if img.mode not in ("P", "L"):
        raise ValueError(f"mask PNG of mode {img.mode}, expected a palette or greyscale PNG of class indices")
    return np.asarray(img)


# --- one row ----------------------------------------------------------------------------------------------


def present_classes(mask: np.ndarray, n_classes: int) -> list[int]:
    """Class ids present in ``mask`` (void 255 and ids beyond the classes left out)."""
    return [int(c) for c in np.unique(mask) if c < n_classes]


def cvat_mask(mask: np.ndarray, colours: list[list[int]]) -> bytes:
    """RGB PNG of a class-index mask in the class colours; void and unknown ids black (CVAT's background)."""
    lut = np.zeros((256, 3), np.uint8)
    lut[: len(colours)] = np.asarray(colours, np.uint8).reshape(-1, 3)
    buf = io.BytesIO()
    Image.fromarray(lut[mask], mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


def image_url(pattern: str, row: dict) -> str:
    image_id = row["image_id"]
    return pattern.format(
        image_id=image_id,
        source=row["source"],
        stem=posixpath.splitext(image_id)[0],
        name=posixpath.basename(image_id),
    )


def model_version(row: dict) -> str | None:
    return row.get("checkpoint_id") or row.get("fcn_checkpoint_id")


def labelstudio_task(row: dict, mask: np.ndarray, spec: ExportSpec) -> dict:
    """A Label Studio task: ``data.image`` and one prediction with a ``brushlabels`` region per class."""
    height, width = mask.shape
    result = [
        {
            "id": f"class{c}",
            "from_name": spec.from_name,
            "to_name": spec.to_name,
            "type": "brushlabels",
            "original_width": int(width),
            "original_height": int(height),
            "image_rotation": 0,
            "value": {"format": "rle", "rle": ls_brush_rle(mask == c), "brushlabels": [spec.class_names[c]]},
        }
        for c in present_classes(mask, len(spec.class_names))
    ]
    uncertainty = row.get("uncertainty")
    return {
        "data": {"image": image_url(spec.image_url, row), "image_id": row["image_id"]},
        "predictions": [
            {
                "model_version": model_version(row),
                "score": None if uncertainty is None else round(1.0 - float(uncertainty), 6),
                "result": result,
            }
        ],
    }


def coco_entries(row: dict, mask: np.ndarray, n_classes: int) -> dict:
    """The image entry and its annotations (one per class present), without ids (``finish`` numbers them)."""
    height, width = mask.shape
    annotations = []
    for c in present_classes(mask, n_classes):
        region = mask == c
        annotations.append(
            {"category_id": c, "segmentation": coco_rle(region), "area": int(region.sum()), "bbox": bbox(region),
             "iscrowd": 0}
        )
    image = {"file_name": row["image_id"], "height": int(height), "width": int(width)}
    return {"image": image, "annotations": annotations}


def convert_row(row: dict, spec: ExportSpec) -> tuple[str, str, str]:
    """``(status, error, record)`` of one row: ``exported`` with its record, ``skipped`` (an error row)
    with its status, or ``failed`` with the error. CVAT masks are written here; the record is the
    name in ``default.txt``, else the task or COCO entries as JSON."""
    if row["status"] != "ok":
        return "skipped", str(row["status"]), ""
    try:
        mask = decode_mask(row["mask_png"])
        if spec.format == "cvat":
            name = mask_key(row["image_id"])[: -len(".png")]  # the key the segment job wrote the mask under
            atomic_write(join(spec.output, f"{CVAT_MASK_DIR}/{name}.png"), cvat_mask(mask, spec.colours))
            return "exported", "", name
        if spec.format == "labelstudio":
            return "exported", "", json.dumps(labelstudio_task(row, mask, spec))
        return "exported", "", json.dumps(coco_entries(row, mask, len(spec.class_names)))
    except Exception as exc:
        return "failed", f"{type(exc).__name__}: {exc}", ""


def export_batch(batch: dict[str, np.ndarray], *, spec: ExportSpec) -> dict[str, np.ndarray]:
    """``convert_row`` over a batch of rows (a Ray Data stage): ``image_id``, ``outcome``, ``detail``, ``record``."""
    n = len(batch["image_id"])
    rows = [{k: _plain(batch[k][i]) for k in batch} for i in range(n)]
    converted = [convert_row(row, spec) for row in rows]
    return {
        "image_id": np.array([r["image_id"] for r in rows], dtype=object),
        "outcome": np.array([c[0] for c in converted], dtype=object),
        "detail": np.array([c[1] for c in converted], dtype=object),
        "record": np.array([c[2] for c in converted], dtype=object),
    }


def _plain(value):
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and np.isnan(value):
        return None
    return value


# --- the whole export -------------------------------------------------------------------------------------


def export_rows(rows: Iterable[dict], spec: ExportSpec) -> dict:
    """Export rows in this process (no Ray); returns the counts (``ExportCounts.as_dict``)."""
    results = ((row["image_id"], *convert_row(row, spec)) for row in rows)
    return finish(spec, results)


def run_export(spec: ExportSpec, parts: list[str], *, batch_size: int = 16, ray_address: str | None = None) -> dict:
    """Stream the rows of the Parquet ``parts`` through ``export_batch`` on Ray Data (joining or starting
    Ray), then ``finish``; returns the counts. Only the records (CVAT: names) come back to the driver."""
    import pyarrow.fs
    import ray

    from pipeline.ray_session import ensure_ray

    ensure_ray(ray_address)
    fs, _ = url_to_fs(parts[0])
    ds = ray.data.read_parquet(
        [url_to_fs(p)[1] for p in parts],
        columns=ROW_COLUMNS,
        filesystem=pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs)),
    ).map_batches(export_batch, fn_kwargs={"spec": spec}, batch_size=batch_size, batch_format="numpy")

    def results():
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            yield from zip(batch["image_id"], batch["outcome"], batch["detail"], batch["record"])

    return finish(spec, results())


def finish(spec: ExportSpec, results: Iterable[tuple[str, str, str, str]]) -> dict:
    """Count ``(image_id, outcome, detail, record)`` results and write the files that list every image."""
    counts = ExportCounts()
    records = []
    for image_id, outcome, detail, record in results:
        counts.rows += 1
        if outcome == "exported":
            counts.exported += 1
            records.append((image_id, record))
        elif outcome == "skipped":
            counts.skipped[detail] += 1
        else:
            counts.failed[detail.split(":", 1)[0]] += 1
            counts.failures.append({"image_id": image_id, "error": detail})
    records.sort()
    if spec.format == "cvat":
        _write_text(spec.output, CVAT_LABELMAP, cvat_labelmap(spec.class_names, spec.colours))
        _write_text(spec.output, CVAT_LIST, "".join(f"{name}\n" for _, name in records))
    elif spec.format == "labelstudio":
        tasks = ",\n".join(record for _, record in records)
        _write_text(spec.output, LS_TASKS, f"[\n{tasks}\n]\n" if records else "[]\n")
        _write_text(spec.output, LS_CONFIG, labelstudio_config(spec))
    else:
        _write_text(spec.output, COCO_FILE, json.dumps(coco_document(spec, [json.loads(r) for _, r in records])))
    return counts.as_dict()


def _write_text(output: str, name: str, text: str) -> None:
    atomic_write(join(output, name), text.encode())


def cvat_labelmap(class_names: list[str], colours: list[list[int]]) -> str:
    """CVAT's ``labelmap.txt``: ``name:r,g,b::`` per class; black added as ``background`` when no class is
    black (void pixels are painted black)."""
    lines = ["# label:color_rgb:parts:actions"]
    for name, colour in zip(class_names, colours):
        lines.append(f"{name.replace(':', '_')}:{','.join(str(int(v)) for v in colour)}::")
    if [0, 0, 0] not in [list(map(int, c)) for c in colours] and "background" not in class_names:
        lines.append("background:0,0,0::")
    return "\n".join(lines) + "\n"


def labelstudio_config(spec: ExportSpec) -> str:
    """A labelling interface for the tasks: the image and a ``BrushLabels`` label per class, in its colour."""
    labels = "\n".join(
        f"    <Label value={quoteattr(name)} background={quoteattr('#{:02x}{:02x}{:02x}'.format(*map(int, colour)))}/>"
        for name, colour in zip(spec.class_names, spec.colours)
    )
    return (
        "<View>\n"
        f'  <Image name={quoteattr(spec.to_name)} value="$image" zoom="true"/>\n'
        f"  <BrushLabels name={quoteattr(spec.from_name)} toName={quoteattr(spec.to_name)}>\n{labels}\n"
        "  </BrushLabels>\n"
        "</View>\n"
    )


def coco_document(spec: ExportSpec, entries: list[dict]) -> dict:
    """The instances-style JSON: images and annotations numbered from 1 in image-id order."""
    images, annotations = [], []
    for image_number, entry in enumerate(entries, start=1):
        images.append({"id": image_number, **entry["image"]})
        for ann in entry["annotations"]:
            annotations.append({"id": len(annotations) + 1, "image_id": image_number, **ann})
    categories = [{"id": i, "name": name, "supercategory": ""} for i, name in enumerate(spec.class_names)]
    info = {"description": "deconvseg predictions", "version": "1.0"}
    return {"info": info, "licenses": [], "images": images, "annotations": annotations, "categories": categories}
