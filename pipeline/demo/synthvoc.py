"""A procedural dataset in PASCAL VOC 2012 layout, deterministic from a seed.

Used by the tests, the demo and the committed demo checkpoints. Each image has a
textured, noisy background and several object instances of a few shape classes,
painted in order so later ones occlude earlier ones. It is hard in the ways the
DeconvNet paper discusses:

- object sizes are log-uniform from a few pixels to nearly the whole image, so there
  are small objects a whole-image FCN tends to miss and large ones;
- colours are shared between classes (each class draws from two palettes that
  overlap with others'), and large objects are often two-toned (split along a random
  line into both of their class's colours), so a local window of a large object looks
  like another class and only its whole shape tells: what FCN's fixed receptive field
  labels inconsistently and an object-sized proposal sees at once;
- the background holds irregular blobs in the objects' colours and textures
  (labelled background), so colour and texture alone never give the class.

Layout written under ``root``::

    JPEGImages/<id>.jpg
    SegmentationClass/<id>.png    palette PNG, class index per pixel, 255 = void border
    SegmentationObject/<id>.png   palette PNG, instance index 1..n per pixel, 255 = void
    ImageSets/Segmentation/{train,val,trainval}.txt
    classes.txt                   one class name per line (VOC itself has no such file)
"""

from __future__ import annotations

import math
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from models.classes import voc_palette

SYNTH_CLASSES: list[str] = ["background", "disc", "box", "triangle", "ring", "cross"]

# Two base colours per class; neighbours share one, so colour alone is ambiguous.
_CLASS_COLOURS = {
    1: [(220, 60, 50), (240, 200, 40)],
    2: [(240, 200, 40), (60, 90, 220)],
    3: [(60, 90, 220), (60, 190, 90)],
    4: [(60, 190, 90), (200, 80, 200)],
    5: [(200, 80, 200), (220, 60, 50)],
}
_TEXTURES = ("flat", "stripes", "checker", "dots")
# The dataset the demo checkpoints are trained on; the demo labels its val split.
DEMO_DATASET = dict(n_train=2000, n_val=20, size=(240, 320), seed=2026)
# The held-out test split of the model card: its own seed, never used for training or tuning.
HELDOUT_DATASET = dict(n_train=0, n_val=100, size=(240, 320), seed=4242)
PRESETS = {"demo": (DEMO_DATASET, ("train", "val")), "heldout": (HELDOUT_DATASET, ("val",))}


def _shape_mask(size: tuple[int, int], cls: int, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    h, w = size
    img = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(img)

    def rot(points):
        c, s = math.cos(angle), math.sin(angle)
        return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in points]

    if cls == 1:
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
    elif cls == 2:
        d.polygon(rot([(-r, -0.7 * r), (r, -0.7 * r), (r, 0.7 * r), (-r, 0.7 * r)]), fill=1)
    elif cls == 3:
        d.polygon(rot([(0, -r), (0.87 * r, 0.5 * r), (-0.87 * r, 0.5 * r)]), fill=1)
    elif cls == 4:
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
        q = 0.55 * r
        d.ellipse([cx - q, cy - q, cx + q, cy + q], fill=0)
    elif cls == 5:
        t = 0.3 * r
        d.polygon(rot([(-r, -t), (r, -t), (r, t), (-r, t)]), fill=1)
        d.polygon(rot([(-t, -r), (t, -r), (t, r), (-t, r)]), fill=1)
    return np.asarray(img, dtype=bool)


def _texture(rng: np.random.Generator, size: tuple[int, int], colour, kind: str) -> np.ndarray:
    h, w = size
    base = np.empty((h, w, 3), np.float32)
    base[:] = np.asarray(colour, np.float32) * rng.uniform(0.8, 1.1)
    yy, xx = np.mgrid[0:h, 0:w]
    period = rng.uniform(4, 12)
    if kind == "stripes":
        pattern = (np.sin((xx * 0.7 + yy * 0.7) * 2 * np.pi / period) > 0)[..., None]
    elif kind == "checker":
        pattern = (((xx // period).astype(int) + (yy // period).astype(int)) % 2 == 0)[..., None]
    elif kind == "dots":
        pattern = ((np.sin(xx * 2 * np.pi / period) * np.sin(yy * 2 * np.pi / period)) > 0.5)[..., None]
    else:
        pattern = np.zeros((h, w, 1), bool)
    return np.where(pattern, base * 0.6, base)


def _background(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    coarse = rng.uniform(40, 200, size=(max(2, h // 24), max(2, w // 24), 3)).astype(np.uint8)
    low = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BILINEAR), np.float32)
    grain = np.asarray(
        Image.fromarray(rng.integers(0, 255, (h, w), dtype=np.uint8)).filter(ImageFilter.GaussianBlur(1.5)), np.float32
    )
    image = low * 0.8 + (grain[..., None] - 128) * 0.5
    for _ in range(int(rng.integers(0, 4))):  # distractors: object colours on shapeless blobs
        blob = _blob_mask(rng, size)
        colour = _CLASS_COLOURS[int(rng.integers(1, len(SYNTH_CLASSES)))][int(rng.integers(0, 2))]
        tex = _texture(rng, size, colour, _TEXTURES[int(rng.integers(0, len(_TEXTURES)))])
        image[blob] = tex[blob]
    return image


def _blob_mask(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    # Thresholded smooth noise inside a random window: irregular, no class's shape.
    h, w = size
    bh, bw = int(h * rng.uniform(0.1, 0.35)) + 2, int(w * rng.uniform(0.1, 0.35)) + 2
    noise = rng.uniform(0, 255, size=(4, 4)).astype(np.uint8)
    field = np.asarray(Image.fromarray(noise).resize((bw, bh), Image.BICUBIC), np.float32)
    y0, x0 = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
    mask = np.zeros((h, w), bool)
    mask[y0 : y0 + bh, x0 : x0 + bw] = field > 150
    return mask


def _two_tone(rng: np.random.Generator, size, cls: int, cx: float, cy: float, kind: str) -> np.ndarray:
    # Both of the class's colours, split by a random line through the object's centre.
    h, w = size
    a, b = (_texture(rng, size, c, kind) for c in _CLASS_COLOURS[cls])
    yy, xx = np.mgrid[0:h, 0:w]
    t = rng.uniform(0, math.pi)
    side = (xx - cx) * math.cos(t) + (yy - cy) * math.sin(t) > 0
    return np.where(side[..., None], a, b)


def render_sample(
    rng: np.random.Generator, size: tuple[int, int], max_objects: int = 5, void_border: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image with its class and instance label maps (uint8, 255 = void)."""
    h, w = size
    image = _background(rng, size)
    cls_map = np.zeros((h, w), np.uint8)
    obj_map = np.zeros((h, w), np.uint8)
    n = int(rng.integers(1, max_objects + 1))
    side = min(h, w)
    painted = 0
    for _ in range(n):
        cls = int(rng.integers(1, len(SYNTH_CLASSES)))
        r = side * math.exp(rng.uniform(math.log(0.03), math.log(0.48)))
        cx, cy = rng.uniform(0.1 * w, 0.9 * w), rng.uniform(0.1 * h, 0.9 * h)
        mask = _shape_mask(size, cls, cx, cy, r, rng.uniform(0, math.pi))
        if mask.sum() < 4:
            continue
        kind = _TEXTURES[int(rng.integers(0, len(_TEXTURES)))]
        if r > 0.2 * side and rng.uniform() < 0.6:
            tex = _two_tone(rng, size, cls, cx, cy, kind)
        else:
            tex = _texture(rng, size, _CLASS_COLOURS[cls][int(rng.integers(0, 2))], kind)
        image[mask] = tex[mask]
        painted += 1
        cls_map[mask] = cls
        obj_map[mask] = painted
    image += rng.normal(0, 6, image.shape)
    image = np.clip(image, 0, 255).astype(np.uint8)
    # Instances left invisible by occlusion are dropped and the rest renumbered.
    ids = [i for i in range(1, painted + 1) if (obj_map == i).any()]
    remap = np.zeros(256, np.uint8)
    remap[ids] = np.arange(1, len(ids) + 1)
    obj_map = remap[obj_map]
    if void_border > 0:
        edges = _label_edges(obj_map, void_border)
        cls_map[edges] = 255
        obj_map[edges] = 255
    return image, cls_map, obj_map


def _label_edges(labels: np.ndarray, width: int) -> np.ndarray:
    # VOC marks a thin "void" band on object outlines.
    edge = np.zeros(labels.shape, bool)
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge[1:, :] |= labels[1:, :] != labels[:-1, :]
    if width > 1:
        edge = np.asarray(Image.fromarray(edge.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(2 * width - 1))) > 0
    return edge


def _save_palette_png(path: str, labels: np.ndarray) -> None:
    img = Image.fromarray(labels, mode="P")
    img.putpalette([c for rgb in voc_palette(256) for c in rgb])
    img.save(path)


def generate_voc(
    root: str,
    *,
    n_train: int = 20,
    n_val: int = 10,
    size: tuple[int, int] = (375, 500),
    seed: int = 0,
    max_objects: int = 5,
    void_border: int = 1,
    splits: tuple[str, ...] = ("train", "val"),
) -> list[str]:
    """Write a synthetic VOC-layout dataset to ``root``; returns the class names.

    Args:
        root: output folder (created).
        n_train, n_val: number of images per split.
        size: largest (H, W); each image is 80-100% of it in each side.
        seed: everything is a function of the seed.
        max_objects: instances per image are 1..max_objects (before occlusion).
        void_border: width of the void (255) band on object outlines; 0 for none.
        splits: which splits to write; ``("val",)`` writes the val images (and val.txt)
            alone, identical to those of a full run with the same arguments.
    """
    for sub in ("JPEGImages", "SegmentationClass", "SegmentationObject", "ImageSets/Segmentation"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    written: dict[str, list[str]] = {"train": [], "val": []}
    for i in range(n_train + n_val):
        split = "train" if i < n_train else "val"
        if split not in splits:
            continue  # each image has its own generator: skipping one changes no other
        rng = np.random.default_rng([seed, i])
        hw = (int(size[0] * rng.uniform(0.8, 1.0)), int(size[1] * rng.uniform(0.8, 1.0)))
        image, cls_map, obj_map = render_sample(rng, hw, max_objects, void_border)
        image_id = f"synth_{i:05d}"
        written[split].append(image_id)
        Image.fromarray(image).save(os.path.join(root, "JPEGImages", f"{image_id}.jpg"), quality=92)
        _save_palette_png(os.path.join(root, "SegmentationClass", f"{image_id}.png"), cls_map)
        _save_palette_png(os.path.join(root, "SegmentationObject", f"{image_id}.png"), obj_map)
    sets = os.path.join(root, "ImageSets", "Segmentation")
    lists = {name: written[name] for name in splits}
    if len(lists) == 2:
        lists["trainval"] = written["train"] + written["val"]
    for name, ids in lists.items():
        with open(os.path.join(sets, f"{name}.txt"), "w") as f:
            f.write("".join(f"{x}\n" for x in ids))
    with open(os.path.join(root, "classes.txt"), "w") as f:
        f.write("".join(f"{c}\n" for c in SYNTH_CLASSES))
    return list(SYNTH_CLASSES)


def _size_arg(text: str) -> tuple[int, int]:
    import argparse

    parts = text.split(",")
    try:
        h, w = (int(v) for v in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected H,W (two integers, e.g. 375,500), got {text!r}") from None
    if h < 16 or w < 16:
        raise argparse.ArgumentTypeError(f"H and W must be at least 16 pixels, got {text!r}")
    return h, w


def main(argv: list[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(description="Write the procedural VOC-layout dataset (deterministic from --seed).")
    p.add_argument("root", help="output folder")
    p.add_argument("--preset", choices=sorted(PRESETS),
                   help="demo: the demo checkpoints' training set (train + val); heldout: the model card's "
                   "held-out test split (val only); overrides the sizes, seed and splits")
    p.add_argument("--train", type=int, default=20, help="train images")
    p.add_argument("--val", type=int, default=10, help="val images")
    p.add_argument("--size", type=_size_arg, default=(375, 500), help="largest H,W (default 375,500)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-objects", type=int, default=5)
    p.add_argument("--splits", default="train,val", help="splits to write, e.g. 'val' for the val images alone")
    args = p.parse_args(argv)
    sizes = dict(n_train=args.train, n_val=args.val, size=args.size, seed=args.seed)
    splits = tuple(s for s in args.splits.split(",") if s)
    if args.preset:
        sizes, splits = PRESETS[args.preset]
    generate_voc(args.root, **sizes, max_objects=args.max_objects, splits=splits)
    print(f"wrote {args.root} ({', '.join(splits)}; {sizes})")


if __name__ == "__main__":
    main()
