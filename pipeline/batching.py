"""The model's input: token ids, truncated one way everywhere, length-bucketed batches, and padding."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

# Each shuffled pool of batch_size * POOL_BATCHES examples is sorted by length before it is cut into
# batches, so batches hold sequences of similar length (little padding) yet vary from epoch to epoch.
POOL_BATCHES = 50


def truncate(tokens: Sequence, max_tokens: int | None, truncation: str = "head") -> Sequence:
    """At most max_tokens of a sequence: the first (head), the last (tail), or the first quarter and
    the last three quarters (head+tail: a review's opening and its verdict)."""
    if max_tokens is None or len(tokens) <= max_tokens:
        return tokens
    if truncation == "head":
        return tokens[:max_tokens]
    if truncation == "tail":
        return tokens[len(tokens) - max_tokens:]
    if truncation == "head+tail":
        head, tail = tokens[:max_tokens // 4], tokens[len(tokens) - (max_tokens - max_tokens // 4):]
        return np.concatenate([head, tail]) if isinstance(tokens, np.ndarray) else list(head) + list(tail)
    raise ValueError(f"unknown truncation {truncation!r}")


def auto_max_tokens(lengths: Sequence[int], floor: int, cap: int, quantile: float = 95) -> int:
    """The length that covers `quantile` percent of the texts, within [floor, cap]."""
    return int(min(cap, max(floor, np.ceil(np.percentile(np.asarray(lengths), quantile)))))


def encode(token_lists: Iterable[Sequence[str]], stoi: dict[str, int], unk_id: int,
           max_tokens: int | None = None, truncation: str = "head") -> list[np.ndarray]:
    """Map tokens to ids (unknown -> unk_id), truncated to max_tokens. Empty sequences become a single
    <unk> so every length >= 1."""
    out = []
    for tokens in token_lists:
        tokens = truncate(tokens, max_tokens, truncation)
        ids = np.fromiter((stoi.get(t, unk_id) for t in tokens), dtype=np.int64, count=len(tokens))
        out.append(ids if len(ids) else np.array([unk_id], dtype=np.int64))
    return out


class TokenIds:
    """A split's texts as id sequences over the vocab stage's compact arrays (memory-mapped int32 ids
    and their offsets): each text cut to max_tokens the way `encode` cuts it, an empty text read as a
    single <unk>, made only when a batch asks for it. What `encode` returns, in 4 bytes per token on
    disk instead of Python objects in memory."""

    def __init__(self, folder: Path, name: str, unk_id: int, max_tokens: int | None = None,
                 truncation: str = "head"):
        self.ids = np.load(folder / f"{name}.ids.npy", mmap_mode="r")
        self.offsets = np.load(folder / f"{name}.offsets.npy")
        self.unk_id, self.max_tokens, self.truncation = unk_id, max_tokens, truncation
        self.full_lengths = np.diff(self.offsets)
        cut = self.full_lengths if max_tokens is None else np.minimum(self.full_lengths, max_tokens)
        self.lengths = np.maximum(cut, 1)

    def __len__(self) -> int:
        return len(self.full_lengths)

    def __getitem__(self, i: int) -> np.ndarray:
        start, end = int(self.offsets[i]), int(self.offsets[i + 1])
        if start == end:
            return np.array([self.unk_id], dtype=np.int64)
        return np.asarray(truncate(self.ids[start:end], self.max_tokens, self.truncation), dtype=np.int64)


def sequence_lengths(sequences: Sequence) -> np.ndarray:
    """Each sequence's length, without building the sequences when they know their lengths."""
    known = getattr(sequences, "lengths", None)
    if known is not None:
        return np.asarray(known, dtype=np.int64)
    return np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))


def bucket_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator | None = None) -> list[np.ndarray]:
    """Index batches of similar-length sequences.

    With an rng: shuffled pools, sorted within, batch order shuffled (training). Without: sorted by
    length once (evaluation; callers restore the original order).
    """
    lengths = np.asarray(lengths)
    if rng is None:
        order = np.argsort(lengths, kind="stable")
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    perm = rng.permutation(len(lengths))
    pool = batch_size * POOL_BATCHES
    batches = []
    for start in range(0, len(perm), pool):
        chunk = perm[start:start + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def pad(sequences: Sequence[np.ndarray], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(batch, longest) int64 ids padded with pad_id, and the true lengths (batch,)."""
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    ids = np.full((len(sequences), int(lengths.max(initial=1))), pad_id, dtype=np.int64)
    for row, seq in enumerate(sequences):
        ids[row, : lengths[row]] = seq
    return ids, lengths


def pad_batch(sequences: Sequence[np.ndarray], index: np.ndarray, pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The sequences at `index`, padded (pad) as tensors."""
    ids, lengths = pad([sequences[i] for i in index], pad_id)
    return torch.from_numpy(ids), torch.from_numpy(lengths)
