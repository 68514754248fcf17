"""Run-length encodings of binary masks for labelling tools: Label Studio's brush RLE and COCO's RLE.

**Label Studio** (``BrushLabels`` results, ``value.format = "rle"``) stores a mask as
the RGBA pixels of an ``H x W`` image, flattened row by row (``H * W * 4`` bytes, a
pixel's 4 channels all 0 or all 255; the editor reads the alpha channel), packed with
the bit format of thi.ng's ``rle-pack``, a big-endian bit stream:

- header: the number of values (32 bits), the word size minus 1 (5 bits), then four
  run-length field sizes, each minus 1 (4 bits each);
- then chunks until every value is produced: 1 flag bit, 2 bits choosing one of the
  four field sizes, ``count - 1`` in that many bits; flag 1: one word follows, repeated
  ``count`` times; flag 0: ``count`` words follow, one value each;
- zero bits pad the last byte. The JSON holds the bytes as a list of integers.

``ls_brush_rle`` writes 8-bit words and field sizes 3, 4, 8 and 16 bits (Label Studio's
own converter's choice) and only repeat chunks: masks are long runs, and a run longer
than 2^16 is cut into chunks.

**COCO** (``pycocotools.mask``) compressed RLE: run lengths over the mask flattened
column by column (Fortran order), starting with a run of 0s (possibly empty); each run
length from the third on is stored as its difference from the one two before, and
every number as a little-endian sequence of 5-bit groups, 6 bits per character
(``chr(48 + group)``, bit 0x20 = more groups follow; the last group's bit 0x10 is the
sign).
"""

from __future__ import annotations

import numpy as np

LS_WORD_BITS = 8
LS_RUN_FIELDS = (3, 4, 8, 16)  # bits of the count field for each 2-bit selector


def _runs(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(lengths, values)`` of the runs of equal values in a 1-d array."""
    values = np.asarray(values).ravel()
    if len(values) == 0:
        return np.zeros(0, np.int64), values
    starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
    return np.diff(np.r_[starts, len(values)]), values[starts]


def ls_rle_encode(values: np.ndarray) -> list[int]:
    """Label Studio's RLE bytes of a 1-d array of uint8 ``values`` (repeat chunks only)."""
    values = np.asarray(values, dtype=np.uint8).ravel()
    longest = 2 ** LS_RUN_FIELDS[-1]
    bits = [f"{len(values):032b}", f"{LS_WORD_BITS - 1:05b}", *(f"{n - 1:04b}" for n in LS_RUN_FIELDS)]
    for length, value in zip(*_runs(values)):
        length = int(length)
        while length > 0:
            count = min(length, longest)
            selector = next(i for i, n in enumerate(LS_RUN_FIELDS) if count <= 2**n)
            width = LS_RUN_FIELDS[selector]
            bits.append(f"1{selector:02b}{count - 1:0{width}b}{int(value):08b}")
            length -= count
    stream = "".join(bits)
    stream += "0" * (-len(stream) % 8)
    return np.packbits(np.frombuffer(stream.encode(), np.uint8) - ord("0")).tolist()


def ls_brush_rle(mask: np.ndarray) -> list[int]:
    """Label Studio ``BrushLabels`` RLE of a boolean ``(H, W)`` mask (RGBA, 255 inside, 0 outside)."""
    pixels = np.where(np.asarray(mask, dtype=bool), 255, 0).astype(np.uint8).ravel()
    return ls_rle_encode(np.repeat(pixels, 4))


def coco_rle(mask: np.ndarray) -> dict:
    """COCO compressed RLE ``{"size": [H, W], "counts": str}`` of a boolean ``(H, W)`` mask."""
    mask = np.asarray(mask, dtype=bool)
    flat = mask.ravel(order="F")
    lengths, values = _runs(flat)
    counts = [int(n) for n in lengths]
    if len(flat) and values[0]:  # the counts start with a run of 0s
        counts.insert(0, 0)
    chars = []
    for i, count in enumerate(counts):
        x = count - counts[i - 2] if i > 2 else count
        more = True
        while more:
            group = x & 0x1F
            x >>= 5  # arithmetic shift: negative differences end at -1
            more = x != -1 if group & 0x10 else x != 0
            chars.append(chr(48 + (group | (0x20 if more else 0))))
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": "".join(chars)}


def bbox(mask: np.ndarray) -> list[int]:
    """COCO ``[x, y, width, height]`` of a boolean mask's pixels (zeros when empty)."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return [0, 0, 0, 0]
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
