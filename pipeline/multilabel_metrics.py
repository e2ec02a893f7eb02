"""Several labels per text: the decision thresholds and the figures, for the LSTM (evaluate) and the TF-IDF
baseline alike (the same rule, so the two are compared as they are shipped).

A text's labels are the ones whose probability reaches that label's threshold. Each label's threshold is
chosen on the validation split, alone (choose_thresholds): the value of THRESHOLD_GRID where the label's F1
is highest, ties going to the value nearest 0.5; a label with no validation text keeps 0.5. A coarse grid,
not every distinct probability: on a few validation texts per label the exact optimum is noise (flair and
scikit-learn's TunedThresholdClassifierCV tune per label the same way).

The figures users of scikit-learn, flair and fastText compare (Tsoumakas et al. 2010, "Mining Multi-label
Data"): subset accuracy (the whole set right), Hamming loss (the share of (text, label) decisions wrong),
micro-F1 (every decision pooled: frequent labels weigh more), macro-F1 (the labels' F1 averaged: rare ones
weigh as much; over the labels the texts have or are given: a label no test text has and none is given
has no F1, as scikit-learn's zero_division=nan leaves it out; with many rare labels a split misses some), samples-F1 (each text's F1 averaged; a text with no labels predicted none scores 1), and
per label precision, recall, F1 and support. Dense (texts x labels) boolean matrices: 100,000 texts and
1,000 labels are 100 MB.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

THRESHOLD_GRID = np.round(np.arange(0.05, 0.951, 0.05), 2)
DEFAULT_THRESHOLD = 0.5


def label_matrix(label_sets: Sequence, labels: Sequence[str]) -> np.ndarray:
    """Label sets (each a list of names) as a (texts, labels) bool matrix in the order of `labels`; a name
    not among `labels` is a KeyError (the caller names the file)."""
    index = {label: i for i, label in enumerate(labels)}
    matrix = np.zeros((len(label_sets), len(labels)), dtype=bool)
    for row, names in enumerate(label_sets):
        for name in names:
            matrix[row, index[name]] = True
    return matrix


def label_sets(matrix: np.ndarray, labels: Sequence[str]) -> list[list[str]]:
    """A (texts, labels) bool matrix as each text's label names, in label order."""
    return [[labels[j] for j in np.flatnonzero(row)] for row in matrix]


def f1_scores(truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Per column F1 of two (texts, labels) bool matrices (0 where a label is neither true nor predicted)."""
    tp = (truth & predicted).sum(axis=0).astype(np.float64)
    denominator = truth.sum(axis=0) + predicted.sum(axis=0)
    return np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)


def choose_thresholds(probs: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Each label's decision threshold (float32, one per column): its F1 on these (validation) texts at
    every value of THRESHOLD_GRID, the best taken, ties to the value nearest 0.5; 0.5 for a label none of
    the texts has. A label at a time: memory stays (texts x grid)."""
    thresholds = np.full(probs.shape[1], DEFAULT_THRESHOLD, dtype=np.float32)
    nearness = -np.abs(THRESHOLD_GRID - DEFAULT_THRESHOLD)
    for j in range(probs.shape[1]):
        positives = truth[:, j]
        if not positives.any():
            continue
        decided = probs[:, j, None] >= THRESHOLD_GRID[None, :]          # (texts, grid)
        f1 = f1_scores(np.repeat(positives[:, None], len(THRESHOLD_GRID), axis=1), decided)
        best = np.lexsort((nearness, f1))[-1]                             # highest F1, then nearest 0.5
        thresholds[j] = THRESHOLD_GRID[best]
    return thresholds


def decide(probs: np.ndarray, thresholds: np.ndarray | None) -> np.ndarray:
    """The labels each text gets: probability at or above its label's threshold (0.5 without thresholds)."""
    return probs >= (DEFAULT_THRESHOLD if thresholds is None else thresholds)


def multilabel_metrics(truth: np.ndarray, predicted: np.ndarray, labels: Sequence[str]) -> dict:
    """The figures of module doc for (texts, labels) bool matrices. `accuracy` is the subset accuracy and
    `macro_f1` the labels' mean F1, the keys the single-label figures use (metrics.headline)."""
    tp = (truth & predicted).sum(axis=0)
    true_count, predicted_count = truth.sum(axis=0), predicted.sum(axis=0)
    precision = np.divide(tp, predicted_count, out=np.zeros(len(labels)), where=predicted_count > 0)
    recall = np.divide(tp, true_count, out=np.zeros(len(labels)), where=true_count > 0)
    f1 = f1_scores(truth, predicted)
    pooled = true_count.sum() + predicted_count.sum()
    row_tp = (truth & predicted).sum(axis=1)
    row_sizes = truth.sum(axis=1) + predicted.sum(axis=1)
    samples = np.divide(2 * row_tp, row_sizes, out=np.ones(len(truth)), where=row_sizes > 0)
    return {
        "accuracy": round(float((truth == predicted).all(axis=1).mean()), 4),
        "macro_f1": round(float(f1[(true_count + predicted_count) > 0].mean()) if pooled else 0.0, 4),
        "micro_f1": round(float(2 * tp.sum() / pooled) if pooled else 1.0, 4),
        "samples_f1": round(float(samples.mean()), 4),
        "hamming_loss": round(float((truth != predicted).mean()), 4),
        "label_cardinality": {"actual": round(float(truth.sum(axis=1).mean()), 4),
                              "predicted": round(float(predicted.sum(axis=1).mean()), 4)},
        "per_class": {
            label: {"precision": round(float(p), 4), "recall": round(float(r), 4), "f1": round(float(f), 4),
                    "support": int(s)}
            for label, p, r, f, s in zip(labels, precision, recall, f1, true_count)
        },
    }


def samples_f1_sum(truth: np.ndarray, predicted: np.ndarray) -> float:
    """The sum over texts of each text's F1 (training's running score: divided by the texts, samples-F1)."""
    row_tp = (truth & predicted).sum(axis=1)
    row_sizes = truth.sum(axis=1) + predicted.sum(axis=1)
    return float(np.divide(2 * row_tp, row_sizes, out=np.ones(len(truth)), where=row_sizes > 0).sum())
