"""Classification metrics (pipeline.metrics): the figures, their names for `dvc exp show`, the image."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import pandas as pd

from pipeline.metrics import classification_metrics, headline, plot_confusion
from tests.helpers import ROOT


def test_metrics_of_a_small_known_case():
    actual = ["a", "a", "a", "b", "b", "c"]
    predicted = ["a", "a", "b", "b", "a", "a"]  # c is never predicted
    metrics = classification_metrics(actual, predicted, ["a", "b", "c"])
    assert metrics["accuracy"] == round(3 / 6, 4)
    assert metrics["per_class"]["a"] == {"precision": 0.5, "recall": round(2 / 3, 4), "f1": round(4 / 7, 4),
                                         "support": 3}
    assert metrics["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert metrics["macro_f1"] == round((4 / 7 + 0.5 + 0.0) / 3, 4)
    assert headline(metrics, "lstm") == {"lstm_test_acc": 0.5, "lstm_test_f1": metrics["macro_f1"]}


def test_the_confusion_image_is_written_atomically(tmp_path):
    plot_confusion(["a", "b", "b"], ["a", "a", "b"], ["a", "b"], tmp_path / "confusion.png")
    assert (tmp_path / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    assert [p.name for p in tmp_path.iterdir()] == ["confusion.png"]  # no temporary file left


# --- many classes: nothing grows with the square of the classes ---------------------------------------


def _png_size(path) -> tuple[int, int]:
    header = path.read_bytes()[16:24]
    return int.from_bytes(header[:4], "big"), int.from_bytes(header[4:], "big")


def test_per_class_outputs_stay_bounded_at_many_classes(tmp_path):
    """The confusion counts are sparse (one pair per row at most), the image draws at most MATRIX_CLASSES
    classes (those most involved in errors), the report at most TOP_CONFUSIONS confusions."""
    from pipeline.metrics import MATRIX_CLASSES, TOP_CONFUSIONS, confusion_pairs, shown_classes

    sizes = []
    for k in (200, 800):
        rng = np.random.default_rng(k)
        labels = [f"c{i:04d}" for i in range(k)]
        actual = [labels[i] for i in rng.integers(0, k, size=k)]
        predicted = [labels[i] for i in rng.integers(0, k, size=k)]
        predicted[:30] = ["c0007"] * 30  # one class most confused: it must be among the shown ones
        assert len(confusion_pairs(actual, predicted)) <= len(actual)
        shown = shown_classes(actual, predicted, labels)
        assert len(shown) == MATRIX_CLASSES and "c0007" in shown and shown == sorted(shown)
        metrics = classification_metrics(actual, predicted, labels)
        assert len(metrics["top_confusions"]) == TOP_CONFUSIONS and len(metrics["per_class"]) == k
        first = metrics["top_confusions"][0]
        assert first["predicted"] == "c0007" and first["count"] >= 1
        plot_confusion(actual, predicted, labels, tmp_path / f"confusion{k}.png")
        sizes.append(_png_size(tmp_path / f"confusion{k}.png"))
    assert sizes[0] == sizes[1]  # the same picture size at 200 and at 800 classes


def test_a_few_classes_still_get_the_whole_matrix_and_their_confusions():
    from pipeline.metrics import shown_classes, top_confusions

    actual, predicted = ["a", "a", "b", "c", "c", "c"], ["b", "b", "b", "a", "c", "b"]
    assert shown_classes(actual, predicted, ["a", "b", "c"]) == ["a", "b", "c"]
    assert top_confusions(actual, predicted) == [{"actual": "a", "predicted": "b", "count": 2},
                                                 {"actual": "c", "predicted": "a", "count": 1},
                                                 {"actual": "c", "predicted": "b", "count": 1}]


@pytest.mark.slow
def test_evaluate_at_many_classes_writes_outputs_linear_in_the_rows(tmp_path):
    """The evaluate stage with 400 classes and 100 test rows: before, the curves were micro-averaged over
    every (row, class) pair (rows x classes points: 149 MB of roc.json at 2,000 x 2,000) and the confusion
    matrix was classes x classes. Now the curves have at most a point per row (plus the ends)."""
    import torch

    from pipeline.checkpoint import save_checkpoint
    from pipeline.model import ModelConfig, TextClassifier
    from pipeline.text import TextConfig

    classes, rows = 400, 100
    torch.manual_seed(0)
    words = ["good", "bad", "film", "plot", "cast", "slow"]
    labels = [f"c{i:04d}" for i in range(classes)]
    cfg = ModelConfig(vocab_size=len(words) + 2, embedding_dim=4, num_classes=classes, hidden_size=4, num_layers=1,
                      bidirectional=False, dropout=0.0, embedding_dropout=0.0, pooling="mean")
    model = TextClassifier(cfg, None)
    (tmp_path / "models").mkdir()
    save_checkpoint(tmp_path / "models/model.pt", model, model.state_dict(), ["<pad>", "<unk>", *words], labels,
                    TextConfig(), 1, {}, 20)
    rng = np.random.default_rng(0)
    tokens = [list(rng.choice(words, size=int(rng.integers(2, 6)))) for _ in range(rows)]
    (tmp_path / "data/prepared").mkdir(parents=True)
    pd.DataFrame({"text": [" ".join(t) for t in tokens], "tokens": tokens,
                  "label": [labels[(7 * i) % classes] for i in range(rows)]}).to_parquet(
        tmp_path / "data/prepared/test.parquet")
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    proc = subprocess.run([sys.executable, "-m", "pipeline.stages.evaluate"], cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "CI": "true"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    plots = tmp_path / "metrics/eval/plots/sklearn"
    roc = json.loads((plots / "roc.json").read_text())["roc"]
    pr = json.loads((plots / "precision_recall.json").read_text())["precision_recall"]
    assert len(roc) <= rows + 2 and len(pr) <= rows + 2, (len(roc), len(pr))
    report = json.loads((tmp_path / "metrics/eval/report.json").read_text())
    assert len(report["per_class"]) == classes and len(report["top_confusions"]) <= 20
    assert (tmp_path / "metrics/eval/confusion.png").read_bytes()[:4] == b"\x89PNG"
    assert len(pd.read_csv(tmp_path / "metrics/eval/confusion.csv")) == rows
