"""The classifier reads each sequence at its true end: padding never changes a prediction."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from pipeline import params as P
from pipeline.data import bucket_batches, encode, pad_batch
from pipeline.model import LSTMClassifier, ModelConfig, reverse_within_length
from pipeline.train import build_model, fit, set_determinism
from tests.conftest import ROOT


def test_reverse_within_length_keeps_padding_in_place_and_is_an_involution():
    x = torch.tensor([[1, 2, 3, 0, 0], [4, 5, 6, 7, 8]]).unsqueeze(-1)
    lengths = torch.tensor([3, 5])
    rev = reverse_within_length(x, lengths)
    assert rev.squeeze(-1).tolist() == [[3, 2, 1, 0, 0], [8, 7, 6, 5, 4]]
    assert torch.equal(reverse_within_length(rev, lengths), x)


@pytest.mark.parametrize("pooling", ["last", "max", "mean", "attention"])
@pytest.mark.parametrize("bidirectional", [True, False])
def test_padding_does_not_change_the_output(pooling, bidirectional):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=30, embedding_dim=8, num_classes=3, hidden_size=6, num_layers=2,
                      bidirectional=bidirectional, pooling=pooling)
    model = LSTMClassifier(cfg).eval()
    seq = torch.tensor([[5, 9, 2, 7]])
    alone = model(seq, torch.tensor([4]))
    padded = torch.cat([seq, torch.zeros(1, 11, dtype=torch.long)], dim=1)
    with_padding = model(padded, torch.tensor([4]))
    torch.testing.assert_close(alone, with_padding, rtol=1e-5, atol=1e-6)


def test_the_naive_last_padded_step_does_depend_on_padding():
    """The recipe this project replaces: a bidirectional nn.LSTM read at the padded end."""
    torch.manual_seed(0)
    emb, lstm = torch.nn.Embedding(30, 8, padding_idx=0), torch.nn.LSTM(8, 6, batch_first=True, bidirectional=True)
    seq = torch.tensor([[5, 9, 2, 7]])
    padded = torch.cat([seq, torch.zeros(1, 11, dtype=torch.long)], dim=1)
    short, _ = lstm(emb(seq))
    long, _ = lstm(emb(padded))
    assert not torch.allclose(short[:, -1], long[:, -1], atol=1e-4)


def test_frozen_embeddings_keep_the_pretrained_matrix():
    matrix = torch.randn(10, 4)
    cfg = ModelConfig(vocab_size=10, embedding_dim=4, num_classes=2, hidden_size=3)
    model = LSTMClassifier(cfg, matrix, freeze_embeddings=True)
    torch.testing.assert_close(model.embedding.weight.detach(), matrix)
    assert not model.embedding.weight.requires_grad
    model.set_embeddings_trainable(True)
    assert model.embedding.weight.requires_grad


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



def test_multichannel_keeps_a_frozen_copy_beside_the_tuned_one():
    tp = dataclasses.replace(P.load("train", ROOT / "params.yaml"), embeddings="multichannel", freeze_epochs=1,
                             hidden_size=8, epochs=2, patience=2, batch_size=8, lr=0.01)
    set_determinism(0)
    matrix = np.random.default_rng(0).normal(size=(12, 4)).astype(np.float32)
    model = build_model(tp, matrix, 2)
    assert model.forward_layers[0].input_size == 8  # two channels of 4
    rng = np.random.default_rng(1)
    xs = [rng.integers(2, 12, size=int(rng.integers(1, 6))) for _ in range(40)]
    ys = np.array([int(2 in x) for x in xs])
    fit(model, tp, xs, ys, xs, ys, torch.device("cpu"))
    # After the second epoch: the static channel has not moved, the tuned one has (unfrozen after epoch 1).
    torch.testing.assert_close(model.static_embedding.weight[1:], torch.from_numpy(matrix)[1:])
    assert not torch.allclose(model.embedding.weight[2:], torch.from_numpy(matrix)[2:])
    # Padding still never reaches the output.
    model.eval()
    seq = torch.tensor([[5, 9, 2]])
    padded = torch.cat([seq, torch.zeros(1, 5, dtype=torch.long)], dim=1)
    torch.testing.assert_close(model(seq, torch.tensor([3])), model(padded, torch.tensor([3])), rtol=1e-5, atol=1e-6)
