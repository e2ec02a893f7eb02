"""The TF-IDF baseline (pipeline.tfidf): the hashed, streamed features weigh like sklearn's, and the
out-of-core model learns from chunks and chooses its C on the validation split."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import TfidfVectorizer

from pipeline.tfidf import HashedTfidf, _identity, fit_baseline, fit_streaming, read_chunks


def test_hashed_tfidf_weighs_like_tfidfvectorizer(tmp_path):
    """Streamed in chunks of 3 rows, the hashed TF-IDF gives each document the weights sklearn's
    TfidfVectorizer(sublinear_tf=True, min_df) gives it (the columns differ: hashed, not a vocabulary)."""
    docs = [t.split() for t in ["a good good film", "a bad film", "good acting , bad plot", "bad bad bad",
                                "a film", "an odd one", "good"]]
    path = tmp_path / "train.parquet"
    pd.DataFrame({"tokens": docs, "label": ["x"] * len(docs)}).to_parquet(path)
    hashed = HashedTfidf(ngram_max=2, bits=20, min_df=2).fit(read_chunks(path, 3))
    exact = TfidfVectorizer(analyzer="word", tokenizer=_identity, preprocessor=_identity, token_pattern=None,
                            lowercase=False, ngram_range=(1, 2), sublinear_tf=True, min_df=2)
    want = exact.fit_transform(docs)
    got = hashed.transform(pd.Series(docs))
    for i in range(len(docs)):
        assert np.allclose(sorted(got[i].data[got[i].data > 0]), sorted(want[i].data)), docs[i]


def _write_splits(folder) -> None:
    """A task one word decides ('great' or 'awful' among filler), so a model that learns is right on every row."""
    rng = np.random.default_rng(0)
    filler = ["the", "film", "plot", "actors", "scene", "story"]

    def split(n):
        labels = rng.choice(["neg", "pos"], n)
        tokens = [list(rng.choice(filler, 6)) + [("great" if lab == "pos" else "awful")] for lab in labels]
        return pd.DataFrame({"tokens": tokens, "label": labels})

    for name, n in (("train", 300), ("val", 60), ("test", 60)):
        split(n).to_parquet(folder / f"{name}.parquet")


def test_the_out_of_core_baseline_learns_from_chunks_and_chooses_c_on_validation(tmp_path):
    _write_splits(tmp_path)

    def fit(grid):
        return fit_streaming(lambda s: tmp_path / f"{s}.parquet", ngram_max=2, grid=grid, min_df=2, bits=16,
                             chunk_rows=40, epochs=3)

    # C = 1e-6 regularises every weight to nothing (a constant prediction): the validation split rejects it.
    features, clf, c, val_acc = fit([1e-6, 10.0])
    assert val_acc == 1.0 and c == 10.0
    test = next(read_chunks(tmp_path / "test.parquet", 1000))
    assert (clf.predict(features.transform(test["tokens"])) == test["label"].to_numpy()).all()
    assert fit([10.0, 1e-6])[2] == 10.0  # whatever the grid's order
    # A tie goes to the stronger regularisation.
    assert fit([20.0, 5.0])[2:] == (5.0, 1.0)


def test_the_in_memory_baseline_chooses_c_on_validation(tmp_path):
    _write_splits(tmp_path)
    train, val, test = (pd.read_parquet(tmp_path / f"{s}.parquet") for s in ("train", "val", "test"))
    vectorizer, clf, c, val_acc = fit_baseline(train, val, ngram_max=2, grid=[10.0, 1e-6], min_df=2)
    assert (c, val_acc) == (10.0, 1.0)
    assert (clf.predict(vectorizer.transform(test["tokens"].map(list))) == test["label"].to_numpy()).all()
    assert fit_baseline(train, val, ngram_max=2, grid=[20.0, 5.0], min_df=2)[2:] == (5.0, 1.0)
