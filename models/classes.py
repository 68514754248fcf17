"""Class names, the VOC colour palette and the input normalisation."""

from __future__ import annotations

VOC_CLASSES: list[str] = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]
IGNORE_INDEX = 255  # VOC "void": never a target, never scored

# torchvision's ImageNet statistics (RGB in [0, 1]); the backbones were trained with them.
IMAGENET_MEAN: list[float] = [0.485, 0.456, 0.406]
IMAGENET_STD: list[float] = [0.229, 0.224, 0.225]


def voc_palette(n: int = 256) -> list[list[int]]:
    """The PASCAL VOC colour map (bit-interleaved label -> RGB), n entries."""
    palette = []
    for label in range(n):
        r = g = b = 0
        c = label
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette.append([r, g, b])
    return palette


def default_class_names(num_classes: int) -> list[str]:
    return list(VOC_CLASSES) if num_classes == len(VOC_CLASSES) else [f"class_{i}" for i in range(num_classes)]
