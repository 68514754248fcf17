"""FCN-32s / 16s / 8s on VGG16 (Long, Shelhamer, Darrell, CVPR 2015,
https://arxiv.org/abs/1411.4038), laid out like the authors' Caffe nets.

The geometry follows the original code so that ANY input size works and the output
is aligned to the input pixel grid: the first conv is padded by 100 and pools round
up (Caffe), so pool5 always has at least 7x7 cells for the 7x7 fc6; each upsampled
map is cropped at the offset the network's receptive-field arithmetic gives
(5 for pool4's score, 9 for pool3's, and 19 / 27 / 31 for the final 32x / 16x / 8x
upsampling).
"""

from __future__ import annotations

import torch
from torch import nn

from models.vgg import FC_CHANNELS, VGG16, make_layers, scaled

# Crop offsets of the original nets (voc-fcn{32,16,8}s/net.py).
_POOL4_OFFSET = 5
_POOL3_OFFSET = 9
_FINAL = {32: (64, 19), 16: (32, 27), 8: (16, 31)}  # stride -> (kernel, offset)


def bilinear_kernel(channels: int, kernel: int) -> torch.Tensor:
    """Weights ``(channels, channels, k, k)`` making a transposed conv bilinear upsampling.

    Each channel is upsampled on its own (off-diagonal weights are zero), as FCN's
    ``surgery.interp`` does.
    """
    factor = (kernel + 1) // 2
    center = factor - 1 if kernel % 2 == 1 else factor - 0.5
    og = torch.arange(kernel, dtype=torch.float64)
    filt1d = 1 - (og - center).abs() / factor
    filt = torch.outer(filt1d, filt1d).float()
    weight = torch.zeros(channels, channels, kernel, kernel)
    weight[range(channels), range(channels)] = filt
    return weight


def upsampler(channels: int, stride: int, *, learnable: bool) -> nn.ConvTranspose2d:
    """Transposed conv with kernel 2*stride, initialised to bilinear interpolation."""
    up = nn.ConvTranspose2d(channels, channels, kernel_size=2 * stride, stride=stride, bias=False)
    with torch.no_grad():
        up.weight.copy_(bilinear_kernel(channels, 2 * stride))
    up.weight.requires_grad_(learnable)
    return up


def _crop(x: torch.Tensor, offset: int, like: torch.Size) -> torch.Tensor:
    h, w = like[-2:]
    return x[..., offset : offset + h, offset : offset + w]


class FCN(nn.Module):
    """VGG16 FCN with output stride 32, 16 or 8 (FCN-32s / 16s / 8s).

    Input ``(N, 3, H, W)`` normalised RGB of any size; output logits
    ``(N, num_classes, H, W)`` aligned to the input pixel grid.

    Args:
        num_classes: output classes.
        stride: 32, 16 or 8: how many skip connections (none, pool4, pool4 + pool3).
        width: channel multiplier; 1.0 is the paper's network.
    """

    def __init__(self, num_classes: int = 21, stride: int = 8, width: float = 1.0) -> None:
        super().__init__()
        if stride not in _FINAL:
            raise ValueError(f"FCN stride must be one of {sorted(_FINAL)}, got {stride}")
        self.num_classes = num_classes
        self.stride = stride
        self.width = width
        fc = scaled(FC_CHANNELS, width)
        self.features = make_layers(VGG16, batch_norm=False, width=width, first_padding=100, ceil_mode=True)
        pools = [i for i, m in enumerate(self.features) if isinstance(m, nn.MaxPool2d)]
        self._pool3, self._pool4 = pools[2], pools[3]
        self.fc6 = nn.Sequential(nn.Conv2d(scaled(VGG16[-2], width), fc, 7), nn.ReLU(inplace=True), nn.Dropout(0.5))
        self.fc7 = nn.Sequential(nn.Conv2d(fc, fc, 1), nn.ReLU(inplace=True), nn.Dropout(0.5))
        self.score_fr = nn.Conv2d(fc, num_classes, 1)
        if stride <= 16:
            self.score_pool4 = nn.Conv2d(scaled(512, width), num_classes, 1)
            self.upscore2 = upsampler(num_classes, 2, learnable=True)
        if stride == 8:
            self.score_pool3 = nn.Conv2d(scaled(256, width), num_classes, 1)
            self.upscore_pool4 = upsampler(num_classes, 2, learnable=True)
        # The last upsampling stays bilinear (not learned), as in the original nets.
        self.upscore_final = upsampler(num_classes, stride, learnable=False)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape
        h = x
        pool3 = pool4 = None
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i == self._pool3:
                pool3 = h
            elif i == self._pool4:
                pool4 = h
        h = self.score_fr(self.fc7(self.fc6(h)))
        if self.stride <= 16:
            h = self.upscore2(h)
            h = h + _crop(self.score_pool4(pool4), _POOL4_OFFSET, h.shape)
        if self.stride == 8:
            h = self.upscore_pool4(h)
            h = h + _crop(self.score_pool3(pool3), _POOL3_OFFSET, h.shape)
        h = self.upscore_final(h)
        return _crop(h, _FINAL[self.stride][1], size).contiguous()

    def init_from_coarser(self, coarser: FCN) -> list[str]:
        """Start from a trained coarser FCN (32s -> 16s -> 8s), as the paper trains them.

        Copies every tensor whose name and shape match (backbone, fc6/fc7, score_fr,
        and upscore2/score_pool4 when going 16s -> 8s); the new skip's score layer
        stays zero so the network starts out computing exactly what the coarser did.
        Returns the names copied.
        """
        if coarser.stride <= self.stride:
            raise ValueError(f"FCN-{self.stride}s is initialised from a coarser net, not FCN-{coarser.stride}s")
        if (coarser.width, coarser.num_classes) != (self.width, self.num_classes):
            raise ValueError("init_from_coarser needs the same width and num_classes")
        own = self.state_dict()
        copied = {
            k: v
            for k, v in coarser.state_dict().items()
            if k in own and own[k].shape == v.shape and "upscore_final" not in k
        }
        self.load_state_dict(copied, strict=False)
        return sorted(copied)


def _init_weights(model: FCN) -> None:
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            if name.startswith("score_pool"):
                # Skip score layers start at zero, as in the original nets: a new skip
                # adds nothing until it is trained.
                nn.init.zeros_(m.weight)
            elif name == "score_fr":
                nn.init.normal_(m.weight, std=0.01)
            else:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
