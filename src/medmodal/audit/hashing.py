"""Content fingerprints for the leakage audit: array digests, note normalisation, pHash.

The perceptual hash is the DCT hash (pHash) with 256 bits: the grey image (channels
averaged; a 3D volume averaged over depth) is resized to 64 x 64 (Lanczos), transformed
with a 2D DCT-II, and the 16 x 16 lowest-frequency coefficients are compared with
their median (one bit each). Two images are near-identical when their hashes differ
in at most :data:`NEAR_THRESHOLD` bits.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

import numpy as np

PHASH_SIDE = 16  # 16 x 16 DCT coefficients -> 256 bits
PHASH_BITS = PHASH_SIDE * PHASH_SIDE
# Hamming distance (of 256 bits) up to which two images count as near-identical. Measured
# on the covid_cxr films (every 10th of the 616): resizing to 3/4 moves a hash by at most 4
# bits, re-encoding as JPEG q60 by 6, Gaussian noise (sd 8/255) by 12, burned-in text by 14,
# gamma 0.8 with +10% contrast by 20; distinct films of one patient differ by 54 or more, of
# different patients by 60 or more. Crops (5%) and shifts move a pHash by 40-110 bits: those
# pairs are missed. On 28 px fundus photographs (RetinaMNIST) some distinct eyes fall at
# 18-24, so near-identical groups are candidates to look at, not proof.
NEAR_THRESHOLD = 24
_BLOCK = 2048  # rows per block of the pairwise distance matrix
_WS = re.compile(r"\s+")


def array_digest(arr: np.ndarray) -> str:
    """sha256 of an array's dtype, shape and bytes (equal arrays, equal digests)."""
    a = np.ascontiguousarray(arr)
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def normalize_note(text: str) -> str:
    """A note for comparison: Unicode NFKC, case-folded, runs of whitespace -> one space."""
    return _WS.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def text_digest(text: str) -> str:
    """sha256 of the normalised note."""
    return hashlib.sha256(normalize_note(text).encode()).hexdigest()


def phash(image: np.ndarray) -> np.ndarray:
    """256-bit DCT perceptual hash (bool vector) of a channel-first 2D or 3D image."""
    from PIL import Image
    from scipy.fft import dctn

    a = np.asarray(image, dtype=np.float32)
    grey = a.mean(axis=0) if a.ndim >= 3 else a
    while grey.ndim > 2:  # (D, H, W): mean projection over depth
        grey = grey.mean(axis=0)
    side = 4 * PHASH_SIDE
    small = Image.fromarray(np.ascontiguousarray(grey, dtype=np.float32)).resize(
        (side, side), Image.LANCZOS
    )
    coeffs = dctn(np.asarray(small, dtype=np.float64), type=2, norm="ortho")
    low = coeffs[:PHASH_SIDE, :PHASH_SIDE]
    return (low > np.median(low)).ravel()


def near_pairs(hashes: np.ndarray, threshold: int) -> list[tuple[int, int, int]]:
    """(i, j, Hamming distance) for every i < j whose hashes differ in <= ``threshold`` bits.

    ``hashes``: (n, bits) bool. Distances come from a matrix product of +-1 vectors,
    block by block (n = 10,000 takes a few seconds).
    """
    n, bits = hashes.shape
    signs = hashes.astype(np.float32) * 2 - 1
    out: list[tuple[int, int, int]] = []
    for start in range(0, n, _BLOCK):
        block = signs[start : start + _BLOCK]
        dist = np.rint((bits - block @ signs.T) / 2).astype(np.int32)
        rows, cols = np.nonzero(dist <= threshold)
        for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
            if c > start + r:
                out.append((start + r, c, int(dist[r, c])))
    return out
