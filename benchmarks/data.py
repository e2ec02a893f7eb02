"""The prepared splits in memory, for the benchmarks: token lists encoded with the vocabulary, labels as class ids.

    labels = class_labels()
    train_x, train_y = load_split("train", stoi, unk_id, labels)

The train stage reads the vocab stage's compact ids through `pipeline.batching.TokenIds` instead; both
give the same sequences (`pipeline.batching.encode` is the one encoder), and the label ids are the
train stage's (the single-label task's `targets`, pipeline/tasks.py: the sorted training labels, in order).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.batching import encode
from pipeline.tasks import SINGLE_LABEL

PREPARED = Path("data/prepared")
VOCAB_DIR = Path("data/vocab")


def read_split(name: str) -> pd.DataFrame:
    """A prepared split's tokens and labels."""
    return pd.read_parquet(PREPARED / f"{name}.parquet", columns=["tokens", "label"])


def class_labels() -> list[str]:
    """The class names in class-id order: the training split's labels, sorted (as the train stage has them)."""
    return sorted(pd.read_parquet(PREPARED / "train.parquet", columns=["label"])["label"].unique().tolist())


def load_split(name: str, stoi: dict[str, int], unk_id: int, labels: list[str], max_tokens: int | None = None,
               truncation: str = "head") -> tuple[list[np.ndarray], np.ndarray]:
    """A prepared split as id sequences (untruncated by default) and label ids."""
    df = read_split(name)
    return encode(df["tokens"], stoi, unk_id, max_tokens, truncation), SINGLE_LABEL.targets(df["label"], labels, PREPARED / f"{name}.parquet")
