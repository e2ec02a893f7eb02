"""Classification metrics (pipeline.metrics): the figures, their names for `dvc exp show`, the image."""

from __future__ import annotations

from pipeline.metrics import classification_metrics, headline, plot_confusion


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
