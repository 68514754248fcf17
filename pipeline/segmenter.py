"""The model stage: DeconvNet on proposals + FCN-8s on the whole image, ensembled.

Per image (DeconvNet paper section 4 and its released code): each proposal box is
cropped from the image and resized to 224x224 (bilinear; outside the image the
pixels are 0, as in training), run through DeconvNet, its C-channel score map
resized back to the box and max-aggregated into an image-size canvas that starts at
zero; softmax of the canvas gives DeconvNet's probabilities. FCN-8s runs on the
whole image. The ensemble (EDeconvNet) is the mean of the two probability maps.

Everything happens on the model's device inside one call: crops are cut with
torchvision's ``roi_align`` (``sampling_ratio=1, aligned=True`` samples exactly the
bilinear-resize grid), crops of all images of a batch are cut into fixed-size
micro-batches (so crops of several images share a forward pass), and only one
``(C, H, W)`` float16 probability map per image leaves the stage.

This module imports only torch, torchvision, numpy and ``models`` (no ray, cv2 or
pydensecrf), so it can be used and benchmarked in-process on any GPU machine.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from models import fold_batchnorm, load_checkpoint
from pipeline.faults import inject
from pipeline.rows import RowStatus, object_column
from pipeline.stage_config import InferenceConfig

CROP_SIZE = 224  # DeconvNet's input size (paper Table 2)


def crop_boxes(image: torch.Tensor, boxes: torch.Tensor, size: int = CROP_SIZE) -> torch.Tensor:
    """Bilinear crops ``(K, 3, size, size)`` of ``boxes`` ``(K, 4)`` x0,y0,x1,y1 from ``image`` ``(3, H, W)``.

    Pixel (i, j) of a crop samples the image at the centre of the box's (i, j) cell, the
    same grid as ``F.interpolate(..., mode="bilinear", align_corners=False)``; samples
    more than one pixel outside the image are 0 (zero padding).
    """
    rois = torch.cat([boxes.new_zeros((len(boxes), 1)), boxes], dim=1)
    return roi_align(image[None], rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=1, aligned=True)


def pixel_box(box: np.ndarray | torch.Tensor) -> tuple[int, int, int, int]:
    """A float box rounded to whole pixels, at least 1 px wide and high."""
    x0, y0, x1, y1 = (float(v) for v in box)
    xi0, yi0 = int(round(x0)), int(round(y0))
    return xi0, yi0, max(xi0 + 1, int(round(x1))), max(yi0 + 1, int(round(y1)))


def paste_max(canvas: torch.Tensor, scores: torch.Tensor, box: tuple[int, int, int, int]) -> None:
    """Resize ``scores`` ``(C, h, w)`` to the pixel box and max it into ``canvas`` ``(C, H, W)`` in place.

    The part of the box outside the canvas is dropped.
    """
    x0, y0, x1, y1 = box
    _, height, width = canvas.shape
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if cx1 <= cx0 or cy1 <= cy0:
        return
    resized = F.interpolate(scores[None].float(), size=(y1 - y0, x1 - x0), mode="bilinear", align_corners=False)[0]
    region = canvas[:, cy0:cy1, cx0:cx1]
    torch.maximum(region, resized[:, cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0], out=region)


class Segmenter:
    """EDeconvNet inference: ``predict(images, boxes) -> probabilities``; also a Ray Data stage.

    ``predict`` takes RGB uint8 ``(H, W, 3)`` images and float32 ``(K, 4)`` boxes per
    image and returns float16 ``(C, H, W)`` class probabilities per image (FCN alone
    when an image has no box and the ensemble includes FCN; uniform from DeconvNet's
    all-zero canvas otherwise).

    As a stage, ``__call__(batch)`` reads the ``image``, ``boxes`` and ``status``
    columns, adds ``probs`` and drops ``boxes``; rows whose status is not ``ok`` pass
    through, and an image that makes the model fail becomes an error row.

    Args:
        checkpoint: DeconvNet checkpoint (path or fsspec URL), or None for ensemble "fcn".
        fcn_checkpoint: FCN checkpoint, or None for ensemble "deconvnet".
        cfg: ensemble mode, micro-batch size, precision, device.
        fold_bn: fold DeconvNet's BatchNorms into its (de)convolutions (``models.fold``):
            same outputs up to float rounding, a faster model stage (BENCHMARKS.md section 3); False only to compare.
    """

    def __init__(
        self,
        checkpoint: str | None,
        fcn_checkpoint: str | None = None,
        cfg: InferenceConfig | None = None,
        *,
        fold_bn: bool = True,
    ) -> None:
        self.cfg = cfg or InferenceConfig()
        if self.cfg.ensemble not in ("mean", "deconvnet", "fcn"):
            raise ValueError(f"ensemble must be mean, deconvnet or fcn, got {self.cfg.ensemble!r}")
        self.device = torch.device(self.cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.deconvnet = self.fcn = None
        metas = []
        self._format = torch.channels_last if self.cfg.channels_last else torch.contiguous_format
        if self.cfg.ensemble in ("mean", "deconvnet"):
            self.deconvnet, meta = load_checkpoint(checkpoint, device=self.device)
            if fold_bn:
                fold_batchnorm(self.deconvnet)
            self.deconvnet.to(memory_format=self._format)
            self._deconv_norm = self._norm(meta)
            metas.append(meta)
        if self.cfg.ensemble in ("mean", "fcn"):
            if not fcn_checkpoint:
                raise ValueError(f"ensemble {self.cfg.ensemble!r} needs an FCN checkpoint")
            self.fcn, meta = load_checkpoint(fcn_checkpoint, device=self.device)
            self.fcn.to(memory_format=self._format)
            self._fcn_norm = self._norm(meta)
            metas.append(meta)
        if len({m.num_classes for m in metas}) != 1:
            raise ValueError(f"DeconvNet and FCN checkpoints disagree on the classes: {[m.num_classes for m in metas]}")
        self.num_classes = metas[0].num_classes
        self.metas = metas
        dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}
        if self.cfg.precision not in dtypes:
            raise ValueError(f"precision must be one of {sorted(dtypes)}, got {self.cfg.precision!r}")
        # Mixed precision only on CUDA; CPU autocast is slow and changes results for nothing.
        self._amp_dtype = dtypes[self.cfg.precision] if self.device.type == "cuda" else None

    def _norm(self, meta) -> tuple[torch.Tensor, torch.Tensor]:
        mean = torch.tensor(meta.mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(meta.std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        return mean, std

    def _autocast(self):
        if self._amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self._amp_dtype)

    @torch.inference_mode()
    def predict(self, images: list[np.ndarray], boxes: list[np.ndarray]) -> list[np.ndarray]:
        out = []
        for parts, b in zip(self._parts(images, boxes), boxes):
            if "deconvnet" in parts and "fcn" in parts:
                # no proposal: DeconvNet's map is uniform, FCN decides alone
                p = parts["fcn"] if len(b) == 0 else (parts["deconvnet"] + parts["fcn"]) / 2
            else:
                p = parts.get("deconvnet", parts.get("fcn"))
            out.append(p.to(torch.float16).cpu().numpy())
        return out

    @torch.inference_mode()
    def predict_parts(
        self,
        images: list[np.ndarray],
        boxes: list[np.ndarray],
        prefixes: tuple[int, ...] = (),
        other_boxes: dict[str, list[np.ndarray]] | None = None,
    ) -> list[dict[str, np.ndarray]]:
        """Each model's float16 ``(C, H, W)`` probabilities per image, not ensembled.

        Keys: ``"deconvnet"`` and/or ``"fcn"`` (whichever models are loaded),
        ``"deconvnet@K"`` for each K in ``prefixes``: DeconvNet aggregated over the
        image's top K boxes only (the evaluation's proposal sweep), and
        ``"deconvnet@NAME"`` for each NAME of ``other_boxes``: DeconvNet on those boxes
        (one array per image) instead of ``boxes`` (the evaluation's oracle).
        """
        parts = self._parts(images, boxes, prefixes, other_boxes)
        return [{k: v.to(torch.float16).cpu().numpy() for k, v in d.items()} for d in parts]

    def _parts(
        self,
        images: list[np.ndarray],
        boxes: list[np.ndarray],
        prefixes: tuple[int, ...] = (),
        other_boxes: dict[str, list[np.ndarray]] | None = None,
    ) -> list[dict[str, torch.Tensor]]:
        if len(images) != len(boxes):
            raise ValueError("one box array per image expected")
        tensors = [self._to_tensor(im) for im in images]
        parts: list[dict[str, torch.Tensor]] = [{} for _ in images]
        if self.deconvnet is not None:
            runs = [("deconvnet", boxes)] + [(f"deconvnet@{k}", [np.asarray(b)[:k] for b in boxes]) for k in prefixes]
            runs += [(f"deconvnet@{name}", b) for name, b in (other_boxes or {}).items()]
            for key, run_boxes in runs:
                for d, canvas in zip(parts, self._deconvnet_canvases(tensors, run_boxes)):
                    d[key] = torch.softmax(canvas, dim=0)
        if self.fcn is not None:
            for d, t in zip(parts, tensors):
                d["fcn"] = self._fcn_probs(t)
        return parts

    def _to_tensor(self, image: np.ndarray) -> torch.Tensor:
        """RGB uint8 ``(H, W, 3)`` -> float ``(3, H, W)`` in [0, 1] on the device (uint8 crosses the bus)."""
        pixels = torch.from_numpy(np.require(image, np.uint8, ["C", "W"])).to(self.device, non_blocking=True)
        return pixels.permute(2, 0, 1).float().div_(255)

    def _fcn_probs(self, image: torch.Tensor) -> torch.Tensor:
        mean, std = self._fcn_norm
        with self._autocast():
            logits = self.fcn(((image[None] - mean) / std).contiguous(memory_format=self._format))
        return torch.softmax(logits[0].float(), dim=0)

    def _deconvnet_canvases(self, tensors: list[torch.Tensor], boxes: list[np.ndarray]) -> list[torch.Tensor]:
        canvases = [torch.zeros((self.num_classes, *t.shape[1:]), device=self.device) for t in tensors]
        crops, owners, rects = [], [], []
        for i, (t, b) in enumerate(zip(tensors, boxes)):
            b = np.asarray(b, dtype=np.float32).reshape(-1, 4)
            if len(b) == 0:
                continue
            crops.append(crop_boxes(t, torch.from_numpy(b).to(self.device)))
            owners += [i] * len(b)
            rects += [pixel_box(box) for box in b]
        if not crops:
            return canvases
        mean, std = self._deconv_norm
        crops = (torch.cat(crops) - mean) / std  # outside the image: 0 before normalising, as in training
        crops = crops.contiguous(memory_format=self._format)
        mb = self.cfg.micro_batch
        pad = self.device.type == "cuda"  # constant shapes let cuDNN reuse its autotuned kernels
        for start in range(0, len(crops), mb):
            chunk = crops[start : start + mb]
            n = len(chunk)
            if pad and n < mb:
                chunk = torch.cat([chunk, chunk.new_zeros((mb - n, *chunk.shape[1:]))])
            with self._autocast():
                scores = self.deconvnet(chunk)[:n].float()
            for j in range(n):
                paste_max(canvases[owners[start + j]], scores[j], rects[start + j])
        return canvases

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        inject("model_batch", batch.get("image_id", ()))  # tests only: a killed model actor
        rows = RowStatus(batch, "model stage")
        ok = rows.ok_rows()
        empty = np.zeros((0, 0, 0), np.float16)
        try:  # the whole batch at once: crops of all its images share DeconvNet micro-batches
            probs = [empty] * len(rows.status)
            for i, p in zip(ok, self.predict([batch["image"][i] for i in ok], [batch["boxes"][i] for i in ok])):
                probs[i] = p
        except Exception:  # one bad image must not fail its neighbours: retry one by one
            probs = rows.map(lambda i: self.predict([batch["image"][i]], [batch["boxes"][i]])[0], empty=empty)
        out = {k: v for k, v in batch.items() if k not in ("boxes", "box_scores")}
        out.update(rows.columns(), probs=object_column(probs))
        return out
