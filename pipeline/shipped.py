"""What the pipeline ships (stage ship): the LSTM, the TF-IDF model or their fusion, as one models/model.pt.

From train's models/lstm.pt and the baseline's models/tfidf.npz, on the validation split: the LSTM's
calibrated probabilities and the TF-IDF model's, their columns aligned (pipeline.fusion.align), the fusion's
weight chosen (choose_weight; several labels a text: choose_weight_multilabel, with the fused thresholds),
and what ships under `ship.model` (choose_shipped: lstm, or the best of lstm, fusion and tfidf). Written:
- models/model.pt: the LSTM checkpoint's bytes exactly when the LSTM ships; else its dict plus "tfidf" (the
  TF-IDF model as plain data) and "fusion" (shipped, weight, temperature or multi-label thresholds):
  pipeline.checkpoint;
- metrics/ship.json (numbers only, a DVC metric): ship_model (0 lstm, 1 fusion, 2 tfidf), the weight, the
  three validation scores (one label a text: accuracy and NLL, the NLL chose; several: micro-F1), and the fused model on the test split (fusion_test_acc, fusion_test_f1: its own
  row, computed whether or not it ships, never used to choose);
- metrics/ship/report.json: the shipped model's name, the validation figures and the weight grid.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline.checkpoint import Checkpoint, load_checkpoint
from pipeline.files import atomic_path, write_json
from pipeline.fusion import align, choose_shipped, choose_weight, choose_weight_multilabel, fuse, fuse_multilabel
from pipeline.inference import shipped_probabilities
from pipeline.tfidf_model import TfidfModel

LSTM_PATH = Path("models/lstm.pt")
TFIDF_PATH = Path("models/tfidf.npz")
MODEL_PATH = Path("models/model.pt")
PREPARED = Path("data/prepared")
METRICS = Path("metrics/ship.json")
REPORT = Path("metrics/ship/report.json")
CODES = {"lstm": 0, "fusion": 1, "tfidf": 2}  # ship_model in metrics/ship.json: DVC metrics are numbers


def part_probabilities(ckpt: Checkpoint, tfidf: TfidfModel, split: Path, batch_size: int = 256):
    """The LSTM's (calibrated) and the TF-IDF model's probabilities of the split's texts, columns in the LSTM's
    label order, and the split's labels."""
    frame = pd.read_parquet(split, columns=["tokens", "label"])
    tokens = [list(t) for t in frame["tokens"]]
    p_lstm = shipped_probabilities(ckpt, tokens, batch_size)
    p_tfidf = align(tfidf.probabilities(tokens), tfidf.classes, ckpt.labels, str(TFIDF_PATH))
    return p_lstm, p_tfidf, frame["label"]


def _truth(ckpt: Checkpoint, label: pd.Series):
    if ckpt.task.name == "multi_label":
        from pipeline.multilabel_metrics import label_matrix

        return label_matrix(label, ckpt.labels)
    index = {name: i for i, name in enumerate(ckpt.labels)}
    return np.array([index[name] for name in label], dtype=np.int64)


def choose(ckpt: Checkpoint, tfidf: TfidfModel, policy: str, batch_size: int = 256) -> dict:
    """The validation figures (fusion.choose_weight's or choose_weight_multilabel's) and "shipped"."""
    p_lstm, p_tfidf, label = part_probabilities(ckpt, tfidf, PREPARED / "val.parquet", batch_size)
    chooser = choose_weight_multilabel if ckpt.task.name == "multi_label" else choose_weight
    figures = chooser(p_lstm, p_tfidf, _truth(ckpt, label))
    return {**figures, "shipped": choose_shipped(figures, policy)}


def fused_test_figures(ckpt: Checkpoint, tfidf: TfidfModel, figures: dict, batch_size: int = 256) -> dict:
    """The fused model (at the chosen weight; multi-label: at its thresholds) on the test split: accuracy
    (multi-label: subset accuracy) and macro-F1."""
    p_lstm, p_tfidf, label = part_probabilities(ckpt, tfidf, PREPARED / "test.parquet", batch_size)
    w = figures["weight"]
    if ckpt.task.name == "multi_label":
        from pipeline.multilabel_metrics import label_sets

        decided = fuse_multilabel(p_lstm, p_tfidf, w) >= np.asarray(figures["fusion"]["thresholds"])
        actual, predicted = label.map(list).tolist(), label_sets(decided, ckpt.labels)
    else:
        actual = label.tolist()
        predicted = [ckpt.labels[i] for i in fuse(p_lstm, p_tfidf, w, figures["fusion"]["temperature"]).argmax(axis=1)]
    metrics = ckpt.task.metrics(actual, predicted, ckpt.labels)
    return {"fusion_test_acc": round(metrics["accuracy"], 4), "fusion_test_f1": round(metrics["macro_f1"], 4)}


def shipped_bytes(lstm_bytes: bytes, tfidf: TfidfModel, figures: dict) -> bytes:
    """models/model.pt's bytes (module doc): the LSTM's own when it ships."""
    shipped = figures["shipped"]
    if shipped == "lstm":
        return lstm_bytes
    payload = torch.load(io.BytesIO(lstm_bytes), weights_only=True)
    meta, arrays = tfidf.to_members()
    payload["tfidf"] = {"meta": meta, **{k: torch.from_numpy(v) for k, v in arrays.items()}}
    payload["fusion"] = {"shipped": shipped, "weight": figures["weight"] if shipped == "fusion" else 0.0}
    if figures["task"] == "single_label":  # the shipped part's temperature, fitted on validation
        payload["fusion"]["temperature"] = float(figures[shipped]["temperature"])
    else:
        payload["fusion"]["thresholds"] = [float(t) for t in figures[shipped]["thresholds"]]
    buffer = io.BytesIO()  # through memory: the archive is named after the file (checkpoint.save_checkpoint)
    torch.save(payload, buffer)
    return buffer.getvalue()


def ship(policy: str, batch_size: int = 256) -> dict:
    """Stage ship's work (module doc); returns the report."""
    lstm_bytes = LSTM_PATH.read_bytes() if LSTM_PATH.is_file() else None
    ckpt = load_checkpoint(LSTM_PATH, data=lstm_bytes)
    if ckpt.shipped != "lstm":
        from pipeline.errors import PipelineError

        raise PipelineError(f"{LSTM_PATH}: holds a shipped {ckpt.shipped} model, not train's LSTM alone; "
                            "run `dvc repro train`")
    tfidf = TfidfModel.load(TFIDF_PATH)
    figures = choose(ckpt, tfidf, policy, batch_size)
    shown = ("accuracy", "nll") if figures["task"] == "single_label" else ("micro_f1",)
    metrics = {"ship_model": CODES[figures["shipped"]], "ship_fusion_weight": figures["weight"],
               **{f"ship_val_{'acc' if metric == 'accuracy' else metric}_{name}": round(figures[name][metric], 4)
                  for metric in shown for name in ("lstm", "tfidf", "fusion")},
               **fused_test_figures(ckpt, tfidf, figures, batch_size)}
    report = {"shipped": figures["shipped"], "policy": policy, **figures, "metrics": metrics}
    data = shipped_bytes(lstm_bytes, tfidf, figures)
    with atomic_path(MODEL_PATH) as tmp:
        tmp.write_bytes(data)
    write_json(REPORT, report)
    write_json(METRICS, metrics)
    return report
