"""The saved model (models/model.pt) and batched prediction, shared by train, evaluate and predict.

The checkpoint carries everything needed to classify raw text: weights, model config, vocabulary,
label names and the tokenizer settings of the prepare stage.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from pipeline.common import PipelineError, atomic_path
from pipeline.data import bucket_batches, encode, pad_batch, sequence_lengths
from pipeline.model import LSTMClassifier, ModelConfig
from pipeline.text import TextConfig, tokenize

MODEL_PATH = Path("models/model.pt")


@dataclass
class Checkpoint:
    model: LSTMClassifier
    itos: list[str]
    labels: list[str]
    text_config: TextConfig
    unk_id: int
    info: dict
    max_tokens: int | None = None  # the model's input: at most this many tokens of a text,
    truncation: str = "head"       # chosen this way (head, tail, head+tail)

    @property
    def stoi(self) -> dict[str, int]:
        return {w: i for i, w in enumerate(self.itos)}


def save_checkpoint(path: Path, model: LSTMClassifier, state_dict: dict, itos: list[str], labels: list[str],
                    text_config: TextConfig, unk_id: int, info: dict, max_tokens: int | None = None,
                    truncation: str = "head") -> None:
    payload = {
        "format": 2,
        "input": {"max_tokens": max_tokens, "truncation": truncation},
        "config": model.cfg.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
        "itos": itos,
        "labels": labels,
        "text_config": asdict(text_config),
        "unk_id": unk_id,
        "info": info,
    }
    # Through memory: torch.save names the archive after the file, and the temporary file's name is
    # random, so saving to it directly would make identical models differ byte for byte (and in DVC).
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def require_model_file(path: Path) -> Path:
    """`path` if it is a file; else an error for the command line: where it looked, how to name another.

    A relative path is relative to the current directory, so the default works in a checkout's root."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: no trained model at {path.resolve()}; pass --model PATH to a checkpoint "
                            "(the models/model.pt of a trained checkout), or train one with `make repro` "
                            "in the repository")
    return path


def load_checkpoint(path: Path = MODEL_PATH, device: str | torch.device = "cpu") -> Checkpoint:
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise PipelineError(f"{path}: no trained model (run `make repro` or `dvc repro train` first)") from None
    except Exception as err:  # a truncated or foreign file: say which file
        raise PipelineError(f"{path}: cannot load the model: {err}") from None
    if not isinstance(payload, dict) or payload.get("format") != 2:
        raise PipelineError(f"{path}: not a checkpoint of this pipeline's current format "
                            "(retrain it with `dvc repro train`)")
    model = LSTMClassifier(ModelConfig(**payload["config"]))
    model.load_state_dict(payload["state_dict"])
    model.to(device).eval()
    return Checkpoint(model, payload["itos"], payload["labels"], TextConfig(**payload["text_config"]),
                      payload["unk_id"], payload["info"], **payload["input"])


def encode_texts(ckpt: Checkpoint, token_lists) -> list[np.ndarray]:
    """Token lists to the model's input ids, truncated the way the model was trained."""
    return encode(token_lists, ckpt.stoi, ckpt.unk_id, ckpt.max_tokens, ckpt.truncation)


@torch.no_grad()
def predict_proba(model: LSTMClassifier, sequences: Sequence[np.ndarray], batch_size: int = 256,
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
