"""Classification metrics (accuracy, macro-F1, per class), the figures `dvc exp show` compares, and the
confusion-matrix image; for the LSTM (evaluate) and the TF-IDF baseline alike."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from pipeline.files import pyplot, save_png


def classification_metrics(y_true: list[str], y_pred: list[str], labels: list[str]) -> dict:
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    return {
        "accuracy": round(float(accuracy_score(y_true, y_pred)), 4),
        "macro_f1": round(float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)), 4),
        "per_class": {
            label: {"precision": round(float(p), 4), "recall": round(float(r), 4), "f1": round(float(f), 4),
                    "support": int(s)}
            for label, p, r, f, s in zip(labels, precision, recall, f1, support)
        },
    }


def headline(metrics: dict, model: str) -> dict:
    """The figures for `dvc exp show`, named by model so the LSTM's and the baseline's never share a
    column, and short so that the README's `dvc exp show` recipe fits 120 columns (f1: macro-F1)."""
    return {f"{model}_test_acc": metrics["accuracy"], f"{model}_test_f1": metrics["macro_f1"]}


def plot_confusion(y_true: list[str], y_pred: list[str], labels: list[str], path: Path) -> None:
    """Rows: actual class, columns: predicted. Colour is the share of the row (recall on the diagonal),
    so rare classes stay visible; cells show counts. Sized and lettered to stay legible at 20+ classes."""
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    k = len(labels)
    cell = 0.9 if k <= 8 else 0.5
    fig, ax = pyplot().subplots(figsize=(min(24, 2.8 + cell * k), min(22, 2.4 + cell * k)))
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fontsize = 10 if k <= 8 else max(5, 9 - k // 6)
    for i in range(k):
        for j in range(k):
            if cm[i, j]:
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=fontsize,
                        color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(k), labels, rotation=45 if k > 4 else 0, ha="right" if k > 4 else "center",
                  fontsize=fontsize + 1)
    ax.set_yticks(range(k), labels, fontsize=fontsize + 1)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the actual class")
    ax.set_title(f"test accuracy {np.trace(cm) / cm.sum():.3f}")
    fig.tight_layout()
    save_png(fig, path)
