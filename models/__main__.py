"""``python -m models``: parameters and FLOPs of the paper-width networks."""

from __future__ import annotations

import torch

from models.deconvnet import DeconvNet
from models.fcn import FCN
from models.summary import forward_flops, param_count


def main() -> None:
    rows = []
    with torch.device("meta"):
        nets = {
            "deconvnet": DeconvNet(),
            "fcn32s": FCN(stride=32),
            "fcn16s": FCN(stride=16),
            "fcn8s": FCN(stride=8),
        }
    for name, net in nets.items():
        rows.append(
            (name, param_count(net), forward_flops(net, (1, 3, 224, 224)), forward_flops(net, (1, 3, 375, 500)))
        )
    print(f"{'model':<10} {'params':>14} {'GFLOPs 224x224':>15} {'GFLOPs 500x375':>15}")
    for name, params, f224, f500 in rows:
        print(f"{name:<10} {params:>14,} {f224 / 1e9:>15.2f} {f500 / 1e9:>15.2f}")
    print("FLOPs = 2 x multiply-adds of conv/deconv/matmul layers, one image; DeconvNet is run on 224x224 crops.")


if __name__ == "__main__":
    main()
