"""The vocabulary (pipeline.vocabulary): its order and limits, out-of-vocabulary rows, coverage, tokens
counted in chunks, and the compact token ids training reads."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pytest

from pipeline import vocabulary
from pipeline.batching import TokenIds, encode, sequence_lengths
from pipeline.errors import PipelineError
from pipeline.vectors import Alignment
from tests.helpers import count_tokens


def test_build_vocab_min_freq_max_size_and_order():
    counts = Counter({"b": 3, "a": 3, "c": 1, "d": 2})
    assert vocabulary.build_vocab(counts, 1, None) == ["<pad>", "<unk>", "a", "b", "d", "c"]
    assert vocabulary.build_vocab(counts, 2, None) == ["<pad>", "<unk>", "a", "b", "d"]
    assert vocabulary.build_vocab(counts, 1, 4) == ["<pad>", "<unk>", "a", "b"]


def _alignment(found):
    matrix = np.zeros((len(found), 2), dtype=np.float32)
    rows = np.flatnonzero(found)
    matrix[rows] = np.arange(2 * len(rows), dtype=np.float32).reshape(-1, 2) + 1
    return Alignment(matrix, np.array(found), np.zeros(len(found), bool))


def test_oov_policies():
    itos = ["<pad>", "<unk>", "a", "b", "c"]
    found = [False, False, True, False, True]
    _, zeros = vocabulary.fill_missing(_alignment(found), itos, "zeros", 0)
    assert not zeros[[0, 1, 3]].any() and zeros[2].tolist() == [1, 2]
    _, mean = vocabulary.fill_missing(_alignment(found), itos, "mean", 0)
    assert mean[3].tolist() == [2, 3] and not mean[0].any()
    kept, unk = vocabulary.fill_missing(_alignment(found), itos, "unk", 0)
    assert kept == ["<pad>", "<unk>", "a", "c"] and unk[1].tolist() == [2, 3]
    _, rand = vocabulary.fill_missing(_alignment(found), itos, "random", 0)
    _, again = vocabulary.fill_missing(_alignment(found), itos, "random", 0)
    assert np.array_equal(rand, again) and not rand[0].any() and rand[3].any()


def test_unk_keeps_a_word_with_a_domain_vector_and_gives_it_the_mean_pretrained_half():
    itos = ["<pad>", "<unk>", "a", "b", "c", "d"]
    found = [False, False, True, False, True, False]
    domain = np.array([False, False, False, True, False, False])  # 'b' has a domain vector, 'd' none
    kept, matrix = vocabulary.fill_missing(_alignment(found), itos, "unk", 0, keep_anyway=domain)
    assert kept == ["<pad>", "<unk>", "a", "b", "c"]
    assert matrix[3].tolist() == matrix[1].tolist() == [2, 3] and matrix[2].tolist() == [1, 2]
    assert not matrix[0].any()


def test_random_oov_rows_follow_the_pretrained_statistics():
    rng = np.random.default_rng(0)
    n = 4000
    matrix = rng.normal(3.0, 0.5, size=(n, 4)).astype(np.float32)
    found = np.ones(n, bool)
    found[:2002] = False  # specials and 2000 words without vectors
    alignment = Alignment(np.where(found[:, None], matrix, 0), found, np.zeros(n, bool))
    _, filled = vocabulary.fill_missing(alignment, ["<pad>", "<unk>"] + [f"w{i}" for i in range(n - 2)], "random", 1)
    assert abs(filled[2:2002].mean() - 3.0) < 0.05 and abs(filled[2:2002].std() - 0.5) < 0.05


def test_a_single_found_vector_still_gives_distinct_random_rows():
    alignment = Alignment(np.array([[0, 0], [0, 0], [0.5, -0.5], [0, 0], [0, 0]], dtype=np.float32),
                          np.array([False, False, True, False, False]), np.zeros(5, dtype=bool))
    _, matrix = vocabulary.fill_missing(alignment, ["<pad>", "<unk>", "the", "x", "y"], "random", seed=0)
    assert not np.allclose(matrix[3], matrix[4]) and not np.allclose(matrix[3], matrix[2])


def test_no_vector_found_is_a_clear_error():
    with pytest.raises(PipelineError, match=r"vec\.txt: none of the 2 vocabulary words has a vector in it"):
        vocabulary.fill_missing(_alignment([False] * 4), ["<pad>", "<unk>", "x", "y"], "random", 0, "data/vec.txt")


def test_coverage():
    counts = Counter({"a": 3, "b": 1})
    assert vocabulary.coverage(counts, {"a": True}) == {"type_coverage": 0.5, "token_coverage": 0.75}


@pytest.mark.parametrize("max_tokens, truncation", [(None, "head"), (3, "head"), (3, "tail"), (5, "head+tail")])
def test_compact_token_ids_give_what_encode_gives(tmp_path, max_tokens, truncation):
    """The vocab stage's int32 ids + offsets, read through TokenIds, are the sequences `encode` makes
    from the token lists: unknown words, truncation and empty texts alike; read in chunks of 2 rows."""
    token_lists = [["a", "good", "film"], [], ["zzz"], list("abcdefghij"), ["good"] * 7 + ["end"]]
    pd.DataFrame({"tokens": token_lists, "label": ["x"] * 5}).to_parquet(tmp_path / "train.parquet")
    itos = ["<pad>", "<unk>", "a", "good", "film", "b", "c", "end", "j"]
    assert vocabulary.write_token_ids(tmp_path / "train.parquet", itos, 1, tmp_path, "train", chunk_rows=2) == 5
    ids = np.load(tmp_path / "train.ids.npy", mmap_mode="r")
    assert ids.dtype == np.int32 and len(ids) == sum(map(len, token_lists))
    compact = TokenIds(tmp_path, "train", 1, max_tokens, truncation)
    expected = encode(token_lists, {w: i for i, w in enumerate(itos)}, 1, max_tokens, truncation)
    assert len(compact) == len(expected)
    for i, want in enumerate(expected):
        assert compact[i].tolist() == want.tolist(), i
    assert sequence_lengths(compact).tolist() == [len(e) for e in expected]


def test_split_tokens_are_counted_in_chunks_like_all_at_once(tmp_path):
    token_lists = [["a", "b", "a"], [], ["c"], ["a", "c", "d", "d"], ["b"]]
    pd.DataFrame({"tokens": token_lists}).to_parquet(tmp_path / "s.parquet")
    assert vocabulary.count_split_tokens(tmp_path / "s.parquet", chunk_rows=2) == count_tokens(token_lists)
