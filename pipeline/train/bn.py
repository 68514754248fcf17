"""BatchNorm across data-parallel workers: per-worker batch statistics while training,
then a population-statistics pass before every checkpoint.

Why not ``SyncBatchNorm``: PyTorch's runs on GPUs only (CPU + gloo workers raise), and
DeconvNet's own recipe already computes population statistics after training (the
released code's BN "inference" step). While training, each worker normalises with its
own micro-batch statistics (so the per-worker batch must be >= 2: fc6/fc7 see 1x1
maps). Before a checkpoint, every worker recomputes each BN layer's mean and variance
as a cumulative average over ``bn_batches`` training batches, and the workers' values
are combined exactly: the mean of means, and the mean of ``var + mean^2`` minus the
squared pooled mean (the law of total variance, equal batch counts per worker). The
saved running statistics are therefore population statistics of the whole training
distribution, the same on every worker, and evaluation / inference use them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def batchnorm_layers(model: nn.Module) -> list[_BatchNorm]:
    return [m for m in model.modules() if isinstance(m, _BatchNorm)]


@torch.no_grad()
def population_statistics(
    model: nn.Module, batches: Iterator[torch.Tensor] | Callable[[], torch.Tensor], num_batches: int
) -> int:
    """Replace every BN layer's running mean/var by population statistics over ``num_batches`` inputs.

    ``model`` is the bare module (not the DDP wrapper: no collective per forward);
    ``batches`` yields normalised input tensors already on the model's device. When a
    process group is initialised the statistics are pooled across all its workers,
    so every worker must call this with the same ``num_batches``. Returns the number
    of BN layers updated.
    """
    layers = batchnorm_layers(model)
    if not layers or num_batches <= 0:
        return 0
    was_training = model.training
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the pass
    model.train()
    for _ in range(num_batches):
        model(batches() if callable(batches) else next(batches))
    for m, momentum in zip(layers, momenta):
        m.momentum = momentum
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        world = dist.get_world_size()
        for m in layers:
            mean, var = m.running_mean, m.running_var
            packed = torch.cat([mean, var + mean * mean])
            dist.all_reduce(packed)
            packed /= world
            pooled_mean, second = packed[: len(mean)], packed[len(mean) :]
            mean.copy_(pooled_mean)
            var.copy_(second - pooled_mean * pooled_mean)
    model.train(was_training)
    return len(layers)
