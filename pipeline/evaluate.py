"""Stage evaluate: the trained model on the test split.

Writes metrics/eval.json, the two figures `dvc exp show` compares (lstm_test_acc,
lstm_test_f1), and under metrics/eval/: report.json (the same plus per-class precision/recall/F1
and the test size: a plain output, so it does not crowd the experiments table), confusion.csv (one
actual,predicted row per example, for DVC's confusion template), confusion.png, and misclassified.csv
(text, true label, prediction, confidence).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from pipeline import params as P
from pipeline.common import atomic_path, pyplot, run_main, save_png, write_json
from pipeline.inference import MODEL_PATH, encode_texts, load_checkpoint, predict_proba

TEST = Path("data/prepared/test.parquet")
METRICS = Path("metrics/eval.json")
PLOTS_DIR = Path("metrics/eval")
REPORT = PLOTS_DIR / "report.json"


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


def main() -> None:
    ep = P.load("evaluate")
    ckpt = load_checkpoint(MODEL_PATH)
    test = pd.read_parquet(TEST, columns=["text", "tokens", "label"])
    sequences = encode_texts(ckpt, test["tokens"])
    probs = predict_proba(ckpt.model, sequences, ep.batch_size)
    predicted = [ckpt.labels[i] for i in probs.argmax(axis=1)]
    actual = test["label"].tolist()
    metrics = classification_metrics(actual, predicted, ckpt.labels)
    metrics["test_rows"] = len(test)

    PLOTS_DIR.mkdir(parents=True, exist_ok=True)
    with atomic_path(PLOTS_DIR / "confusion.csv") as tmp:
        pd.DataFrame({"actual": actual, "predicted": predicted}).to_csv(tmp, index=False)
    plot_confusion(actual, predicted, ckpt.labels, PLOTS_DIR / "confusion.png")
    wrong = test.assign(predicted=predicted, confidence=probs.max(axis=1).round(4))
    wrong = wrong[wrong["label"] != wrong["predicted"]].sort_values("confidence", ascending=False)
    with atomic_path(PLOTS_DIR / "misclassified.csv") as tmp:
        wrong[["text", "label", "predicted", "confidence"]].to_csv(tmp, index=False)
    write_json(REPORT, metrics)
    write_json(METRICS, headline(metrics, "lstm"))
    print(f"test accuracy {metrics['accuracy']:.4f}, macro F1 {metrics['macro_f1']:.4f}, "
          f"{len(wrong)} misclassified of {len(test)}")


if __name__ == "__main__":
    run_main(main)
