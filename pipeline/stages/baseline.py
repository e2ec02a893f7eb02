"""Stage baseline: TF-IDF n-grams + logistic regression on the same split, for an honest comparison.

The regularisation strength is chosen on the validation split (like the LSTM's early stopping), then
the model is scored once on the test split. Up to `baseline.streaming_above` training rows, the exact
model (TfidfVectorizer + LogisticRegression) in memory. Above it, the same model out of core: n-grams
hashed into 2**hash_bits columns (no vocabulary held), TF-IDF weights from a first pass counting
document frequencies, and logistic regression fitted by SGD (one model per C, all fed from each chunk),
the splits read `chunk_rows` rows at a time, so memory follows the chunk, not the corpus.

Writes metrics/baseline.json (baseline_test_acc and baseline_test_f1, for `dvc exp show`) and
metrics/baseline/report.json (per class, the chosen C, its validation accuracy, which model).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from pipeline import params
from pipeline.errors import run_main
from pipeline.files import write_json
from pipeline.metrics import classification_metrics, headline
from pipeline.tfidf import fit_baseline, fit_streaming, read_chunks
from pipeline.workspace import start_stage

PREPARED = Path("data/prepared")
METRICS = Path("metrics/baseline.json")
REPORT = Path("metrics/baseline/report.json")


def main() -> None:
    start_stage("baseline")
    bp = params.load("baseline")

    def split_path(name: str) -> Path:
        return PREPARED / f"{name}.parquet"

    train_rows = pq.read_metadata(split_path("train")).num_rows
    if train_rows <= bp.streaming_above:
        train, val, test = (pd.read_parquet(split_path(s), columns=["tokens", "label"]) for s in ("train", "val", "test"))
        vectorizer, clf, c, val_acc = fit_baseline(train, val, bp.ngram_max, bp.C, min_df=bp.min_df)
        actual, predicted = test["label"].tolist(), clf.predict(vectorizer.transform(test["tokens"].map(list))).tolist()
        model = "tf-idf + logistic regression (in memory)"
    else:
        features, clf, c, val_acc = fit_streaming(split_path, bp.ngram_max, bp.C, bp.min_df, bp.hash_bits,
                                                  bp.chunk_rows, bp.epochs)
        actual, predicted = [], []
        for chunk in read_chunks(split_path("test"), bp.chunk_rows):
            actual += chunk["label"].tolist()
            predicted += clf.predict(features.transform(chunk["tokens"])).tolist()
        model = f"hashed tf-idf (2^{bp.hash_bits}) + logistic regression by SGD, {bp.epochs} epochs (out of core)"
    metrics = classification_metrics(actual, predicted, sorted(clf.classes_.tolist()))
    metrics.update({"C": c, "val_accuracy": round(float(val_acc), 4), "model": model, "train_rows": train_rows})
    write_json(REPORT, metrics)
    write_json(METRICS, headline(metrics, "baseline"))
    print(f"baseline ({model}, C={c}): test accuracy {metrics['accuracy']:.4f}, macro F1 {metrics['macro_f1']:.4f}")


if __name__ == "__main__":
    run_main(main)
