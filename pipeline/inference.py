"""Batched prediction with a loaded checkpoint: token lists or raw texts -> class probabilities."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from pipeline.batching import bucket_batches, encode, pad_batch, sequence_lengths
from pipeline.checkpoint import Checkpoint
from pipeline.model import TextClassifier
from pipeline.text import tokenize


def encode_texts(ckpt: Checkpoint, token_lists) -> list[np.ndarray]:
    """Token lists to the model's input ids, truncated the way the model was trained."""
    return encode(token_lists, ckpt.stoi, ckpt.unk_id, ckpt.max_tokens, ckpt.truncation)


@torch.no_grad()
def predict_proba(model: TextClassifier, sequences: Sequence[np.ndarray], batch_size: int = 256,
                  device: str | torch.device = "cpu") -> np.ndarray:
    """Class probabilities, (n, classes), in the order of `sequences`."""
    model.eval()
    probs = np.zeros((len(sequences), model.cfg.num_classes), dtype=np.float32)
    lengths = sequence_lengths(sequences)
    for index in bucket_batches(lengths, batch_size):
        ids, lens = pad_batch(sequences, index, model.cfg.pad_id)
        logits = model(ids.to(device), lens.to(device))
        probs[index] = torch.softmax(logits.float(), dim=-1).cpu().numpy()
    return probs


def classify_texts(ckpt: Checkpoint, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
    sequences = encode_texts(ckpt, [tokenize(t, ckpt.text_config) for t in texts])
    device = next(ckpt.model.parameters()).device
    return predict_proba(ckpt.model, sequences, batch_size, device)
