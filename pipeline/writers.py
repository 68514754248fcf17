"""Write stage: palette PNG masks, Parquet result rows, ``_errors`` rows; all atomic.

Layout under the output root (local folder or fsspec URL):

- ``<mask_key>``: one palette PNG per image (VOC colours), ``<image_id stem>.png``;
- ``_confidence/<mask_key>``: with confidence maps, one greyscale PNG per image
  (max ensemble probability x 255, ``pipeline.confidence``);
- ``_parquet/part-<hash>.parquet``: one row per input (results and errors), schema
  ``RESULT_SCHEMA``;
- ``_errors/part-<hash>.parquet``: one row per failed input, schema ``ERROR_SCHEMA``;
- ``_summary.json``: counts and throughput of the last run (``pipeline.segment``).

A file is complete or absent: local files are written to a hidden temporary name
and renamed; object stores publish an object only when its upload completes. Part
files are named by a hash of their image ids, so a retried task overwrites its own
file instead of adding duplicate rows. PNGs are written before the Parquet rows
that report them, so an interrupted run never has a row without its mask.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from models.classes import IGNORE_INDEX
from models.storage import atomic_write, join
from pipeline.faults import inject
from pipeline.sources import ERRORS_DIR, PARQUET_DIR, confidence_key, safe_relpath

CLASS_FRACTION = pa.struct([("id", pa.int32()), ("name", pa.string()), ("fraction", pa.float32())])
RESULT_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),  # input path relative to the input root
        ("source", pa.string()),  # full input path / URL
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("status", pa.string()),  # "ok" or the error class
        ("error", pa.string()),  # error message; null when ok
        ("mask_png", pa.binary()),  # palette PNG bytes (class index per pixel, 255 void); null on error
        ("confidence_png", pa.binary()),  # greyscale PNG, max class probability x 255; null unless --confidence png
        ("classes", pa.list_(CLASS_FRACTION)),  # classes present (and void, id 255) and their pixel fractions
        ("uncertainty", pa.float32()),  # mean of 1 - max class probability (before CRF); higher = review first
        ("mean_confidence", pa.float32()),  # mean of the max class probability (before CRF) = 1 - uncertainty
        ("mean_entropy", pa.float32()),  # mean per-pixel entropy of the class probabilities (nats, before CRF)
        ("checkpoint_id", pa.string()),  # DeconvNet checkpoint content hash
        ("fcn_checkpoint_id", pa.string()),  # FCN checkpoint content hash (null when not used)
        ("config_hash", pa.string()),  # hash of the result-affecting settings (SegmentConfig.config_hash)
    ]
)
ERROR_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("source", pa.string()),
        ("status", pa.string()),  # error class, e.g. UnidentifiedImageError, EmptyFile, ImageTooLarge
        ("error", pa.string()),
        ("checkpoint_id", pa.string()),
        ("config_hash", pa.string()),
    ]
)


def encode_mask(mask: np.ndarray, palette: list[list[int]]) -> bytes:
    """Palette ("P" mode) PNG of a uint8 label map; pixel value = class index."""
    img = Image.fromarray(np.asarray(mask, dtype=np.uint8), mode="P")
    flat = [c for rgb in palette[:256] for c in rgb]
    img.putpalette(flat + [0] * (768 - len(flat)))
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def encode_grey(image: np.ndarray) -> bytes:
    """Greyscale ("L" mode) PNG of a uint8 array."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8), mode="L").save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _class_name(c: int, class_names: list[str]) -> str:
    if c < len(class_names):
        return class_names[c]
    return "void" if c == IGNORE_INDEX else f"class_{c}"


def class_fractions(mask: np.ndarray, class_names: list[str]) -> list[dict]:
    counts = np.bincount(np.asarray(mask).ravel(), minlength=len(class_names))
    total = max(int(counts.sum()), 1)
    return [
        {"id": int(c), "name": _class_name(c, class_names), "fraction": float(n) / total}
        for c, n in enumerate(counts)
        if n > 0
    ]


def _part_name(image_ids: list[str]) -> str:
    # JSON, not a joined string: ids may contain any character, and {"a\nb"} must not name
    # the same part as {"a", "b"} (the second part would replace the first one's rows).
    digest = hashlib.sha256(json.dumps(sorted(image_ids)).encode()).hexdigest()[:20]
    return f"part-{digest}.parquet"


def _parquet_bytes(rows: list[dict], schema: pa.Schema) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), buf)
    return buf.getvalue()


def write_outputs(
    batch: dict[str, np.ndarray],
    *,
    output: str,
    formats: tuple[str, ...],
    class_names: list[str],
    palette: list[list[int]],
    checkpoint_id: str,
    fcn_checkpoint_id: str | None,
    config_hash: str,
    confidence_maps: bool = False,
) -> dict[str, np.ndarray]:
    """Write one batch's masks (and confidence maps) and rows; return ``image_id``/``status``/``error`` per row.

    A confidence map is written before its mask, so a mask present means its map is too.
    """
    results, failures = [], []
    for i, image_id in enumerate(batch["image_id"]):
        image_id, status, error = str(image_id), str(batch["status"][i]), str(batch["error"][i])
        mask_png, confidence_png, classes = None, None, None
        if status == "ok":
            try:
                mask = batch["mask"][i]
                mask_png = encode_mask(mask, palette)
                classes = class_fractions(mask, class_names)
                if confidence_maps:
                    confidence_png = encode_grey(batch["confidence"][i])
                if "png" in formats:
                    key = safe_relpath(str(batch["mask_key"][i]))  # already safe; checked again at the sink
                    if confidence_maps:
                        atomic_write(join(output, confidence_key(key)), confidence_png)
                    atomic_write(join(output, key), mask_png)
            except Exception as exc:
                status, error, mask_png, confidence_png, classes = type(exc).__name__, f"write: {exc}", None, None, None
        ok = status == "ok"
        row = {
            "image_id": image_id,
            "source": str(batch["path"][i]),
            "height": int(batch["height"][i]) or None,  # unknown when decoding failed
            "width": int(batch["width"][i]) or None,
            "status": status,
            "error": None if ok else error,
            "mask_png": mask_png,
            "confidence_png": confidence_png,
            "classes": classes,
            "uncertainty": float(batch["uncertainty"][i]) if ok else None,
            "mean_confidence": float(batch["mean_confidence"][i]) if ok else None,
            "mean_entropy": float(batch["mean_entropy"][i]) if ok else None,
            "checkpoint_id": checkpoint_id,
            "fcn_checkpoint_id": fcn_checkpoint_id,
            "config_hash": config_hash,
        }
        results.append(row)
        if not ok:
            failures.append({k: row[k] for k in ERROR_SCHEMA.names})
    inject("write_rows", batch["image_id"])  # tests only: a write task killed between PNGs and rows
    rows = [r for r, needed in zip(results, batch["needs_row"]) if needed]  # rerun: no second row for an id
    if "parquet" in formats and rows:
        name = _part_name([r["image_id"] for r in rows])
        atomic_write(join(output, posixpath.join(PARQUET_DIR, name)), _parquet_bytes(rows, RESULT_SCHEMA))
    if failures:
        name = _part_name([r["image_id"] for r in failures])
        atomic_write(join(output, posixpath.join(ERRORS_DIR, name)), _parquet_bytes(failures, ERROR_SCHEMA))
    return {
        "image_id": np.array([r["image_id"] for r in results], dtype=object),
        "status": np.array([r["status"] for r in results], dtype=object),
        "error": np.array([r["error"] or "" for r in results], dtype=object),
    }
