"""Temperature scaling (pipeline.calibration): the fit, the measures, the checkpoint key, and the temperature
applied wherever probabilities leave the model (inference, CLI, batch, serve, export, explanations);
--min-confidence / predict.min_confidence / the server's min_confidence."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from pipeline import calibration, export, params
from pipeline.checkpoint import load_checkpoint
from pipeline.cli import predict as predict_cli
from pipeline.errors import PipelineError
from pipeline.explain import explain_texts
from pipeline.inference import classify_texts, encode_texts, logit_batches, predict_texts
from pipeline.text import tokenize
from tests.helpers import ROOT
from tests.tiny_model import TEXTS, train_tiny_checkpoint

T = 3.0  # the temperature written into the tiny model: far from 1, so every path that forgot it shows


def set_calibration(path, calibration_value) -> None:
    """Rewrite the checkpoint's calibration key (None: remove it, as a checkpoint from before it)."""
    payload = torch.load(path, weights_only=True)
    if calibration_value is None:
        payload.pop("calibration", None)
    else:
        payload["calibration"] = calibration_value
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    path.write_bytes(buffer.getvalue())


@pytest.fixture(scope="module")
def hot_model(tmp_path_factory):
    """The tiny model with temperature T."""
    path = train_tiny_checkpoint(tmp_path_factory.mktemp("hot") / "model.pt")
    set_calibration(path, {"temperature": T})
    return path


def raw_logits(ckpt, texts) -> np.ndarray:
    sequences = encode_texts(ckpt, [tokenize(t, ckpt.text_config) for t in texts])
    out = np.zeros((len(texts), len(ckpt.labels)), dtype=np.float32)
    for rows, batch in logit_batches(ckpt.model, sequences):
        out[rows] = batch
    return out


def softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)


# --- the fit and the measures -----------------------------------------------------------------------------


def toy(n=3000, classes=4, scale=1.0, seed=0):
    """Logits of a model that knows the truth up to noise, then multiplied by `scale` (over-confident > 1)."""
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, classes, n)
    logits = rng.normal(size=(n, classes))
    logits[np.arange(n), targets] += 2.0
    return logits * scale, targets


def test_the_fitted_temperature_minimises_the_nll_and_keeps_the_argmax():
    logits, targets = toy(scale=0.7)
    t = calibration.fit_temperature(logits, targets)
    grid = np.exp(np.linspace(math.log(0.05), math.log(20), 4001))
    best_on_grid = grid[np.argmin([calibration.nll(logits, targets, g) for g in grid])]
    assert abs(t - best_on_grid) / best_on_grid < 3e-3
    assert calibration.nll(logits, targets, t) <= min(calibration.nll(logits, targets, t * f) for f in (0.99, 1.01))
    assert t < 1  # an under-confident model gets sharper
    before, after = calibration.scores(logits, targets, 1.0), calibration.scores(logits, targets, t)
    np.testing.assert_array_equal(before.top, after.top)
    assert before.accuracy == after.accuracy


def test_an_over_confident_model_gets_a_temperature_above_1_and_a_lower_ece():
    logits, targets = toy(scale=4.0)
    t = calibration.fit_temperature(logits, targets)
    assert t > 1.5
    before, after = calibration.scores(logits, targets, 1.0), calibration.scores(logits, targets, t)
    assert after.ece() < before.ece() / 2
    assert after.brier_score() < before.brier_score()


def test_ece_and_brier_by_hand():
    # Two rows in the bin (0.8, 0.8667], one right: |0.5 - 0.85| * 2/4; two at confidence 1.0, both right: 0.
    confidence = np.array([0.82, 0.88 - 0.02, 1.0, 1.0])
    correct = np.array([True, False, True, True])
    assert calibration.expected_calibration_error(confidence, correct) == pytest.approx(abs(0.5 - 0.84) * 2 / 4)
    bins = calibration.reliability(confidence, correct)
    assert [b["count"] for b in bins] == [2, 2] and bins[-1]["bin"] == "0.933-1.000"
    # Brier: sum over classes of (p - y)^2, per row, averaged.
    s = calibration.scores(np.log(np.array([[0.7, 0.2, 0.1], [0.5, 0.25, 0.25]])), np.array([0, 1]))
    assert s.brier_score() == pytest.approx(((0.3**2 + 0.2**2 + 0.1**2) + (0.5**2 + 0.75**2 + 0.25**2)) / 2)
    table = calibration.threshold_table(confidence, correct, (0.5, 0.9, 1.0))
    assert table == [{"min_confidence": 0.5, "coverage": 1.0, "accuracy": 0.75},
                     {"min_confidence": 0.9, "coverage": 0.5, "accuracy": 1.0},
                     {"min_confidence": 1.0, "coverage": 0.5, "accuracy": 1.0}]
    curve = calibration.coverage_curve(confidence, correct)
    assert curve[0]["coverage"] == 0.25 and curve[-1] == {"coverage": 1.0, "accuracy": 0.75, "min_confidence": 0.82}


def test_calibrate_checkpoint_fits_on_the_split_and_writes_the_temperature(tmp_path):
    path = train_tiny_checkpoint(tmp_path / "model.pt")
    ckpt = load_checkpoint(path)
    texts = [t for t in TEXTS if tokenize(t, ckpt.text_config)] * 5
    logits = raw_logits(ckpt, texts)
    labels = [ckpt.labels[(i // 2) % 2] for i in range(len(texts))]  # not the model's answers: a real fit
    pd.DataFrame({"tokens": [tokenize(t, ckpt.text_config) for t in texts], "label": labels}).to_parquet(
        tmp_path / "val.parquet")
    report = calibration.calibrate_checkpoint(path, tmp_path / "val.parquet")
    targets = np.array([ckpt.labels.index(label) for label in labels])
    assert report["temperature"] == pytest.approx(calibration.fit_temperature(logits, targets), rel=1e-3)
    assert report["nll"] <= report["nll_raw"] and report["rows"] == len(texts)
    again = load_checkpoint(path)
    assert again.temperature == pytest.approx(report["temperature"], rel=1e-4)
    np.testing.assert_allclose(classify_texts(again, texts), softmax(logits / again.temperature), atol=1e-5)


# --- the checkpoint key ------------------------------------------------------------------------------------


def test_a_checkpoint_without_a_temperature_loads_as_1(tmp_path):
    path = train_tiny_checkpoint(tmp_path / "model.pt")
    set_calibration(path, None)
    ckpt = load_checkpoint(path)
    assert ckpt.temperature == 1.0
    np.testing.assert_allclose(classify_texts(ckpt, TEXTS[:3]), softmax(raw_logits(ckpt, TEXTS[:3])), atol=1e-6)


@pytest.mark.parametrize("value, message", [
    ({"temperature": 0.0}, r"calibration\.temperature: 0\.0 is not a finite number from 0\.01 to 100"),
    ({"temperature": -2.0}, r"calibration\.temperature: -2\.0 is not"),
    ({"temperature": float("nan")}, r"calibration\.temperature: nan is not"),
    ({"temperature": float("inf")}, r"calibration\.temperature: inf is not"),
    ({"temperature": "2"}, r"calibration\.temperature: 2 is not"),
    ({"temperature": True}, r"calibration\.temperature: True is not"),
    ({"temperature": 2.0, "bias": 1.0}, r"calibration: unknown key 'bias'"),
    ([2.0], r"calibration: expected a dict, got list"),
])
def test_a_bad_temperature_is_refused_naming_the_key(tmp_path, value, message):
    path = train_tiny_checkpoint(tmp_path / "model.pt", steps=1)
    set_calibration(path, value)
    with pytest.raises(PipelineError, match=rf"{path}: not a usable checkpoint: {message}"):
        load_checkpoint(path)


# --- the temperature everywhere probabilities leave the model ----------------------------------------------


def test_inference_and_the_cli_give_the_calibrated_probabilities(hot_model, capsys):
    ckpt = load_checkpoint(hot_model)
    assert ckpt.temperature == T
    texts = [t for t in TEXTS if t.strip() and tokenize(t, ckpt.text_config)]
    expected = softmax(raw_logits(ckpt, texts) / T)
    np.testing.assert_allclose(predict_texts(ckpt, texts).probs, expected, atol=1e-6)
    predict_cli.main(["--model", str(hot_model), "--json", *texts])
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    for row, probs in zip(printed, expected):
        assert list(row["probabilities"].values()) == pytest.approx(probs.tolist(), abs=6e-5)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
@pytest.mark.parametrize("fmt", export.FORMATS)
def test_the_exported_graph_outputs_calibrated_probabilities(hot_model, tmp_path, fmt):
    from tests.test_export import run_exported

    ckpt = load_checkpoint(hot_model)
    meta = export.read_sidecar(export.export_model(ckpt, fmt, tmp_path / f"model.{fmt}"))
    assert meta["temperature"] == T
    texts = [t for t in TEXTS if t.strip()]
    ids, lengths = export.encode_batch(meta, texts)
    np.testing.assert_allclose(run_exported(fmt, tmp_path / f"model.{fmt}", ids, lengths),
                               classify_texts(ckpt, texts), atol=1e-5, rtol=0)


def test_explanations_attribute_the_calibrated_probability(hot_model):
    ckpt = load_checkpoint(hot_model)
    text = "a gripping , beautifully acted film"
    (explanation,) = explain_texts(ckpt, [text], steps=64)
    probs = classify_texts(ckpt, [text])[0]
    baseline = ckpt.model.probabilities(torch.full((1, len(explanation.tokens)), ckpt.model.cfg.pad_id),
                                        torch.tensor([len(explanation.tokens)]))[0].detach().numpy()
    target = int(probs.argmax())
    # Completeness: the attributions add up to p(text) - p(baseline) of the calibrated probability.
    assert sum(explanation.attributions) == pytest.approx(probs[target] - baseline[target], abs=abs(explanation.delta) + 2e-3)


def test_the_server_gives_the_calibrated_probabilities_and_min_confidence(hot_model):
    from pipeline.serve import create_app
    from tests.test_serve import LIMITS, LiveServer

    ckpt = load_checkpoint(hot_model)
    texts = ["a gripping , beautifully acted film", "dull and far too long", "the film"]
    probs = classify_texts(ckpt, texts)
    cut = float(np.sort(probs.max(axis=1))[1]) + 1e-4  # the least sure text falls below it, or two
    live = LiveServer(create_app(hot_model, LIMITS))
    try:
        status, data = live.post({"texts": texts})
        assert status == 200
        for row, p in zip(data["predictions"], probs):
            assert list(row["probabilities"].values()) == pytest.approx(p.tolist(), abs=1e-6)
        status, data = live.post({"texts": texts, "min_confidence": cut})
        assert status == 200
        for row, p in zip(data["predictions"], probs):
            if p.max() < cut:
                assert row["label"] is None and row["reason"].startswith("uncertain: no class has probability")
                assert list(row["probabilities"].values()) == pytest.approx(p.tolist(), abs=1e-6)
            else:
                assert row["label"] == ckpt.labels[int(p.argmax())] and row.get("reason") is None
        assert sum(row["label"] is None for row in data["predictions"]) >= 1
        for bad in (1.5, -0.1, "0.5"):
            status, data = live.post({"texts": texts, "min_confidence": bad})
            assert status == 422 and data["field"] == "min_confidence", data
        status, _, body = live.request("POST", "/predict", b'{"text": "a film", "min_confidence": NaN}',
                                       {"Content-Type": "application/json"})
        assert status == 422 and json.loads(body)["field"] == "min_confidence"
    finally:
        live.stop()
    live = LiveServer(create_app(hot_model, LIMITS, min_confidence=1.0))  # the server's default: all uncertain
    try:
        status, data = live.post({"texts": texts})
        assert [row["label"] for row in data["predictions"]] == [None] * 3
        status, data = live.post({"texts": texts, "min_confidence": 0})  # a request overrides it
        assert all(row["label"] is not None for row in data["predictions"])
    finally:
        live.stop()


# --- --min-confidence --------------------------------------------------------------------------------------


def test_min_confidence_gives_null_labels_with_a_reason(hot_model, capsys, tmp_path):
    ckpt = load_checkpoint(hot_model)
    texts = ["a gripping , beautifully acted film", "dull and far too long", "the film", "<b></b>"]
    probs = predict_texts(ckpt, texts).probs
    cut = float(np.nanmedian(probs.max(axis=1)))
    predictions = predict_texts(ckpt, texts, min_confidence=cut)
    unsure = [i for i in range(3) if probs[i].max() < cut]
    assert unsure and len(unsure) < 3
    for i in range(3):
        assert (predictions.label(i, ckpt.labels) is None) == (i in unsure)
    assert predictions.reasons[3].startswith("no tokens")  # the no-token answer is unchanged
    answer = predictions.answer(unsure[0], ckpt.labels)
    assert answer["label"] is None and answer["reason"].startswith("uncertain") and answer["probabilities"]
    assert predictions.answer(3, ckpt.labels)["probabilities"] is None

    predict_cli.main(["--model", str(hot_model), "--json", "--min-confidence", str(cut), *texts[:3]])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["label"] is None for row in rows] == [i in unsure for i in range(3)]
    predict_cli.main(["--model", str(hot_model), "--min-confidence", str(cut), *texts[:3]])
    lines = capsys.readouterr().out.splitlines()
    assert lines[unsure[0]].startswith("\tno label: uncertain: no class has probability")
    assert lines[unsure[0]].count("\t") == 2

    pd.DataFrame({"text": texts}).to_csv(tmp_path / "in.csv", index=False)
    predict_cli.main(["--model", str(hot_model), "--input", str(tmp_path / "in.csv"), "--output",
                      str(tmp_path / "out.csv"), "--min-confidence", str(cut)])
    assert "1 with no tokens after cleaning" in capsys.readouterr().err
    out = pd.read_csv(tmp_path / "out.csv")
    assert out["predicted_label"].isna().tolist() == [i in unsure for i in range(3)] + [True]
    assert out["no_label_reason"].iloc[unsure[0]].startswith("uncertain")
    assert out.filter(like="prob_").iloc[unsure[0]].notna().all()  # its probabilities are kept


@pytest.mark.parametrize("value", ["-0.1", "1.5", "nan", "inf"])
def test_a_bad_min_confidence_is_refused(hot_model, value):
    with pytest.raises(PipelineError, match=rf"--min-confidence {value}: give a probability from 0 to 1"):
        predict_cli.main(["--model", str(hot_model), "--min-confidence", value, "a film"])
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli.serve", "--model", str(hot_model), "--min-confidence",
                           value], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 1 and f"--min-confidence {value}: give a probability from 0 to 1" in proc.stderr


@pytest.mark.parametrize("value, message", [
    (1.5, r"'predict\.min_confidence' must be >= 0 and <= 1, got 1\.5"),
    (-0.5, r"'predict\.min_confidence' must be >= 0 and <= 1"),
    (float("nan"), r"'predict\.min_confidence' must be a finite number, got nan"),
    ("high", r"'predict\.min_confidence' must be"),
])
def test_predict_min_confidence_is_validated(tmp_path, value, message):
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert data["predict"]["min_confidence"] is None  # off by default
    data["predict"]["min_confidence"] = value
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(PipelineError, match=message):
        params.load("predict", tmp_path / "params.yaml")
    data["predict"]["min_confidence"] = 0.9
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(data))
    assert params.load("predict", tmp_path / "params.yaml").min_confidence == 0.9
