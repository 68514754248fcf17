"""The one way to build a network by name: ``build_model("deconvnet" | "fcn32s" | "fcn16s" | "fcn8s", ...)``.

Training, checkpoint loading and the tests all build their models here, so an
architecture name means the same network everywhere.
"""

from __future__ import annotations

from torch import nn

from models.deconvnet import DeconvNet
from models.fcn import FCN

# Architecture name -> FCN output stride (None: DeconvNet).
ARCHITECTURES: dict[str, int | None] = {"deconvnet": None, "fcn32s": 32, "fcn16s": 16, "fcn8s": 8}


class UnknownArchitecture(ValueError):
    """A name that is not in ``ARCHITECTURES``."""


def build_model(
    architecture: str,
    *,
    num_classes: int = 21,
    width: float = 1.0,
    backbone_weights: str | None = None,
    init_from: FCN | None = None,
) -> nn.Module:
    """A DeconvNet (Noh et al. 2015, https://arxiv.org/abs/1505.04366) or an FCN-32s/16s/8s (Long et al.
    2015, https://arxiv.org/abs/1411.4038), untrained unless told where to start.

    Args:
        architecture: a key of ``ARCHITECTURES``.
        num_classes: output classes (21 for PASCAL VOC).
        width: channel multiplier; 1.0 is the paper's network, e.g. 1/16 for tests.
        backbone_weights: None (random), "imagenet" (torchvision's ImageNet ``vgg16_bn`` for DeconvNet,
            ``vgg16`` for FCN, through its weights API) or a path to such a state-dict file; fc6/fc7 are
            transplanted from the classifier (``models.pretrained``).
        init_from: FCNs only: a trained coarser FCN to start from (FCN-32s for 16s, 16s for 8s).
    """
    if architecture not in ARCHITECTURES:
        raise UnknownArchitecture(f"unknown architecture {architecture!r}; expected one of {sorted(ARCHITECTURES)}")
    stride = ARCHITECTURES[architecture]
    if stride is None:
        if init_from is not None:
            raise ValueError("init_from starts an FCN from a coarser FCN; DeconvNet has no such start")
        model: nn.Module = DeconvNet(num_classes=num_classes, width=width)
    else:
        model = FCN(num_classes=num_classes, stride=stride, width=width)
    if backbone_weights is not None:
        from models.pretrained import load_vgg_state_dict, transplant_vgg

        transplant_vgg(model, load_vgg_state_dict(backbone_weights, batch_norm=stride is None))
    if init_from is not None:
        model.init_from_coarser(init_from)
    return model
