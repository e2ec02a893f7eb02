"""What ships (pipeline/shipped.py, the stage ship), the fused checkpoint's format (pipeline/checkpoint.py) and
its inference (pipeline/inference.py): the shipped model's probabilities, the TF-IDF part never unpickled."""

from __future__ import annotations

import io
import os

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.checkpoint import load_checkpoint
from pipeline.errors import PipelineError
from pipeline.fusion import align, fuse, fuse_multilabel
from pipeline.inference import predict_texts
from pipeline.text import TextConfig, tokenize
from tests.helpers import polarity_rows
from tests.tiny_model import TEXTS, tiny_shipped_checkpoint, tiny_tfidf

WORDY = [t for t in TEXTS if tokenize(t, TextConfig())]


def _parts(ckpt, texts):
    """The LSTM part's probabilities (the checkpoint with the LSTM shipped) and the TF-IDF part's, aligned."""
    tokens = [tokenize(t, ckpt.text_config) for t in texts]
    shipped, ckpt.shipped = ckpt.shipped, "lstm"
    try:
        p_lstm = predict_texts(ckpt, texts).probs
    finally:
        ckpt.shipped = shipped
    return p_lstm, align(ckpt.tfidf.probabilities(tokens), ckpt.tfidf.classes, ckpt.labels, "test")


def test_predict_texts_of_a_fused_checkpoint_is_the_fusion_of_its_parts(tiny_fused_ckpt, tiny_ckpt):
    ckpt = tiny_fused_ckpt
    assert (ckpt.shipped, ckpt.fusion_weight) == ("fusion", 0.4) and ckpt.tfidf.classes == ckpt.labels[::-1]
    p_lstm, p_tfidf = _parts(ckpt, WORDY)
    assert np.abs(p_lstm - predict_texts(tiny_ckpt, WORDY).probs).max() == 0  # the LSTM part is train's LSTM
    got = predict_texts(ckpt, WORDY).probs
    assert np.abs(got - fuse(p_lstm, p_tfidf, 0.4)).max() < 1e-6
    assert np.abs(got - p_lstm).max() > 1e-3 and np.abs(got - p_tfidf).max() > 1e-3  # neither part alone


def test_a_shipped_tfidf_model_gives_the_tfidf_probabilities(tiny_model_path, tmp_path):
    ckpt = load_checkpoint(tiny_shipped_checkpoint(tiny_model_path, tmp_path / "model.pt", "tfidf", 0.0))
    tokens = [tokenize(t, ckpt.text_config) for t in WORDY]
    want = align(tiny_tfidf().probabilities(tokens), ckpt.labels[::-1], ckpt.labels, "test")
    assert ckpt.shipped == "tfidf" and np.abs(predict_texts(ckpt, WORDY).probs - want).max() < 1e-6


def test_a_fused_multi_label_checkpoint_fuses_logits_and_decides_at_its_thresholds(tiny_multilabel_path, tmp_path):
    ckpt = load_checkpoint(tiny_shipped_checkpoint(tiny_multilabel_path, tmp_path / "model.pt", "fusion", 0.5))
    texts = [text for text, _ in polarity_rows()[:40]]
    p_lstm, p_tfidf = _parts(ckpt, texts)
    predictions = predict_texts(ckpt, texts)
    want = fuse_multilabel(p_lstm, p_tfidf, 0.5)
    assert np.abs(predictions.probs - want).max() < 1e-6
    assert ckpt.shipped_thresholds == [0.4] * 4 and ckpt.lstm_task.thresholds.tolist() == ckpt.thresholds
    assert [predictions.label(i, ckpt.labels) for i in range(len(texts))] == \
        [[lab for lab, p in zip(ckpt.labels, row) if p >= 0.4] for row in want]


def _payload(path):
    return torch.load(path, weights_only=True)


def _save(payload, path):
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    path.write_bytes(buffer.getvalue())
    return path


@pytest.mark.parametrize("change, message", [
    (lambda p: p.pop("tfidf"), r"model\.pt: not a usable checkpoint: a 'fusion' key without a 'tfidf' key"),
    (lambda p: p["fusion"].update(shipped="bert"), r"fusion\.shipped: 'bert' is not one of fusion, tfidf"),
    (lambda p: p["fusion"].update(weight=1.5), r"fusion\.weight: 1\.5 is not a number from 0 to 1"),
    (lambda p: p["fusion"].update(weight=float("nan")), r"fusion\.weight: nan is not a number"),
    (lambda p: p["fusion"].update(thresholds=[0.5, 0.5]), r"fusion\.thresholds: expected 2 numbers .* multi-label"),
    (lambda p: p["fusion"].update(extra=1), r"fusion: unknown key 'extra'"),
    (lambda p: p["tfidf"].update(coef=torch.zeros(3)), r"model\.pt: tfidf: coef: must be floats of shape \(2, "),
    (lambda p: p["tfidf"].update(meta="{"), r"model\.pt: tfidf: meta: unreadable JSON"),
    (lambda p: p["tfidf"].update(meta=b"{}"), r"model\.pt: tfidf: meta: must be the model's JSON text, got bytes"),
    (lambda p: p["tfidf"].update(idf=[1.0]), r"model\.pt: not a usable checkpoint: tfidf: expected 'meta' and tensors"),
    (lambda p: p["tfidf"].update(intercept=torch.tensor([0.0, float("inf")], dtype=torch.float64)),
     r"tfidf: intercept: holds 1 values that are not finite"),
    (lambda p: p["tfidf"].update(meta=p["tfidf"]["meta"].replace('"neg"', '"negative"')),
     r"tfidf: its classes .* are not the LSTM's"),
])
def test_a_bad_fusion_or_tfidf_entry_is_one_line_naming_the_file_and_key(tiny_fused_path, tmp_path, change, message):
    payload = _payload(tiny_fused_path)
    change(payload)
    path = _save(payload, tmp_path / "model.pt")
    with pytest.raises(PipelineError, match=message) as err:
        load_checkpoint(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_the_tfidf_part_is_plain_data_loaded_without_unpickling(tiny_fused_path):
    payload = _payload(tiny_fused_path)  # weights_only: tensors, strings, numbers, dicts, lists only
    assert isinstance(payload["tfidf"]["meta"], str)
    assert {k: v.dtype for k, v in payload["tfidf"].items() if k != "meta"} == dict.fromkeys(
        ("idf", "coef", "intercept"), torch.float64)


def _prepared(folder, multi_label: bool = False):
    from tests.tiny_model import multilabel_rows

    rows = multilabel_rows() if multi_label else polarity_rows()
    frame = pd.DataFrame({"text": [t for t, _ in rows], "tokens": [tokenize(t, TextConfig()) for t, _ in rows],
                          "label": [lab for _, lab in rows]})
    (folder / "data/prepared").mkdir(parents=True)
    (folder / "models").mkdir()
    frame.iloc[::2].to_parquet(folder / "data/prepared/val.parquet")
    frame.iloc[1::2].to_parquet(folder / "data/prepared/test.parquet")


@pytest.mark.parametrize("multi_label", [False, True])
def test_ship_writes_the_shipped_model_and_number_only_metrics(tiny_model_path, tiny_multilabel_path, tmp_path,
                                                              monkeypatch, multi_label):
    from pipeline import shipped
    from pipeline.files import read_json

    _prepared(tmp_path, multi_label)
    lstm = (tiny_multilabel_path if multi_label else tiny_model_path).read_bytes()
    (tmp_path / "models/lstm.pt").write_bytes(lstm)
    tiny_tfidf(multi_label).save(tmp_path / "models/tfidf.npz")
    monkeypatch.chdir(tmp_path)
    report = shipped.ship("lstm")
    assert report["shipped"] == "lstm" and (tmp_path / "models/model.pt").read_bytes() == lstm
    metrics = read_json(tmp_path / "metrics/ship.json")
    assert all(isinstance(v, (int, float)) for v in metrics.values()) and metrics["ship_model"] == 0
    metric = "micro_f1" if multi_label else "acc"
    assert {f"ship_val_{metric}_{m}" for m in ("lstm", "tfidf", "fusion")} | {"fusion_test_acc", "fusion_test_f1"} \
        <= set(metrics)
    # Under `best`, the fusion ships whatever the validation figures: what ships is always a model loaded whole.
    monkeypatch.setattr(shipped, "choose_shipped", lambda figures, policy: "fusion")
    best = shipped.ship("best")
    assert read_json(tmp_path / "metrics/ship/report.json")["shipped"] == best["shipped"] == "fusion"
    ckpt = load_checkpoint(tmp_path / "models/model.pt")
    assert (ckpt.shipped, ckpt.fusion_weight) == ("fusion", best["weight"])
    if multi_label:
        assert ckpt.shipped_thresholds == pytest.approx(best["fusion"]["thresholds"])
    after = read_json(tmp_path / "metrics/ship.json")
    assert after["ship_model"] == 1 and after["fusion_test_acc"] == metrics["fusion_test_acc"]
    os.remove(tmp_path / "models/model.pt")
    (tmp_path / "models/lstm.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(PipelineError, match=r"models/lstm\.pt: cannot load the model"):
        shipped.ship("best")
    assert not (tmp_path / "models/model.pt").exists()
