"""A tiny trained checkpoint for the tests of predict, export and the model card.

Trained in about a second on the 200 real Pang & Lee sentences of gensim's fixtures, with a few dozen
full-batch Adam steps of its own (not pipeline.training, so these tests do not follow every change to the
training loop). Small enough to be fast, trained enough that its probabilities differ from text to text.

`train_tiny_multilabel_checkpoint`: the same sentences with a set of labels each (MULTI_LABELS: the
sentiment, `film` for a text naming a film or movie, `long` for one of more than 20 tokens, and no label
at all for every seventh), trained with the multi-label task's own loss and saved as a multi-label
checkpoint with decision thresholds chosen on the same sentences (pipeline.multilabel_metrics).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import torch

from pipeline.batching import encode, pad_batch
from pipeline.checkpoint import save_checkpoint
from pipeline.model import ModelConfig, TextClassifier
from pipeline.text import TextConfig, tokenize
from tests.helpers import polarity_rows

MAX_TOKENS = 12  # below most sentences' length, so truncation is part of what the tests check
TRUNCATION = "head+tail"


def train_tiny_checkpoint(path: Path, pooling: str = "attention", bidirectional: bool = True, num_layers: int = 1,
                          embedding_channels: int = 1, steps: int = 40, encoder: str = "lstm") -> Path:
    torch.manual_seed(0)
    rows = polarity_rows()
    text_config = TextConfig()
    tokens = [tokenize(text, text_config) for text, _ in rows]
    counts = Counter(t for ts in tokens for t in ts)
    itos = ["<pad>", "<unk>"] + sorted(w for w, c in counts.items() if c >= 2)
    stoi = {w: i for i, w in enumerate(itos)}
    labels = sorted({label for _, label in rows})
    xs = encode(tokens, stoi, 1, MAX_TOKENS, TRUNCATION)
    ys = torch.tensor([labels.index(label) for _, label in rows])
    cfg = ModelConfig(vocab_size=len(itos), embedding_dim=8, num_classes=len(labels), hidden_size=8,
                      num_layers=num_layers, bidirectional=bidirectional, dropout=0.0, embedding_dropout=0.0,
                      pooling=pooling, embedding_channels=embedding_channels, encoder=encoder)
    model = TextClassifier(cfg)
    ids, lengths = pad_batch(xs, np.arange(len(xs)), cfg.pad_id)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.02)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # ops this small run ~10x slower on two threads when another job holds a core
    try:
        for _ in range(steps):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(ids, lengths), ys).backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    info = {"best_epoch": 3, "best_val_accuracy": 0.75,
            "params": {"hidden_size": 8, "pooling": pooling, "seed": 0, "truncation": TRUNCATION}}
    save_checkpoint(path, model, model.state_dict(), itos, labels, text_config, 1, info, MAX_TOKENS, TRUNCATION)
    return path


# Different lengths (one past max_tokens, one with no token at all, one of unknown words only) and
# typographic marks: what the exported model and batch prediction must agree with PyTorch on.
TEXTS = [
    "a gripping , beautifully acted film",
    "dull",
    "the film's best scene isn\u2019t enough to save a plot that goes nowhere , slowly , for two long hours",
    "",
    "zxqv wvut",
    "one of the year's best movies : funny , moving and smart , with a cast that makes every line count",
    "!!!",
]


MULTI_LABELS = ["film", "long", "neg", "pos"]


def multilabel_rows() -> list[tuple[str, list[str]]]:
    """The polarity sentences, each with its label set (module doc); the same rule as the multi-label
    prepared splits of the DVC tests."""
    text_config = TextConfig()
    rows = []
    for i, (text, sentiment) in enumerate(polarity_rows()):
        tokens = tokenize(text, text_config)
        names = {sentiment} | ({"long"} if len(tokens) > 20 else set()) | \
            ({"film"} if {"film", "movie"} & set(tokens) else set())
        rows.append((text, [] if i % 7 == 0 else sorted(names)))
    return rows


def train_tiny_multilabel_checkpoint(path: Path, steps: int = 60) -> Path:
    """A multi-label checkpoint (info task multi_label, thresholds in its calibration), trained with
    tasks.MultiLabel's loss on multilabel_rows()."""
    import io

    from pipeline.multilabel_metrics import choose_thresholds, label_matrix
    from pipeline.tasks import MultiLabel

    torch.manual_seed(0)
    rows = multilabel_rows()
    text_config = TextConfig()
    tokens = [tokenize(text, text_config) for text, _ in rows]
    counts = Counter(t for ts in tokens for t in ts)
    itos = ["<pad>", "<unk>"] + sorted(w for w, c in counts.items() if c >= 2)
    stoi = {w: i for i, w in enumerate(itos)}
    truth = label_matrix([names for _, names in rows], MULTI_LABELS)
    xs = encode(tokens, stoi, 1, 24, "head")
    cfg = ModelConfig(vocab_size=len(itos), embedding_dim=8, num_classes=len(MULTI_LABELS), hidden_size=8,
                      num_layers=1, bidirectional=True, dropout=0.0, embedding_dropout=0.0, pooling="attention")
    model = TextClassifier(cfg)
    ids, lengths = pad_batch(xs, np.arange(len(xs)), cfg.pad_id)
    task, target = MultiLabel(), torch.from_numpy(truth.astype(np.float32))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.02)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(steps):
            optimizer.zero_grad()
            (task.loss(model(ids, lengths), target) / len(rows)).backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    with torch.no_grad():
        probs = torch.sigmoid(model(ids, lengths)).numpy()
    info = {"task": "multi_label", "best_epoch": 3, "best_val_accuracy": 0.5,
            "params": {"hidden_size": 8, "pooling": "attention", "seed": 0, "truncation": "head"}}
    save_checkpoint(path, model, model.state_dict(), itos, MULTI_LABELS, text_config, 1, info, 24, "head")
    payload = torch.load(path, weights_only=True)
    payload["calibration"] = {"temperature": 1.0, "thresholds": choose_thresholds(probs, truth).tolist()}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    path.write_bytes(buffer.getvalue())
    return path


# Texts for the multi-label model: one that names a film, a long one, one of unknown words, one with no
# token at all, one given no label (each probability below its threshold).
MULTI_TEXTS = [
    "everything is off .",
    "a gripping , beautifully acted film",
    "the film's best scene isn't enough to save a plot that goes nowhere , slowly , for two long hours , "
    "with a cast that cannot save it and a score that never stops",
    "zxqv wvut",
    "<br/>",
    "dull",
]


def tiny_tfidf(multi_label: bool = False):
    """The TF-IDF baseline (pipeline.tfidf's vectorizer and classifiers) fitted on the same sentences as the
    tiny checkpoints, tokenized the same way; its classes in another order than the LSTM's (reversed), so
    every fusion test also checks the columns' alignment."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    from pipeline.multilabel_metrics import choose_thresholds, label_matrix
    from pipeline.tfidf import tfidf_vectorizer
    from pipeline.tfidf_model import TfidfModel

    text_config = TextConfig()
    rows = multilabel_rows() if multi_label else polarity_rows()
    tokens = [tokenize(text, text_config) for text, _ in rows]
    vectorizer = tfidf_vectorizer(2, 1)
    x = vectorizer.fit_transform(tokens)
    if not multi_label:
        clf = LogisticRegression(C=4.0, max_iter=2000).fit(x, [label for _, label in rows])
        model = TfidfModel.from_vectorizer(vectorizer, clf)
        order = model.classes[::-1]
        model.coef, model.intercept = model.coef[::-1].copy(), model.intercept[::-1].copy()
        model.classes = order
        return model
    labels = MULTI_LABELS[::-1]
    truth = label_matrix([names for _, names in rows], labels)
    clf = OneVsRestClassifier(LogisticRegression(C=4.0, max_iter=2000)).fit(x, truth)
    return TfidfModel.from_vectorizer(vectorizer, clf, choose_thresholds(clf.predict_proba(x), truth), labels)


TINY_FUSION_TEMPERATURE = 1.7  # not 1: the tests see it applied


def tiny_shipped_checkpoint(lstm_path: Path, path: Path, shipped: str = "fusion", weight: float = 0.4) -> Path:
    """The stage ship's models/model.pt (pipeline.shipped.shipped_bytes) of a tiny LSTM checkpoint and
    tiny_tfidf(): `shipped` (fusion or tfidf) at `weight`, temperature TINY_FUSION_TEMPERATURE (one label a
    text) or thresholds of 0.4 each (several)."""
    from pipeline.checkpoint import load_checkpoint
    from pipeline.shipped import shipped_bytes

    ckpt = load_checkpoint(lstm_path)
    multi = ckpt.task.name == "multi_label"
    figures = {"shipped": shipped, "weight": weight, "task": "multi_label" if multi else "single_label"}
    figures[shipped] = {"thresholds": [0.4] * len(ckpt.labels)} if multi else {"temperature": TINY_FUSION_TEMPERATURE}
    path.write_bytes(shipped_bytes(lstm_path.read_bytes(), tiny_tfidf(multi), figures))
    return path
