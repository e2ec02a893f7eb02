"""Calibrated probabilities: temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural
Networks") and the measures of calibration.

One scalar T > 0, fitted after training on the validation split, divides the logits before the softmax:
it minimises the validation negative log-likelihood of softmax(logits / T) (scipy's bounded Brent search
over log T, within checkpoint.TEMPERATURE_RANGE; the NLL is convex in 1/T, so unimodal in log T). T never
changes which class is largest: accuracy stays what it was. T > 1 softens an over-confident model.

Measures, each of the top class's probability (the confidence) against whether the top class is right:
- expected calibration error (ECE): 15 equal-width confidence bins over [0, 1], the weighted mean of
  |accuracy - mean confidence| per bin (Naeini et al. 2015; Guo et al.'s 15 bins);
- Brier score: the mean over rows of sum over classes of (p_k - y_k)^2 (Brier 1950; 0 best, 2 worst);
- the reliability diagram (accuracy and mean confidence per non-empty bin) and the accuracy-against-
  coverage curve (keep the texts whose confidence is at least t: what share is kept, how accurate they are),
  the latter also as a table at the thresholds MIN_CONFIDENCE_TABLE (the model card's).
Everything here is linear in the rows and reads the logits a batch at a time (score_batches).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from scipy.special import log_softmax

from pipeline.temperature import fit_temperature, nll  # noqa: F401 - the fit, and this module's API

BINS = 15
MIN_CONFIDENCE_TABLE = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
COVERAGE_POINTS = 200  # the coverage curve, thinned to at most this many points


@dataclass
class Scores:
    """Per row: the top class's probability (confidence), whether the top class is right, and the row's
    Brier term; for one temperature. `top`: the top class (the same at every temperature)."""
    confidence: np.ndarray
    correct: np.ndarray
    brier: np.ndarray
    top: np.ndarray

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean()) if len(self.correct) else float("nan")

    def ece(self, bins: int = BINS) -> float:
        return expected_calibration_error(self.confidence, self.correct, bins)

    def brier_score(self) -> float:
        return float(self.brier.mean()) if len(self.brier) else float("nan")


def scores(logits: np.ndarray, targets: np.ndarray, temperature: float = 1.0) -> Scores:
    """Scores of one batch of logits (n, classes) at this temperature."""
    probs = np.exp(log_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1))
    rows = np.arange(len(targets))
    brier = (probs ** 2).sum(axis=1) - 2 * probs[rows, targets] + 1.0  # sum_k (p_k - y_k)^2
    top = probs.argmax(axis=1)
    return Scores(probs.max(axis=1), top == targets, brier, top)


def score_batches(batches: Iterable[tuple[np.ndarray, np.ndarray]], targets: np.ndarray,
                  temperatures: Sequence[float]) -> list[Scores]:
    """Scores at each temperature from (indices, logits) batches (pipeline.inference.logit_batches), in the
    order of `targets`: memory linear in the rows, never (rows, classes)."""
    n = len(targets)
    out = [Scores(np.zeros(n), np.zeros(n, dtype=bool), np.zeros(n), np.zeros(n, dtype=np.int64))
           for _ in temperatures]
    for index, logits in batches:
        for result, temperature in zip(out, temperatures):
            part = scores(logits, targets[index], temperature)
            result.confidence[index], result.correct[index], result.brier[index], result.top[index] = \
                part.confidence, part.correct, part.brier, part.top
    return out


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = BINS) -> float:
    """ECE over `bins` equal-width bins of (0, 1] (a confidence of exactly 1 in the last)."""
    if len(confidence) == 0:
        return float("nan")
    table = reliability(confidence, correct, bins)
    return float(sum(row["count"] * abs(row["accuracy"] - row["confidence"]) for row in table) / len(confidence))


def reliability(confidence: np.ndarray, correct: np.ndarray, bins: int = BINS) -> list[dict]:
    """Per non-empty bin: its range, the rows in it, their accuracy and mean confidence."""
    confidence = np.asarray(confidence, dtype=np.float64)
    which = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    rows = []
    for b in range(bins):
        inside = which == b
        if inside.any():
            rows.append({"bin": f"{b / bins:.3f}-{(b + 1) / bins:.3f}", "count": int(inside.sum()),
                         "accuracy": float(np.mean(correct[inside])), "confidence": float(confidence[inside].mean())})
    return rows


def coverage_curve(confidence: np.ndarray, correct: np.ndarray, points: int = COVERAGE_POINTS) -> list[dict]:
    """Accuracy against coverage: keeping the k most confident rows, for k thinned to `points` values."""
    order = np.argsort(-np.asarray(confidence), kind="stable")
    hits = np.cumsum(np.asarray(correct)[order])
    n = len(order)
    ks = np.unique(np.linspace(1, n, min(points, n)).round().astype(np.int64)) if n else np.array([], dtype=np.int64)
    return [{"coverage": round(float(k / n), 4), "accuracy": round(float(hits[k - 1] / k), 4),
             "min_confidence": round(float(confidence[order[k - 1]]), 4)} for k in ks]


def threshold_table(confidence: np.ndarray, correct: np.ndarray,
                    thresholds: Sequence[float] = MIN_CONFIDENCE_TABLE) -> list[dict]:
    """Per threshold P: the share of rows whose confidence is at least P (what --min-confidence P labels)
    and the accuracy on them (null when none is kept)."""
    rows = []
    for p in thresholds:
        kept = np.asarray(confidence) >= p
        rows.append({"min_confidence": p, "coverage": round(float(kept.mean()), 4) if len(kept) else None,
                     "accuracy": round(float(np.mean(np.asarray(correct)[kept])), 4) if kept.any() else None})
    return rows


def probabilities(logits: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(logits / temperature) as float32 (what TextClassifier.probabilities gives)."""
    return np.exp(log_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)).astype(np.float32)


def write_plots(raw: Scores, calibrated: Scores, folder: Path, coverage: Scores | None = None) -> None:
    """The DVC plots' data (dvc.yaml `plots:`), each file atomically: reliability.csv and reliability_raw.csv
    (per non-empty bin: mean confidence, accuracy, count; after and before scaling), reliability_ideal.csv
    (the diagonal) and coverage.csv (accuracy against coverage, by the calibrated confidence, or by
    `coverage`'s where given: a multi-label model's reliability is per (text, label), its coverage per text)."""
    coverage = calibrated if coverage is None else coverage
    import pandas as pd

    from pipeline.files import atomic_path

    folder.mkdir(parents=True, exist_ok=True)
    tables = {"reliability.csv": pd.DataFrame(reliability(calibrated.confidence, calibrated.correct)),
              "reliability_raw.csv": pd.DataFrame(reliability(raw.confidence, raw.correct)),
              "reliability_ideal.csv": pd.DataFrame({"confidence": [0.0, 1.0], "accuracy": [0.0, 1.0]}),
              "coverage.csv": pd.DataFrame(coverage_curve(coverage.confidence, coverage.correct))}
    for name, table in tables.items():
        with atomic_path(folder / name) as tmp:
            table.round(4).to_csv(tmp, index=False)


def summary(raw: Scores, calibrated: Scores, temperature: float) -> dict:
    """ECE and Brier before (raw) and after temperature scaling, and the temperature, rounded."""
    return {"temperature": round(temperature, 4),
            "ece_raw": round(raw.ece(), 4), "ece": round(calibrated.ece(), 4),
            "brier_raw": round(raw.brier_score(), 4), "brier": round(calibrated.brier_score(), 4)}


def _validation_logits(path: Path, split: Path, batch_size: int):
    """The checkpoint at `path` (its bytes and loaded form), and its raw logits on the labelled split's texts
    with the split's `label` column."""
    import pandas as pd

    from pipeline.checkpoint import load_checkpoint
    from pipeline.inference import encode_texts, logit_batches

    data = Path(path).read_bytes()
    ckpt = load_checkpoint(path, data=data)
    frame = pd.read_parquet(split, columns=["tokens", "label"])
    logits = np.zeros((len(frame), len(ckpt.labels)), dtype=np.float32)
    for rows, batch in logit_batches(ckpt.model, encode_texts(ckpt, frame["tokens"]), batch_size):
        logits[rows] = batch
    return data, ckpt, logits, frame["label"]


def _write_calibration(path: Path, data: bytes, calibration: dict) -> None:
    """The checkpoint's bytes `data` with its "calibration" entry replaced, written to `path` atomically."""
    import torch

    from pipeline.files import atomic_path

    payload = torch.load(io.BytesIO(data), weights_only=True)
    payload["calibration"] = calibration
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    with atomic_path(Path(path)) as tmp:
        tmp.write_bytes(buffer.getvalue())


def calibrate_checkpoint(path: Path, split: Path, batch_size: int = 256) -> dict:
    """Fit the temperature of the checkpoint at `path` on the labelled split (the train stage's validation
    parquet: its `tokens` and `label` columns), write it into the checkpoint (atomically), and return the
    summary: the temperature, ECE and Brier score before and after, the split's size."""
    data, ckpt, logits, label = _validation_logits(path, split, batch_size)
    index = {name: i for i, name in enumerate(ckpt.labels)}
    targets = np.array([index[name] for name in label], dtype=np.int64)
    temperature = fit_temperature(logits, targets)
    raw, calibrated = scores(logits, targets, 1.0), scores(logits, targets, temperature)
    _write_calibration(path, data, {"temperature": temperature})
    return {**summary(raw, calibrated, temperature), "nll_raw": round(nll(logits, targets, 1.0), 4),
            "nll": round(nll(logits, targets, temperature), 4), "rows": len(targets)}


def threshold_checkpoint(path: Path, split: Path, batch_size: int = 256) -> dict:
    """A multi-label model's decision thresholds, one per label, chosen on the labelled split (validation;
    pipeline.multilabel_metrics.choose_thresholds) and written into the checkpoint at `path` (atomically);
    the split's micro-, macro- and samples-F1 at 0.5 (`_raw`) and at the thresholds."""
    from scipy.special import expit

    from pipeline.multilabel_metrics import choose_thresholds, label_matrix, multilabel_metrics

    data, ckpt, logits, label = _validation_logits(path, split, batch_size)
    truth, probs = label_matrix(label, ckpt.labels), expit(logits.astype(np.float64)).astype(np.float32)
    thresholds = choose_thresholds(probs, truth)
    raw, tuned = (multilabel_metrics(truth, probs >= t, ckpt.labels) for t in (0.5, thresholds))
    _write_calibration(path, data, {"temperature": 1.0, "thresholds": thresholds.tolist()})
    return {**{f"{k}_raw": raw[k] for k in ("micro_f1", "macro_f1", "samples_f1")},
            **{k: tuned[k] for k in ("micro_f1", "macro_f1", "samples_f1")}, "rows": len(truth)}
