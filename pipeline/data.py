"""Token ids, length-bucketed batches and padding."""

from __future__ import annotations

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
        head = max_tokens // 4
        return list(tokens[:head]) + list(tokens[len(tokens) - (max_tokens - head):])
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


def pad_batch(sequences: Sequence[np.ndarray], index: np.ndarray, pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch, longest) int64 ids padded with pad_id, and the true lengths."""
    lengths = np.fromiter((len(sequences[i]) for i in index), dtype=np.int64, count=len(index))
    ids = np.full((len(index), int(lengths.max())), pad_id, dtype=np.int64)
    for row, i in enumerate(index):
        ids[row, : lengths[row]] = sequences[i]
    return torch.from_numpy(ids), torch.from_numpy(lengths)
