"""EdgeBox object proposals (Zitnick & Dollar, ECCV 2014) with ``cv2.ximgproc``.

DeconvNet runs on ~50 proposals per image (paper section 4 / original code): EdgeBoxes
with alpha 0.65, beta 0.75, minScore 0.01 over ~2000 candidates, the top 50 kept,
boxes with a shorter side under 112 px skipped, and each box enlarged 1.2x about its
centre (it may then reach outside the image, which is zero-padded when cropping).

EdgeBoxes needs an edge map and an orientation map. With ``edge_model`` (a path or
fsspec URL to OpenCV's structured-edge ``model.yml.gz``) the structured forest of
Dollar & Zitnick gives them; without it a built-in gradient edge map does: Sobel
magnitude of a lightly blurred image, thinned by non-maximum suppression along the
gradient (Canny's thinning), with the gradient orientation.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

import cv2
import numpy as np

# The paper's minimum proposal side (112 px) is meant for VOC-sized images (longer
# side ~500 px); smaller images get it scaled by their longer side / 500.
REFERENCE_LONG_SIDE = 500


@dataclass
class ProposalConfig:
    top_k: int = 50  # proposals kept per image (paper: 50)
    min_side: float = 112.0  # skip boxes whose shorter side is below this, at REFERENCE_LONG_SIDE
    enlarge: float = 1.2  # boxes grown about their centre by this factor (paper: 1.2)
    alpha: float = 0.65  # EdgeBoxes step size of the sliding window search
    beta: float = 0.75  # EdgeBoxes NMS threshold
    min_score: float = 0.01  # EdgeBoxes minimum box score
    max_candidates: int = 2000  # EdgeBoxes boxes returned before filtering
    edge_model: str | None = None  # structured-edge model.yml.gz (path or URL); None = gradient edges
    fallback: str = "image"  # no usable proposal: "image" = whole image as one box, "none" = no box (FCN alone)


def enlarge_boxes(boxes: np.ndarray, factor: float) -> np.ndarray:
    """Grow ``(K, 4)`` boxes ``x0, y0, x1, y1`` about their centres by ``factor``."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]) * (factor / 2)
    return np.concatenate([centre - half, centre + half], axis=1).astype(np.float32)


def effective_min_side(cfg: ProposalConfig, height: int, width: int) -> float:
    return cfg.min_side * min(1.0, max(height, width) / REFERENCE_LONG_SIDE)


def gradient_edges(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Thinned Sobel edge magnitude in [0, 1] and gradient orientation in [0, pi), float32."""
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
    gray = cv2.GaussianBlur(gray, (5, 5), 1.0)
    gx = cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3)
    mag = cv2.magnitude(gx, gy)
    theta = np.mod(np.arctan2(gy, gx), np.pi).astype(np.float32)
    # Non-maximum suppression along the gradient direction (4 bins), like Canny.
    padded = np.pad(mag, 1, mode="edge")
    h, w = mag.shape
    centre = padded[1 : h + 1, 1 : w + 1]
    shifts = {0: ((0, 1), (0, -1)), 1: ((1, 1), (-1, -1)), 2: ((1, 0), (-1, 0)), 3: ((1, -1), (-1, 1))}
    bins = (np.round(theta / (np.pi / 4)).astype(np.int32)) % 4
    keep = np.zeros_like(mag, dtype=bool)
    for b, ((dy1, dx1), (dy2, dx2)) in shifts.items():
        n1 = padded[1 + dy1 : h + 1 + dy1, 1 + dx1 : w + 1 + dx1]
        n2 = padded[1 + dy2 : h + 1 + dy2, 1 + dx2 : w + 1 + dx2]
        keep |= (bins == b) & (centre >= n1) & (centre >= n2)
    edges = np.where(keep, mag, 0).astype(np.float32)
    peak = float(edges.max())
    if peak > 0:
        edges /= peak
    # EdgeBoxes reads orientation perpendicular to the gradient as the edge direction.
    orientation = np.mod(theta + np.pi / 2, np.pi).astype(np.float32)
    return edges, orientation


def _local_model_file(url: str) -> str:
    if os.path.isfile(url):
        return url
    from models.storage import read_url

    data = read_url(url)  # only the scheme the user gave is read
    fd, path = tempfile.mkstemp(suffix=".yml.gz")
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    return path


class ProposalGenerator:
    """Callable that turns an RGB ``uint8 (H, W, 3)`` image into enlarged proposal boxes.

    Returns ``(boxes, scores)``: ``boxes`` float32 ``(K, 4)`` as ``x0, y0, x1, y1`` in
    pixels (may extend outside the image after enlarging), best first, ``K <= top_k``;
    ``scores`` float32 ``(K,)`` (the fallback whole-image box scores 0).

    Args:
        cfg: proposal settings; paper defaults.
    """

    def __init__(self, cfg: ProposalConfig | None = None) -> None:
        self.cfg = cfg or ProposalConfig()
        if self.cfg.fallback not in ("image", "none"):
            raise ValueError(f"fallback must be 'image' or 'none', got {self.cfg.fallback!r}")
        self._sed = None
        if self.cfg.edge_model:
            try:
                self._sed = cv2.ximgproc.createStructuredEdgeDetection(_local_model_file(self.cfg.edge_model))
            except (cv2.error, OSError) as exc:
                raise ValueError(f"cannot load structured-edge model {self.cfg.edge_model!r}: {exc}") from exc

    def edges(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._sed is None:
            return gradient_edges(image)
        edges = self._sed.detectEdges(image.astype(np.float32) / 255.0)
        orientation = self._sed.computeOrientation(edges)
        return self._sed.edgesNms(edges, orientation), orientation

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
        h, w = image.shape[:2]
        cfg = self.cfg
        boxes = np.zeros((0, 4), np.float32)
        scores = np.zeros((0,), np.float32)
        if min(h, w) >= 2:
            edges, orientation = self.edges(image)
            eb = cv2.ximgproc.createEdgeBoxes(
                alpha=cfg.alpha, beta=cfg.beta, minScore=cfg.min_score, maxBoxes=cfg.max_candidates
            )
            found = eb.getBoundingBoxes(edges, orientation)
            xywh, sc = found if isinstance(found, tuple) else (found, None)
            if xywh is not None and len(xywh):
                xywh = np.asarray(xywh, np.float32).reshape(-1, 4)
                sc = np.ones(len(xywh), np.float32) if sc is None else np.asarray(sc, np.float32).reshape(-1)
                order = np.argsort(-sc, kind="stable")
                xywh, sc = xywh[order], sc[order]
                keep = np.minimum(xywh[:, 2], xywh[:, 3]) >= effective_min_side(cfg, h, w)
                xywh, sc = xywh[keep][: cfg.top_k], sc[keep][: cfg.top_k]
                tight = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
                boxes, scores = enlarge_boxes(tight, cfg.enlarge), sc
        if len(boxes) == 0 and cfg.fallback == "image":
            boxes = np.array([[0, 0, w, h]], np.float32)
            scores = np.zeros((1,), np.float32)
        return boxes, scores
