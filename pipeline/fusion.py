"""The LSTM fused with the TF-IDF baseline: the weight chosen on the validation split, and which model ships.

One text, one label (choose_weight): the fused distribution is a weighted geometric mean of the two,
temperature-scaled (Guo et al. 2017) like the LSTM alone,
    log p = (w log p_lstm + (1 - w) log p_tfidf) / T, renormalised (logsumexp),
the LSTM's probabilities calibrated first. w runs over WEIGHTS (0, 0.05, ..., 1); for each w, T is fitted on
validation (temperature.fit_temperature), and the w with the lowest validation NLL (mean negative
log-likelihood, within 1e-9 a tie) is taken, ties going to the higher validation accuracy, then to one model
alone (the LSTM, then the TF-IDF model), then to the w nearest 0.5. Why the NLL and not the accuracy: on a
validation split of a few hundred texts, accuracy moves by whole texts and picks noise (158 long reviews:
TF-IDF "won" by 7 reviews and shipped at 0.847, the LSTM scoring 0.871 on test); the NLL is a proper scoring rule that every text moves a little. Why T per w:
the two parts are calibrated differently (a TF-IDF model's probabilities are too flat), and without T the
NLL would reward the better-calibrated part rather than the better-ranked one (docs/results.md, "Choosing
the weight"). w = 1 is the LSTM alone and w = 0 the TF-IDF model alone (temperature-scaled too), so the
fused model is never worse on validation NLL than either, and its probabilities are calibrated.

Several labels per text (choose_weight_multilabel): each label's logit is fused, w logit_lstm +
(1 - w) logit_tfidf, through a sigmoid; each label's threshold is re-chosen on validation for every w
(multilabel_metrics.choose_thresholds, the rule both models use); the w with the highest validation micro-F1
is taken, ties to the lower mean binary cross-entropy, then to the w nearest 0.5.

choose_shipped(figures, policy) says what ships under params `ship`: `lstm` always the LSTM; `best` the
best validation score (NLL: lowest; micro-F1: highest) of lstm, fusion and tfidf, ties in that order (a
fusion at w = 1 or 0 is the LSTM or the TF-IDF model alone, and is named so). The figures are validation
figures, the weight chosen on the same split: the test split, scored once afterwards, says how the shipped
model does.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from pipeline.errors import PipelineError
from pipeline.temperature import fit_temperature, nll

WEIGHTS = np.round(np.linspace(0.0, 1.0, 21), 2)
SHIP_POLICIES = ("lstm", "best")
PREFERENCE = ("lstm", "fusion", "tfidf")   # choose_shipped's order among equal scores
_TINY = 1e-300                             # probabilities below it count as it (log 0 is -inf)
_EDGE = 1e-12                              # multi-label probabilities are kept in [_EDGE, 1 - _EDGE] for logits
_NLL_DIGITS = 10                           # NLLs (and scores) equal to this many decimals are a tie
NLL_TIE = 1e-9                             # choose_weight: validation NLLs this close are equal
LOWER_IS_BETTER = ("nll",)                 # choose_shipped: the validation metrics where less is better


def align(probs: np.ndarray, classes: Sequence[str], to: Sequence[str], what: str) -> np.ndarray:
    """`probs`' columns (one per name of `classes`) in the order of `to`; a PipelineError naming `what`
    when the two models do not know the same classes."""
    if sorted(classes) != sorted(to) or len(set(classes)) != len(classes):
        missing, extra = sorted(set(to) - set(classes)), sorted(set(classes) - set(to))
        raise PipelineError(f"{what}: its classes differ from the LSTM's (missing {missing[:5]}, extra {extra[:5]}); "
                            "run the baseline stage on the same prepared data")
    index = {name: i for i, name in enumerate(classes)}
    return probs[:, [index[name] for name in to]]


def fuse(p_lstm: np.ndarray, p_tfidf: np.ndarray, w: float, temperature: float = 1.0) -> np.ndarray:
    """The fused class probabilities (n, classes): softmax((w log p_lstm + (1 - w) log p_tfidf) / temperature)."""
    z = (w * _log(p_lstm) + (1.0 - w) * _log(p_tfidf)) / temperature
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def _log(p: np.ndarray) -> np.ndarray:
    """log p in float64 (the LSTM's float32 probabilities of 0 included: as _TINY, never -inf)."""
    return np.log(np.maximum(np.asarray(p, np.float64), _TINY))


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), _EDGE, 1.0 - _EDGE)
    return np.log(p) - np.log1p(-p)


def fuse_multilabel(p_lstm: np.ndarray, p_tfidf: np.ndarray, w: float) -> np.ndarray:
    """Each label's fused probability (n, labels): sigmoid(w logit p_lstm + (1 - w) logit p_tfidf)."""
    z = w * logit(p_lstm) + (1.0 - w) * logit(p_tfidf)
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _single(p_lstm: np.ndarray, p_tfidf: np.ndarray, w: float, y: np.ndarray) -> dict:
    """Validation figures at weight w, its temperature fitted: accuracy (T does not change it), NLL at T."""
    z = w * _log(p_lstm) + (1.0 - w) * _log(p_tfidf)  # (n, classes): log-probabilities, up to a constant a row
    temperature = fit_temperature(z, y)
    return {"weight": float(w), "accuracy": float(np.mean(z.argmax(axis=1) == y)),
            "nll": nll(z, y, temperature), "temperature": temperature}


def _check(p_lstm: np.ndarray, p_tfidf: np.ndarray, n: int) -> None:
    if p_lstm.shape != p_tfidf.shape or p_lstm.ndim != 2 or len(p_lstm) != n or n == 0:
        raise ValueError(f"probabilities of shapes {p_lstm.shape} and {p_tfidf.shape} for {n} validation texts")


def choose_weight(p_lstm: np.ndarray, p_tfidf: np.ndarray, y: np.ndarray) -> dict:
    """The weight of module doc for one label per text (`y`: each text's class index, the probabilities'
    columns in one order: align). Figures on validation: the chosen weight, accuracy and NLL of lstm,
    tfidf and fusion (at that weight), and of every weight tried (`grid`)."""
    y = np.asarray(y)
    _check(p_lstm, p_tfidf, len(y))
    grid = [_single(p_lstm, p_tfidf, w, y) for w in WEIGHTS]
    # Within NLL_TIE of the lowest NLL is a tie (T is fitted to about 1e-12 of the NLL: a part that knows nothing
    # makes every weight equal); then the higher accuracy, then one model alone (the LSTM first: a smaller
    # checkpoint, and its explanations are of the whole model), then the weight nearest 0.5.
    lowest = min(g["nll"] for g in grid)
    tied = [g for g in grid if g["nll"] <= lowest + NLL_TIE]
    best = max(tied, key=lambda g: (g["accuracy"], g["weight"] == 1.0, g["weight"] == 0.0, -abs(g["weight"] - 0.5)))
    figures = ("accuracy", "nll", "temperature")
    return {"task": "single_label", "metric": "nll", "weight": best["weight"],
            "lstm": {k: grid[-1][k] for k in figures}, "tfidf": {k: grid[0][k] for k in figures},
            "fusion": {k: best[k] for k in figures}, "grid": grid}


def _multi(probs: np.ndarray, truth: np.ndarray) -> dict:
    from pipeline.multilabel_metrics import choose_thresholds

    thresholds = choose_thresholds(probs, truth)
    decided = probs >= thresholds
    tp, pooled = int((truth & decided).sum()), int(truth.sum() + decided.sum())
    p = np.clip(np.asarray(probs, np.float64), _EDGE, 1.0 - _EDGE)
    bce = float(-np.mean(np.where(truth, np.log(p), np.log1p(-p))))
    return {"micro_f1": 2 * tp / pooled if pooled else 1.0, "bce": bce, "thresholds": thresholds.tolist()}


def choose_weight_multilabel(p_lstm: np.ndarray, p_tfidf: np.ndarray, truth: np.ndarray) -> dict:
    """The weight of module doc for several labels per text (`truth`: a (texts, labels) bool matrix, the
    columns in one order). Figures on validation: the chosen weight, micro-F1 and BCE of lstm, tfidf and
    fusion, each at its thresholds re-chosen on validation (fusion's: what ships with it), and the grid."""
    truth = np.asarray(truth, dtype=bool)
    _check(p_lstm, p_tfidf, len(truth))
    grid = [{"weight": float(w), **_multi(fuse_multilabel(p_lstm, p_tfidf, w), truth)} for w in WEIGHTS]
    best = max(grid, key=lambda g: (g["micro_f1"], -round(g["bce"], _NLL_DIGITS), -abs(g["weight"] - 0.5)))
    return {"task": "multi_label", "metric": "micro_f1", "weight": best["weight"],
            "lstm": _multi(p_lstm, truth), "tfidf": _multi(p_tfidf, truth),
            "fusion": {k: best[k] for k in ("micro_f1", "bce", "thresholds")},
            "grid": [{k: g[k] for k in ("weight", "micro_f1", "bce")} for g in grid]}


def choose_shipped(figures: dict, policy: str) -> str:
    """What ships: "lstm", "tfidf" or "fusion" (module doc), from choose_weight's figures."""
    if policy not in SHIP_POLICIES:
        raise PipelineError(f"ship: must be one of {', '.join(SHIP_POLICIES)}, got {policy!r}")
    if policy == "lstm":
        return "lstm"
    metric = figures["metric"]
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    best = max(PREFERENCE, key=lambda name: (sign * round(figures[name][metric], _NLL_DIGITS), -PREFERENCE.index(name)))
    if best == "fusion" and figures["weight"] in (0.0, 1.0):  # one model alone
        return "lstm" if figures["weight"] == 1.0 else "tfidf"
    return best
