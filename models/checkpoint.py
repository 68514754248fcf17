"""The project's checkpoint format: one ``.safetensors`` file, weights plus metadata.

The metadata (architecture, width, classes, palette, input normalisation, training
provenance) is JSON stored in the safetensors header under the key ``deconvseg``, so
one file says everything needed to rebuild and use the model. Loading parses the
header and tensors with ``safetensors`` only: nothing is ever unpickled, and a
pickle (``torch.save``) file is refused with a clear error.

Paths may be local or any fsspec URL (``s3://``, ``gs://``, ``memory://`` ...).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import struct
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from models.build import UnknownArchitecture, build_model
from models.classes import IMAGENET_MEAN, IMAGENET_STD, default_class_names, voc_palette
from models.deconvnet import DeconvNet
from models.fcn import FCN
from models.storage import atomic_write, read_url

FORMAT_VERSION = 1
_META_KEY = "deconvseg"
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header


class CheckpointError(ValueError):
    """A file is not a loadable deconvseg checkpoint (reason in the message)."""


@dataclass
class CheckpointMeta:
    """What a checkpoint says about its model besides the weights."""

    architecture: str  # "deconvnet", "fcn32s", "fcn16s" or "fcn8s"
    num_classes: int
    width: float = 1.0  # channel multiplier; 1.0 = the paper's network
    class_names: list[str] = field(default_factory=list)
    palette: list[list[int]] = field(default_factory=list)  # RGB per class index
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))  # RGB in [0, 1]
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    provenance: dict[str, Any] = field(default_factory=dict)  # how it was trained: data, iters, metrics...
    format_version: int = FORMAT_VERSION
    checkpoint_id: str = ""  # sha256 prefix of the file, filled in by load
    file_bytes: int = 0  # size of the file, filled in by load

    def __post_init__(self) -> None:
        if not self.class_names:
            self.class_names = default_class_names(self.num_classes)
        if not self.palette:
            self.palette = voc_palette(self.num_classes)
        if len(self.class_names) != self.num_classes:
            raise CheckpointError(f"{len(self.class_names)} class names for {self.num_classes} classes")


def architecture_of(model: nn.Module) -> str:
    if isinstance(model, DeconvNet):
        return "deconvnet"
    if isinstance(model, FCN):
        return f"fcn{model.stride}s"
    raise TypeError(f"not a deconvseg model: {type(model).__name__}")


def save_checkpoint(
    model: nn.Module, path: str, *, meta: CheckpointMeta | None = None, **provenance: Any
) -> CheckpointMeta:
    """Write ``model`` to ``path`` (local or fsspec URL); a local file is complete or absent.

    Args:
        model: a DeconvNet or FCN.
        path: destination, conventionally ending in ``.safetensors``.
        meta: metadata; by default derived from the model (VOC names/palette for 21 classes).
        provenance: extra keys merged into ``meta.provenance`` (data, iteration, metrics...).
    """
    arch = architecture_of(model)
    if meta is None:
        meta = CheckpointMeta(architecture=arch, num_classes=model.num_classes, width=model.width)
    if (meta.architecture, meta.num_classes, meta.width) != (arch, model.num_classes, model.width):
        raise CheckpointError("metadata does not describe this model (architecture/classes/width differ)")
    meta.provenance = {**meta.provenance, **provenance}
    record = dataclasses.asdict(meta)
    record.pop("checkpoint_id")
    record.pop("file_bytes")
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    data = st_save(tensors, metadata={_META_KEY: json.dumps(record)})
    atomic_write(path, data)
    return meta


def _parse_header(data: bytes, path: str) -> dict[str, Any]:
    if data[:2] == b"PK" or data[:1] == b"\x80":
        raise CheckpointError(
            f"{path} is a pickle / torch.save file; deconvseg loads only safetensors checkpoints, "
            "because unpickling can execute arbitrary code. Re-save it with models.save_checkpoint."
        )
    if len(data) < 8:
        raise CheckpointError(f"{path} is too short to be a safetensors checkpoint")
    (n,) = struct.unpack("<Q", data[:8])
    if n > min(_MAX_HEADER, len(data) - 8):
        raise CheckpointError(f"{path} is not a safetensors file (bad header length)")
    try:
        header = json.loads(data[8 : 8 + n])
    except ValueError as exc:
        raise CheckpointError(f"{path} is not a safetensors file (header is not JSON)") from exc
    return header


def read_checkpoint_meta(path: str, data: bytes | None = None) -> CheckpointMeta:
    """The metadata of a checkpoint without building its model."""
    if data is None:
        data = _read(path)
    meta_json = (_parse_header(data, path).get("__metadata__") or {}).get(_META_KEY)
    if meta_json is None:
        raise CheckpointError(f"{path} is a safetensors file without deconvseg metadata")
    record = json.loads(meta_json)
    if record.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format version {record['format_version']}; this deconvseg reads up to {FORMAT_VERSION}"
        )
    known = {f.name for f in dataclasses.fields(CheckpointMeta)}
    meta = CheckpointMeta(**{k: v for k, v in record.items() if k in known})
    meta.checkpoint_id = hashlib.sha256(data).hexdigest()[:16]
    meta.file_bytes = len(data)
    return meta


def _read(path: str) -> bytes:
    try:
        return read_url(path)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"checkpoint not found: {path}") from exc


def load_checkpoint(path: str, *, device: str | torch.device = "cpu") -> tuple[nn.Module, CheckpointMeta]:
    """Build the right model from any deconvseg checkpoint and load its weights.

    Returns the model in eval mode on ``device`` and its metadata (with
    ``checkpoint_id``, a content hash).
    """
    data = _read(path)
    meta = read_checkpoint_meta(path, data)
    try:
        model = build_model(meta.architecture, num_classes=meta.num_classes, width=meta.width)
    except UnknownArchitecture as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    try:
        state = st_load(data)
    except Exception as exc:
        raise CheckpointError(f"{path}: corrupt safetensors payload ({exc})") from exc
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not match {meta.architecture}: missing {missing[:4]}, unexpected {unexpected[:4]}"
        )
    return model.to(device).eval(), meta
