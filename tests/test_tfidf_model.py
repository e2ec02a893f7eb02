"""The TF-IDF model as plain data (pipeline.tfidf_model): saved, loaded and scored with numpy alone, it gives
scikit-learn's predict_proba on the same model (multinomial, binary, one-vs-rest multi-label, hashed SGD);
a bad file is one line naming the file and key, and a planted pickle is never unpickled."""

from __future__ import annotations

import pickle
import zipfile

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.utils import murmurhash3_32 as sklearn_murmurhash3_32

from pipeline.errors import PipelineError
from pipeline.murmurhash import hashed_columns, murmurhash3_32
from pipeline.tfidf import fit_streaming, tfidf_vectorizer
from pipeline.tfidf_model import TfidfModel

# Tokens with characters a format joining n-grams could trip on (no blank: the tokenizer never makes one).
WORDS = ["good", "bad", "film", "plot", "the", "a", "\x1f", 'qu"ote', "back\\slash", "\u2028", "😀", "ταινία",
         "line\nbreak", "<num>", "n't", "'s", "[", "{"]


def _corpus(seed: int, n: int, classes: list[str]) -> pd.DataFrame:
    """Texts whose words lean towards their class, with words the training split never saw and empty texts."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(classes, n)
    tokens = []
    for i, label in enumerate(labels):
        k = classes.index(label)
        length = int(rng.integers(0, 12))
        words = [WORDS[(k * 3 + int(rng.integers(0, 6))) % len(WORDS)] if rng.random() < 0.6 else
                 WORDS[int(rng.integers(len(WORDS)))] for _ in range(length)]
        if rng.random() < 0.1:
            words.append(f"unseen{i}")
        tokens.append(words)
    return pd.DataFrame({"tokens": tokens, "label": labels})


def _roundtrip(model: TfidfModel, tmp_path) -> TfidfModel:
    model.save(tmp_path / "tfidf.npz")
    return TfidfModel.load(tmp_path / "tfidf.npz")


@pytest.mark.parametrize("classes,ngram_max,min_df", [(["neg", "pos"], 2, 2), (["a", "b", "c", "d"], 2, 2),
                                                      (["x", "y", "z"], 3, 1)])
def test_single_label_probabilities_equal_sklearns(tmp_path, classes, ngram_max, min_df):
    train, test = _corpus(0, 400, classes), _corpus(1, 150, classes)
    vectorizer = tfidf_vectorizer(ngram_max, min_df)
    x = vectorizer.fit_transform(train["tokens"].map(list))
    clf = LogisticRegression(C=4.0, max_iter=2000).fit(x, train["label"])
    model = _roundtrip(TfidfModel.from_vectorizer(vectorizer, clf), tmp_path)
    want = clf.predict_proba(vectorizer.transform(test["tokens"].map(list)))
    got = model.probabilities(test["tokens"])
    assert model.output == "multinomial" and model.classes == classes and got.dtype == np.float64
    assert np.abs(got - want).max() < 1e-6
    assert model.predict(test["tokens"]) == clf.predict(vectorizer.transform(test["tokens"].map(list))).tolist()
    # The features themselves are sklearn's, cell for cell; the tokens round-trip whatever their characters.
    assert abs(model.features(test["tokens"]) - vectorizer.transform(test["tokens"].map(list))).max() < 1e-12
    assert {t for g in model.ngrams for t in g} >= {"\x1f", 'qu"ote', "\u2028", "😀", "line\nbreak"}
    assert model.probabilities([]).shape == (0, len(classes))


@pytest.mark.filterwarnings("ignore:Label 3 is present in all training examples")
def test_multi_label_one_vs_rest_equals_sklearn_with_its_thresholds(tmp_path):
    train, test = _corpus(2, 300, ["a", "b", "c"]), _corpus(3, 100, ["a", "b", "c"])
    labels = ["a", "b", "c", "everywhere"]
    # Each text has its class's label, 'c' texts also 'a', and every training text has 'everywhere' (sklearn
    # then keeps a constant predictor for it).
    y = np.array([[lab == "a" or lab == "c", lab == "b", lab == "c", True] for lab in train["label"]])
    vectorizer = tfidf_vectorizer(2, 2)
    clf = OneVsRestClassifier(LogisticRegression(C=2.0, max_iter=2000)).fit(
        vectorizer.fit_transform(train["tokens"].map(list)), y)
    thresholds = np.array([0.3, 0.5, 0.65, 0.5], dtype=np.float32)
    model = _roundtrip(TfidfModel.from_vectorizer(vectorizer, clf, thresholds, labels), tmp_path)
    want = clf.predict_proba(vectorizer.transform(test["tokens"].map(list)))
    got = model.probabilities(test["tokens"])
    assert model.output == "one_vs_rest" and model.classes == labels
    assert np.abs(got - want).max() < 1e-6
    decided = want >= thresholds
    assert model.predict(test["tokens"]) == [[labels[j] for j in np.flatnonzero(row)] for row in decided]


@pytest.mark.parametrize("classes", [["neg", "pos"], ["a", "b", "c"]])
def test_the_hashed_sgd_model_equals_sklearn(tmp_path, classes):
    for name, (seed, n) in {"train": (4, 300), "val": (5, 60)}.items():
        _corpus(seed, n, classes).to_parquet(tmp_path / f"{name}.parquet")
    features, clf, _, _ = fit_streaming(lambda s: tmp_path / f"{s}.parquet", ngram_max=2, grid=[4.0], min_df=2,
                                        bits=12, chunk_rows=64, epochs=2)
    model = _roundtrip(TfidfModel.from_hashed(features, clf), tmp_path)
    test = _corpus(6, 120, classes)
    want = clf.predict_proba(features.transform(test["tokens"]))
    got = model.probabilities(test["tokens"])
    assert model.hashed and model.n_features == 2**12
    assert model.output == ("multinomial" if len(classes) == 2 else "ovr_normalised")
    assert np.abs(got - want).max() < 1e-6
    assert abs(model.features(test["tokens"]) - features.transform(test["tokens"])).max() < 1e-12


def test_the_numpy_murmurhash_is_sklearns():
    rng = np.random.default_rng(7)
    alphabet = [chr(c) for c in [*range(32, 127), 0xE9, 0x3B1, 0x4E2D, 0x1F600, 0x10FFFF]]
    strings = ["", "a", "ab", "abc", "abcd", "good film"] + \
        ["".join(rng.choice(alphabet, int(rng.integers(0, 30)))) for _ in range(3000)]
    want = [sklearn_murmurhash3_32(s.encode("utf-8"), seed=0) for s in strings]
    assert murmurhash3_32(strings).tolist() == want
    assert hashed_columns(strings, 1000).tolist() == [abs(h) % 1000 for h in want]


def test_a_token_holding_a_blank_is_refused_where_it_shows():
    train = pd.DataFrame({"tokens": [["a b c", "d"], ["d", "e"]] * 3, "label": ["x", "y"] * 3})
    vectorizer = tfidf_vectorizer(2, 1)
    clf = LogisticRegression().fit(vectorizer.fit_transform(train["tokens"]), train["label"])
    with pytest.raises(PipelineError, match="a token holds a blank"):
        TfidfModel.from_vectorizer(vectorizer, clf)


# ---- bad files ---------------------------------------------------------------------------------------------
def _good_members(tmp_path) -> dict:
    train = _corpus(0, 100, ["neg", "pos"])
    vectorizer = tfidf_vectorizer(2, 1)
    clf = LogisticRegression().fit(vectorizer.fit_transform(train["tokens"].map(list)), train["label"])
    TfidfModel.from_vectorizer(vectorizer, clf).save(tmp_path / "good.npz")
    with np.load(tmp_path / "good.npz") as npz:
        return {k: npz[k] for k in npz.files}


def _meta(members: dict, **changes) -> dict:
    import json

    meta = json.loads(members["meta"].tobytes())
    meta.update(changes)
    return {**members, "meta": np.frombuffer(json.dumps(meta).encode(), np.uint8)}


BAD = [
    (lambda m: {k: v for k, v in m.items() if k != "coef"}, "coef: member missing"),
    (lambda m: {**m, "coef": m["coef"][:, :-1]}, r"coef: must be floats of shape \(2, \d+\)"),
    (lambda m: {**m, "idf": np.where(np.arange(len(m["idf"])) == 3, np.nan, m["idf"])},
     "idf: holds 1 values that are not finite"),
    (lambda m: {**m, "intercept": np.array([np.inf, 0.0])}, "intercept: holds 1 values that are not finite"),
    (lambda m: {**m, "coef": m["coef"].astype(np.int64)}, "coef: must be floats"),
    (lambda m: {**m, "meta": np.frombuffer(b"{not json", np.uint8)}, "meta: unreadable JSON"),
    (lambda m: {**m, "meta": np.frombuffer(b'{"format": 1, "format": 2}', np.uint8)},
     "meta: names the key 'format' twice"),
    (lambda m: _meta(m, version=2), "meta.version: version 2, this code reads version 1"),
    (lambda m: _meta(m, classes=["neg", "neg"]), "meta.classes: must be a list of distinct names"),
    (lambda m: _meta(m, output="softmax"), "meta.output: must be one of"),
    (lambda m: _meta(m, ngrams=[["good"], []]), r"meta.ngrams\[1\]: must be a list of 1 to 2 non-empty tokens"),
    (lambda m: _meta(m, hashing={"n_features": 16}), "meta: must hold exactly one of 'ngrams'"),
    (lambda m: _meta(m, extra=1), "meta.extra: unknown key"),
    (lambda m: {**m, "thresholds": np.full(2, 0.5)}, "thresholds: one_vs_rest needs a threshold per label"),
    (lambda m: {**m, "weights": np.zeros(2)}, "weights: unexpected member"),
]


@pytest.mark.parametrize("change,message", BAD)
def test_a_bad_model_file_is_one_line_naming_the_file_and_key(tmp_path, change, message):
    path = tmp_path / "bad.npz"
    with open(path, "wb") as f:
        np.savez(f, **change(_good_members(tmp_path)))
    with pytest.raises(PipelineError, match=message) as err:
        TfidfModel.load(path)
    assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)


class _Planted:
    """Unpickling this creates a file: the proof that something was unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_planted_pickle_is_never_unpickled(tmp_path):
    marker = tmp_path / "unpickled"
    as_file = tmp_path / "pickle.npz"
    as_file.write_bytes(pickle.dumps(_Planted(marker)))
    as_member = tmp_path / "member.npz"
    with open(as_member, "wb") as f:  # an object array inside a well-formed archive
        np.savez(f, **{**_good_members(tmp_path), "coef": np.array([_Planted(marker)], dtype=object)},
                 allow_pickle=True)
    for path, message in ((as_file, "not a TF-IDF model file"), (as_member, "'coef' is not a plain array")):
        with pytest.raises(PipelineError, match=message):
            TfidfModel.load(path)
    assert not marker.exists()
    for path in (tmp_path / "missing.npz", tmp_path / "cut.npz", tmp_path / "one.npy"):
        if path.name == "cut.npz":
            path.write_bytes((tmp_path / "good.npz").read_bytes()[:500])
        elif path.name == "one.npy":
            np.save(path, np.zeros(3))
        with pytest.raises(PipelineError, match=f"^{path}: "):
            TfidfModel.load(path)
    assert zipfile.is_zipfile(tmp_path / "good.npz")


# ---- the baseline stage writes it ------------------------------------------------------------------------
@pytest.mark.parametrize("task,streaming_above", [("single_label", 100_000), ("single_label", 10),
                                                  ("multi_label", 100_000)])
def test_the_baseline_stage_writes_the_model_it_scored(tmp_path, task, streaming_above):
    """models/tfidf.npz, loaded with numpy alone, predicts the test split as the stage scored it: the
    report's accuracy (subset accuracy for several labels) is the saved model's."""
    import json
    import shutil
    import subprocess
    import sys

    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml

    from pipeline.prepared_task import task_metadata
    from tests.helpers import ROOT

    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["baseline"].update(streaming_above=streaming_above, C=[1.0, 8.0], chunk_rows=50, hash_bits=14)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "data/prepared").mkdir(parents=True)
    classes = ["neg", "pos", "mixed"]
    for name, (seed, n) in {"train": (10, 200), "val": (11, 60), "test": (12, 80)}.items():
        split = _corpus(seed, n, classes)
        if task == "multi_label":
            split["label"] = [sorted({lab, "any"} if i % 3 else {lab}) for i, lab in enumerate(split["label"])]
        table = pa.Table.from_pandas(split, preserve_index=False)
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **task_metadata(task)})
        pq.write_table(table, tmp_path / f"data/prepared/{name}.parquet")
    proc = subprocess.run([sys.executable, "-m", "pipeline.stages.baseline"], cwd=tmp_path, text=True,
                          capture_output=True, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "metrics/baseline/report.json").read_text())
    model = TfidfModel.load(tmp_path / "models/tfidf.npz")
    test = pd.read_parquet(tmp_path / "data/prepared/test.parquet")
    predicted = model.predict(test["tokens"])
    if task == "multi_label":
        assert model.output == "one_vs_rest" and model.classes == ["any", "mixed", "neg", "pos"]
        assert dict(zip(model.classes, model.thresholds.tolist())) == pytest.approx(report["thresholds"])
        actual = [sorted(names) for names in test["label"]]
    else:
        assert model.hashed == (streaming_above == 10) and model.classes == sorted(classes)
        actual = test["label"].tolist()
    assert round(float(np.mean([p == a for p, a in zip(predicted, actual)])), 4) == report["accuracy"]
