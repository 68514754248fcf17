"""The images a training run learns from: VOC train plus SBD lists, minus the validation images, checked.

1. **Union.** The ids of the VOC train split (``data``, ``train_split``) and of each SBD list
   (``sbd``, ``sbd_splits``), once each: an id in both VOC and SBD is read from VOC (its
   official annotation, with void borders), an id in several SBD lists once.
2. **No leakage.** Every id of the VOC validation split (the whole list, not only the
   ``val_max_images`` scored) is removed, so the model never trains on an image it is
   validated on. The counts before and after are logged and kept.
3. **Checked.** Every remaining image is loaded once, as training will load it (Ray Data
   tasks, :func:`pipeline.train.examples.check_examples`): an id whose files are missing or do
   not decode (a corrupt .mat, a truncated JPEG) is skipped, logged with the file's path
   and counted. More than ``max_bad_examples`` such images stop the run
   (:class:`TooManyBadExamples`) before any training.

The result is written to ``<output>/training_set.json`` (counts, skipped files, the ids
of each source) and its counts go into every stage's metrics (``training_set``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import ray

from models.storage import atomic_write, join
from pipeline.sbd import read_sbd_split
from pipeline.train.config import TrainConfig
from pipeline.train.examples import check_examples
from pipeline.voc import read_split

SHOWN_BAD = 20  # skipped files named in the error that stops a run


class TooManyBadExamples(RuntimeError):
    """More training images have missing or unreadable files than ``max_bad_examples`` allows."""


@dataclass
class TrainingSet:
    name: str  # "train", "train+sbd-train+sbd-val", "sbd-train": names the stage-2 proposal cache
    rows: list[dict]  # {"image_id", "source"} of every usable image, "voc" first, then SBD in list order
    counts: dict[str, int]
    skipped: list[dict] = field(default_factory=list)  # {"image_id", "source", "path", "error"}

    def summary(self) -> dict:
        return {"name": self.name, "counts": self.counts, "skipped": self.skipped}


def _stem(split: str) -> str:
    return split.rsplit("/", 1)[-1].removesuffix(".txt")


def training_set_name(cfg: TrainConfig) -> str:
    parts = [_stem(cfg.train_split)] if cfg.data is not None and cfg.train_split else []
    if cfg.sbd is not None:
        parts += [f"sbd-{_stem(s)}" for s in cfg.sbd_splits]
    return "+".join(parts)


def listed_ids(cfg: TrainConfig) -> tuple[list[dict], dict[str, int]]:
    """The union of the training lists minus the validation split: rows and counts, before any file is read."""
    lists: list[tuple[str, str, list[str]]] = []  # (count key, source, ids)
    if cfg.data is not None and cfg.train_split:
        lists.append((f"voc_{_stem(cfg.train_split)}", "voc", read_split(cfg.data, cfg.train_split)))
    if cfg.sbd is not None:
        lists += [(f"sbd_{_stem(s)}", "sbd", read_sbd_split(cfg.sbd, s)) for s in cfg.sbd_splits]
    counts = {key: len(ids) for key, _, ids in lists}
    sources: dict[str, str] = {}
    for _, source, ids in lists:
        for i in ids:
            sources.setdefault(i, source)
    counts["union"] = len(sources)
    val = set(read_split(cfg.data, cfg.val_split)) if cfg.data is not None and cfg.val_split is not None else set()
    rows = [{"image_id": i, "source": s} for i, s in sources.items() if i not in val]
    counts["in_val_removed"] = counts["union"] - len(rows)
    counts["after_val_removal"] = len(rows)
    return rows, counts


def build_training_set(cfg: TrainConfig, *, objects: bool) -> TrainingSet:
    """List, de-duplicate, remove the validation images, check every file; see the module docstring.

    Args:
        objects: the instance maps are needed too (DeconvNet), not only the class maps (FCN).
    """
    rows, counts = listed_ids(cfg)
    listed = " + ".join(f"{k.replace('_', ' ', 1)} {v}" for k, v in counts.items() if k.startswith(("voc_", "sbd_")))
    has_val = cfg.data is not None and cfg.val_split is not None
    val = f"the validation split ({cfg.val_split})" if has_val else "no validation split"
    print(f"[train] training set: {listed} = {counts['union']} distinct images; {counts['in_val_removed']} in "
          f"{val} removed -> {counts['after_val_removal']}", flush=True)
    if cfg.sbd is not None and not has_val:
        print("[train] warning: no validation split, so nothing is held out of the SBD lists; do not evaluate "
              "this model on VOC images that SBD contains", flush=True)
    if not rows:
        raise ValueError("the training set is empty after removing the validation images")
    checked = (
        ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows) // 16, 200)))
        .map_batches(check_examples, fn_kwargs={"root": cfg.data, "sbd": cfg.sbd, "objects": objects},
                     batch_size=16, num_cpus=cfg.data_cpus, batch_format="numpy")
        .iter_rows()
    )
    bad = {str(r["image_id"]): {k: str(r[k]) for k in ("image_id", "source", "path", "error")} for r in checked
           if r["error"]}
    skipped = [bad[r["image_id"]] for r in rows if r["image_id"] in bad]  # in list order
    for s in skipped:
        print(f"[train] skipped {s['source']} image {s['image_id']}: {s['path']}: {s['error']}", flush=True)
    counts["bad_skipped"] = len(skipped)
    if len(skipped) > cfg.max_bad_examples:
        shown = "\n".join(f"  {s['path']}: {s['error']}" for s in skipped[:SHOWN_BAD])
        more = f"\n  ... and {len(skipped) - SHOWN_BAD} more" if len(skipped) > SHOWN_BAD else ""
        raise TooManyBadExamples(
            f"{len(skipped)} of {len(rows)} training images have missing or unreadable files, more than "
            f"--max-bad-examples {cfg.max_bad_examples}; fix or remove them, or allow more:\n{shown}{more}"
        )
    rows = [r for r in rows if r["image_id"] not in bad]
    counts["used"] = len(rows)
    print(f"[train] training set: {len(rows)} images ({len(skipped)} skipped, at most {cfg.max_bad_examples} "
          "allowed by --max-bad-examples)", flush=True)
    return TrainingSet(training_set_name(cfg), rows, counts, skipped)


def write_training_set(cfg: TrainConfig, ts: TrainingSet) -> str:
    """``<output>/training_set.json``: counts, skipped files and the ids of each source, for the record."""
    ids: dict[str, list[str]] = {}
    for r in ts.rows:
        ids.setdefault(r["source"], []).append(r["image_id"])
    path = join(cfg.output, "training_set.json")
    atomic_write(path, json.dumps({**ts.summary(), "ids": ids}, indent=1).encode())
    return path
