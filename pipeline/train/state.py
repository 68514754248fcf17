"""Training checkpoints without pickle, and finding the one to resume from.

A training checkpoint is a directory (one Ray Train checkpoint)::

    model.safetensors      the model in the project's format (models.save_checkpoint),
                           loadable on its own by models.load_checkpoint
    optimizer.safetensors  SGD momentum buffers, keyed by parameter name
    state.json             iteration, learning-rate schedule state, metrics history...

Nothing is pickled, so nothing needs ``torch.load``.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from models import CheckpointMeta, save_checkpoint
from models.storage import exists, join, read_url, url_to_fs

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
CHECKPOINT_PREFIX = "checkpoint_"


def checkpoint_dir_name(iteration: int) -> str:
    return f"{CHECKPOINT_PREFIX}{iteration:08d}"


def weights_fingerprint(model: nn.Module) -> str:
    """sha256 over every tensor of the state dict (names, shapes, dtypes and values)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_training_checkpoint(
    directory: str, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any], meta: CheckpointMeta
) -> None:
    """Write ``model``, the optimizer's momentum buffers and ``state`` into local ``directory``."""
    os.makedirs(directory, exist_ok=True)
    save_checkpoint(model, os.path.join(directory, MODEL_FILE), meta=meta)
    names = {id(p): n for n, p in model.named_parameters()}
    buffers = {
        names[id(p)]: s["momentum_buffer"].detach().cpu().contiguous()
        for p, s in optimizer.state.items()
        if s.get("momentum_buffer") is not None
    }
    with open(os.path.join(directory, OPTIMIZER_FILE), "wb") as f:
        f.write(st_save(buffers))
    with open(os.path.join(directory, STATE_FILE), "w") as f:
        json.dump(state, f, indent=1)


def read_training_checkpoint(directory: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, Any]]:
    """``(model state dict, momentum buffers by parameter name, state)`` from a local dir or URL."""
    weights = st_load(read_url(join(directory, MODEL_FILE)))
    momentum = st_load(read_url(join(directory, OPTIMIZER_FILE)))
    state = json.loads(read_url(join(directory, STATE_FILE)))
    return weights, momentum, state


def restore_momentum(model: nn.Module, optimizer: torch.optim.Optimizer, momentum: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    for name, buf in momentum.items():
        if name not in params:
            raise KeyError(f"optimizer state for unknown parameter {name}")
        p = params[name]
        optimizer.state[p]["momentum_buffer"] = torch.empty_like(p).copy_(buf)  # p's device, dtype and layout


def latest_checkpoint(run_dir: str) -> str | None:
    """The complete checkpoint with the highest iteration under a stage's run dir, or None.

    Used when Ray Train has no checkpoint to hand back (e.g. its run snapshot is
    missing): every reported checkpoint directory is self-describing.
    """
    if not exists(run_dir):
        return None
    fs, base = url_to_fs(run_dir)
    best: tuple[int, str] | None = None
    for entry in fs.ls(base, detail=False):
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        if not name.startswith(CHECKPOINT_PREFIX):
            continue
        path = join(run_dir, name)
        if not all(exists(join(path, f)) for f in (MODEL_FILE, OPTIMIZER_FILE, STATE_FILE)):
            continue  # half-written
        iteration = int(json.loads(read_url(join(path, STATE_FILE)))["iteration"])
        if best is None or iteration > best[0]:
            best = (iteration, path)
    return best[1] if best else None
