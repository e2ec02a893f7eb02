"""The model's input (pipeline.batching): truncation, encoding, length-bucketed batches and padding."""

from __future__ import annotations

import numpy as np

from pipeline.batching import auto_max_tokens, bucket_batches, encode, pad, pad_batch, truncate
from pipeline.plan import resolve_max_tokens


def test_truncation_strategies():
    tokens = list(range(10))
    assert truncate(tokens, 4, "head") == [0, 1, 2, 3]
    assert truncate(tokens, 4, "tail") == [6, 7, 8, 9]
    assert truncate(tokens, 8, "head+tail") == [0, 1, 4, 5, 6, 7, 8, 9]  # a quarter head, three quarters tail
    assert truncate(tokens, 20, "head+tail") == tokens
    # Arrays (what TokenIds reads) are cut the same way.
    assert truncate(np.arange(10), 8, "head+tail").tolist() == [0, 1, 4, 5, 6, 7, 8, 9]
    assert auto_max_tokens(list(range(1, 1001)), floor=128, cap=800) == 800
    assert auto_max_tokens(list(range(1, 501)), floor=128, cap=800) == 476
    assert auto_max_tokens([20] * 10, floor=128, cap=800) == 128
    assert resolve_max_tokens(50, np.array([1000])) == 50
    assert resolve_max_tokens("auto", np.arange(1, 501)) == 476


def test_bucketed_batches_cover_every_example_once_with_little_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 60, size=1000)
    batches = bucket_batches(lengths, 32, np.random.default_rng(1))
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    padded = sum(len(b) * lengths[b].max() for b in batches)
    assert padded / lengths.sum() < 1.15  # random batches would pad about 1.6x
    eval_batches = bucket_batches(lengths, 32)
    assert sorted(np.concatenate(eval_batches).tolist()) == list(range(1000))


def test_encode_and_pad():
    seqs = encode([["a", "b"], ["c"], []], {"<pad>": 0, "<unk>": 1, "a": 2, "b": 3}, unk_id=1)
    assert [s.tolist() for s in seqs] == [[2, 3], [1], [1]]
    ids, lengths = pad_batch(seqs, np.array([1, 0]))
    assert ids.tolist() == [[1, 0], [2, 3]] and lengths.tolist() == [1, 2]
    ids, lengths = pad([np.array([4, 5, 6]), np.array([7])], pad_id=9)
    assert ids.tolist() == [[4, 5, 6], [7, 9, 9]] and lengths.tolist() == [3, 1]
