"""Fusing the LSTM with the TF-IDF baseline (pipeline.fusion), on synthetic validation probabilities whose
answer is known: two complementary models fuse into one that beats both; a model that knows nothing adds
nothing; a better-ranked but badly calibrated model is not passed over; ties go where the module says;
`ship: best` ships the winner and `ship: lstm` the LSTM."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.fusion import (WEIGHTS, align, choose_shipped, choose_weight, choose_weight_multilabel, fuse,
                             fuse_multilabel)


def _complementary(n: int = 300, classes: int = 3, seed: int = 0):
    """The LSTM sure and right on the first half, leaning to a wrong class on the second; the TF-IDF model the
    other way round. Each alone: accuracy 0.5. Their geometric mean: right everywhere."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    wrong = (y + 1 + rng.integers(0, classes - 1, n)) % classes
    sure, leaning = np.full((n, classes), 0.1), np.full((n, classes), 0.2)
    sure[np.arange(n), y] = 0.8
    leaning[np.arange(n), y], leaning[np.arange(n), wrong] = 0.35, 0.45
    sure /= sure.sum(1, keepdims=True)
    leaning /= leaning.sum(1, keepdims=True)
    first = (np.arange(n) < n // 2)[:, None]
    return np.where(first, sure, leaning), np.where(first, leaning, sure), y


def test_two_complementary_models_fuse_into_one_that_beats_both():
    p_lstm, p_tfidf, y = _complementary()
    figures = choose_weight(p_lstm, p_tfidf, y)
    assert figures["lstm"]["accuracy"] == figures["tfidf"]["accuracy"] == 0.5
    assert figures["fusion"]["accuracy"] == 1.0
    # Symmetric halves: many weights are right everywhere, the NLL is lowest at the middle.
    assert figures["weight"] == 0.5 and figures["fusion"]["nll"] < min(figures["lstm"]["nll"], figures["tfidf"]["nll"])
    assert [g["weight"] for g in figures["grid"]] == WEIGHTS.tolist() and len(WEIGHTS) == 21
    assert choose_shipped(figures, "best") == "fusion" and choose_shipped(figures, "lstm") == "lstm"
    fused = fuse(p_lstm, p_tfidf, 0.5)
    assert np.allclose(fused.sum(1), 1.0) and (fused.argmax(1) == y).all()


def test_the_grid_ends_are_each_model_alone_and_fusion_is_never_worse_on_validation():
    rng = np.random.default_rng(1)
    p_lstm, p_tfidf = rng.dirichlet(np.ones(4), 200), rng.dirichlet(np.ones(4), 200)
    y = rng.integers(0, 4, 200)
    figures = choose_weight(p_lstm, p_tfidf, y)
    assert figures["grid"][-1]["accuracy"] == figures["lstm"]["accuracy"]
    assert figures["grid"][0]["nll"] == pytest.approx(figures["tfidf"]["nll"])
    assert figures["metric"] == "nll"
    assert figures["fusion"]["nll"] <= min(figures["lstm"]["nll"], figures["tfidf"]["nll"])
    # Each weight's temperature is the one that minimises its NLL: a little either way costs.
    from pipeline.calibration import nll
    best = next(g for g in figures["grid"] if g["weight"] == figures["weight"])
    z = figures["weight"] * np.log(p_lstm) + (1 - figures["weight"]) * np.log(p_tfidf)
    assert all(nll(z, y, best["temperature"] * f) > best["nll"] for f in (0.9, 1.1))


def test_a_better_ranked_but_flat_tfidf_model_wins_over_a_sharp_lstm():
    """The TF-IDF model ranks better but its probabilities are far too flat (a logistic regression over many
    classes often is); the LSTM is calibrated. Raw NLL would pick the LSTM for its sharpness; with each
    weight's temperature fitted, the weight leans to the TF-IDF model, and the fusion is calibrated."""
    rng = np.random.default_rng(5)
    n, classes = 3000, 5
    y = rng.integers(0, classes, n)
    def scores(strength):  # logits that rank the right class first more often the stronger they are
        return rng.normal(size=(n, classes)) + strength * np.eye(classes)[y]
    def softmax(z):
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)
    p_lstm, p_tfidf = softmax(scores(1.5)), softmax(scores(3.0) / 8)  # the TF-IDF model: 8 times too flat
    figures = choose_weight(p_lstm, p_tfidf, y)
    raw_nll = [-np.mean(np.log(p[np.arange(n), y])) for p in (p_lstm, p_tfidf)]
    assert raw_nll[0] < raw_nll[1]  # the trap: unscaled, the LSTM looks better
    assert figures["tfidf"]["accuracy"] > figures["lstm"]["accuracy"]
    assert figures["weight"] < 0.5 and figures["fusion"]["accuracy"] >= figures["tfidf"]["accuracy"] - 0.005
    assert figures["tfidf"]["temperature"] < 0.25  # sharpened back
    assert choose_shipped(figures, "best") in ("fusion", "tfidf")


def _calibrated(n: int, classes: int, seed: int):
    """Probabilities and classes drawn from them: calibrated, half right or so."""
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(classes, 0.3), n)
    y = np.array([rng.choice(classes, p=row) for row in p])
    return p, y


def test_a_model_that_knows_nothing_adds_nothing():
    p, y = _calibrated(2000, 5, 2)
    uniform = np.full_like(p, 0.2)
    # The TF-IDF model knows nothing: every w > 0 ranks as the LSTM does; the LSTM ships.
    figures = choose_weight(p, uniform, y)
    assert figures["fusion"]["accuracy"] == figures["lstm"]["accuracy"] > 0.5
    assert figures["weight"] == 1.0  # calibrated: sharpening or flattening it only costs NLL
    assert choose_shipped(figures, "best") == "lstm"
    # The LSTM knows nothing: the TF-IDF model alone (w = 0) is shipped, named as such.
    figures = choose_weight(uniform, p, y)
    assert figures["fusion"]["accuracy"] == figures["tfidf"]["accuracy"] > figures["lstm"]["accuracy"]
    assert figures["weight"] == 0.0 and choose_shipped(figures, "best") == "tfidf"


def test_float32_probabilities_of_zero_stay_finite():
    """The LSTM's softmax in float32 underflows to 0: fused and scored, it stays finite (a tiny probability)."""
    p_lstm = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    p_tfidf = np.array([[0.3, 0.7], [0.6, 0.4]])
    figures = choose_weight(p_lstm, p_tfidf, np.array([1, 0]))
    assert all(np.isfinite(g["nll"]) for g in figures["grid"]) and figures["weight"] == 0.0
    assert np.isfinite(fuse(p_lstm, p_tfidf, 0.5)).all()


def test_equal_models_tie_everywhere_and_the_lstm_alone_ships():
    p, y = _calibrated(100, 3, 3)
    figures = choose_weight(p, p.copy(), y)
    assert figures["weight"] == 1.0 and choose_shipped(figures, "best") == "lstm"


def test_ship_best_prefers_the_lstm_then_fusion_on_equal_scores():
    def figures(lstm, fusion, tfidf, weight=0.4, metric="accuracy"):
        return {"metric": metric, "weight": weight, "lstm": {metric: lstm}, "fusion": {metric: fusion},
                "tfidf": {metric: tfidf}}

    assert choose_shipped(figures(0.9, 0.9, 0.9), "best") == "lstm"
    assert choose_shipped(figures(0.8, 0.9, 0.9), "best") == "fusion"
    assert choose_shipped(figures(0.8, 0.85, 0.9), "best") == "tfidf"
    assert choose_shipped(figures(0.8, 0.9, 0.7, weight=1.0), "best") == "lstm"
    assert choose_shipped(figures(0.9, 0.8, 0.7), "lstm") == "lstm"
    # NLL: the lowest wins, the same order among equals.
    assert choose_shipped(figures(0.3, 0.2, 0.25, metric="nll"), "best") == "fusion"
    assert choose_shipped(figures(0.3, 0.3, 0.25, metric="nll"), "best") == "tfidf"
    assert choose_shipped(figures(0.2, 0.2, 0.25, metric="nll"), "best") == "lstm"
    with pytest.raises(PipelineError, match="ship: must be one of lstm, best, got 'fusion'"):
        choose_shipped(figures(0.9, 0.8, 0.7), "fusion")


def test_multi_label_fuses_logits_and_rechooses_thresholds():
    """The LSTM knows label 0 and nothing of label 1, the TF-IDF model the other way round: each alone
    reaches a micro-F1 below 0.8, fused both labels are right."""
    rng = np.random.default_rng(4)
    truth = rng.random((400, 2)) < 0.4
    knows = np.where(truth, 0.9, 0.1)
    p_lstm = np.column_stack([knows[:, 0], np.full(400, 0.5)])
    p_tfidf = np.column_stack([np.full(400, 0.5), knows[:, 1]])
    figures = choose_weight_multilabel(p_lstm, p_tfidf, truth)
    assert figures["task"] == "multi_label" and figures["metric"] == "micro_f1"
    assert max(figures["lstm"]["micro_f1"], figures["tfidf"]["micro_f1"]) < 0.8
    assert figures["fusion"]["micro_f1"] == 1.0 and 0.0 < figures["weight"] < 1.0
    assert figures["weight"] == 0.5  # the complement is symmetric: the BCE is lowest in the middle
    fused = fuse_multilabel(p_lstm, p_tfidf, figures["weight"])
    assert ((fused >= np.array(figures["fusion"]["thresholds"])) == truth).all()
    assert choose_shipped(figures, "best") == "fusion"
    # The grid's end is the LSTM alone, thresholds re-chosen as it chose them.
    assert figures["grid"][-1]["micro_f1"] == pytest.approx(figures["lstm"]["micro_f1"])


def test_align_puts_the_tfidf_columns_in_the_lstms_order_or_names_the_mismatch():
    probs = np.array([[0.1, 0.2, 0.7]])
    assert align(probs, ["b", "c", "a"], ["a", "b", "c"], "models/tfidf.npz").tolist() == [[0.7, 0.1, 0.2]]
    with pytest.raises(PipelineError, match=r"^models/tfidf.npz: its classes differ from the LSTM's \(missing \['d'\], "
                                            r"extra \['c'\]\)"):
        align(probs, ["a", "b", "c"], ["a", "b", "d"], "models/tfidf.npz")
    with pytest.raises(ValueError):
        choose_weight(probs, probs[:, :2], np.array([0]))

