"""Perceptual hashes (pHash, 64 bits) of every analysis frame; each clip keeps a few for dedup.

pHash: luma shrunk to 32x32, 2-D DCT, the 8x8 lowest frequencies compared with their median
(DC term left out of the median) give 64 bits. It survives re-encoding, resizing and small
colour changes; flat frames (black, one colour) have no meaningful hash and are skipped.
A hash costs ~50 us on a 160 px frame; every `every`-th frame is hashed (every 6th by default,
~8 us per frame) and a clip picks the hashed frames nearest to evenly spread points of its range.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

_BIT_WEIGHTS = (np.uint64(1) << np.arange(63, -1, -1, dtype=np.uint64))


def phash(gray: np.ndarray) -> int:
    """64-bit perceptual hash of a grey image."""
    small = cv2.resize(gray, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(small)[:8, :8].ravel()
    bits = low > np.median(low[1:])
    return int(np.sum(_BIT_WEIGHTS[bits]))


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


class PhashAnalyzer:
    name = "phash"

    def __init__(self, n_per_clip: int, flat_std: float, every: int = 1):
        self.n_per_clip = n_per_clip
        self.every = every
        self.flat_std = flat_std
        self._hashes = np.zeros(1024, np.uint64)
        self._valid = np.zeros(1024, bool)

    def update(self, frame) -> None:
        i = frame.index
        if i >= len(self._hashes):
            size = max(2 * len(self._hashes), i + 1)
            self._hashes = np.resize(self._hashes, size)
            self._valid = np.concatenate([self._valid, np.zeros(size - len(self._valid), bool)])
        if i % self.every == 0 and cv2.meanStdDev(frame.luma)[1].item() >= self.flat_std:
            self._hashes[i] = phash(frame.luma)
            self._valid[i] = True

    def clip_signals(self, start_frame: int, end_frame: int) -> dict[str, Any]:
        end = min(end_frame, len(self._valid))
        valid = np.flatnonzero(self._valid[start_frame:end]) + start_frame
        if valid.size == 0:
            return {"phash": []}
        n = end_frame - start_frame
        targets = start_frame + (np.arange(self.n_per_clip) + 0.5) * n / self.n_per_clip
        picks = np.unique(valid[np.abs(valid[None, :] - targets[:, None]).argmin(axis=1)])
        return {"phash": [int(h) for h in self._hashes[picks]]}
