"""The fitted TF-IDF model as plain data (never a pickle), and its inference with numpy and scipy alone.

A model file (`models/tfidf.npz`, written by the baseline stage) is a NumPy .npz archive read with
allow_pickle=False, members:

  meta       uint8, UTF-8 JSON: format "textclf-tfidf", version 1, output, classes (names, in column order),
             ngram_range [lo, hi], sublinear_tf, norm "l2", and either `ngrams` (the vocabulary: each
             n-gram as the list of its tokens, in column order, so a token holding any character at all
             round-trips) or `hashing` (n_features, seed 0, alternate_sign false: columns are
             |murmurhash3_32(UTF-8 of the n-gram's tokens joined by one space)| mod n_features, as
             scikit-learn's HashingVectorizer places them)
  idf        float64 (features,)          the TF-IDF weights (0 for a hashed column no n-gram reached min_df in)
  coef       float64 (classes, features)  a row per class
  intercept  float64 (classes,)
  thresholds float64 (classes,)           output one_vs_rest only: each label's decision threshold

A text's features are its n-gram counts c, 1 + log c under sublinear_tf, times idf, the row scaled to unit
length; its scores s = features @ coef.T + intercept. `output` says how scores become probabilities:
  multinomial     softmax over the classes (a binary scikit-learn model's single row w becomes -w/2, w/2:
                  the same probabilities)
  one_vs_rest     several labels per text: sigmoid of each label's score, a label on at its threshold
  ovr_normalised  the SGD model's sigmoids divided by their sum (scikit-learn's _predict_proba_lr)
Probabilities equal scikit-learn's predict_proba on the model it was converted from (tests: to 1e-6).
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import sparse

from pipeline.errors import PipelineError, short

FORMAT, VERSION = "textclf-tfidf", 1
OUTPUTS = ("multinomial", "one_vs_rest", "ovr_normalised")
ARRAYS = ("idf", "coef", "intercept", "thresholds")
META_KEYS = {"format", "version", "output", "classes", "ngram_range", "sublinear_tf", "norm", "ngrams", "hashing"}
BATCH = 4096  # texts scored at a time: memory follows the batch


@dataclass
class TfidfModel:
    output: str
    classes: list[str]
    ngram_range: tuple[int, int]
    idf: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray
    thresholds: np.ndarray | None = None
    ngrams: list[tuple[str, ...]] | None = None   # the vocabulary, or
    n_features: int | None = None                 # hashed columns
    sublinear_tf: bool = True
    _tables: object = field(default=None, repr=False, compare=False)

    @property
    def hashed(self) -> bool:
        return self.ngrams is None

    # ---- converting scikit-learn's models -------------------------------------------------------------
    @classmethod
    def from_vectorizer(cls, vectorizer, clf, thresholds: np.ndarray | None = None,
                        labels: Sequence[str] | None = None) -> "TfidfModel":
        """A fitted TfidfVectorizer and its LogisticRegression, or a multi-label OneVsRestClassifier of them
        (with the `labels` its columns stand for and their `thresholds`). The prepared tokens never hold a
        blank (pipeline/text.py), so the vectorizer's space-joined n-gram names split back into their tokens."""
        names = vectorizer.get_feature_names_out().tolist()
        ngrams = [tuple(name.split(" ")) for name in names]
        lo, hi = vectorizer.ngram_range
        if any(not lo <= len(g) <= hi for g in ngrams):
            raise PipelineError("a token holds a blank: its n-grams cannot be told apart; prepare the data again")
        return cls(**_head(clf, thresholds, labels), ngram_range=(lo, hi), idf=np.asarray(vectorizer.idf_, np.float64),
                   ngrams=ngrams, sublinear_tf=bool(vectorizer.sublinear_tf))

    @classmethod
    def from_hashed(cls, features, clf) -> "TfidfModel":
        """pipeline.tfidf.HashedTfidf and its SGDClassifier(loss="log_loss")."""
        hasher = features.hasher
        if hasher.alternate_sign or hasher.norm is not None:
            raise ValueError("only HashedTfidf's hasher (alternate_sign=False, norm=None) is supported")
        return cls(**_head(clf, None, None), ngram_range=tuple(hasher.ngram_range),
                   idf=np.asarray(features.idf, np.float64), n_features=int(hasher.n_features))

    # ---- the file -----------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write the model to `path` (.npz) atomically."""
        from pipeline.files import atomic_path

        meta, arrays = self.to_members()
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, meta=np.frombuffer(meta.encode("utf-8", "surrogatepass"), dtype=np.uint8), **arrays)

    def to_members(self) -> tuple[str, dict[str, np.ndarray]]:
        """The model as plain data: `meta` (the JSON text of module doc) and the float64 arrays by name."""
        meta = {"format": FORMAT, "version": VERSION, "output": self.output, "classes": list(self.classes),
                "ngram_range": list(self.ngram_range), "sublinear_tf": self.sublinear_tf, "norm": "l2"}
        if self.hashed:
            meta["hashing"] = {"n_features": self.n_features, "seed": 0, "alternate_sign": False}
        else:
            meta["ngrams"] = [list(g) for g in self.ngrams]
        arrays = {"idf": self.idf, "coef": self.coef, "intercept": self.intercept}
        if self.thresholds is not None:
            arrays["thresholds"] = self.thresholds
        return (json.dumps(meta, ensure_ascii=False, separators=(",", ":")),
                {k: np.ascontiguousarray(v, dtype=np.float64) for k, v in arrays.items()})

    @classmethod
    def from_members(cls, where: str, meta: str, arrays: dict) -> "TfidfModel":
        """The model that to_members' data describes (the arrays numpy's or anything np.asarray takes), every
        key checked as `load` checks a file's; a fault is a PipelineError naming `where` and the key."""
        if not isinstance(meta, str):
            raise PipelineError(f"{where}: meta: must be the model's JSON text, got {type(meta).__name__}")
        members = {"meta": np.frombuffer(meta.encode("utf-8", "surrogatepass"), dtype=np.uint8),
                   **{k: np.asarray(v) for k, v in arrays.items()}}
        return _checked(where, members)

    @classmethod
    def load(cls, path: str | Path) -> "TfidfModel":
        """Read and check a model file; anything amiss is a one-line PipelineError naming the file and key.
        Never unpickles: a member holding Python objects is refused."""
        members = _read_members(Path(path))
        return _checked(Path(path), members)

    # ---- inference ----------------------------------------------------------------------------------
    def features(self, token_lists: Sequence[Sequence[str]]) -> sparse.csr_matrix:
        """The TF-IDF rows (n, features) of tokenized texts, as scikit-learn's vectorizer gives them."""
        docs = [list(t) for t in token_lists]
        lengths = np.fromiter(map(len, docs), dtype=np.int64, count=len(docs))
        flat = list(chain.from_iterable(docs))
        rows, cols = (_hashed_cells if self.hashed else _vocabulary_cells)(self, flat, lengths)
        x = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(docs), len(self.idf)))
        x.sum_duplicates()
        if self.sublinear_tf:
            x.data = 1.0 + np.log(x.data)
        x.data *= self.idf[x.indices]
        norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
        norms[norms == 0] = 1.0
        x.data /= np.repeat(norms, np.diff(x.indptr))
        return x

    def scores(self, token_lists: Sequence[Sequence[str]]) -> np.ndarray:
        """The linear scores (n, classes), float64."""
        return np.asarray(self.features(token_lists) @ self._coef_t()) + self.intercept

    def probabilities(self, token_lists: Sequence[Sequence[str]]) -> np.ndarray:
        """(n, classes) float64: each class's probability (one_vs_rest: each label's, independently)."""
        token_lists = list(token_lists)
        out = np.empty((len(token_lists), len(self.classes)))
        for start in range(0, len(token_lists), BATCH):
            s = self.scores(token_lists[start:start + BATCH])
            if self.output == "multinomial":
                s = np.exp(s - s.max(axis=1, keepdims=True))
                s /= s.sum(axis=1, keepdims=True)
            else:
                s = 0.5 * (1.0 + np.tanh(0.5 * s))  # the sigmoid, without overflow
                if self.output == "ovr_normalised":
                    total = s.sum(axis=1, keepdims=True)
                    s = np.where(total > 0, s / np.where(total > 0, total, 1.0), 1.0 / s.shape[1])
            out[start:start + BATCH] = s
        return out

    def predict(self, token_lists: Sequence[Sequence[str]]) -> list:
        """Each text's class (single-label), or its list of labels (one_vs_rest, at the thresholds)."""
        probs = self.probabilities(token_lists)
        if self.output == "one_vs_rest":
            return [[self.classes[j] for j in np.flatnonzero(row)] for row in probs >= self.thresholds]
        return [self.classes[j] for j in probs.argmax(axis=1)]

    def _coef_t(self) -> np.ndarray:
        if self._tables is None:
            self._tables = _Tables(self)
        return self._tables.coef_t


def _head(clf, thresholds, labels) -> dict:
    """The output, classes, coef, intercept and thresholds of a fitted LogisticRegression, SGDClassifier or
    multi-label OneVsRestClassifier of LogisticRegression."""
    if hasattr(clf, "estimators_"):  # OneVsRestClassifier, multi-label
        coef, intercept = [], []
        for est in clf.estimators_:
            if hasattr(est, "coef_"):
                coef.append(est.coef_[0]), intercept.append(est.intercept_[0])
            else:  # a label on every (or no) training text: sklearn's constant predictor, a sigmoid saturated
                coef.append(np.zeros(clf.n_features_in_)), intercept.append(40.0 if est.y_ else -40.0)
        if labels is None or thresholds is None or len(labels) != len(coef) or len(thresholds) != len(coef):
            raise ValueError("a multi-label model needs a name and a threshold per label")
        classes = [str(c) for c in labels]
        return _fields("one_vs_rest", classes, coef, intercept, thresholds)
    classes = [str(c) for c in clf.classes_]
    coef, intercept = np.asarray(clf.coef_, np.float64), np.asarray(clf.intercept_, np.float64)
    if len(classes) == 2:  # scikit-learn keeps one row, for the second class: softmax(-z/2, z/2) = sigmoid(z)
        return _fields("multinomial", classes, [-coef[0] / 2, coef[0] / 2], [-intercept[0] / 2, intercept[0] / 2])
    is_sgd = type(clf).__name__ == "SGDClassifier"
    return _fields("ovr_normalised" if is_sgd else "multinomial", classes, coef, intercept)


def _fields(output, classes, coef, intercept, thresholds=None) -> dict:
    return {"output": output, "classes": classes, "coef": np.array(coef, np.float64),
            "intercept": np.array(intercept, np.float64),
            "thresholds": None if thresholds is None else np.asarray(thresholds, np.float64)}


class _Ids(dict):
    """Token -> id; -1 for a token not in the vocabulary (looked up by the C-level __getitem__)."""

    def __missing__(self, token):
        return -1


class _Tables:
    """Lookup tables built once per loaded model. Vocabulary: every token of the n-grams gets an id; the
    n-grams form a trie by levels, level k keyed by (node at level k-1) * tokens + token id, its keys sorted
    for np.searchsorted, each node the column of its n-gram (or -1 where it is only a prefix)."""

    def __init__(self, model: TfidfModel):
        self.coef_t = np.ascontiguousarray(model.coef.T)
        if model.hashed:
            return
        grams = model.ngrams
        self.token_ids = _Ids((t, i) for i, t in enumerate(dict.fromkeys(chain.from_iterable(grams))))
        self.n_tokens = len(self.token_ids)
        width = max(map(len, grams), default=1)
        ids = np.full((len(grams), width), -1, dtype=np.int64)
        lengths = np.fromiter(map(len, grams), dtype=np.int64, count=len(grams))
        ids[np.arange(width) < lengths[:, None]] = [self.token_ids[t] for t in chain.from_iterable(grams)]
        columns = np.arange(len(grams))
        node = ids[:, 0].copy()
        self.unigram = np.full(self.n_tokens, -1, dtype=np.int64)
        self.unigram[node[lengths == 1]] = columns[lengths == 1]
        self.levels: list[tuple[np.ndarray, np.ndarray]] = []   # level 2, 3...: (sorted keys, column per node)
        for k in range(1, width):
            longer = lengths > k
            keys = node[longer] * self.n_tokens + ids[longer, k]
            sorted_keys, inverse = np.unique(keys, return_inverse=True)
            node = np.full(len(grams), -1, dtype=np.int64)
            node[longer] = inverse
            column = np.full(len(sorted_keys), -1, dtype=np.int64)
            ends = lengths[longer] == k + 1
            column[inverse[ends]] = columns[longer][ends]
            self.levels.append((sorted_keys, column))


def _vocabulary_cells(model: TfidfModel, flat: list[str], lengths: np.ndarray):
    """(row, column) of every n-gram occurrence found in the vocabulary, by walking the trie of _Tables
    from every token position at once."""
    tables = model._tables if model._tables is not None else _Tables(model)
    model._tables = tables
    ids = np.fromiter(map(tables.token_ids.__getitem__, flat), dtype=np.int64, count=len(flat))
    doc = np.repeat(np.arange(len(lengths)), lengths)
    end = np.repeat(np.cumsum(lengths), lengths)          # one past each position's last token
    lo, hi = model.ngram_range
    pos = np.flatnonzero(ids >= 0)
    node = ids[pos]
    rows, cols = [], []
    for k in range(1, hi + 1):
        if k > 1:
            if k - 2 >= len(tables.levels):
                break
            keys_k, column_k = tables.levels[k - 2]
            nxt = pos + k - 1
            ok = nxt < end[pos]
            pos, node, nxt = pos[ok], node[ok], nxt[ok]
            ok = ids[nxt] >= 0
            pos, node = pos[ok], node[ok] * tables.n_tokens + ids[nxt[ok]]
            at = np.minimum(np.searchsorted(keys_k, node), len(keys_k) - 1)
            ok = keys_k[at] == node
            pos, node = pos[ok], at[ok]
            column = column_k[node]
        else:
            column = tables.unigram[node]
        if k >= lo:
            hit = column >= 0
            rows.append(doc[pos[hit]]), cols.append(column[hit])
    return (np.concatenate(rows), np.concatenate(cols)) if rows else (np.zeros(0, np.int64),) * 2


def _hashed_cells(model: TfidfModel, flat: list[str], lengths: np.ndarray):
    """(row, column) of every n-gram occurrence, hashed: the distinct n-grams of the batch found level by
    level (as ids of distinct token runs), each joined and hashed once."""
    from pipeline.murmurhash import hashed_columns

    distinct = {t: i for i, t in enumerate(dict.fromkeys(flat))}
    ids = np.fromiter(map(distinct.__getitem__, flat), dtype=np.int64, count=len(flat))
    tokens = np.array(flat, dtype=object)
    doc = np.repeat(np.arange(len(lengths)), lengths)
    end = np.repeat(np.cumsum(lengths), lengths)
    lo, hi = model.ngram_range
    pos, node = np.arange(len(flat)), ids
    rows, cols = [], []
    for k in range(1, hi + 1):
        if k == 1:  # the distinct tokens, ids in order of first sight: hashed as they are
            grams = list(distinct)
        else:
            ok = pos + k - 1 < end[pos]
            pos, node = pos[ok], node[ok] * len(distinct) + ids[pos[ok] + k - 1]
            _, first, node = np.unique(node, return_index=True, return_inverse=True)
            starts = pos[first]
            grams = list(map(" ".join, zip(*(tokens[starts + i] for i in range(k))))) if k >= lo else []
        if k >= lo and len(pos):
            rows.append(doc[pos]), cols.append(hashed_columns(grams, model.n_features)[node])
    return (np.concatenate(rows), np.concatenate(cols)) if rows else (np.zeros(0, np.int64),) * 2


def _read_members(path: Path) -> dict:
    if not path.is_file():
        raise PipelineError(f"{path}: no such TF-IDF model file; run the baseline stage (dvc repro baseline)")
    try:
        npz = np.load(path, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise PipelineError(f"{path}: not a TF-IDF model file (one array, not an .npz archive)")
        with npz:
            members = {}
            for key in npz.files:
                try:
                    members[key] = npz[key]
                except ValueError as e:
                    raise PipelineError(f"{path}: member {key!r} is not a plain array ({e}); refused, never "
                                        "unpickled") from None
            return members
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        what = str(e).split("\n")[0]
        raise PipelineError(f"{path}: not a TF-IDF model file (.npz of plain arrays): {what}") from None


def _checked(path: Path | str, members: dict) -> TfidfModel:
    """The model a file's members describe, every key checked (the first fault named, with its key)."""
    def bad(key: str, why: str):
        return PipelineError(f"{path}: {key}: {why}; not a model the baseline stage wrote")

    unknown = sorted(set(members) - {"meta", *ARRAYS})
    if unknown:
        raise bad(unknown[0], "unexpected member")
    for key in ("meta", "idf", "coef", "intercept"):
        if key not in members:
            raise bad(key, "member missing")
    raw = members["meta"]
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise bad("meta", f"must be UTF-8 JSON as uint8 bytes, got {raw.dtype} of shape {raw.shape}")
    from pipeline.files import DuplicateKey, unique_keys

    try:
        meta = json.loads(raw.tobytes().decode("utf-8", "surrogatepass"), object_pairs_hook=unique_keys)
    except DuplicateKey as e:
        raise bad("meta", f"names the key {e.args[0]!r} twice") from None
    except ValueError as e:
        raise bad("meta", f"unreadable JSON ({str(e).splitlines()[0]})") from None
    if not isinstance(meta, dict):
        raise bad("meta", "must be a JSON object")
    if meta.get("format") != FORMAT:
        raise bad("meta.format", f"must be {FORMAT!r}, got {short(meta.get('format'))}")
    if meta.get("version") != VERSION:
        raise bad("meta.version", f"version {short(meta.get('version'))}, this code reads version {VERSION} "
                  "(written by another version of the pipeline: run the baseline stage again)")
    extra = sorted(set(meta) - META_KEYS)
    if extra:
        raise bad(f"meta.{extra[0]}", "unknown key")
    output = meta.get("output")
    if output not in OUTPUTS:
        raise bad("meta.output", f"must be one of {', '.join(OUTPUTS)}, got {short(output)}")
    classes = meta.get("classes")
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes) \
            or len(set(classes)) != len(classes) or len(classes) < (1 if output == "one_vs_rest" else 2):
        raise bad("meta.classes", "must be a list of distinct names (2 at least; 1 for one_vs_rest), got "
                  f"{short(classes)}")
    ngram_range = meta.get("ngram_range")
    if not (isinstance(ngram_range, list) and len(ngram_range) == 2 and all(type(n) is int for n in ngram_range)
            and 1 <= ngram_range[0] <= ngram_range[1] <= 16):
        raise bad("meta.ngram_range", f"must be [lo, hi] with 1 <= lo <= hi <= 16, got {short(ngram_range)}")
    lo, hi = ngram_range
    if meta.get("norm") != "l2" or type(meta.get("sublinear_tf")) is not bool:
        raise bad("meta.norm" if meta.get("norm") != "l2" else "meta.sublinear_tf",
                  f"norm must be 'l2' and sublinear_tf true or false, got {short(meta.get('norm'))}, "
                  f"{short(meta.get('sublinear_tf'))}")
    if ("ngrams" in meta) == ("hashing" in meta):
        raise bad("meta", "must hold exactly one of 'ngrams' (a vocabulary) and 'hashing'")
    ngrams, n_features = None, None
    if "ngrams" in meta:
        ngrams = meta["ngrams"]
        if not isinstance(ngrams, list):
            raise bad("meta.ngrams", "must be a list of n-grams")
        for i, g in enumerate(ngrams):
            if not (isinstance(g, list) and lo <= len(g) <= hi and all(isinstance(t, str) and t for t in g)):
                raise bad(f"meta.ngrams[{i}]", f"must be a list of {lo} to {hi} non-empty tokens, got {short(g)}")
        ngrams = [tuple(g) for g in ngrams]
        if len(set(ngrams)) != len(ngrams):
            raise bad("meta.ngrams", "holds an n-gram twice")
        n_features = len(ngrams)
    else:
        hashing = meta["hashing"]
        if not (isinstance(hashing, dict) and set(hashing) == {"n_features", "seed", "alternate_sign"}
                and type(hashing["n_features"]) is int and 1 <= hashing["n_features"] <= 2**31
                and hashing["seed"] == 0 and hashing["alternate_sign"] is False):
            raise bad("meta.hashing", "must be {n_features: 1 to 2**31, seed: 0, alternate_sign: false}, got "
                      f"{short(hashing)}")
        n_features = hashing["n_features"]
    shapes = {"idf": (n_features,), "coef": (len(classes), n_features), "intercept": (len(classes),),
              "thresholds": (len(classes),)}
    arrays = {}
    for key, shape in shapes.items():
        if key not in members:
            continue
        a = members[key]
        if a.dtype.kind != "f" or a.shape != shape:
            raise bad(key, f"must be floats of shape {shape}, got {a.dtype} of shape {a.shape}")
        a = a.astype(np.float64)
        if not np.isfinite(a).all():
            raise bad(key, f"holds {int((~np.isfinite(a)).sum())} values that are not finite (NaN or infinite)")
        arrays[key] = a
    if (arrays["idf"] < 0).any():
        raise bad("idf", "holds negative weights")
    if (output == "one_vs_rest") != ("thresholds" in arrays):
        raise bad("thresholds", "one_vs_rest needs a threshold per label, and only it has them")
    if "thresholds" in arrays and ((arrays["thresholds"] < 0) | (arrays["thresholds"] > 1)).any():
        raise bad("thresholds", "must lie in [0, 1]")
    return TfidfModel(output, classes, (lo, hi), arrays["idf"], arrays["coef"], arrays["intercept"],
                      arrays.get("thresholds"), ngrams, None if ngrams is not None else n_features,
                      meta["sublinear_tf"])
