"""The VGG16 table and the one builder both networks share.

DeconvNet's encoder and FCN's backbone are ``make_layers(VGG16, ...)``; DeconvNet's
decoder is ``make_layers(mirror(VGG16), transposed=True, ...)``, derived from the
same table rather than written out a second time.
"""

from __future__ import annotations

from torch import nn

# Channels of each 3x3 conv; "M" is a 2x2/2 max-pool (Simonyan & Zisserman, config D).
VGG16: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
FC_CHANNELS = 4096  # fc6 / fc7 width of VGG16


def scaled(channels: int, width: float) -> int:
    """Channels after the width multiplier (at least 1)."""
    return max(1, int(round(channels * width)))


def blocks(cfg: list[int | str]) -> list[list[int]]:
    """Split a table at its pools: ``VGG16`` -> ``[[64, 64], [128, 128], ...]``."""
    out: list[list[int]] = [[]]
    for v in cfg:
        if v in ("M", "U"):
            out.append([])
        else:
            out[-1].append(int(v))
    return [b for b in out if b]


def mirror(cfg: list[int | str]) -> list[int | str]:
    """The decoder table of DeconvNet (paper Table 2), read off the encoder table.

    Blocks come in reverse order, each led by an unpooling ("U"); a block keeps its
    channel count except its last deconvolution, which hands over to the channel
    count of the block before it (block 1 keeps its own): for VGG16 this gives
    U 512 512 512 | U 512 512 256 | U 256 256 128 | U 128 64 | U 64 64.
    """
    bs = blocks(cfg)
    out: list[int | str] = []
    for i in range(len(bs) - 1, -1, -1):
        block = bs[i]
        handover = bs[i - 1][-1] if i > 0 else block[-1]
        out += ["U", *block[:-1], handover]
    return out


def conv_bn_relu(
    in_ch: int, out_ch: int, kernel: int, *, padding: int = 0, batch_norm: bool = True, transposed: bool = False
) -> list[nn.Module]:
    """conv (or deconv) -> [BN] -> ReLU, the unit every VGG / DeconvNet layer is made of."""
    conv_cls = nn.ConvTranspose2d if transposed else nn.Conv2d
    layers: list[nn.Module] = [conv_cls(in_ch, out_ch, kernel_size=kernel, padding=padding)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_ch))
    layers.append(nn.ReLU(inplace=True))
    return layers


def make_layers(
    cfg: list[int | str],
    *,
    batch_norm: bool,
    width: float = 1.0,
    in_channels: int = 3,
    transposed: bool = False,
    first_padding: int = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
) -> nn.Sequential:
    """Build a VGG-style stack from a table, torchvision's layout and parameter names.

    Args:
        cfg: channel table; ints are 3x3 convs, "M" max-pool 2x2/2, "U" max-unpool 2x2/2.
        batch_norm: BN after every conv (``vgg16_bn`` layout) or not (``vgg16``).
        width: channel multiplier; 1.0 is the paper's network.
        in_channels: channels entering the first layer (already scaled by the caller).
        transposed: 3x3 deconvolutions (DeconvNet's decoder) instead of convolutions.
        first_padding: padding of the very first conv (FCN's original code uses 100).
        ceil_mode: pool with ceil (Caffe's rounding, used by FCN so any size works).
        return_indices: pools return their switches (DeconvNet's encoder).
    """
    layers: list[nn.Module] = []
    ch = in_channels
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2, ceil_mode=ceil_mode, return_indices=return_indices))
        elif v == "U":
            layers.append(nn.MaxUnpool2d(2, 2))
        else:
            out = scaled(int(v), width)
            pad = first_padding if not layers else 1
            layers += conv_bn_relu(ch, out, 3, padding=pad, batch_norm=batch_norm, transposed=transposed)
            ch = out
    return nn.Sequential(*layers)
