"""Inference-only rewrite: BatchNorm folded into the (de)convolution before it.

In eval mode a BatchNorm2d is a fixed per-channel affine map, so ``conv -> BN`` equals
one convolution with scaled weights and a shifted bias. DeconvNet has a BN after each
of its 29 (de)convolutions; folding them makes the model stage faster on CPU
(demo models: BENCHMARKS.md section 3) and saves as many kernel launches on GPU.
The outputs equal the unfolded model's up to float rounding.
"""

from __future__ import annotations

from itertools import pairwise

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def fold_batchnorm(model: nn.Module) -> int:
    """Fold, in place, every BatchNorm2d that directly follows a Conv2d/ConvTranspose2d in an ``nn.Sequential``.

    The BN is replaced by ``nn.Identity`` (so layer indices stay the same) and the
    model must not be trained afterwards. Returns how many were folded.

    Raises:
        ValueError: the model is in training mode (BN then uses batch statistics,
            which cannot be folded).
    """
    if model.training:
        raise ValueError("fold_batchnorm needs a model in eval mode (BatchNorm's running statistics)")
    folded = 0
    for seq in model.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        for prev, name in pairwise(list(seq._modules)):
            conv, bn = seq._modules[prev], seq._modules[name]
            if isinstance(bn, nn.BatchNorm2d) and isinstance(conv, (nn.Conv2d, nn.ConvTranspose2d)):
                if bn.running_mean is None:  # track_running_stats=False: no fixed statistics to fold
                    continue
                transpose = isinstance(conv, nn.ConvTranspose2d)
                seq._modules[prev] = fuse_conv_bn_eval(conv, bn, transpose=transpose)
                seq._modules[name] = nn.Identity()
                folded += 1
    return folded
