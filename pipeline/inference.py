"""Batched prediction with a loaded checkpoint: token lists or raw texts -> class probabilities.

One policy for every front end (textclf-predict, batch prediction, the predict stage, textclf-serve):
a text with no tokens after the pipeline's own cleaning (markup only, a link only, invisible characters
only; the prepare stage drops such rows, so the model never saw one) gets no label and no
probabilities, and a stated reason (NO_TOKENS), never the label that an empty input happens to score.
Batch prediction says NO_TEXT for a missing, empty or blank text; the CLI and the server refuse those
as input errors. `predict_texts` applies the policy; `classify_texts` classifies whatever it is given.

The probabilities are the shipped model's (pipeline.checkpoint: the LSTM, the TF-IDF model or their fusion;
shipped_probabilities), the LSTM's calibrated: softmax(logits / T) with the checkpoint's temperature T
(pipeline.calibration; TextClassifier.probabilities). With a minimum confidence P (--min-confidence,
predict.min_confidence, the server's "min_confidence"), a text whose top probability is below P gets no
label either: its reason says "uncertain", and its probabilities are kept.

A multi-label model (pipeline.tasks.MultiLabel) gives each text a set of labels, possibly empty: every label
whose sigmoid probability reaches its threshold. Its `label(i)` is that list, its answer
{"labels": [...], "probabilities": {...}} ({"labels": null, ..., "reason"} without an answer), and under a
minimum confidence P a text is uncertain when any one of its label decisions is less sure than P (the
task's confidence: p for a label given, 1 - p for one left out).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import torch

from pipeline.batching import bucket_batches, encode, pad_batch, sequence_lengths
from pipeline.checkpoint import Checkpoint
from pipeline.model import TextClassifier
from pipeline.tasks import SINGLE_LABEL, Task
from pipeline.text import tokenize


def encode_texts(ckpt: Checkpoint, token_lists) -> list[np.ndarray]:
    """Token lists to the model's input ids, truncated the way the model was trained."""
    return encode(token_lists, ckpt.stoi, ckpt.unk_id, ckpt.max_tokens, ckpt.truncation)


@torch.no_grad()
def logit_batches(model: TextClassifier, sequences: Sequence[np.ndarray], batch_size: int = 256,
                  device: str | torch.device = "cpu") -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(indices into `sequences`, their raw logits as float32), a length-bucketed batch at a time: before
    temperature scaling (pipeline.calibration measures both)."""
    model.eval()
    for index in bucket_batches(sequence_lengths(sequences), batch_size):
        ids, lens = pad_batch(sequences, index, model.cfg.pad_id)
        yield index, model(ids.to(device), lens.to(device)).float().cpu().numpy()


@torch.no_grad()
def probability_batches(model: TextClassifier, sequences: Sequence[np.ndarray], batch_size: int = 256,
                        device: str | torch.device = "cpu",
                        task: Task = SINGLE_LABEL) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(indices into `sequences`, their calibrated class probabilities, the task's) a length-bucketed batch
    at a time: a caller that keeps only the top class holds one batch of probabilities, never (n, classes)."""
    model.eval()
    lengths = sequence_lengths(sequences)
    for index in bucket_batches(lengths, batch_size):
        ids, lens = pad_batch(sequences, index, model.cfg.pad_id)
        logits = model(ids.to(device), lens.to(device)).float()
        yield index, task.probabilities(logits / model.temperature.float()).cpu().numpy()  # temperature scaling


def predict_proba(model: TextClassifier, sequences: Sequence[np.ndarray], batch_size: int = 256,
                  device: str | torch.device = "cpu", task: Task = SINGLE_LABEL) -> np.ndarray:
    """Class probabilities, (n, classes), in the order of `sequences`."""
    probs = np.zeros((len(sequences), model.cfg.num_classes), dtype=np.float32)
    for index, batch in probability_batches(model, sequences, batch_size, device, task):
        probs[index] = batch
    return probs


def predict_top(model: TextClassifier, sequences: Sequence[np.ndarray], batch_size: int = 256,
                device: str | torch.device = "cpu", task: Task = SINGLE_LABEL) -> tuple[np.ndarray, np.ndarray]:
    """The class the task decides for each sequence and its probability, in memory linear in the rows."""
    best = np.zeros(len(sequences), dtype=np.int64)
    confidence = np.zeros(len(sequences), dtype=np.float32)
    for index, batch in probability_batches(model, sequences, batch_size, device, task):
        best[index] = task.decide(batch)
        confidence[index] = task.confidence(batch)
    return best, confidence


def shipped_probabilities(ckpt: Checkpoint, token_lists: Sequence[Sequence[str]], batch_size: int = 256) -> np.ndarray:
    """The shipped model's probabilities (n, labels), float32, of tokenized texts: the LSTM's (calibrated),
    the TF-IDF part's, or their fusion (pipeline.fusion: fuse, or fuse_multilabel for several labels a
    text), both parts reading the same tokens."""
    from pipeline.fusion import align, fuse, fuse_multilabel

    token_lists = list(token_lists)
    if ckpt.shipped != "tfidf":
        device = next(ckpt.model.parameters()).device
        p_lstm = predict_proba(ckpt.model, encode_texts(ckpt, token_lists), batch_size, device, ckpt.lstm_task)
        if ckpt.shipped == "lstm":
            return p_lstm
    p_tfidf = align(ckpt.tfidf.probabilities(token_lists), ckpt.tfidf.classes, ckpt.labels, "the checkpoint's tfidf")
    if ckpt.task.name == "multi_label":
        fused = p_tfidf if ckpt.shipped == "tfidf" else fuse_multilabel(p_lstm, p_tfidf, ckpt.fusion_weight)
    elif ckpt.shipped == "tfidf":  # w = 0 (the first part unused): the TF-IDF part alone, temperature-scaled
        fused = fuse(p_tfidf, p_tfidf, 0.0, ckpt.fusion_temperature)
    else:
        fused = fuse(p_lstm, p_tfidf, ckpt.fusion_weight, ckpt.fusion_temperature)
    return fused.astype(np.float32)


def classify_texts(ckpt: Checkpoint, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
    return shipped_probabilities(ckpt, [tokenize(t, ckpt.text_config) for t in texts], batch_size)


NO_TEXT = "no text (missing, empty or only blanks)"
NO_TOKENS = ("no tokens after cleaning (markup, links and invisible characters are removed, numbers too with "
             "prepare.numbers: drop): nothing for the model to read")


def uncertain(min_confidence: float, task: Task = SINGLE_LABEL) -> str:
    """The reason a text gets no label under a minimum confidence (its probabilities are kept)."""
    if task.name == "multi_label":
        return (f"uncertain: a label's decision is less sure than {min_confidence:g} (the minimum confidence; "
                "p for a label given, 1 - p for one left out)")
    return f"uncertain: no class has probability {min_confidence:g} or more (the minimum confidence)"


@dataclass
class Predictions:
    """Per text: its class probabilities (a row of NaN where it was not classified: no text, no tokens) and
    the reason it has no label (None where it has one; an uncertain text has probabilities and a reason);
    the task decides the label and shapes the answer."""
    probs: np.ndarray           # (n, classes), float32
    reasons: list[str | None]
    task: Task = field(default=SINGLE_LABEL)

    @property
    def labelled(self) -> np.ndarray:
        return np.array([r is None for r in self.reasons], dtype=bool)

    @property
    def multi_label(self) -> bool:
        return self.task.name == "multi_label"

    def label(self, i: int, labels: Sequence[str]) -> str | list[str] | None:
        """Text i's label (a multi-label model's: its list of labels, maybe empty); None without one."""
        if self.reasons[i] is not None:
            return None
        decided = self.task.decide(self.probs[i])
        if self.multi_label:
            return [label for label, yes in zip(labels, decided) if yes]
        return labels[int(decided)]

    def without(self, reason: str) -> int:
        return sum(r == reason for r in self.reasons)

    def __len__(self) -> int:
        return len(self.reasons)

    def __getitem__(self, part: slice) -> "Predictions":  # the server hands each request its slice
        return Predictions(self.probs[part], self.reasons[part], self.task)

    @classmethod
    def concat(cls, parts: Sequence["Predictions"]) -> "Predictions":  # the server's explained parts, joined
        return cls(np.concatenate([p.probs for p in parts]), [r for p in parts for r in p.reasons], parts[0].task)

    def abstaining(self, min_confidence: float | None) -> "Predictions":
        """The same predictions with the labelled texts whose confidence (the task's: the top probability;
        a multi-label model's least sure label decision) is below `min_confidence` marked uncertain (label
        null, probabilities kept); unchanged with None."""
        if min_confidence is None:
            return self
        reason = uncertain(min_confidence, self.task)
        if len(self.reasons) == 0 or self.probs.shape[1] == 0:
            top = np.ones(len(self.reasons))
        else:
            top = self.task.confidence(np.nan_to_num(self.probs, nan=1.0))
        return Predictions(self.probs, [reason if r is None and top[i] < min_confidence else r
                                        for i, r in enumerate(self.reasons)], self.task)

    def answer(self, i: int, labels: Sequence[str]) -> dict:
        """Text i's label (a multi-label model's "labels") and probabilities as the server and `--json` give
        them (the task's answer); a null label and a reason when it has none (null probabilities too, unless the reason is that it is uncertain)."""
        if self.reasons[i] is not None:
            scored = not np.isnan(self.probs[i]).any()
            return {"labels" if self.multi_label else "label": None, "probabilities": {lab: float(v) for lab, v in zip(labels, self.probs[i])}
                    if scored else None, "reason": self.reasons[i]}
        return self.task.answer(self.probs[i], labels)


def predict_texts(ckpt: Checkpoint, texts: Sequence, batch_size: int = 256,
                  min_confidence: float | None = None) -> Predictions:
    """Probabilities of the texts that have something to classify; the others get a reason, and so do the
    texts below `min_confidence` (module doc)."""
    token_lists, reasons = [], []
    for text in texts:
        tokens = tokenize(text, ckpt.text_config) if isinstance(text, str) and text.strip() else []
        token_lists.append(tokens)
        reasons.append(None if tokens else NO_TOKENS if isinstance(text, str) and text.strip() else NO_TEXT)
    probs = np.full((len(token_lists), len(ckpt.labels)), np.nan, dtype=np.float32)
    keep = [i for i, r in enumerate(reasons) if r is None]
    task = ckpt.task
    if keep:
        probs[keep] = shipped_probabilities(ckpt, [token_lists[i] for i in keep], batch_size)
    return Predictions(probs, reasons, task).abstaining(min_confidence)
