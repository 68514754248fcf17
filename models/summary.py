"""Parameter and FLOP counts of the full-width networks (the benchmarks divide by these)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def forward_flops(model: nn.Module, shape: tuple[int, ...]) -> int:
    """FLOPs (2 x multiply-adds) of one forward pass on an input of ``shape``.

    Runs on the meta device, so full-width models cost no memory or compute.
    """
    model = model.to("meta").eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.empty(shape, device="meta"))
    return counter.get_total_flops()
