"""Run-length encoding of masks in the COCO layout, with our own encoder and decoder.

COCO counts runs over the mask read column by column (Fortran order: down the first column, then the
next), starting with a run of zeros (0 when the first pixel is set). The compressed form packs the counts
into a printable string: from the fourth count on, each is stored as its difference to the count two places
back; every number is written in 5-bit groups, least significant first, each group as ``chr(48 + g)`` with
bit 0x20 set when more groups follow and bit 0x10 of the last group as the sign.

    rle = encode_rle(mask)            # Rle(size=(H, W), counts=(...))
    mask = decode_rle(rle)
    coco = rle.to_coco(compressed=True)   # {"size": [H, W], "counts": "..."} JSON-ready
    Rle.from_coco(coco)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from medsam.errors import InputError


@dataclass(frozen=True)
class Rle:
    """A mask as COCO run lengths: ``size`` (H, W) and ``counts`` (alternating zeros/ones runs, column-major)."""

    size: tuple[int, int]
    counts: tuple[int, ...]

    @property
    def area(self) -> int:
        """Number of set pixels (the odd-indexed runs)."""
        return int(sum(self.counts[1::2]))

    def to_coco(self, compressed: bool = True) -> dict[str, Any]:
        """JSON-ready COCO segmentation: counts as a compressed string, or as a list of ints."""
        h, w = self.size
        counts: Any = counts_to_string(self.counts) if compressed else [int(c) for c in self.counts]
        return {"size": [int(h), int(w)], "counts": counts}

    @classmethod
    def from_coco(cls, obj: dict[str, Any]) -> "Rle":
        """Read a COCO segmentation dict with string or list counts; checks the counts fill the size."""
        try:
            h, w = (int(v) for v in obj["size"])
            raw = obj["counts"]
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"RLE {obj!r}: expected {{'size': [H, W], 'counts': ...}}") from exc
        if isinstance(raw, bytes):
            raw = raw.decode("ascii")
        counts = string_to_counts(raw) if isinstance(raw, str) else tuple(int(c) for c in raw)
        rle = cls((h, w), counts)
        _check_counts(rle)
        return rle


def encode_rle(mask: np.ndarray) -> Rle:
    """(H, W) mask (any dtype; non-zero is set) -> Rle."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise InputError(f"RLE encoding needs a 2D mask (H, W), got shape {mask.shape}")
    h, w = mask.shape
    flat = mask.astype(bool).ravel(order="F")
    if flat.size == 0:
        return Rle((h, w), ())
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], edges, [flat.size]))
    runs = np.diff(bounds).tolist()
    if flat[0]:
        runs.insert(0, 0)
    return Rle((h, w), tuple(int(r) for r in runs))


def decode_rle(rle: Rle) -> np.ndarray:
    """Rle -> (H, W) bool mask."""
    _check_counts(rle)
    h, w = rle.size
    values = np.zeros(len(rle.counts), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, np.asarray(rle.counts, dtype=np.int64))
    return flat.reshape((w, h)).T.copy()


def _check_counts(rle: Rle) -> None:
    h, w = rle.size
    if h < 0 or w < 0:
        raise InputError(f"RLE size {rle.size} is negative")
    if any(c < 0 for c in rle.counts):
        raise InputError("RLE counts must not be negative")
    total = sum(rle.counts)
    if total != h * w:
        raise InputError(f"RLE counts add up to {total} pixels but the size {h}x{w} holds {h * w}")


def counts_to_string(counts: Sequence[int]) -> str:
    """COCO's compressed counts string (see the module docstring for the layout)."""
    out: list[str] = []
    for i, count in enumerate(counts):
        x = int(count) - (int(counts[i - 2]) if i > 2 else 0)
        while True:
            group = x & 0x1F
            x >>= 5  # arithmetic shift: negative differences end at -1
            more = x != -1 if group & 0x10 else x != 0
            out.append(chr(48 + (group | 0x20 if more else group)))
            if not more:
                break
    return "".join(out)


def string_to_counts(text: str) -> tuple[int, ...]:
    """Inverse of :func:`counts_to_string`."""
    counts: list[int] = []
    pos, n = 0, len(text)
    while pos < n:
        x, shift = 0, 0
        while True:
            if pos >= n:
                raise InputError("RLE counts string ends in the middle of a number")
            code = ord(text[pos]) - 48
            if not 0 <= code < 64:
                raise InputError(f"RLE counts string has an invalid character {text[pos]!r} at {pos}")
            pos += 1
            x |= (code & 0x1F) << shift
            shift += 5
            if not code & 0x20:
                if code & 0x10:
                    x -= 1 << shift  # sign-extend
                break
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return tuple(counts)
