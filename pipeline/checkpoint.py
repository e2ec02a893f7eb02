"""The saved model's format (models/model.pt), written by train and read by evaluate, predict, export and
the card.

The checkpoint carries everything needed to classify raw text: weights, model config (the encoder's
name among them), vocabulary, label names, the tokenizer settings of the prepare stage and the model's
input length. One dict, loaded with `weights_only=True`: loading it can never run code.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from pipeline.errors import PipelineError
from pipeline.files import atomic_path
from pipeline.model import ModelConfig, TextClassifier
from pipeline.text import TextConfig

MODEL_PATH = Path("models/model.pt")
FORMAT = 3
# Format 2 (before the embedder / encoder / pooler modules) named the same weights without their module:
# such a checkpoint still loads, its keys renamed, as an LSTM.
_FORMAT_2_KEYS = {"embedding.": "embedder.embedding.", "static_embedding.": "embedder.static_embedding.",
                  "forward_layers.": "encoder.forward_layers.", "backward_layers.": "encoder.backward_layers.",
                  "attention.": "pooler.attention."}


@dataclass
class Checkpoint:
    model: TextClassifier
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


def save_checkpoint(path: Path, model: TextClassifier, state_dict: dict, itos: list[str], labels: list[str],
                    text_config: TextConfig, unk_id: int, info: dict, max_tokens: int | None = None,
                    truncation: str = "head") -> None:
    payload = {
        "format": FORMAT,
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
    except IsADirectoryError:
        raise PipelineError(f"{path}: is a folder, not a checkpoint file") from None
    except Exception as err:  # a truncated or foreign file: say which file, never torch's advice
        # torch's own message may advise reloading with weights_only=False, which would run any code
        # the file holds: it is never repeated.
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        if "weights" in reason.lower() or "pickle" in reason.lower():
            reason = "it holds objects other than tensors and plain values"
        raise PipelineError(f"{path}: cannot load the model ({reason[:200]}): not a checkpoint written by this "
                            "pipeline, or a damaged one; retrain it with `dvc repro train`") from None
    if not isinstance(payload, dict) or payload.get("format") not in (2, FORMAT):
        raise PipelineError(f"{path}: not a checkpoint of this pipeline's current format "
                            "(retrain it with `dvc repro train`)")
    state_dict = payload["state_dict"]
    if payload["format"] == 2:
        state_dict = {_format_2_key(key): value for key, value in state_dict.items()}
    model = TextClassifier(ModelConfig(**payload["config"]))
    model.load_state_dict(state_dict)
    model.to(device).eval()
    return Checkpoint(model, payload["itos"], payload["labels"], TextConfig(**payload["text_config"]),
                      payload["unk_id"], payload["info"], **payload["input"])


def _format_2_key(key: str) -> str:
    prefix = next((old for old in _FORMAT_2_KEYS if key.startswith(old)), None)
    return key if prefix is None else _FORMAT_2_KEYS[prefix] + key[len(prefix):]
