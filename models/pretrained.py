"""ImageNet VGG16 weights through torchvision's weights API, and their transplant.

Both networks keep torchvision's parameter names for ``features``, so the conv (and
BN) weights copy over as they are; the classifier's two first Linear layers become
the fc6 (7x7) and fc7 (1x1) convolutions (4096x25088 -> 4096x512x7x7).
"""

from __future__ import annotations

import os

import torch
from torch import nn


class WeightsUnavailableError(RuntimeError):
    """ImageNet weights could not be had (offline and not cached, or a bad file)."""


def _weights_enum(batch_norm: bool):
    from torchvision.models import VGG16_BN_Weights, VGG16_Weights

    return VGG16_BN_Weights.IMAGENET1K_V1 if batch_norm else VGG16_Weights.IMAGENET1K_V1


def load_vgg_state_dict(source: str, *, batch_norm: bool) -> dict[str, torch.Tensor]:
    """The state dict of torchvision's ImageNet ``vgg16_bn`` / ``vgg16``.

    Args:
        source: "imagenet" to use torchvision's weights API (its cache first, then a
            download), or a path to the ``.pth`` file torchvision publishes (loaded
            with ``weights_only=True``: no code is executed).
        batch_norm: ``vgg16_bn`` (DeconvNet) or ``vgg16`` (FCN).
    """
    weights = _weights_enum(batch_norm)
    if source != "imagenet":
        if not os.path.isfile(source):
            raise WeightsUnavailableError(f"backbone weights file not found: {source!r}")
        return torch.load(source, map_location="cpu", weights_only=True)
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as exc:  # URLError, OSError, hash mismatch: all mean "not available"
        filename = os.path.basename(weights.url)
        cache = os.path.join(torch.hub.get_dir(), "checkpoints", filename)
        raise WeightsUnavailableError(
            f"could not get torchvision's ImageNet {'vgg16_bn' if batch_norm else 'vgg16'} weights "
            f"({type(exc).__name__}: {exc}). Either run once with internet access, or copy "
            f"{weights.url} to {cache} (TORCH_HOME sets the cache root), or pass the file's "
            f"path instead of 'imagenet' (--backbone-weights /path/to/{filename})."
        ) from exc


def transplant_vgg(model: nn.Module, vgg_state: dict[str, torch.Tensor]) -> None:
    """Copy a torchvision VGG16(-BN) state dict into a model's features, fc6 and fc7.

    The model must be full width (``width=1.0``) and have ``features``, ``fc6`` and
    ``fc7`` in torchvision's layout (both DeconvNet and FCN do).
    """
    features = {k[len("features.") :]: v for k, v in vgg_state.items() if k.startswith("features.")}
    own = model.features.state_dict()
    if set(features) != set(own):
        raise ValueError(
            "VGG weights do not fit this network's encoder (is it the right VGG: vgg16_bn for "
            "DeconvNet, vgg16 for FCN?); missing: "
            f"{sorted(set(own) - set(features))[:4]}, unexpected: {sorted(set(features) - set(own))[:4]}"
        )
    bad = [k for k in own if own[k].shape != features[k].shape]
    if bad:
        raise ValueError(f"VGG weights have other shapes than this network (width must be 1.0): {bad[:4]}")
    model.features.load_state_dict(features)
    fc6, fc7 = model.fc6[0], model.fc7[0]
    with torch.no_grad():
        fc6.weight.copy_(vgg_state["classifier.0.weight"].view_as(fc6.weight))
        fc6.bias.copy_(vgg_state["classifier.0.bias"])
        fc7.weight.copy_(vgg_state["classifier.3.weight"].view_as(fc7.weight))
        fc7.bias.copy_(vgg_state["classifier.3.bias"])
