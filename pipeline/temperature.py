"""Fitting a temperature: the T > 0 that minimises the negative log-likelihood of softmax(logits / T)
(scipy's bounded Brent search over log T, within checkpoint.TEMPERATURE_RANGE; the NLL is convex in 1/T, so
unimodal in log T). Numbers only, no model: pipeline.calibration fits the LSTM's temperature with it and
pipeline.fusion the fused model's, without an import circle (calibration reads models through inference,
which fuses).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp

from pipeline.checkpoint import TEMPERATURE_RANGE


def nll(logits: np.ndarray, targets: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of softmax(logits / temperature) at the targets."""
    scaled = logits.astype(np.float64) / temperature
    return float(np.mean(logsumexp(scaled, axis=1) - scaled[np.arange(len(targets)), targets]))


def fit_temperature(logits: np.ndarray, targets: np.ndarray) -> float:
    """The T in TEMPERATURE_RANGE that minimises nll(logits, targets, T); 1.0 with no rows."""
    logits, targets = np.asarray(logits, dtype=np.float64), np.asarray(targets, dtype=np.int64)
    if len(targets) == 0:
        return 1.0
    low, high = (math.log(t) for t in TEMPERATURE_RANGE)
    result = minimize_scalar(lambda log_t: nll(logits, targets, math.exp(log_t)), bounds=(low, high),
                             method="bounded", options={"xatol": 1e-6})
    return float(math.exp(result.x))
