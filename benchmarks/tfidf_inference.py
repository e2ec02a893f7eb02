"""Benchmark: scoring tokenized texts with the saved TF-IDF model (pipeline.tfidf_model, numpy + scipy)
against scikit-learn's own pipeline (vectorizer.transform, then predict_proba), same model, same texts.

    python -m benchmarks.tfidf_inference [--split data/prepared/train.parquet] [--texts 5000] [--rounds 5]

With --split (a prepared split), its first rows train and the next --texts rows are scored; without it, a
synthetic corpus: Zipf-distributed words over a 50,000-word vocabulary, 20 classes, 230 tokens a text (IMDB-
like). Both the in-memory model (TfidfVectorizer + LogisticRegression, 1-2-grams) and the hashed SGD model
(2**20 columns) are timed. Prints texts per second (best of --rounds, one process, one thread), the largest
difference between the two sides' probabilities, and the model file's size and load time.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def synthetic(n: int, seed: int = 0, classes: int = 20, vocabulary: int = 50_000, length: int = 230) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    words = np.array([f"w{i}" for i in range(vocabulary)], dtype=object)
    ranks = np.arange(1, vocabulary + 1)
    base = 1.0 / ranks
    labels = rng.integers(0, classes, n)
    shift = rng.permutation(vocabulary)[:classes * 50].reshape(classes, 50)  # each class's own 50 words
    tokens = []
    for label in labels:
        k = max(1, int(rng.normal(length, length / 3)))
        ids = rng.choice(vocabulary, k, p=base / base.sum())
        own = rng.random(k) < 0.05
        ids[own] = rng.choice(shift[label], own.sum())
        tokens.append(words[ids].tolist())
    return pd.DataFrame({"tokens": tokens, "label": [f"c{c}" for c in labels]})


def best_rate(fn, n: int, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return n / min(times)


def main() -> None:
    from sklearn.linear_model import LogisticRegression, SGDClassifier

    from pipeline.tfidf import HashedTfidf, tfidf_vectorizer
    from pipeline.tfidf_model import TfidfModel

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", type=Path)
    ap.add_argument("--train", type=int, default=10_000)
    ap.add_argument("--texts", type=int, default=5_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    if args.split:
        data = pd.read_parquet(args.split, columns=["tokens", "label"]).iloc[:args.train + args.texts]
        data["tokens"] = data["tokens"].map(list)
    else:
        data = synthetic(args.train + args.texts)
    train, test = data.iloc[:args.train], data.iloc[args.train:]
    texts = test["tokens"].tolist()
    print(f"{len(train)} training texts, {len(texts)} scored, {np.mean([len(t) for t in texts]):.0f} tokens a text")

    vectorizer = tfidf_vectorizer(2, 2)
    clf = LogisticRegression(C=4.0, max_iter=300).fit(vectorizer.fit_transform(train["tokens"]), train["label"])
    features = HashedTfidf(2, 20, 2)
    features.fit(iter([train]))
    sgd = SGDClassifier(loss="log_loss", alpha=1e-5, random_state=0)
    sgd.fit(features.transform(train["tokens"]), train["label"])
    with tempfile.TemporaryDirectory() as tmp:
        for name, model, reference in (
                ("vocabulary", TfidfModel.from_vectorizer(vectorizer, clf),
                 lambda: clf.predict_proba(vectorizer.transform(texts))),
                ("hashed", TfidfModel.from_hashed(features, sgd),
                 lambda: sgd.predict_proba(features.transform(pd.Series(texts))))):
            path = Path(tmp) / f"{name}.npz"
            model.save(path)
            start = time.perf_counter()
            loaded = TfidfModel.load(path)
            loaded.probabilities(texts[:1])  # builds the lookup tables
            load_s = time.perf_counter() - start
            diff = np.abs(loaded.probabilities(texts) - reference()).max()
            ours = best_rate(lambda: loaded.probabilities(texts), len(texts), args.rounds)
            theirs = best_rate(reference, len(texts), args.rounds)
            print(f"{name:10s} {len(model.idf):>9,} features: tfidf_model {ours:9,.0f} texts/s, scikit-learn "
                  f"{theirs:9,.0f} texts/s ({ours / theirs:.1f}x); max |dp| {diff:.1e}; file "
                  f"{path.stat().st_size / 2**20:.1f} MiB, load + tables {load_s:.2f} s")


if __name__ == "__main__":
    main()
