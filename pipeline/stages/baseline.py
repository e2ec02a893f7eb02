"""Stage baseline: TF-IDF n-grams + logistic regression on the same split, for an honest comparison.

The regularisation strength is chosen on the validation split (like the LSTM's early stopping), then
the model is scored once on the test split. Up to `baseline.streaming_above` training rows, the exact
model (TfidfVectorizer + LogisticRegression) in memory. Above it, the same model out of core: n-grams
hashed into 2**hash_bits columns (no vocabulary held), TF-IDF weights from a first pass counting
document frequencies, and logistic regression fitted by SGD (one model per C, all fed from each chunk),
the splits read `chunk_rows` rows at a time, so memory follows the chunk, not the corpus.

Writes metrics/baseline.json (baseline_test_acc and baseline_test_f1, for `dvc exp show`),
metrics/baseline/report.json (per class, the chosen C, its validation accuracy, which model) and the
fitted model, models/tfidf.npz (pipeline.tfidf_model: plain arrays and JSON, never a pickle; docs/stages.md).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from pipeline import params
from pipeline.errors import PipelineError, run_main
from pipeline.files import write_json
from pipeline.metrics import classification_metrics, headline
from pipeline.prepared_task import prepared_task
from pipeline.tfidf import fit_baseline, fit_multilabel_baseline, fit_streaming, read_chunks
from pipeline.tfidf_model import TfidfModel
from pipeline.workspace import start_stage

PREPARED = Path("data/prepared")
METRICS = Path("metrics/baseline.json")
REPORT = Path("metrics/baseline/report.json")
MODEL = Path("models/tfidf.npz")


def main() -> None:
    start_stage("baseline")
    bp = params.load("baseline")

    def split_path(name: str) -> Path:
        return PREPARED / f"{name}.parquet"

    train_rows = pq.read_metadata(split_path("train")).num_rows
    if prepared_task(split_path("train")) == "multi_label":
        return multi_label(bp, split_path, train_rows)
    if train_rows <= bp.streaming_above:
        train, val, test = (pd.read_parquet(split_path(s), columns=["tokens", "label"]) for s in ("train", "val", "test"))
        vectorizer, clf, c, val_acc = fit_baseline(train, val, bp.ngram_max, bp.C, min_df=bp.min_df)
        actual, predicted = test["label"].tolist(), clf.predict(vectorizer.transform(test["tokens"].map(list))).tolist()
        model = "tf-idf + logistic regression (in memory)"
        TfidfModel.from_vectorizer(vectorizer, clf).save(MODEL)
    else:
        features, clf, c, val_acc = fit_streaming(split_path, bp.ngram_max, bp.C, bp.min_df, bp.hash_bits,
                                                  bp.chunk_rows, bp.epochs)
        actual, predicted = [], []
        for chunk in read_chunks(split_path("test"), bp.chunk_rows):
            actual += chunk["label"].tolist()
            predicted += clf.predict(features.transform(chunk["tokens"])).tolist()
        model = f"hashed tf-idf (2^{bp.hash_bits}) + logistic regression by SGD, {bp.epochs} epochs (out of core)"
        TfidfModel.from_hashed(features, clf).save(MODEL)
    metrics = classification_metrics(actual, predicted, sorted(clf.classes_.tolist()))
    metrics.update({"C": c, "val_accuracy": round(float(val_acc), 4), "model": model, "train_rows": train_rows})
    write_json(REPORT, metrics)
    write_json(METRICS, headline(metrics, "baseline"))
    print(f"baseline ({model}, C={c}): test accuracy {metrics['accuracy']:.4f}, macro F1 {metrics['macro_f1']:.4f}")



def multi_label(bp: params.BaselineParams, split_path, train_rows: int) -> None:
    """Several labels per text: one-vs-rest logistic regression on TF-IDF, thresholds per label chosen on
    validation as the LSTM's are; in memory only (a clear error past streaming_above training rows)."""
    from pipeline.multilabel_metrics import label_matrix, multilabel_metrics

    if train_rows > bp.streaming_above:
        raise PipelineError(f"{split_path('train')}: {train_rows:,} training rows of several labels each; the "
                            f"out-of-core baseline is single-label only: raise baseline.streaming_above to "
                            f"{train_rows} to fit it in memory")
    train, val, test = (pd.read_parquet(split_path(s), columns=["tokens", "label"]) for s in ("train", "val", "test"))
    labels = sorted({name for names in train["label"] for name in names})
    vectorizer, clf, c, thresholds, val_micro_f1 = fit_multilabel_baseline(train, val, labels, bp.ngram_max, bp.C,
                                                                           min_df=bp.min_df)
    probs = clf.predict_proba(vectorizer.transform(test["tokens"].map(list)))
    TfidfModel.from_vectorizer(vectorizer, clf, thresholds, labels).save(MODEL)
    # A test label the training split lacks is never predicted: it counts as missed (prepare drops such labels).
    known = [[name for name in names if name in set(labels)] for names in test["label"]]
    metrics = multilabel_metrics(label_matrix(known, labels), probs >= thresholds, labels)
    model = "tf-idf + one-vs-rest logistic regression, thresholds per label chosen on validation (in memory)"
    metrics.update({"C": c, "val_micro_f1": round(float(val_micro_f1), 4), "model": model, "train_rows": train_rows,
                    "thresholds": dict(zip(labels, thresholds.tolist()))})
    write_json(REPORT, metrics)
    write_json(METRICS, {**headline(metrics, "baseline"), "baseline_test_micro_f1": metrics["micro_f1"],
                         "baseline_test_samples_f1": metrics["samples_f1"],
                         "baseline_test_hamming": metrics["hamming_loss"]})
    print(f"baseline ({model}, C={c}): test subset accuracy {metrics['accuracy']:.4f}, micro-F1 "
          f"{metrics['micro_f1']:.4f}, macro-F1 {metrics['macro_f1']:.4f}, samples-F1 {metrics['samples_f1']:.4f}")


if __name__ == "__main__":
    run_main(main)
