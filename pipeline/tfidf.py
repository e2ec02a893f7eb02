"""The TF-IDF baseline: word n-grams + logistic regression, the regularisation strength chosen on the
validation split.

In memory (fit_baseline): the exact model, TfidfVectorizer + LogisticRegression. Out of core
(fit_streaming): n-grams hashed into 2**hash_bits columns (no vocabulary held), TF-IDF weights from a
first pass counting document frequencies, and logistic regression fitted by SGD (one model per C, all
fed from each chunk), the splits read `chunk_rows` rows at a time, so memory follows the chunk.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from scipy import sparse
from sklearn.feature_extraction.text import HashingVectorizer, TfidfVectorizer
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.metrics import accuracy_score
from sklearn.preprocessing import normalize



def _identity(tokens):
    return tokens


def fit_baseline(train: pd.DataFrame, val: pd.DataFrame, ngram_max: int, grid: list[float], seed: int = 0,
                 min_df: int = 1):
    """Fit TF-IDF + logistic regression for each C in grid; return (best pipeline parts, best C, val accuracy)."""
    vectorizer = tfidf_vectorizer(ngram_max, min_df)
    x_train = vectorizer.fit_transform(train["tokens"].map(list))
    x_val = vectorizer.transform(val["tokens"].map(list))
    best = None
    # Weakest regularisation last, each fit starting from the previous solution: on 20 classes and
    # 300k n-grams that is about twice as fast as fitting each C from scratch.
    clf = LogisticRegression(max_iter=2000, random_state=seed, warm_start=True)
    for c in sorted(grid):
        clf.set_params(C=c).fit(x_train, train["label"])
        acc = accuracy_score(val["label"], clf.predict(x_val))
        if best is None or acc > best[2]:
            best = (copy.deepcopy(clf), c, acc)
    return vectorizer, *best


def tfidf_vectorizer(ngram_max: int, min_df: int) -> TfidfVectorizer:
    # The prepare stage's tokens are reused as they are (whole documents), so both models see the same text.
    return TfidfVectorizer(analyzer="word", tokenizer=_identity, preprocessor=_identity, token_pattern=None,
                           lowercase=False, ngram_range=(1, ngram_max), sublinear_tf=True, min_df=min_df)


def fit_multilabel_baseline(train: pd.DataFrame, val: pd.DataFrame, labels: list[str], ngram_max: int,
                            grid: list[float], seed: int = 0, min_df: int = 1):
    """Several labels per text: TF-IDF + one logistic regression per label (one-vs-rest), for each C in grid,
    each label's threshold chosen on validation by the LSTM's rule (multilabel_metrics.choose_thresholds);
    the C with the best validation micro-F1 at its thresholds, refitted. (vectorizer, classifier, C,
    thresholds, validation micro-F1.)

    The grid is walked a label at a time, weakest regularisation last, each fit starting from the previous
    C's solution: on Reuters (115 labels, 127k n-grams) that is several times faster than a fresh
    one-vs-rest fit per C. The validation probabilities of every C are kept ((texts x labels) each), not
    the models: the chosen C is fitted once more."""
    from sklearn.multiclass import OneVsRestClassifier

    from pipeline.multilabel_metrics import choose_thresholds, label_matrix, multilabel_metrics

    vectorizer = tfidf_vectorizer(ngram_max, min_df)
    x_train = vectorizer.fit_transform(train["tokens"].map(list))
    x_val = vectorizer.transform(val["tokens"].map(list))
    y_train, y_val = label_matrix(train["label"], labels), label_matrix(val["label"], labels)
    grid = sorted(grid)
    val_probs = {c: np.zeros(y_val.shape) for c in grid}
    for j in range(len(labels)):
        if y_train[:, j].all() or not y_train[:, j].any():  # one class only: a constant, as OneVsRest keeps it
            for c in grid:
                val_probs[c][:, j] = float(y_train[0, j])
            continue
        clf = LogisticRegression(max_iter=2000, random_state=seed, warm_start=True)
        for c in grid:
            val_probs[c][:, j] = clf.set_params(C=c).fit(x_train, y_train[:, j]).predict_proba(x_val)[:, 1]
    best = None
    for c in grid:
        thresholds = choose_thresholds(val_probs[c], y_val)
        micro_f1 = multilabel_metrics(y_val, val_probs[c] >= thresholds, labels)["micro_f1"]
        if best is None or micro_f1 > best[2]:
            best = (c, thresholds, micro_f1)
    c, thresholds, micro_f1 = best
    clf = OneVsRestClassifier(LogisticRegression(C=c, max_iter=2000, random_state=seed)).fit(x_train, y_train)
    return vectorizer, clf, c, thresholds, micro_f1


def read_chunks(path: Path, rows: int) -> Iterator[pd.DataFrame]:
    """A prepared split, `rows` rows at a time (tokens and label)."""
    with pq.ParquetFile(path) as f:
        for batch in f.iter_batches(batch_size=rows, columns=["tokens", "label"]):
            yield batch.to_pandas()


class HashedTfidf:
    """TF-IDF over hashed n-grams, fitted in one streaming pass: sublinear tf, smoothed idf, rows
    scaled to unit length, n-grams seen in fewer than min_df training documents dropped (as
    TfidfVectorizer(sublinear_tf=True) does; hash collisions aside)."""

    def __init__(self, ngram_max: int, bits: int, min_df: int):
        self.hasher = HashingVectorizer(analyzer="word", tokenizer=_identity, preprocessor=_identity,
                                        token_pattern=None, lowercase=False, ngram_range=(1, ngram_max),
                                        n_features=2**bits, alternate_sign=False, norm=None)
        self.min_df = min_df
        self.idf: np.ndarray | None = None

    def counts(self, tokens: pd.Series) -> sparse.csr_matrix:
        return self.hasher.transform(tokens.map(list))

    def fit(self, chunks: Iterator[pd.DataFrame]) -> "HashedTfidf":
        df = np.zeros(self.hasher.n_features, dtype=np.int64)
        n = 0
        for chunk in chunks:
            x = self.counts(chunk["tokens"])
            df += np.bincount(x.indices, minlength=self.hasher.n_features)  # each column once per row
            n += x.shape[0]
        idf = np.log((1 + n) / (1 + df)) + 1.0
        self.idf = np.where(df >= self.min_df, idf, 0.0)
        return self

    def transform(self, tokens: pd.Series) -> sparse.csr_matrix:
        x = self.counts(tokens).astype(np.float64)
        x.data = 1.0 + np.log(x.data)
        x = x @ sparse.diags(self.idf)
        return normalize(x)


def fit_streaming(split_path, ngram_max: int, grid: list[float], min_df: int, bits: int, chunk_rows: int,
                  epochs: int, seed: int = 0):
    """The out-of-core baseline: (features, fitted models by C, best C, its val accuracy).

    Logistic regression by SGD with the L2 penalty alpha = 1 / (C * n), which matches
    LogisticRegression's C on n training rows; every C's model learns from each chunk as it is read."""
    features = HashedTfidf(ngram_max, bits, min_df).fit(read_chunks(split_path("train"), chunk_rows))
    labels = sorted(pq.read_table(split_path("train"), columns=["label"]).column("label").unique().to_pylist())
    n = pq.read_metadata(split_path("train")).num_rows
    models = {c: SGDClassifier(loss="log_loss", alpha=1.0 / (c * n), random_state=seed) for c in grid}
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        for chunk in read_chunks(split_path("train"), chunk_rows):
            order = rng.permutation(len(chunk))
            x, y = features.transform(chunk["tokens"].iloc[order]), chunk["label"].to_numpy()[order]
            for model in models.values():
                model.partial_fit(x, y, classes=labels)
    correct, total = dict.fromkeys(grid, 0), 0
    for chunk in read_chunks(split_path("val"), chunk_rows):
        x = features.transform(chunk["tokens"])
        for c, model in models.items():
            correct[c] += int((model.predict(x) == chunk["label"].to_numpy()).sum())
        total += len(chunk)
    best_c = max(sorted(grid), key=lambda c: correct[c])  # ties: the strongest regularisation
    return features, models[best_c], best_c, correct[best_c] / max(1, total)
