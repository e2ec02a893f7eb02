"""The classifier (pipeline.model) reads each sequence at its true end: padding never changes a prediction.

The encoder seam: every encoder registered in ENCODERS, with every pooling and both directions where the
encoder has them, goes through the same padding checks and learns the same toy task, so a new encoder
is tested by being registered.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from pipeline import model as model_module
from pipeline.model import ENCODERS, ModelConfig, TextClassifier, reverse_within_length
from pipeline.training import build_model, fit, set_determinism
from tests.helpers import cpu_plan, fit_toy, train_params

POOLINGS = ("last", "max", "mean", "attention")


def _model(encoder: str, pooling: str, bidirectional: bool = True, num_layers: int = 2) -> TextClassifier:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=30, embedding_dim=8, num_classes=3, hidden_size=6, num_layers=num_layers,
                      bidirectional=bidirectional, pooling=pooling, encoder=encoder)
    return TextClassifier(cfg).eval()


def _has_directions(encoder: str) -> bool:
    """Whether `bidirectional` changes this encoder (it does for the recurrent ones, not for the CNN)."""
    shapes = [{k: v.shape for k, v in _model(encoder, "max", bidirectional).state_dict().items()}
              for bidirectional in (True, False)]
    return shapes[0] != shapes[1]


SEAM = [pytest.param(encoder, pooling, bidirectional, id=f"{encoder}-{pooling}-{'bi' if bidirectional else 'uni'}")
        for encoder in ENCODERS for pooling in POOLINGS
        for bidirectional in ((True, False) if _has_directions(encoder) else (True,))]


def assert_padding_invariant(model: TextClassifier) -> None:
    """Each sequence of a batch, alone and unpadded, gives the encoder states (at its real positions)
    and the output it gets in a padded batch of mixed lengths, with more padding after the longest."""
    rng = np.random.default_rng(0)
    lengths = [4, 1, 7, 3]
    sequences = [torch.from_numpy(rng.integers(1, 30, size=n)) for n in lengths]
    batch = torch.zeros(len(sequences), max(lengths) + 5, dtype=torch.long)  # pad_id 0
    for row, seq in enumerate(sequences):
        batch[row, :len(seq)] = seq
    batch_lengths = torch.tensor(lengths)
    with torch.no_grad():
        states = model.encoder(model.embedder(batch), batch_lengths)
        outputs = model(batch, batch_lengths)
        for row, seq in enumerate(sequences):
            ids, length = seq.unsqueeze(0), torch.tensor([len(seq)])
            alone_states = model.encoder(model.embedder(ids), length)
            torch.testing.assert_close(states[row, :len(seq)], alone_states[0], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(outputs[row], model(ids, length)[0], rtol=1e-5, atol=1e-6)


def test_reverse_within_length_keeps_padding_in_place_and_is_an_involution():
    x = torch.tensor([[1, 2, 3, 0, 0], [4, 5, 6, 7, 8]]).unsqueeze(-1)
    lengths = torch.tensor([3, 5])
    rev = reverse_within_length(x, lengths)
    assert rev.squeeze(-1).tolist() == [[3, 2, 1, 0, 0], [8, 7, 6, 5, 4]]
    assert torch.equal(reverse_within_length(rev, lengths), x)


@pytest.mark.parametrize("encoder, pooling, bidirectional", SEAM)
def test_padding_does_not_change_the_output(encoder, pooling, bidirectional):
    assert_padding_invariant(_model(encoder, pooling, bidirectional))


def test_every_encoder_is_in_the_seam_test():
    ids = {p.id for p in SEAM}
    for encoder in ENCODERS:
        assert {f"{encoder}-{pooling}-bi" for pooling in POOLINGS} <= ids, encoder
    assert {"lstm-last-uni", "gru-attention-uni"} <= ids  # the recurrent ones both ways
    assert not any(i.startswith("cnn-") and i.endswith("-uni") for i in ids)  # a convolution has no direction


def test_the_padding_check_catches_a_model_that_reads_padding(monkeypatch):
    """The control: break what keeps padding out (the backward direction's reversal within each
    sequence's length; the masks of padded positions) and the same check fails."""
    monkeypatch.setattr(model_module, "reverse_within_length", lambda x, lengths: x.flip(1))
    for encoder in ("lstm", "gru"):
        with pytest.raises(AssertionError):
            assert_padding_invariant(_model(encoder, "last", bidirectional=True))
    monkeypatch.undo()
    monkeypatch.setattr(model_module, "padding_mask",
                        lambda lengths, time: torch.ones(len(lengths), time, dtype=torch.bool, device=lengths.device))
    for encoder in ENCODERS:
        with pytest.raises(AssertionError):
            assert_padding_invariant(_model(encoder, "mean"))


@pytest.mark.parametrize("encoder", list(ENCODERS))
def test_every_encoder_learns_the_toy_task(encoder):
    """Label 1 iff token 3 appears anywhere: learnable only by reading the whole sequence."""
    result = fit_toy(train_params(encoder=encoder))
    assert result.best_val_accuracy >= 0.9, (encoder, result.history)


def test_an_unknown_encoder_is_refused():
    with pytest.raises(ValueError, match=r"unknown encoder 'transformer' \(known: lstm, gru, cnn\)"):
        _model("transformer", "max")


def test_frozen_embeddings_keep_the_pretrained_matrix():
    matrix = torch.randn(10, 4)
    cfg = ModelConfig(vocab_size=10, embedding_dim=4, num_classes=2, hidden_size=3)
    model = TextClassifier(cfg, matrix, freeze_embeddings=True)
    torch.testing.assert_close(model.embedder.embedding.weight.detach(), matrix)
    assert not model.embedder.embedding.weight.requires_grad
    model.set_embeddings_trainable(True)
    assert model.embedder.embedding.weight.requires_grad


def test_multichannel_keeps_a_frozen_copy_beside_the_tuned_one():
    tp = dataclasses.replace(train_params(), embeddings="multichannel", freeze_epochs=1, hidden_size=8, epochs=2,
                             patience=2, batch_size=8, lr=0.01, word_dropout=0.1)
    set_determinism(0)
    matrix = np.random.default_rng(0).normal(size=(12, 4)).astype(np.float32)
    model = build_model(tp, matrix, 2)
    assert model.encoder.forward_layers[0].input_size == 8  # two channels of 4
    rng = np.random.default_rng(1)
    xs = [rng.integers(2, 12, size=int(rng.integers(1, 6))) for _ in range(40)]
    ys = np.array([int(2 in x) for x in xs])
    fit(model, cpu_plan(tp, xs), ((xs, ys), (xs, ys)))
    # After the second epoch: the static channel has not moved, the tuned one has (unfrozen after epoch 1).
    torch.testing.assert_close(model.embedder.static_embedding.weight[1:], torch.from_numpy(matrix)[1:])
    assert not torch.allclose(model.embedder.embedding.weight[2:], torch.from_numpy(matrix)[2:])
    # Padding still never reaches the output.
    model.eval()
    seq = torch.tensor([[5, 9, 2]])
    padded = torch.cat([seq, torch.zeros(1, 5, dtype=torch.long)], dim=1)
    torch.testing.assert_close(model(seq, torch.tensor([3])), model(padded, torch.tensor([3])), rtol=1e-5, atol=1e-6)
