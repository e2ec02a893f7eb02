"""The trained model as TorchScript or ONNX, for serving without this repository's Python code.

    python -m pipeline.cli.export --format onnx --output models/model.onnx        # or: textclf-export ...
    python -m pipeline.cli.export --format torchscript --output models/model.torchscript.pt

The exported graph:

- inputs `ids`, int64 (batch, time): token ids, each row padded after its last token with `pad_id`;
  `lengths`, int64 (batch,): each row's true number of tokens, at least 1. Rows may have any lengths:
  the model reads each one at its true end, so padding never changes a row's result;
- output `probabilities`, float32 (batch, classes): the calibrated softmax over the classes,
  softmax(logits / temperature) with the checkpoint's fitted temperature inside the graph (the sidecar's
  `temperature` says which; pipeline.calibration), in the order of `labels`. Batch and time are dynamic axes.
  A multi-label model (sidecar `task`: multi_label) outputs each label's own probability instead,
  sigmoid(logits / temperature), which do not sum to 1; its sidecar's `thresholds` (one per label, chosen
  on validation) decide: a text gets every label whose probability is at or above its threshold, possibly
  none. The sidecar's `task` is single_label for every other model.

Beside the file, `<output>.json` (the sidecar) holds what a consumer needs to turn text into those
inputs: the vocabulary (`itos`: id -> token), `unk_id`, `pad_id`, `labels`, `max_tokens` and
`truncation`, and the tokenizer settings. Tokenize with pipeline.text.tokenize under those settings
(encode_batch below does all of it; a consumer in another language has to reproduce the tokenizer),
map unknown tokens to `unk_id`, cut to `max_tokens` the way `truncation` says (pipeline.batching.truncate),
and feed a text without tokens as the single id `unk_id`.

How: TorchScript is torch.jit.trace (torch.jit.script cannot compile the model). ONNX uses the
TorchScript-based exporter (dynamo=False, opset 17), which maps each nn.LSTM onto ONNX's LSTM operator.
The newer torch.export-based exporter (dynamo=True) unrolls each LSTM over the example's time steps,
so the graph it writes only accepts that one sequence length. Both formats are checked against the
PyTorch model, to 1e-5, on padded batches of mixed lengths (tests/test_export.py).

Only a checkpoint whose shipped model is the LSTM alone exports (pipeline.shipped): the TF-IDF part of a
fused or TF-IDF model looks n-grams of strings up, which neither graph holds, so such a checkpoint is
refused with one line naming what to export instead (models/lstm.pt, train's LSTM, or `ship.model: lstm`).

The same checkpoint exports to the same ONNX bytes, so a DVC stage caches one file. TorchScript
archives do not promise that: they record the source files' paths, and a second trace in one process
gets renamed classes.
"""

from __future__ import annotations

import copy
import io
import json
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from pipeline.batching import encode, pad
from pipeline.checkpoint import Checkpoint
from pipeline.errors import PipelineError
from pipeline.files import atomic_path, check_output_file, read_json
from pipeline.text import TextConfig, tokenize

FORMATS = ("onnx", "torchscript")
ONNX_OPSET = 17
INPUT_NAMES = ["ids", "lengths"]
OUTPUT_NAME = "probabilities"
SIDECAR_FORMAT = 1


class ProbabilityModel(nn.Module):
    """The classifier with its calibrated softmax on top: (ids, lengths) -> softmax(logits / temperature);
    a multi-label model's, sigmoid(logits / temperature) (one probability per label)."""

    def __init__(self, model: nn.Module, temperature: float = 1.0, multi_label: bool = False):
        super().__init__()
        self.model = model
        self.multi_label = multi_label  # a Python constant: the traced graph holds one or the other
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        scaled = self.model(ids, lengths) / self.temperature
        return torch.sigmoid(scaled) if self.multi_label else torch.softmax(scaled, dim=-1)


def example_inputs(pad_id: int, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A padded batch of two rows of different lengths: the tracer records shape-dependent ops (padding
    masks, per-row reversal) from their sizes, so the example must not be a single or unpadded row."""
    token = min(2, vocab_size - 1)
    ids = torch.full((2, 5), pad_id, dtype=torch.long)
    ids[0, :3] = token
    ids[1, :] = token
    return ids, torch.tensor([3, 5], dtype=torch.long)


def _exportable(ckpt: Checkpoint) -> ProbabilityModel:
    """A frozen copy: without gradients, a consumer's outputs are plain tensors (no .detach() needed)."""
    wrapped = ProbabilityModel(copy.deepcopy(ckpt.model), ckpt.temperature,
                               ckpt.task.name == "multi_label").cpu().eval()
    wrapped.requires_grad_(False)
    return wrapped


def to_torchscript(ckpt: Checkpoint) -> bytes:
    wrapped = _exportable(ckpt)
    with warnings.catch_warnings():
        # nn.LSTM's own input checks convert tensors to Python booleans while tracing: harmless here
        # (they check, they do not branch the computation), and the tests compare outputs.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*torch.jit.trace.* is deprecated")
        with torch.no_grad():
            traced = torch.jit.trace(wrapped, example_inputs(ckpt.model.cfg.pad_id, ckpt.model.cfg.vocab_size))
    buffer = io.BytesIO()  # not a file: torch names the archive after it, so bytes would depend on the path
    with warnings.catch_warnings():
        # TorchScript is deprecated in favour of torch.export, whose graphs cannot keep the LSTM's time
        # axis dynamic (see above); with torch pinned at 2.13.0, jit.save and jit.load work as before.
        warnings.filterwarnings("ignore", message=".*torch.jit.save.* is deprecated")
        torch.jit.save(traced, buffer)
    return buffer.getvalue()


def to_onnx(ckpt: Checkpoint) -> bytes:
    wrapped = _exportable(ckpt)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript-based exporter is deprecated in favour of dynamo=True, which cannot keep the
        # time axis dynamic through an LSTM (module docstring). Its LSTM warning is about initial states
        # traced as constants of the example's batch size; this model passes none, and the tests run
        # other batch sizes.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*batch_size other than 1.*")
        # Pooling `last` indexes each row at lengths - 1, never negative (lengths >= 1).
        warnings.filterwarnings("ignore", message=".*If indices include negative values.*")
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        with torch.no_grad():
            torch.onnx.export(
                wrapped, example_inputs(ckpt.model.cfg.pad_id, ckpt.model.cfg.vocab_size), buffer,
                dynamo=False, opset_version=ONNX_OPSET, input_names=INPUT_NAMES, output_names=[OUTPUT_NAME],
                dynamic_axes={"ids": {0: "batch", 1: "time"}, "lengths": {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            )
    return buffer.getvalue()


def sidecar(ckpt: Checkpoint, fmt: str, model_file: str) -> dict:
    """What a consumer of the exported file needs to build its inputs and read its output."""
    cfg = ckpt.model.cfg
    multi_label = ckpt.task.name == "multi_label"
    meaning = ("float32 (batch, labels): each label's own sigmoid(logits / temperature) probability, in the order "
               "of labels (they do not sum to 1); a text gets every label whose probability is at or above its "
               "threshold (`thresholds`, in the same order), possibly none" if multi_label else
               "float32 (batch, classes): softmax(logits / temperature) probabilities, in the order of labels "
               "(the temperature is applied inside the graph)")
    decision = {"thresholds": [float(t) for t in (ckpt.thresholds or [0.5] * len(ckpt.labels))]} if multi_label else {}
    return {
        "sidecar_format": SIDECAR_FORMAT,
        "model_file": model_file,
        "model_format": fmt,
        "inputs": {
            "ids": "int64 (batch, time): token ids, each row padded after its last token with pad_id",
            "lengths": "int64 (batch,): each row's number of tokens (>= 1)",
        },
        "output": {"name": OUTPUT_NAME, "meaning": meaning},
        "task": ckpt.task.name,
        "temperature": ckpt.temperature,
        "labels": list(ckpt.labels),
        **decision,
        "pad_id": cfg.pad_id,
        "unk_id": ckpt.unk_id,
        "max_tokens": ckpt.max_tokens,
        "truncation": ckpt.truncation,
        "empty_text": "a text without tokens is the single id unk_id (length 1)",
        "tokenizer": {"function": "pipeline.text.tokenize", "settings": asdict(ckpt.text_config)},
        "onnx_opset": ONNX_OPSET if fmt == "onnx" else None,
        "torch_version": torch.__version__.split("+")[0],
        "itos": list(ckpt.itos),
    }


def sidecar_path(output: Path) -> Path:
    return output.with_name(output.name + ".json")


def export_model(ckpt: Checkpoint, fmt: str, output: Path, model_file: Path | None = None) -> Path:
    """Write the exported model and its sidecar, each atomically; return the sidecar's path.

    Both are built in memory before either is written, so an export that fails (a model that cannot be
    traced, a refused path) writes neither. Refused: an output or sidecar path that is a directory, or
    that is `model_file` (the checkpoint exported)."""
    if fmt not in FORMATS:
        raise PipelineError(f"unknown export format {fmt!r} (one of: {', '.join(FORMATS)})")
    check_exportable(ckpt, model_file)
    output = check_output_file(output, model_file)
    meta = check_output_file(sidecar_path(output), model_file)
    data = to_onnx(ckpt) if fmt == "onnx" else to_torchscript(ckpt)
    text = json.dumps(sidecar(ckpt, fmt, output.name), indent=1, ensure_ascii=False) + "\n"
    for path, write in ((output, lambda tmp: tmp.write_bytes(data)),
                        (meta, lambda tmp: tmp.write_text(text, encoding="utf-8"))):
        try:
            with atomic_path(path) as tmp:
                write(tmp)
        except OSError as err:
            raise PipelineError(f"{path}: cannot write: {err.strerror or err}") from None
    return meta


def check_exportable(ckpt: Checkpoint, model_file: Path | None = None) -> None:
    """A PipelineError unless the checkpoint's shipped model is the LSTM alone (module doc)."""
    if ckpt.shipped == "lstm":
        return
    what = "the LSTM fused with a TF-IDF model" if ckpt.shipped == "fusion" else "the TF-IDF model"
    raise PipelineError(f"{model_file or 'the checkpoint'}: ships {what}, which {fmt_names()} cannot hold (the TF-IDF "
                        "part looks up n-grams of strings); export the LSTM alone instead: --model models/lstm.pt "
                        "(train's LSTM), or set `ship.model: lstm` in params.yaml and run `dvc repro`")


def fmt_names() -> str:
    return " and ".join(name.upper() if name == "onnx" else "TorchScript" for name in FORMATS)


def read_sidecar(path: Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise PipelineError(f"{path}: no sidecar (export writes it beside the model as <model file>.json)")
    try:
        meta = read_json(path)
    except UnicodeDecodeError as err:
        raise PipelineError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start}): "
                            "not an export sidecar") from None
    except OSError as err:
        raise PipelineError(f"{path}: cannot read: {err.strerror or err}") from None
    if not isinstance(meta, dict) or meta.get("sidecar_format") != SIDECAR_FORMAT:
        raise PipelineError(f"{path}: not an export sidecar of format {SIDECAR_FORMAT}")
    return meta


def encode_batch(meta: dict, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Texts -> (ids, lengths) for the exported model, from its sidecar alone: tokenize, look up,
    truncate, pad. Rows keep the order of `texts`."""
    config = TextConfig(**meta["tokenizer"]["settings"])
    stoi = {w: i for i, w in enumerate(meta["itos"])}
    sequences = encode((tokenize(t, config) for t in texts), stoi, meta["unk_id"], meta["max_tokens"],
                       meta["truncation"])
    return pad(sequences, meta["pad_id"])
