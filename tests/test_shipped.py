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
from tests.tiny_model import TEXTS, TINY_FUSION_TEMPERATURE, tiny_shipped_checkpoint, tiny_tfidf

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
    assert (ckpt.shipped, ckpt.fusion_weight, ckpt.fusion_temperature) == ("fusion", 0.4, TINY_FUSION_TEMPERATURE)
    assert ckpt.tfidf.classes == ckpt.labels[::-1]
    p_lstm, p_tfidf = _parts(ckpt, WORDY)
    assert np.abs(p_lstm - predict_texts(tiny_ckpt, WORDY).probs).max() == 0  # the LSTM part is train's LSTM
    got = predict_texts(ckpt, WORDY).probs
    assert np.abs(got - fuse(p_lstm, p_tfidf, 0.4, TINY_FUSION_TEMPERATURE)).max() < 1e-6
    assert np.abs(got - p_lstm).max() > 1e-3 and np.abs(got - p_tfidf).max() > 1e-3  # neither part alone


def test_a_shipped_tfidf_model_gives_the_tfidf_probabilities(tiny_model_path, tmp_path):
    ckpt = load_checkpoint(tiny_shipped_checkpoint(tiny_model_path, tmp_path / "model.pt", "tfidf", 0.0))
    tokens = [tokenize(t, ckpt.text_config) for t in WORDY]
    want = align(tiny_tfidf().probabilities(tokens), ckpt.labels[::-1], ckpt.labels, "test")
    # temperature-scaled, as the ship stage fitted it for the TF-IDF model alone
    scaled = np.exp(np.log(want) / TINY_FUSION_TEMPERATURE)
    scaled /= scaled.sum(axis=1, keepdims=True)
    assert ckpt.shipped == "tfidf" and np.abs(predict_texts(ckpt, WORDY).probs - scaled).max() < 1e-6
    assert (predict_texts(ckpt, WORDY).probs.argmax(axis=1) == want.argmax(axis=1)).all()


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
    (lambda p: p["fusion"].update(temperature=0.0), r"fusion\.temperature: 0\.0 is not a number from 0\.01 to 100"),
    (lambda p: p["fusion"].update(temperature=float("inf")), r"fusion\.temperature: inf is not a number"),
    (lambda p: p["fusion"].update(temperature="2"), r"fusion\.temperature: 2 is not a number"),
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
    shown = ["micro_f1"] if multi_label else ["acc", "nll"]  # one label a text: the NLL chose, accuracy beside it
    assert {f"ship_val_{metric}_{m}" for metric in shown for m in ("lstm", "tfidf", "fusion")} \
        | {"fusion_test_acc", "fusion_test_f1"} <= set(metrics)
    # Under `best`, the fusion ships whatever the validation figures: what ships is always a model loaded whole.
    monkeypatch.setattr(shipped, "choose_shipped", lambda figures, policy: "fusion")
    best = shipped.ship("best")
    assert read_json(tmp_path / "metrics/ship/report.json")["shipped"] == best["shipped"] == "fusion"
    ckpt = load_checkpoint(tmp_path / "models/model.pt")
    assert (ckpt.shipped, ckpt.fusion_weight) == ("fusion", best["weight"])
    if multi_label:
        assert ckpt.shipped_thresholds == pytest.approx(best["fusion"]["thresholds"])
    else:
        assert ckpt.fusion_temperature == best["fusion"]["temperature"] != 1.0
    after = read_json(tmp_path / "metrics/ship.json")
    assert after["ship_model"] == 1 and after["fusion_test_acc"] == metrics["fusion_test_acc"]
    os.remove(tmp_path / "models/model.pt")
    (tmp_path / "models/lstm.pt").write_bytes(tiny_shipped_checkpoint(
        tiny_multilabel_path if multi_label else tiny_model_path, tmp_path / "fused.pt").read_bytes())
    with pytest.raises(PipelineError, match=r"models/lstm\.pt: holds a shipped fusion model, not train's LSTM alone"):
        shipped.ship("best")
    (tmp_path / "models/lstm.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(PipelineError, match=r"models/lstm\.pt: cannot load the model"):
        shipped.ship("best")
    assert not (tmp_path / "models/model.pt").exists()


def test_serve_and_batch_predict_give_the_fused_probabilities(tiny_fused_path, tiny_fused_ckpt, tmp_path):
    """The bar: the server's and batch prediction's probabilities are the shipped (fused) model's."""
    from pipeline.cli import predict as predict_cli
    from pipeline.serve import create_app
    from tests.test_serve import LIMITS, LiveServer

    p_lstm, p_tfidf = _parts(tiny_fused_ckpt, WORDY)
    want = fuse(p_lstm, p_tfidf, tiny_fused_ckpt.fusion_weight, tiny_fused_ckpt.fusion_temperature)
    live = LiveServer(create_app(tiny_fused_path, LIMITS))
    try:
        status, data = live.post({"texts": WORDY[:LIMITS.max_batch]})
    finally:
        live.stop()
    assert status == 200, data
    served = np.array([[p["probabilities"][lab] for lab in tiny_fused_ckpt.labels] for p in data["predictions"]])
    assert np.abs(served - want[:len(served)]).max() < 1e-6
    assert [p["label"] for p in data["predictions"]] == [tiny_fused_ckpt.labels[i] for i in want.argmax(axis=1)]
    source, output = tmp_path / "in.csv", tmp_path / "out.csv"
    pd.DataFrame({"text": WORDY}).to_csv(source, index=False)
    predict_cli.main(["--model", str(tiny_fused_path), "--input", str(source), "--output", str(output)])
    out = pd.read_csv(output)
    assert np.abs(out[[f"prob_{lab}" for lab in tiny_fused_ckpt.labels]].to_numpy() - want).max() < 1e-6


def _evaluate(folder, model_bytes: bytes) -> tuple[dict, dict]:
    import json
    import subprocess
    import sys

    from tests.helpers import ROOT

    (folder / "models/model.pt").write_bytes(model_bytes)
    (folder / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    proc = subprocess.run([sys.executable, "-m", "pipeline.stages.evaluate"], cwd=folder,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "CI": "true"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return (json.loads((folder / "metrics/eval.json").read_text()),
            json.loads((folder / "metrics/eval/report.json").read_text()))


def test_evaluate_scores_the_shipped_model_and_the_lstm_part_alone(tiny_model_path, tiny_fused_path, tmp_path):
    _prepared(tmp_path)
    lstm, _ = _evaluate(tmp_path, tiny_model_path.read_bytes())
    assert (lstm["shipped_test_acc"], lstm["shipped_test_f1"]) == (lstm["lstm_test_acc"], lstm["lstm_test_f1"])
    fused, report = _evaluate(tmp_path, tiny_fused_path.read_bytes())
    # The LSTM part's figures, calibration included, are the LSTM's; the shipped ones the fusion's.
    assert {k: v for k, v in fused.items() if k.startswith("lstm_")} == {k: v for k, v in lstm.items()
                                                                         if k.startswith("lstm_")}
    test = pd.read_parquet(tmp_path / "data/prepared/test.parquet")
    ckpt = load_checkpoint(tiny_fused_path)
    p_lstm, p_tfidf = _parts(ckpt, test["text"].tolist())
    predicted = np.asarray(ckpt.labels)[fuse(p_lstm, p_tfidf, ckpt.fusion_weight).argmax(axis=1)]
    assert fused["shipped_test_acc"] == pytest.approx(float(np.mean(predicted == test["label"].to_numpy())))
    assert report["shipped"] == "fusion" and report["fusion_weight"] == 0.4
    assert report["lstm"]["accuracy"] == lstm["lstm_test_acc"] and report["accuracy"] == fused["shipped_test_acc"]
    wrong = pd.read_csv(tmp_path / "metrics/eval/misclassified.csv")
    assert len(wrong) == int((predicted != test["label"].to_numpy()).sum())
    assert "LSTM part" in (tmp_path / "metrics/eval/misclassified.html").read_text()


def test_evaluate_scores_a_shipped_multi_label_fusion(tiny_multilabel_path, tmp_path):
    _prepared(tmp_path, multi_label=True)
    lstm, _ = _evaluate(tmp_path, tiny_multilabel_path.read_bytes())
    fused_path = tiny_shipped_checkpoint(tiny_multilabel_path, tmp_path / "fused.pt", "fusion", 0.5)
    fused, report = _evaluate(tmp_path, fused_path.read_bytes())
    assert {k: v for k, v in fused.items() if k.startswith("lstm_")} == {k: v for k, v in lstm.items()
                                                                         if k.startswith("lstm_")}
    assert report["shipped"] == "fusion" and report["thresholds"] == dict.fromkeys(load_checkpoint(fused_path).labels,
                                                                                   pytest.approx(0.4))
    assert fused["shipped_test_f1"] == report["macro_f1"]


def test_explanations_of_a_fused_model_are_its_lstm_parts_and_say_so(tiny_fused_path, tiny_fused_ckpt, capsys):
    import json

    from pipeline.cli import predict as predict_cli
    from pipeline.serve_page import render_page
    from tests.test_serve import LIMITS

    predict_cli.main(["--model", str(tiny_fused_path), "--explain", "--json", *WORDY])
    out, err = capsys.readouterr()
    assert "explanations are" not in err and "attributions of its LSTM part" in err
    want = predict_texts(tiny_fused_ckpt, WORDY).probs.argmax(axis=1)
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["explanation"]["target"] for r in rows] == [tiny_fused_ckpt.labels[i] for i in want]
    page, _ = render_page(tiny_fused_ckpt.labels, LIMITS, False, note="the LSTM part <b>")
    assert "the LSTM part &lt;b&gt;" in page


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_refuses_a_fused_model_naming_what_to_export_instead(tiny_fused_path, tmp_path, fmt):
    from pipeline.cli import export as export_cli

    refusal = (r"model\.pt: ships the LSTM fused with a TF-IDF model, which ONNX and TorchScript cannot hold "
               r".*--model models/lstm\.pt .*ship\.model: lstm")
    with pytest.raises(PipelineError, match=refusal) as err:
        export_cli.main(["--model", str(tiny_fused_path), "--format", fmt, "--output", str(tmp_path / "m.onnx")])
    assert "\n" not in str(err.value) and not list(tmp_path.iterdir())


def test_the_card_says_what_ships_the_weight_and_the_three_validation_figures(tiny_fused_ckpt):
    from pipeline import model_card

    facts = model_card.checkpoint_facts(tiny_fused_ckpt)
    metrics = {"metrics/eval.json": {"lstm_test_acc": 0.81, "lstm_test_f1": 0.8, "shipped_test_acc": 0.84,
                                     "shipped_test_f1": 0.83},
               "metrics/ship.json": {"ship_model": 1, "ship_fusion_weight": 0.4, "ship_val_acc_lstm": 0.8,
                                     "ship_val_acc_tfidf": 0.78, "ship_val_acc_fusion": 0.83, "fusion_test_acc": 0.84,
                                     "fusion_test_f1": 0.83},
               "metrics/baseline.json": {"baseline_test_acc": 0.77, "baseline_test_f1": 0.76}}
    card = model_card.build_card(facts, {}, metrics, "models/model.pt")
    assert "This checkpoint ships the LSTM fused with the TF-IDF model" in card and "w = 0.4" in card
    assert "| acc_lstm | 0.8 |" in card and "| acc_tfidf | 0.78 |" in card and "| acc_fusion | 0.83 |" in card
    assert "| the LSTM fused with the TF-IDF model (this model) | 0.84 | 0.83 |" in card
    assert "| LSTM part alone | 0.81 | 0.8 |" in card and "| fusion (LSTM + TF-IDF) | 0.84 | 0.83 |" in card
    assert "| baseline | 0.77 | 0.76 |" in card and "Explanations" in card and "of the LSTM part" in card
    assert "textclf-export --model models/lstm.pt" in card and "The LSTM part's probabilities are temperature" in card


def test_a_fused_checkpoint_saved_before_the_temperature_loads_with_none(tiny_fused_path, tmp_path):
    """A models/model.pt written before the fusion had a temperature (no "temperature" key): T = 1, the
    probabilities it always gave."""
    payload = _payload(tiny_fused_path)
    del payload["fusion"]["temperature"]
    ckpt = load_checkpoint(_save(payload, tmp_path / "model.pt"))
    p_lstm, p_tfidf = _parts(ckpt, WORDY)
    assert ckpt.fusion_temperature == 1.0
    assert np.abs(predict_texts(ckpt, WORDY).probs - fuse(p_lstm, p_tfidf, ckpt.fusion_weight)).max() < 1e-6
