"""DeconvNet (Noh, Hong, Han, ICCV 2015, https://arxiv.org/abs/1505.04366), Table 2.

A VGG16 encoder with BN and pooling switches, fc6/fc7 as 7x7/1x1 convolutions, and a
decoder mirrored from the same VGG16 table: 7x7 deconv-fc6, then unpooling (values
put back at the recorded argmax) and 3x3 deconvolutions, each followed by BN + ReLU,
and a 1x1 score layer.
"""

from __future__ import annotations

import torch
from torch import nn

from models.vgg import FC_CHANNELS, VGG16, conv_bn_relu, make_layers, mirror, scaled


class DeconvNet(nn.Module):
    """Instance-wise segmentation network of the DeconvNet paper.

    Input ``(N, 3, H, W)`` normalised RGB, H and W at least 224 (the paper uses
    224x224 crops); output logits ``(N, num_classes, H, W)`` at the input's H x W.
    Pooling switches are kept per forward call, so the module is re-entrant.

    Args:
        num_classes: number of output classes (21 for PASCAL VOC).
        width: channel multiplier; 1.0 is the paper's network, e.g. 1/16 for tests.
    """

    def __init__(self, num_classes: int = 21, width: float = 1.0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.width = width
        c5 = scaled(VGG16[-2], width)  # channels entering fc6 (conv5-3)
        fc = scaled(FC_CHANNELS, width)
        self.features = make_layers(VGG16, batch_norm=True, width=width, return_indices=True)
        self.fc6 = nn.Sequential(*conv_bn_relu(c5, fc, 7))
        self.fc7 = nn.Sequential(*conv_bn_relu(fc, fc, 1))
        self.deconv_fc6 = nn.Sequential(*conv_bn_relu(fc, c5, 7, transposed=True))
        self.decoder = make_layers(mirror(VGG16), batch_norm=True, width=width, in_channels=c5, transposed=True)
        self.score = nn.Conv2d(scaled(VGG16[0], width), num_classes, kernel_size=1)
        _init_weights(self)
        nn.init.normal_(self.score.weight, std=0.01)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Size]]]:
        """fc7 activations and the pooling switches (indices, pre-pool size) of each pool."""
        switches = []
        for layer in self.features:
            if isinstance(layer, nn.MaxPool2d):
                size = x.shape[-2:]
                x, idx = layer(x)
                switches.append((idx, size))
            else:
                x = layer(x)
        return self.fc7(self.fc6(x)), switches

    def decode(self, x: torch.Tensor, switches: list[tuple[torch.Tensor, torch.Size]]) -> torch.Tensor:
        x = self.deconv_fc6(x)
        switches = list(switches)
        for layer in self.decoder:
            if isinstance(layer, nn.MaxUnpool2d):
                idx, size = switches.pop()
                x = layer(x, idx, output_size=size)
            else:
                x = layer(x)
        return self.score(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(*self.encode(x))


def _init_weights(model: nn.Module) -> None:
    # Zero-mean Gaussians for every (de)conv, as the paper initialises the decoder;
    # the encoder is overwritten when ImageNet weights are transplanted.
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
