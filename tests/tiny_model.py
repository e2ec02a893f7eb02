"""A tiny trained checkpoint for the tests of predict, export and the model card.

Trained in about a second on the 200 real Pang & Lee sentences of gensim's fixtures, with a few dozen
full-batch Adam steps of its own (not pipeline.training, so these tests do not follow every change to the
training loop). Small enough to be fast, trained enough that its probabilities differ from text to text.
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
