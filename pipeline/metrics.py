"""Classification metrics (accuracy, macro-F1, per class), the figures `dvc exp show` compares, and the
confusion-matrix image; for the LSTM (evaluate) and the TF-IDF baseline alike.

Nothing here grows with the square of the classes: the confusion counts are kept sparse (the pairs that
occur: at most one per test row), the image draws the whole matrix up to MATRIX_CLASSES classes and,
past that, the MATRIX_CLASSES classes most involved in errors; the report lists the TOP_CONFUSIONS most
frequent confusions. 10,000 classes and 10,000 test rows take seconds (docs/scale.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

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
        "top_confusions": top_confusions(y_true, y_pred),
    }


MATRIX_CLASSES = 40   # the confusion image draws at most this many classes
TOP_CONFUSIONS = 20   # the report lists the most frequent confusions, at most this many


def confusion_pairs(y_true: list[str], y_pred: list[str]) -> pd.DataFrame:
    """The confusion matrix, sparse: a row (actual, predicted, count) per pair that occurs, most frequent
    first (then by name). At most one row per test example, whatever the number of classes."""
    pairs = pd.DataFrame({"actual": pd.Series(y_true, dtype=object), "predicted": pd.Series(y_pred, dtype=object)})
    counts = pairs.groupby(["actual", "predicted"], sort=False).size().rename("count").reset_index()
    return counts.sort_values(["count", "actual", "predicted"], ascending=[False, True, True], kind="stable",
                              ignore_index=True)


def top_confusions(y_true: list[str], y_pred: list[str], top: int = TOP_CONFUSIONS) -> list[dict]:
    """The most frequent (actual, predicted) pairs with actual != predicted, with their counts."""
    pairs = confusion_pairs(y_true, y_pred)
    wrong = pairs[pairs["actual"] != pairs["predicted"]].head(top)
    return [{"actual": a, "predicted": p, "count": int(c)} for a, p, c in wrong.itertuples(index=False)]


def shown_classes(y_true: list[str], y_pred: list[str], labels: list[str], most: int = MATRIX_CLASSES) -> list[str]:
    """The classes the confusion image draws: all of them up to `most`; past that, the `most` classes
    most involved in errors (as the actual or the predicted class), then the most frequent, in label order."""
    if len(labels) <= most:
        return list(labels)
    pairs = confusion_pairs(y_true, y_pred)
    wrong = pairs[pairs["actual"] != pairs["predicted"]]
    errors = (wrong.groupby("actual")["count"].sum().add(wrong.groupby("predicted")["count"].sum(), fill_value=0))
    support = pd.Series(y_true, dtype=object).value_counts()
    rank = pd.DataFrame({"errors": errors, "support": support}).reindex(labels).fillna(0)
    rank["order"] = np.arange(len(labels))
    chosen = set(rank.sort_values(["errors", "support", "order"], ascending=[False, False, True], kind="stable")
                 .index[:most])
    return [label for label in labels if label in chosen]


def headline(metrics: dict, model: str) -> dict:
    """The figures for `dvc exp show`, named by model so the LSTM's and the baseline's never share a
    column, and short so that the README's `dvc exp show` recipe fits 120 columns (f1: macro-F1)."""
    return {f"{model}_test_acc": metrics["accuracy"], f"{model}_test_f1": metrics["macro_f1"]}


def plot_confusion(y_true: list[str], y_pred: list[str], labels: list[str], path: Path) -> None:
    """Rows: actual class, columns: predicted. Colour is the share of the row (recall on the diagonal),
    so rare classes stay visible; cells show counts. Sized and lettered to stay legible at 20+ classes.
    Past MATRIX_CLASSES classes, the MATRIX_CLASSES most involved in errors (shown_classes), the share
    still of each actual class's whole row."""
    shown = shown_classes(y_true, y_pred, labels)
    index = {label: i for i, label in enumerate(shown)}
    pairs = confusion_pairs(y_true, y_pred)
    cm = np.zeros((len(shown), len(shown)), dtype=np.int64)
    for actual, predicted, count in pairs.itertuples(index=False):
        if actual in index and predicted in index:
            cm[index[actual], index[predicted]] = count
    row_total = pd.Series(y_true, dtype=object).value_counts().reindex(shown).fillna(0).to_numpy()
    share = cm / np.maximum(row_total, 1)[:, None]
    k = len(shown)
    cell = 0.9 if k <= 8 else 0.5
    fig, ax = pyplot().subplots(figsize=(min(24, 2.8 + cell * k), min(22, 2.4 + cell * k)))
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fontsize = 10 if k <= 8 else max(5, 9 - k // 6)
    for i, j in zip(*np.nonzero(cm)):
        ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=fontsize,
                color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(k), shown, rotation=45 if k > 4 else 0, ha="right" if k > 4 else "center",
                  fontsize=fontsize + 1)
    ax.set_yticks(range(k), shown, fontsize=fontsize + 1)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the actual class")
    accuracy = float(np.mean(np.asarray(y_true, dtype=object) == np.asarray(y_pred, dtype=object)))
    title = f"test accuracy {accuracy:.3f}"
    if k < len(labels):
        title += f"; the {k} classes most often confused, of {len(labels):,}"
    ax.set_title(title)
    fig.tight_layout()
    save_png(fig, path)
