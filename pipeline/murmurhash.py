"""MurmurHash3 (x86, 32-bit) of many strings at once, in numpy: the hash scikit-learn's HashingVectorizer
puts each n-gram's column by, so a saved hashed TF-IDF model is scored without scikit-learn.

A string is hashed as its UTF-8 bytes (seed 0 unless given), and its column is
`hashed_columns(strings, n_features)`: |h| mod n_features of the signed hash (h = -2**31 taken as 2**31),
as sklearn.feature_extraction._hashing_fast does. The strings are processed 4-byte block by block, all
strings of at least that many blocks together, so the cost follows the total bytes, not the longest.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

_C1, _C2 = np.uint32(0xCC9E2D51), np.uint32(0x1B873593)


def _rotl(x: np.ndarray, r: int) -> np.ndarray:
    return (x << np.uint32(r)) | (x >> np.uint32(32 - r))


def _mix(k: np.ndarray) -> np.ndarray:
    return _rotl(k * _C1, 15) * _C2


def murmurhash3_32(strings: Sequence[str], seed: int = 0) -> np.ndarray:
    """The signed 32-bit MurmurHash3 of each string's UTF-8 bytes (int32), as sklearn.utils.murmurhash3_32."""
    joined = "".join(strings)
    if joined.isascii():  # a byte a character: one encoding of the whole
        lengths = np.fromiter(map(len, strings), dtype=np.int64, count=len(strings))
        raw = joined.encode("ascii")
    else:
        encoded = [s.encode("utf-8", "surrogatepass") for s in strings]
        lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
        raw = b"".join(encoded)
    starts = np.zeros(len(strings), dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    data = np.frombuffer(raw + b"\0\0\0\0", dtype=np.uint8).astype(np.uint32)
    h = np.full(len(strings), seed, dtype=np.uint32)
    blocks = lengths // 4
    order = np.argsort(-blocks, kind="stable")  # the strings with the most blocks first: a prefix is active
    for b in range(int(blocks.max(initial=0))):
        active = order[:int(np.count_nonzero(blocks > b))]
        at = starts[active] + 4 * b
        k = data[at] | (data[at + 1] << np.uint32(8)) | (data[at + 2] << np.uint32(16)) | (data[at + 3] << np.uint32(24))
        x = h[active] ^ _mix(k)
        h[active] = _rotl(x, 13) * np.uint32(5) + np.uint32(0xE6546B64)
    tail = lengths % 4
    at = starts + 4 * blocks
    k = np.zeros(len(strings), dtype=np.uint32)
    for i in (2, 1, 0):  # the tail's bytes, little-endian (the buffer's padding is never read past a string)
        has = tail > i
        k[has] ^= data[at[has] + i] << np.uint32(8 * i)
    has = tail > 0
    h[has] ^= _mix(k[has])
    h ^= lengths.astype(np.uint32)
    h ^= h >> np.uint32(16)
    h *= np.uint32(0x85EBCA6B)
    h ^= h >> np.uint32(13)
    h *= np.uint32(0xC2B2AE35)
    h ^= h >> np.uint32(16)
    return h.view(np.int32)


def hashed_columns(strings: Sequence[str], n_features: int, seed: int = 0) -> np.ndarray:
    """Each string's column among n_features, as scikit-learn's HashingVectorizer places it (int64)."""
    h = murmurhash3_32(strings, seed).astype(np.int64)
    return np.abs(h) % n_features
