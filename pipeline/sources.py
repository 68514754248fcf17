"""Input listing and output layout: which images to label and where their results go.

An input is a folder (searched recursively), a glob, a single file, or a manifest
(``.txt``/``.lst`` one path per line, ``.csv``/``.parquet`` with a ``path`` column and
optionally an ``image_id`` column), on local disk or behind any fsspec URL. Every item
gets an ``image_id``: its path relative to the input root (the folder, the fixed part
of the glob, or the manifest's common parent folder).

Output names come from ``image_id`` through ``mask_key``, which can never leave the
output root (``..``, absolute paths and drive letters are neutralised); two inputs that
would write the same mask, or an id that hits a reserved name, become error rows
instead of overwriting each other.
"""

from __future__ import annotations

import csv
import io
import posixpath
import re
from collections import Counter
from dataclasses import dataclass

from fsspec.implementations.local import LocalFileSystem

from models.storage import join, to_url, url_to_fs

MANIFEST_SUFFIXES = (".txt", ".lst", ".csv", ".parquet")
PARQUET_DIR, ERRORS_DIR, CONFIDENCE_DIR = "_parquet", "_errors", "_confidence"
SUMMARY_FILE, PROGRESS_FILE = "_summary.json", "_progress.json"
RESERVED = (PARQUET_DIR, ERRORS_DIR, CONFIDENCE_DIR, SUMMARY_FILE, PROGRESS_FILE)  # top-level names the job writes


def safe_relpath(image_id: str) -> str:
    """``image_id`` as a relative POSIX path that stays under any root ('' if nothing is left)."""
    parts = []
    for part in re.split(r"[\\/]+", image_id):
        part = part.strip()
        if part in ("", ".", ".."):
            continue
        parts.append(part.replace(":", "_"))  # drive letters / URL schemes
    return "/".join(parts)


def mask_key(image_id: str) -> str:
    """Relative path of an image's mask: the id's extension replaced by ``.png``."""
    rel = safe_relpath(image_id)
    if not rel:
        return ""
    stem, _ = posixpath.splitext(rel)
    return (stem or rel) + ".png"


def confidence_key(mask_key: str) -> str:
    """Relative path of an image's confidence map: its mask's path under ``_confidence/``.

    A folder of its own, not a suffix beside the mask: no input name can collide with a
    confidence map (``_confidence`` is reserved), and every PNG of the mask tree stays a mask.
    """
    return posixpath.join(CONFIDENCE_DIR, mask_key)


def _has_glob(path: str) -> bool:
    return any(c in path for c in "*?[")


def _is_hidden(relative: str) -> bool:
    return any(part.startswith(".") for part in relative.split("/"))


def _read_manifest(fs, path: str) -> list[tuple[str, str | None]]:
    suffix = posixpath.splitext(path)[1].lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path, filesystem=fs)
        cols = table.column_names
        col = "path" if "path" in cols else cols[0]
        paths = [str(p) for p in table.column(col).to_pylist()]
        ids = [str(i) for i in table.column("image_id").to_pylist()] if "image_id" in cols else [None] * len(paths)
        return list(zip(paths, ids))
    text = fs.cat_file(path).decode("utf-8-sig")
    if suffix == ".csv":
        rows = list(csv.DictReader(io.StringIO(text)))
        if not rows:
            return []
        col = "path" if "path" in rows[0] else next(iter(rows[0]))
        return [(r[col].strip(), (r.get("image_id") or "").strip() or None) for r in rows if r[col].strip()]
    lines = [line.strip() for line in text.splitlines()]
    return [(line, None) for line in lines if line and not line.startswith("#")]


def list_inputs(spec: str, extensions: tuple[str, ...] = ()) -> tuple[str, list[dict]]:
    """``(root, items)`` for an input spec; each item has ``path`` (URL) and ``image_id``.

    Raises FileNotFoundError when the input does not exist or cannot be listed.
    """
    fs, path = url_to_fs(spec)
    fs.invalidate_cache()
    exts = tuple(e.lower() for e in extensions)
    try:
        if _has_glob(path):
            root = path.split("*")[0].split("?")[0].split("[")[0].rsplit("/", 1)[0]
            found = sorted(p for p in fs.glob(path) if fs.isfile(p))
            pairs = [(p, None) for p in found]
        elif fs.isdir(path):
            root = path.rstrip("/")
            pairs = [(p, None) for p in sorted(fs.find(path)) if not _is_hidden(p[len(root) + 1 :])]
            if exts:
                pairs = [(p, i) for p, i in pairs if p.lower().endswith(exts)]
        elif fs.isfile(path) and path.lower().endswith(MANIFEST_SUFFIXES):
            return _list_manifest(fs, path)
        elif fs.isfile(path):
            root = posixpath.dirname(path)
            pairs = [(path, None)]
        else:
            raise FileNotFoundError(f"input not found: {spec}")
    except (PermissionError, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise FileNotFoundError(f"input cannot be listed: {spec} ({exc})") from exc
    items = [{"path": to_url(fs, p), "image_id": _relative(p, root)} for p, _ in pairs]
    return to_url(fs, root), items


def _list_manifest(fs, path: str) -> tuple[str, list[dict]]:
    base = posixpath.dirname(path)
    entries = []
    for entry, image_id in _read_manifest(fs, path):
        if "://" in entry or entry.startswith("/"):
            efs, epath = url_to_fs(entry)
        else:  # relative to the manifest's folder
            efs, epath = fs, posixpath.normpath(join(base, entry))
        entries.append((to_url(efs, epath), epath, image_id))
    try:
        root = posixpath.commonpath([posixpath.dirname(e[1]) for e in entries]) if entries else base
    except ValueError:  # absolute and relative paths mixed
        root = ""
    items = [{"path": url, "image_id": image_id or _relative(epath, root)} for url, epath, image_id in entries]
    return to_url(fs, root) if root else "", items


def _relative(path: str, root: str) -> str:
    root = root.rstrip("/")
    if root and path.startswith(root + "/"):
        return path[len(root) + 1 :]
    return path.lstrip("/")


def check_output_location(input_root: str, output: str) -> None:
    """Refuse an output folder inside the input (a rerun would label its own masks)."""
    in_fs, in_path = url_to_fs(input_root)
    out_fs, out_path = url_to_fs(output)
    if type(in_fs) is not type(out_fs):
        return
    if isinstance(out_fs, LocalFileSystem):
        in_path, out_path = posixpath.realpath(in_path), posixpath.realpath(out_path)
    in_path, out_path = in_path.rstrip("/"), out_path.rstrip("/")
    if out_path == in_path or out_path.startswith(in_path + "/"):
        raise ValueError(f"output {output!r} is inside the input {input_root!r}; choose a folder outside it")


def _is_utf8(name: str) -> bool:
    # Local file names are bytes; Python maps undecodable bytes to lone surrogates.
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _printable(name: str) -> str:
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def assign_outputs(items: list[dict]) -> list[dict]:
    """Add ``mask_key``, ``status`` and ``error``: invalid or colliding ids become error rows.

    A local file name that is not valid UTF-8 cannot be stored in Parquet or used as an
    object key: it becomes an ``InvalidImageId`` row whose ids show the bytes escaped.
    """
    seen: dict[str, str] = {}
    for item in items:
        if not (_is_utf8(item["image_id"]) and _is_utf8(item["path"])):
            item.update(
                image_id=_printable(item["image_id"]),
                path=_printable(item["path"]),
                mask_key="",
                status="InvalidImageId",
                error="file name is not valid UTF-8 (Parquet, object stores and the output need UTF-8); rename it",
                needs_row=True,
            )
            continue
        key = mask_key(item["image_id"])
        item.update(mask_key=key, status="ok", error="", needs_row=True)
        if not key:
            item.update(status="InvalidImageId", error=f"image id {item['image_id']!r} names no file")
        elif key.split("/")[0] in RESERVED:
            item.update(
                status="InvalidImageId", error=f"image id {item['image_id']!r} collides with reserved output name"
            )
        elif key in seen:
            item.update(status="OutputCollision", error=f"mask {key} is already written for {seen[key]!r}")
        else:
            seen[key] = item["image_id"]
    return items


@dataclass
class OutputScan:
    """What an output folder holds, whichever runs wrote it."""

    rows: dict[str, list[tuple[str, str]]]  # PARQUET_DIR / ERRORS_DIR -> (image_id, status) of each row
    masks: set[str] | None  # mask keys of the PNGs present; None when PNGs were not looked for
    confidence: set[str] | None = None  # mask keys whose confidence map is present; None: not looked for

    def done(self) -> set[str]:
        """Image ids per row folder (``_parquet:<id>``, ``_errors:<id>``), mask keys (``mask:<key>``) and
        mask keys with a confidence map (``confidence:<key>``)."""
        done = {f"{name}:{image_id}" for name, rows in self.rows.items() for image_id, _ in rows}
        return done | {f"mask:{key}" for key in self.masks or ()} | {f"confidence:{k}" for k in self.confidence or ()}


def scan_output(output: str, formats: tuple[str, ...]) -> OutputScan:
    """The rows of every Parquet part under ``output`` (id and status), with ``png`` its masks, with
    ``confidence`` its confidence maps (by mask key)."""
    fs, root = url_to_fs(output)
    root = root.rstrip("/")
    fs.invalidate_cache()  # object-store listings are cached per process; a rerun must see new files
    rows: dict[str, list[tuple[str, str]]] = {PARQUET_DIR: [], ERRORS_DIR: []}
    masks: set[str] | None = set() if "png" in formats else None
    confidence: set[str] | None = set() if "confidence" in formats else None
    if not fs.exists(root):
        return OutputScan(rows, masks, confidence)
    for name in (PARQUET_DIR, ERRORS_DIR):
        folder = join(root, name)
        if fs.exists(folder):
            import pyarrow.parquet as pq

            for part in fs.find(folder):
                if part.endswith(".parquet") and not posixpath.basename(part).startswith("."):
                    table = pq.read_table(part, columns=["image_id", "status"], filesystem=fs)
                    rows[name] += zip(table.column("image_id").to_pylist(), table.column("status").to_pylist())
    if masks is not None:
        for p in fs.find(root):
            rel = _relative(p, root)
            if rel.endswith(".png") and not _is_hidden(rel) and rel.split("/")[0] not in RESERVED:
                masks.add(rel)
    folder = join(root, CONFIDENCE_DIR)
    if confidence is not None and fs.exists(folder):
        for p in fs.find(folder):
            rel = _relative(p, folder.rstrip("/"))
            if rel.endswith(".png") and not _is_hidden(rel):
                confidence.add(rel)
    return OutputScan(rows, masks, confidence)


def existing_results(output: str, formats: tuple[str, ...]) -> set[str]:
    """Image ids (and mask keys, prefixed ``mask:``) that a previous run already finished."""
    return scan_output(output, formats).done()


def output_totals(scan: OutputScan, items: list[dict], formats: tuple[str, ...]) -> dict:
    """The output folder as a whole, over every run that wrote to it.

    ``inputs``: the items listed (by the last run); ``done``: those with every requested
    output or an error row; ``missing``: the others. ``ok_rows``: Parquet rows with status
    ``ok``; ``error_rows`` and ``error_classes``: rows under ``_errors/``; ``masks``: mask
    PNGs present (None when PNGs are not a requested format).
    """
    done = scan.done()
    n_done = sum(is_done(item, done, formats) for item in items)
    return {
        "inputs": len(items),
        "done": n_done,
        "missing": len(items) - n_done,
        "ok_rows": sum(status == "ok" for _, status in scan.rows[PARQUET_DIR]),
        "error_rows": len(scan.rows[ERRORS_DIR]),
        "error_classes": dict(sorted(Counter(status for _, status in scan.rows[ERRORS_DIR]).items())),
        "masks": None if scan.masks is None else len(scan.masks),
    }


def mark_pending(items: list[dict], done: set[str], formats: tuple[str, ...]) -> list[dict]:
    """Items that still miss an output; each gets ``needs_row`` (no Parquet row yet), so a
    rerun that only has to restore a deleted PNG never adds a second row."""
    todo = [item for item in items if not is_done(item, done, formats)]
    for item in todo:
        item["needs_row"] = "parquet" in formats and f"{PARQUET_DIR}:{item['image_id']}" not in done
    return todo


def is_done(item: dict, done: set[str], formats: tuple[str, ...]) -> bool:
    if f"{ERRORS_DIR}:{item['image_id']}" in done:
        return True
    if "png" in formats and f"mask:{item['mask_key']}" not in done:
        return False
    if "confidence" in formats and f"confidence:{item['mask_key']}" not in done:
        return False
    if "parquet" in formats and f"{PARQUET_DIR}:{item['image_id']}" not in done:
        return False
    return True
