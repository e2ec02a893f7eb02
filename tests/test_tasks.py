"""The task (pipeline.tasks): chosen by name, it owns the loss, the decision rule, the metrics and the
answer's shape, and training, evaluation and inference ask it rather than computing a softmax or an
arg-max of their own."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from pipeline import tasks
from pipeline.errors import PipelineError
from pipeline.inference import predict_texts
from pipeline.metrics import classification_metrics
from pipeline.plan import make_plan
from pipeline.tasks import SINGLE_LABEL, SingleLabel, checkpoint_task, get_task
from pipeline.training import build_model, fit, set_determinism
from tests.helpers import fit_toy, toy_matrix, toy_problem, train_params


def test_tasks_are_chosen_by_name_and_a_checkpoint_without_one_is_single_label():
    assert list(tasks.TASKS) == ["single_label", "multi_label"]
    assert get_task("single_label") == SINGLE_LABEL and isinstance(get_task("single_label"), SingleLabel)
    with pytest.raises(PipelineError, match=r"^params\.yaml: the task is 'multi'; known tasks: single_label, multi_label$"):
        get_task("multi")
    assert checkpoint_task({"best_epoch": 3}) == SINGLE_LABEL
    with pytest.raises(PipelineError, match=r"^models/model\.pt: its task is 'tags'; known tasks: single_label, multi_label$"):
        checkpoint_task({"task": "tags"}, "models/model.pt")


def test_single_label_is_softmax_cross_entropy_and_arg_max_to_the_bit():
    logits = torch.randn(7, 3, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([0, 1, 2, 2, 1, 0, 1])
    weight = torch.tensor([0.5, 1.0, 2.0])
    task = SINGLE_LABEL
    assert torch.equal(task.loss(logits, target), nn.CrossEntropyLoss(reduction="sum")(logits, target))
    assert torch.equal(task.loss(logits, target, weight),
                       nn.CrossEntropyLoss(weight=weight, reduction="sum")(logits, target))
    probs = task.probabilities(logits)
    assert torch.equal(probs, torch.softmax(logits, dim=-1))
    assert task.correct(logits, target) == int((logits.argmax(-1) == target).sum())
    np.testing.assert_array_equal(task.decide(probs.numpy()), probs.numpy().argmax(axis=1))
    np.testing.assert_array_equal(task.confidence(probs.numpy()), probs.numpy().max(axis=1))
    row = np.array([0.2, 0.7, 0.1], dtype=np.float32)
    assert task.answer(row, ["a", "b", "c"]) == {"label": "b", "probabilities": {"a": float(row[0]), "b": float(row[1]),
                                                                                   "c": float(row[2])}}
    assert task.metrics(["a", "b", "b"], ["a", "b", "a"], ["a", "b"]) == \
        classification_metrics(["a", "b", "b"], ["a", "b", "a"], ["a", "b"])
    assert task.targets(pd.Series(["b", "a"]), ["a", "b"], "x").tolist() == [1, 0]


class DoubledLoss(SingleLabel):
    """A task of another name whose loss is twice the single-label one: what training reports follows it."""
    name = "doubled"

    def loss(self, logits, target, weight=None):
        return 2 * super().loss(logits, target, weight)


class LeastLikely(SingleLabel):
    """A task of another name with another decision rule: the least probable class."""
    name = "least_likely"

    def decide(self, probs):
        return probs.argmin(axis=-1)


def test_training_follows_the_plan_s_task(monkeypatch):
    monkeypatch.setitem(tasks.TASKS, "doubled", DoubledLoss)
    tp = train_params(epochs=1, patience=1, precision="fp32", device="cpu")
    base = fit_toy(tp)
    xs, ys = toy_problem()
    set_determinism(tp.seed)
    model = build_model(tp, toy_matrix(), 2)
    doubled = fit(model, make_plan(tp, [len(x) for x in xs[:180]], task="doubled"),
                  ((xs[:180], ys[:180]), (xs[180:], ys[180:])))
    assert doubled.step_losses[0] == 2 * base.step_losses[0]  # the same weights before the first step
    assert doubled.history[0]["val_loss"] != base.history[0]["val_loss"]


def test_inference_asks_the_checkpoint_s_task(monkeypatch, tiny_ckpt):
    monkeypatch.setitem(tasks.TASKS, "least_likely", LeastLikely)
    texts = ["a gripping film", "dull and far too long"]
    usual = predict_texts(tiny_ckpt, texts)
    other = predict_texts(dataclasses.replace(tiny_ckpt, info={**tiny_ckpt.info, "task": "least_likely"}), texts)
    np.testing.assert_array_equal(usual.probs, other.probs)
    for i in range(len(texts)):
        assert usual.answer(i, tiny_ckpt.labels)["label"] == tiny_ckpt.labels[int(usual.probs[i].argmax())]
        assert other.label(i, tiny_ckpt.labels) == tiny_ckpt.labels[int(usual.probs[i].argmin())]
        assert other[i:i + 1].answer(0, tiny_ckpt.labels)["label"] == other.label(i, tiny_ckpt.labels)


def test_a_multi_label_model_s_predictions_are_label_sets_at_its_thresholds(tiny_multilabel_ckpt):
    from pipeline.inference import NO_TOKENS, uncertain
    from tests.tiny_model import MULTI_TEXTS

    ckpt = tiny_multilabel_ckpt
    thresholds = np.asarray(ckpt.thresholds, dtype=np.float32)
    assert not np.all(thresholds == 0.5)  # the checkpoint's own thresholds decide, not 0.5
    predictions = predict_texts(ckpt, MULTI_TEXTS)
    labelled = [i for i, r in enumerate(predictions.reasons) if r is None]
    assert predictions.reasons[MULTI_TEXTS.index("<br/>")] == NO_TOKENS and len(labelled) == len(MULTI_TEXTS) - 1
    for i in labelled:
        probs = predictions.probs[i]
        np.testing.assert_allclose(probs, torch.sigmoid(ckpt.model(*_ids(ckpt, MULTI_TEXTS[i]))).detach().numpy()[0],
                                   atol=1e-6)  # a sigmoid per label: they do not sum to 1
        expected = [lab for lab, p, t in zip(ckpt.labels, probs, thresholds) if p >= t]
        assert predictions.label(i, ckpt.labels) == expected
        assert predictions.answer(i, ckpt.labels) == {
            "labels": expected, "probabilities": {lab: float(p) for lab, p in zip(ckpt.labels, probs)}}
    assert any(len(predictions.label(i, ckpt.labels)) > 1 for i in labelled)
    none = predictions.answer(MULTI_TEXTS.index("<br/>"), ckpt.labels)
    assert none == {"labels": None, "probabilities": None, "reason": NO_TOKENS}

    # Abstaining follows the task's confidence: the least sure label decision, not the top probability.
    sureness = np.where(predictions.probs >= thresholds, predictions.probs, 1 - predictions.probs).min(axis=1)
    level = float(np.median(sureness[labelled]))
    unsure = predictions.abstaining(level)
    for i in labelled:
        if sureness[i] < level:
            assert unsure.reasons[i] == uncertain(level, ckpt.task) and unsure.label(i, ckpt.labels) is None
            answer = unsure.answer(i, ckpt.labels)
            assert answer["labels"] is None and answer["probabilities"]["film"] == float(predictions.probs[i, 0])
        else:
            assert unsure.reasons[i] is None and unsure.label(i, ckpt.labels) == predictions.label(i, ckpt.labels)
    assert any(sureness[i] < level <= predictions.probs[i].max() for i in labelled)  # the old rule would keep it
    assert "label" in uncertain(level, ckpt.task) and uncertain(level) == (
        f"uncertain: no class has probability {level:g} or more (the minimum confidence)")


def _ids(ckpt, text):
    from pipeline.batching import pad
    from pipeline.inference import encode_texts
    from pipeline.text import tokenize

    ids, lengths = pad(encode_texts(ckpt, [tokenize(text, ckpt.text_config)]), ckpt.model.cfg.pad_id)
    return torch.as_tensor(ids), torch.as_tensor(lengths)
