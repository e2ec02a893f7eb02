"""Stage evaluate: the shipped model (models/model.pt: pipeline.shipped) on the test split.

Writes metrics/eval.json, the figures `dvc exp show` compares: the LSTM part's alone (lstm_test_acc,
lstm_test_f1 and its calibration figures, whatever ships) and the shipped model's (shipped_test_acc,
shipped_test_f1: the LSTM's again when it ships alone); and under metrics/eval/, of the shipped model:
report.json (the same plus per-class precision/recall/F1
and the test size: a plain output, so it does not crowd the experiments table), confusion.csv (one
actual,predicted row per example, for DVC's confusion template), confusion.png, misclassified.csv
(text, true label, prediction, confidence), misclassified.html (the same examples, most confident
first, words shaded by their attribution: pipeline.explain), and DVCLive's ROC and precision-recall
curves under plots/sklearn/. Calibration (pipeline.calibration): eval.json adds the expected calibration
error and Brier score after temperature scaling and before (`_raw`); report.json the temperature, the
reliability bins and the coverage and accuracy at each minimum confidence (the model card's table);
calibration/ the reliability diagram's and the accuracy-against-coverage curve's data (DVC plots). The
temperature, ECE, Brier and reliability are the LSTM part's (the temperature scales its logits); the
minimum-confidence table and the coverage curve are the shipped model's (what predict.min_confidence acts on).

Nothing grows with the square of the classes (10,000 classes and 10,000 test rows: seconds, docs/scale.md):
the probabilities are reduced a batch at a time to each row's top class; confusion counts stay sparse
(pipeline.metrics); and past CURVE_CLASSES classes the curves are of the top prediction being right,
scored by its probability, one point per row, instead of micro-averaged over every (row, class) pair.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import params
from pipeline.checkpoint import MODEL_PATH, load_checkpoint
from pipeline.errors import PipelineError, run_main
from pipeline.files import atomic_path, write_json
from pipeline.calibration import probabilities, reliability, score_batches, summary, threshold_table, write_plots
from pipeline.inference import encode_texts, logit_batches, shipped_probabilities
from pipeline.metrics import headline, plot_confusion
from pipeline.workspace import start_stage

TEST = Path("data/prepared/test.parquet")
METRICS = Path("metrics/eval.json")
PLOTS_DIR = Path("metrics/eval")
REPORT = PLOTS_DIR / "report.json"
CALIBRATION_DIR = PLOTS_DIR / "calibration"
# Up to this many classes the curves are one class against the rest, micro-averaged over all (row, class)
# pairs (n x classes scores); past it, of the top prediction being right (n scores).
CURVE_CLASSES = 100
SHIPPED_ROWS = 4096  # test rows the shipped model scores at a time (its probabilities: rows x classes)


def log_curves(actual: list[str], labels: list[str], probs: np.ndarray | None = None,
               predicted: list[str] | None = None, confidence: np.ndarray | None = None) -> None:
    """ROC and precision-recall curves through DVCLive (metrics/eval/plots/sklearn/): of the second class
    against the first for two classes; else, from `probs`, micro-averaged over the classes (one against the
    rest); without `probs` (past CURVE_CLASSES classes), of the top prediction being right, by its probability."""
    from dvclive import Live

    if probs is None:
        truth = (np.asarray(actual, dtype=object) == np.asarray(predicted, dtype=object)).astype(np.int64)
        scores = confidence.astype(np.float64)
        what = f"the top prediction being right, by its probability ({len(labels):,} classes)"
    else:
        index = {label: i for i, label in enumerate(labels)}
        probs = probs.astype(np.float64)  # DVCLive writes float32 thresholds as no JSON it knows
        truth = np.zeros_like(probs, dtype=np.int64)
        truth[np.arange(len(actual)), [index[label] for label in actual]] = 1
        if len(labels) == 2:
            truth, scores = truth[:, 1], probs[:, 1]
            what = f"{labels[1]!r} against {labels[0]!r}"
        else:
            truth, scores = truth.ravel(), probs.ravel()
            what = "micro-average, each class against the rest"
    with Live(dir=str(PLOTS_DIR), dvcyaml=None, save_dvc_exp=False, report=None) as live:
        live.log_sklearn_plot("roc", truth, scores, title=f"ROC, {what}", drop_intermediate=True)
        live.log_sklearn_plot("precision_recall", truth, scores, title=f"precision-recall, {what}",
                              drop_intermediate=True)
    (PLOTS_DIR / "metrics.json").unlink(missing_ok=True)  # DVCLive's summary of no metric: eval.json has them


PER_LABEL_DIR = PLOTS_DIR / "per_label"
PER_LABEL_MOST = 100  # labels in the per-label metrics at most (the most frequent): `dvc exp show` stays readable


def log_per_label(per_class: dict) -> None:
    """Each label's (class's) test precision, recall, F1 and support through DVCLive, as a metrics file
    (metrics/eval/per_label/metrics.json) that `dvc exp show` and `dvc metrics diff` compare: the
    PER_LABEL_MOST most frequent labels (all of report.json's are in per_class)."""
    import shutil

    from dvclive import Live

    shutil.rmtree(PER_LABEL_DIR, ignore_errors=True)
    shown = sorted(per_class, key=lambda label: (-per_class[label]["support"], label))[:PER_LABEL_MOST]
    with Live(dir=str(PER_LABEL_DIR), dvcyaml=None, save_dvc_exp=False, report=None) as live:
        for label in sorted(shown):
            for key in ("precision", "recall", "f1", "support"):
                # DVCLive nests names at "/": a label's own slash becomes U+2215, so 'sci/tech' stays one label
                live.log_metric(f"{label.replace('/', chr(0x2215))}/{key}", per_class[label][key], plot=False)


def main() -> None:
    start_stage("evaluate")
    evaluate_params = params.load("evaluate")
    checkpoint = load_checkpoint(MODEL_PATH)
    test = pd.read_parquet(TEST, columns=["text", "tokens", "label"])
    multi_label = checkpoint.task.name == "multi_label"
    unknown = sorted(({name for names in test["label"] for name in names} if multi_label else set(test["label"]))
                     - set(checkpoint.labels))
    if unknown:  # before any output is touched
        raise PipelineError(f"{TEST}: label {unknown[0]!r} is not one the model knows ({MODEL_PATH}: "
                            f"{', '.join(map(repr, checkpoint.labels[:10]))}); the model and the splits come from "
                            "different runs: run `dvc repro`")
    task = checkpoint.task  # its decision rule, its metrics
    if task.name == "multi_label":
        return evaluate_multi_label(checkpoint, test, evaluate_params.batch_size)
    sequences = encode_texts(checkpoint, test["tokens"])
    index = {label: i for i, label in enumerate(checkpoint.labels)}
    targets = np.array([index[label] for label in test["label"]], dtype=np.int64)
    temperature = checkpoint.temperature
    # The logits a batch at a time, scored before and after temperature scaling; the (n, classes)
    # probabilities (calibrated) kept only up to CURVE_CLASSES classes, for the micro-averaged curves.
    probs = np.zeros((len(test), len(checkpoint.labels)), dtype=np.float32) \
        if len(checkpoint.labels) <= CURVE_CLASSES else None

    def batches():
        for rows, logits in logit_batches(checkpoint.model, sequences, evaluate_params.batch_size):
            if probs is not None:
                probs[rows] = probabilities(logits, temperature)
            yield rows, logits

    def fused_batches():  # the shipped model's probabilities, as log-probabilities (their softmax: themselves)
        for start in range(0, len(test), SHIPPED_ROWS):
            rows = np.arange(start, min(len(test), start + SHIPPED_ROWS))
            p = shipped_probabilities(checkpoint, [list(test["tokens"].iloc[i]) for i in rows],
                                      evaluate_params.batch_size)
            if probs is not None:
                probs[rows] = p
            yield rows, np.log(np.maximum(p.astype(np.float64), 1e-300))

    lstm_ships = checkpoint.shipped == "lstm"
    raw, calibrated = score_batches(batches(), targets, (1.0, temperature))
    actual = test["label"].tolist()
    lstm_metrics = task.metrics(actual, [checkpoint.labels[i] for i in calibrated.top], checkpoint.labels)
    shipped = calibrated if lstm_ships else score_batches(fused_batches(), targets, (1.0,))[0]
    best, confidence = shipped.top, shipped.confidence.astype(np.float32)
    predicted = [checkpoint.labels[i] for i in best]
    metrics = lstm_metrics if lstm_ships else task.metrics(actual, predicted, checkpoint.labels)
    metrics.update(test_rows=len(test), **shipped_facts(checkpoint, lstm_metrics))
    calibration = summary(raw, calibrated, temperature)
    metrics["calibration"] = {**calibration, "bins": 15, "of": "the LSTM part" if not lstm_ships else "the model",
                              "reliability": reliability(calibrated.confidence, calibrated.correct),
                              "reliability_raw": reliability(raw.confidence, raw.correct),
                              "min_confidence": threshold_table(shipped.confidence, shipped.correct)}
    wrong = test.assign(predicted=predicted, confidence=confidence.round(4))
    wrong = wrong[wrong["label"] != wrong["predicted"]].sort_values("confidence", ascending=False)

    # Everything is computed: the outputs are written one after another, each atomically.
    PLOTS_DIR.mkdir(parents=True, exist_ok=True)
    with atomic_path(PLOTS_DIR / "confusion.csv") as tmp:
        pd.DataFrame({"actual": actual, "predicted": predicted}).to_csv(tmp, index=False)
    plot_confusion(actual, predicted, checkpoint.labels, PLOTS_DIR / "confusion.png")
    with atomic_path(PLOTS_DIR / "misclassified.csv") as tmp:
        wrong[["text", "label", "predicted", "confidence"]].to_csv(tmp, index=False)
    log_curves(actual, checkpoint.labels, probs, predicted, confidence)
    write_json(REPORT, metrics)
    log_per_label(metrics["per_class"])
    write_plots(raw, calibrated, CALIBRATION_DIR, coverage=shipped)
    write_json(METRICS, {**task.headline(lstm_metrics, "lstm"),
                         **{f"lstm_test_{k}": calibration[k] for k in ("ece_raw", "ece", "brier_raw", "brier")},
                         **headline(metrics, "shipped")})
    print(f"shipped model ({checkpoint.shipped}): test accuracy {metrics['accuracy']:.4f}, "
          f"macro F1 {metrics['macro_f1']:.4f}, "
          f"{len(wrong)} misclassified of {len(test)}; temperature {temperature:.3f}: ECE "
          f"{calibration['ece_raw']:.4f} -> {calibration['ece']:.4f}, Brier {calibration['brier_raw']:.4f} -> "
          f"{calibration['brier']:.4f}")
    # The misclassified examples as a page, each word shaded by its attribution (pipeline/explain.py).
    from pipeline.explain import write_misclassified_report

    shown = write_misclassified_report(checkpoint, wrong, PLOTS_DIR / "misclassified.html")
    print(f"{PLOTS_DIR / 'misclassified.html'}: {shown} of the {len(wrong)} misclassified examples, explained")



def shipped_facts(checkpoint, lstm_metrics: dict) -> dict:
    """report.json's record of what ships: its name and, when it is not the LSTM alone, the fusion weight and
    the LSTM part's own headline figures."""
    if checkpoint.shipped == "lstm":
        return {"shipped": "lstm"}
    return {"shipped": checkpoint.shipped, "fusion_weight": checkpoint.fusion_weight,
            "lstm": {k: lstm_metrics[k] for k in ("accuracy", "macro_f1")}}


NONE = "(none)"  # the multi-label confusion pairs' other side: a label missed, or given wrongly


def evaluate_multi_label(checkpoint, test: pd.DataFrame, batch_size: int) -> None:
    """The multi-label figures (pipeline.multilabel_metrics), written to the same outputs: confusion pairs per
    (text, label) decision that is wrong or right-and-present (a label missed is (label, NONE), one given
    wrongly (NONE, label)); calibration of each (text, label) probability (reliability, ECE, Brier), and the
    coverage curve by each text's least sure decision (tasks.MultiLabel.confidence) against the whole set
    being right; the curves micro-averaged over (text, label) pairs."""
    import torch

    from pipeline.calibration import Scores, expected_calibration_error
    from pipeline.multilabel_metrics import label_matrix, label_sets

    task, lstm_task, labels = checkpoint.task, checkpoint.lstm_task, checkpoint.labels
    truth = label_matrix(test["label"], labels)
    lstm_probs = np.zeros(truth.shape, dtype=np.float32)
    for rows, logits in logit_batches(checkpoint.model, encode_texts(checkpoint, test["tokens"]), batch_size):
        lstm_probs[rows] = lstm_task.probabilities(torch.from_numpy(logits)).numpy()
    actual = test["label"].map(list).tolist()
    lstm_metrics = lstm_task.metrics(actual, label_sets(lstm_task.decide(lstm_probs), labels), labels)
    lstm_pairs = lstm_probs.ravel().astype(np.float64), truth.ravel()
    lstm_ece = round(expected_calibration_error(*lstm_pairs), 4)
    lstm_brier = round(float(((lstm_probs - truth) ** 2).sum(axis=1).mean()), 4) if len(truth) else float("nan")
    probs = lstm_probs if checkpoint.shipped == "lstm" else \
        shipped_probabilities(checkpoint, [list(t) for t in test["tokens"]], batch_size)
    decided = task.decide(probs)
    predicted = label_sets(decided, labels)
    metrics = task.metrics(actual, predicted, labels)
    metrics.update(test_rows=len(test), **shipped_facts(checkpoint, lstm_metrics))
    pairs = Scores(probs.ravel().astype(np.float64), truth.ravel(), ((probs - truth) ** 2).sum(axis=1),
                   np.zeros(0, dtype=np.int64))
    whole = (decided == truth).all(axis=1)
    confidence = task.confidence(probs)
    per_row = Scores(confidence.astype(np.float64), whole, pairs.brier, np.zeros(0, dtype=np.int64))
    ece, brier = round(expected_calibration_error(pairs.confidence, pairs.correct), 4), round(pairs.brier_score(), 4)
    metrics["calibration"] = {"per": "text and label", "ece": ece, "brier": brier, "bins": 15,
                              "reliability": reliability(pairs.confidence, pairs.correct),
                              "min_confidence": threshold_table(per_row.confidence, per_row.correct)}
    shipped_thresholds = checkpoint.thresholds if checkpoint.shipped == "lstm" else checkpoint.shipped_thresholds
    metrics["thresholds"] = dict(zip(labels, (shipped_thresholds or [0.5] * len(labels))))
    wrong = test.assign(label=[" | ".join(x) for x in actual], predicted=[" | ".join(x) for x in predicted],
                        label_set=actual, predicted_set=predicted,  # the sets themselves, for the report
                        confidence=confidence.round(4))[~whole].sort_values("confidence", ascending=False)

    PLOTS_DIR.mkdir(parents=True, exist_ok=True)
    rows, columns = np.nonzero(truth | decided)
    confusion = pd.DataFrame({"actual": np.where(truth[rows, columns], np.asarray(labels, dtype=object)[columns], NONE),
                              "predicted": np.where(decided[rows, columns], np.asarray(labels, dtype=object)[columns], NONE)})
    with atomic_path(PLOTS_DIR / "confusion.csv") as tmp:
        confusion.to_csv(tmp, index=False)
    plot_confusion(confusion["actual"].tolist(), confusion["predicted"].tolist(), [*labels, NONE],
                   PLOTS_DIR / "confusion.png")
    with atomic_path(PLOTS_DIR / "misclassified.csv") as tmp:
        wrong[["text", "label", "predicted", "confidence"]].to_csv(tmp, index=False)
    log_multilabel_curves(truth, probs)
    write_json(REPORT, metrics)
    log_per_label(metrics["per_class"])
    write_plots(pairs, pairs, CALIBRATION_DIR, coverage=per_row)
    write_json(METRICS, {**task.headline(lstm_metrics, "lstm"), "lstm_test_ece": lstm_ece,
                         "lstm_test_brier": lstm_brier, **headline(metrics, "shipped")})
    print(f"shipped model ({checkpoint.shipped}): test subset accuracy {metrics['accuracy']:.4f}, "
          f"micro-F1 {metrics['micro_f1']:.4f}, macro-F1 "
          f"{metrics['macro_f1']:.4f}, samples-F1 {metrics['samples_f1']:.4f}, Hamming loss "
          f"{metrics['hamming_loss']:.4f}; {len(wrong)} of {len(test)} texts not given exactly their labels")
    from pipeline.explain import write_misclassified_report

    shown = write_misclassified_report(checkpoint, wrong, PLOTS_DIR / "misclassified.html")
    print(f"{PLOTS_DIR / 'misclassified.html'}: {shown} of the {len(wrong)} misclassified examples, explained")


def log_multilabel_curves(truth: np.ndarray, probs: np.ndarray) -> None:
    """ROC and precision-recall curves micro-averaged over every (text, label) pair, through DVCLive."""
    from dvclive import Live

    what = "micro-average over (text, label) pairs"
    with Live(dir=str(PLOTS_DIR), dvcyaml=None, save_dvc_exp=False, report=None) as live:
        live.log_sklearn_plot("roc", truth.ravel().astype(np.int64), probs.ravel().astype(np.float64),
                              title=f"ROC, {what}", drop_intermediate=True)
        live.log_sklearn_plot("precision_recall", truth.ravel().astype(np.int64), probs.ravel().astype(np.float64),
                              title=f"precision-recall, {what}", drop_intermediate=True)
    (PLOTS_DIR / "metrics.json").unlink(missing_ok=True)


if __name__ == "__main__":
    run_main(main)
