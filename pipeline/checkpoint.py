"""The saved model's format (models/lstm.pt, written by train; models/model.pt, by ship), read by evaluate,
predict, export and the card.

The checkpoint carries everything needed to classify raw text: weights, model config (the encoder's
name among them), vocabulary, label names, the tokenizer settings of the prepare stage and the model's
input length, and the temperature fitted on validation (pipeline.calibration; a checkpoint without one
loads with temperature 1: the plain softmax); a multi-label model (info "task": multi_label) also the
per-label decision thresholds chosen on validation (pipeline.multilabel_metrics). One dict, loaded with `weights_only=True`: loading it can
never run code.

The stage ship (pipeline.shipped) writes models/model.pt: train's models/lstm.pt as it is when the LSTM
alone ships, else the same dict with two more entries: "tfidf", the TF-IDF model as plain data (its JSON
"meta" text and float64 tensors: TfidfModel.to_members), and "fusion": {"shipped": "fusion" or "tfidf",
"weight": w, for a one-label-a-text model "temperature" (the fused or TF-IDF probabilities' own, fitted on
validation), and for a multi-label model "thresholds", the shipped model's, one per label}. What the
checkpoint's `task` decides with, and what inference computes, is the shipped model (pipeline.inference).
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from pipeline.errors import PipelineError
from pipeline.files import atomic_path
from pipeline.model import ModelConfig, TextClassifier
from pipeline.tasks import TASKS, Task, checkpoint_task
from pipeline.text import TextConfig
from pipeline.tfidf_model import TfidfModel

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
    # The probabilities' temperature (pipeline.calibration; 1.0 for a checkpoint saved without one), also
    # set as the model's `temperature` buffer, which TextClassifier.probabilities divides by.
    temperature: float = 1.0
    # A multi-label model's decision thresholds, one per label in the order of `labels` (None: 0.5 each).
    thresholds: list[float] | None = None
    # What ships (module doc): "lstm", "fusion" (softmax((w log p_lstm + (1 - w) log p_tfidf) / T), w the
    # fusion_weight, T the fusion_temperature; the TF-IDF part alone: w = 0) or "tfidf"; the TF-IDF part
    # (pipeline.tfidf_model) and, multi-label, the shipped model's thresholds.
    shipped: str = "lstm"
    tfidf: TfidfModel | None = None
    fusion_weight: float = 1.0
    fusion_temperature: float = 1.0
    shipped_thresholds: list[float] | None = None

    @property
    def stoi(self) -> dict[str, int]:
        return {w: i for i, w in enumerate(self.itos)}

    @property
    def task(self) -> Task:
        """What the shipped model's outputs mean (pipeline.tasks): the decision rule (a multi-label model's
        thresholds: the shipped model's), the answer's shape, the metrics."""
        return checkpoint_task(self.info, "the checkpoint",
                               self.thresholds if self.shipped == "lstm" else self.shipped_thresholds)

    @property
    def lstm_task(self) -> Task:
        """The LSTM part's: its own thresholds."""
        return checkpoint_task(self.info, "the checkpoint", self.thresholds)


def save_checkpoint(path: Path, model: TextClassifier, state_dict: dict, itos: list[str], labels: list[str],
                    text_config: TextConfig, unk_id: int, info: dict, max_tokens: int | None = None,
                    truncation: str = "head", temperature: float = 1.0) -> None:
    payload = {
        "format": FORMAT,
        "input": {"max_tokens": max_tokens, "truncation": truncation},
        "config": model.cfg.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
        "itos": itos,
        "labels": labels,
        "text_config": _stored_text_config(text_config),
        "unk_id": unk_id,
        "info": info,
        "calibration": {"temperature": float(temperature)},
    }
    # Through memory: torch.save names the archive after the file, and the temporary file's name is
    # random, so saving to it directly would make identical models differ byte for byte (and in DVC).
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def _stored_text_config(text_config: TextConfig) -> dict:
    """The text settings as the checkpoint keeps them. The tokenizer is left out where it is `words` (what a
    checkpoint without one means): a model of a corpus that needed no word breaking is, byte for byte, the
    model of before `prepare.tokenizer` existed."""
    stored = asdict(text_config)
    if stored["tokenizer"] == TextConfig.tokenizer:
        del stored["tokenizer"]
    return stored


def require_model_file(path: Path) -> Path:
    """`path` if it is a file; else an error for the command line: where it looked, how to name another.

    A relative path is relative to the current directory, so the default works in a checkout's root."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: no trained model at {path.resolve()}; pass --model PATH to a checkpoint "
                            "(the models/model.pt of a trained checkout), or train one with `make repro` "
                            "in the repository")
    return path


def load_checkpoint(path: Path = MODEL_PATH, device: str | torch.device = "cpu", data: bytes | None = None
                    ) -> Checkpoint:
    """The checkpoint at `path` (or in `data`, the bytes read from it: what was hashed is what is loaded)."""
    try:
        payload = torch.load(path if data is None else io.BytesIO(data), map_location=device, weights_only=True)
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
    try:
        cfg, state_dict, text_config = _validated(payload)
    except _Invalid as err:
        raise PipelineError(f"{path}: not a usable checkpoint: {err} (retrain it with `dvc repro train`)") from None
    model = TextClassifier(cfg)  # allocates only what the saved tensors already hold (checked above)
    model.load_state_dict(state_dict)
    calibration = payload.get("calibration", {})
    temperature = float(calibration.get("temperature", 1.0))
    model.temperature.fill_(temperature)
    task = checkpoint_task(payload["info"], path)
    model.multi_label = task.name == "multi_label"  # sigmoids, not a softmax (TextClassifier.probabilities)
    model.to(device).eval()
    thresholds = calibration.get("thresholds")
    try:
        shipped = _shipped_parts(payload, f"{path}: tfidf", model.multi_label)
    except _Invalid as err:
        raise PipelineError(f"{path}: not a usable checkpoint: {err} (run `dvc repro ship` again)") from None
    return Checkpoint(model, payload["itos"], payload["labels"], text_config, payload["unk_id"], payload["info"],
                      **payload["input"], temperature=temperature,
                      thresholds=None if thresholds is None else [float(t) for t in thresholds], **shipped)


SHIPPED = ("lstm", "fusion", "tfidf")


def _shipped_parts(payload: dict, where: str, multi_label: bool) -> dict:
    """The "tfidf" and "fusion" entries (module doc) as Checkpoint's fields, every key checked (_Invalid
    naming it; a fault inside the TF-IDF model is TfidfModel's PipelineError naming `where` and the key)."""
    import math

    if "fusion" not in payload and "tfidf" not in payload:
        return {}
    if "fusion" not in payload or "tfidf" not in payload:
        raise _Invalid(f"a {'tfidf' if 'tfidf' in payload else 'fusion'!r} key without a "
                       f"{'fusion' if 'tfidf' in payload else 'tfidf'!r} key (the ship stage writes both)")
    fusion, part = payload["fusion"], payload["tfidf"]
    if not isinstance(fusion, dict) or not isinstance(part, dict):
        raise _Invalid("fusion, tfidf: expected dicts")
    unknown = sorted(set(map(str, fusion)) - {"shipped", "weight", "temperature", "thresholds"})
    if unknown:
        raise _Invalid(f"fusion: unknown key {unknown[0][:60]!r}")
    if fusion.get("shipped") not in SHIPPED[1:]:
        raise _Invalid(f"fusion.shipped: {str(fusion.get('shipped'))[:40]!r} is not one of fusion, tfidf")
    weight = fusion.get("weight")
    if not isinstance(weight, (int, float)) or isinstance(weight, bool) or not math.isfinite(weight) \
            or not 0 <= weight <= 1:
        raise _Invalid(f"fusion.weight: {str(weight)[:40]} is not a number from 0 to 1")
    temperature = fusion.get("temperature", 1.0)  # 1.0: a fused checkpoint from before it was fitted
    low, high = TEMPERATURE_RANGE
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) \
            or not math.isfinite(temperature) or not low <= temperature <= high or multi_label and "temperature" in fusion:
        raise _Invalid(f"fusion.temperature: {str(temperature)[:40]} is not a number from {low:g} to {high:g} "
                       "(and a multi-label model has none)")
    labels, thresholds = payload["labels"], fusion.get("thresholds")
    if multi_label != (thresholds is not None) or thresholds is not None and not (
            isinstance(thresholds, list) and len(thresholds) == len(labels) and all(
            isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) and 0 < t < 1
            for t in thresholds)):
        raise _Invalid(f"fusion.thresholds: expected {len(labels)} numbers between 0 and 1, one per label, for "
                       "a multi-label model only")
    arrays = {k: v for k, v in part.items() if k != "meta"}
    if not all(isinstance(v, torch.Tensor) for v in arrays.values()):
        raise _Invalid("tfidf: expected 'meta' and tensors")
    model = TfidfModel.from_members(where, part.get("meta"), {k: v.numpy() for k, v in arrays.items()})
    if sorted(model.classes) != sorted(labels) or (model.output == "one_vs_rest") != multi_label:
        raise _Invalid("tfidf: its classes (or its output, one label or several) are not the LSTM's")
    return {"shipped": fusion["shipped"], "tfidf": model, "fusion_weight": float(weight),
            "fusion_temperature": float(temperature),
            "shipped_thresholds": None if thresholds is None else [float(t) for t in thresholds]}


class _Invalid(Exception):
    """What is wrong with a checkpoint's contents, naming the key."""


# ModelConfig's fields: the type each must have and, for numbers, the range (inclusive). The ranges only
# keep the model's description sane before its shapes are computed; the shapes of the saved tensors are
# what decides (a model is never built bigger than the file's own tensors).
_CONFIG_INTS = {"vocab_size": (2, 10**8), "embedding_dim": (1, 1 << 16), "num_classes": (2, 1 << 16),
                "hidden_size": (1, 1 << 16), "num_layers": (1, 64), "pad_id": (0, 10**8),
                "embedding_channels": (1, 2)}
_CONFIG_FLOATS = {"dropout": (0.0, 1.0), "embedding_dropout": (0.0, 1.0)}
_POOLINGS = ("last", "max", "mean", "attention")
_TRUNCATIONS = ("head", "tail", "head+tail")
_NUMBERS = ("keep", "token", "drop")
_TOKENIZERS = ("words", "icu")  # what prepare resolved `auto` to: a checkpoint never says auto
_KEYS = ("format", "input", "config", "state_dict", "itos", "labels", "text_config", "unk_id", "info")
# calibration: absent in checkpoints saved before temperature scaling (temperature 1); tfidf, fusion: the ship
# stage's (module doc), absent when the LSTM alone ships.
_OPTIONAL_KEYS = ("calibration", "tfidf", "fusion")
# The fitted temperature's range: pipeline.calibration searches within it.
TEMPERATURE_RANGE = (1e-2, 1e2)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _validated(payload: dict) -> tuple[ModelConfig, dict, TextConfig]:
    """Every key, type, number and shape of a checkpoint's dict checked against the others, before any model
    is built: (config, state dict with current names, text config), or _Invalid naming what is wrong."""
    import dataclasses
    import math

    from pipeline.model import ENCODERS

    missing = [key for key in _KEYS if key not in payload]
    if missing:
        raise _Invalid(f"no {', '.join(repr(k) for k in missing)} key")
    unknown = [key for key in payload if key not in _KEYS + _OPTIONAL_KEYS]
    if unknown:
        raise _Invalid(f"unknown key {str(unknown[0])[:60]!r}")
    for key in ("input", "config", "state_dict", "text_config", "info"):
        if not isinstance(payload[key], dict):
            raise _Invalid(f"{key}: expected a dict, got {type(payload[key]).__name__}")

    config = dict(payload["config"])
    if payload["format"] == 2:
        config.setdefault("encoder", "lstm")  # format 2 knew one encoder
    fields = {f.name: f for f in dataclasses.fields(ModelConfig)}
    for key in config:
        if key not in fields:
            raise _Invalid(f"config: unknown key {str(key)[:60]!r}")
    for name, f in fields.items():
        if name not in config and f.default is dataclasses.MISSING:
            raise _Invalid(f"config: no {name!r}")
    for name, value in config.items():
        where = f"config.{name}"
        if name in _CONFIG_INTS:
            low, high = _CONFIG_INTS[name]
            if not _is_int(value):
                raise _Invalid(f"{where}: expected an integer, got {type(value).__name__}")
            if not low <= value <= high:
                raise _Invalid(f"{where}: {value} is out of range ({low} to {high})")
        elif name in _CONFIG_FLOATS:
            low, high = _CONFIG_FLOATS[name]
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) \
                    or not low <= value < high:
                raise _Invalid(f"{where}: {str(value)[:40]} is not a number in [{low}, {high})")
        elif name == "bidirectional" and not isinstance(value, bool):
            raise _Invalid(f"{where}: expected true or false, got {type(value).__name__}")
        elif name == "pooling" and value not in _POOLINGS:
            raise _Invalid(f"{where}: {str(value)[:40]!r} is not one of {', '.join(_POOLINGS)}")
        elif name == "encoder" and value not in ENCODERS:
            raise _Invalid(f"{where}: {str(value)[:40]!r} is not one of {', '.join(ENCODERS)}")
    cfg = ModelConfig(**config)

    itos, labels = payload["itos"], payload["labels"]
    if not isinstance(itos, list) or not all(isinstance(w, str) for w in itos):
        raise _Invalid("itos: expected a list of words")
    if len(itos) != cfg.vocab_size:
        raise _Invalid(f"itos: {len(itos)} words, but config.vocab_size is {cfg.vocab_size}")
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        raise _Invalid("labels: expected a list of label names")
    if len(labels) != cfg.num_classes:
        raise _Invalid(f"labels: {len(labels)} names, but the model has {cfg.num_classes} outputs "
                       "(config.num_classes)")
    if len(set(labels)) != len(labels):
        raise _Invalid(f"labels: {next(lab for lab in labels if labels.count(lab) > 1)[:60]!r} more than once")
    unk_id = payload["unk_id"]
    if not _is_int(unk_id) or not 0 <= unk_id < cfg.vocab_size:
        raise _Invalid(f"unk_id: {str(unk_id)[:40]} is not a word index (0 to {cfg.vocab_size - 1})")
    if cfg.pad_id >= cfg.vocab_size:
        raise _Invalid(f"config.pad_id: {cfg.pad_id} is not a word index (0 to {cfg.vocab_size - 1})")

    text_fields = {f.name for f in dataclasses.fields(TextConfig)}
    for key, value in payload["text_config"].items():
        if key not in text_fields:
            raise _Invalid(f"text_config: unknown key {str(key)[:60]!r}")
        if key == "numbers" and value not in _NUMBERS:
            raise _Invalid(f"text_config.numbers: {str(value)[:40]!r} is not one of {', '.join(_NUMBERS)}")
        if key == "tokenizer" and value not in _TOKENIZERS:
            raise _Invalid(f"text_config.tokenizer: {str(value)[:40]!r} is not one of {', '.join(_TOKENIZERS)}")
        if key not in ("numbers", "tokenizer") and not isinstance(value, bool):
            raise _Invalid(f"text_config.{key}: expected true or false, got {type(value).__name__}")
    text_config = TextConfig(**payload["text_config"])
    for key, value in payload["input"].items():
        if key == "max_tokens":
            if value is not None and (not _is_int(value) or value < 1):
                raise _Invalid(f"input.max_tokens: {str(value)[:40]} is not a positive integer")
        elif key == "truncation":
            if value not in _TRUNCATIONS:
                raise _Invalid(f"input.truncation: {str(value)[:40]!r} is not one of {', '.join(_TRUNCATIONS)}")
        else:
            raise _Invalid(f"input: unknown key {str(key)[:60]!r}")

    calibration = payload.get("calibration", {})
    if not isinstance(calibration, dict):
        raise _Invalid(f"calibration: expected a dict, got {type(calibration).__name__}")
    for key, value in calibration.items():
        if key == "thresholds":
            if not isinstance(value, list) or len(value) != len(labels) or not all(
                    isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) and 0 < t < 1
                    for t in value):
                raise _Invalid(f"calibration.thresholds: expected {len(labels)} numbers between 0 and 1, one per label")
            continue
        if key != "temperature":
            raise _Invalid(f"calibration: unknown key {str(key)[:60]!r}")
        low, high = TEMPERATURE_RANGE
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) \
                or not low <= value <= high:
            raise _Invalid(f"calibration.temperature: {str(value)[:40]} is not a finite number from {low} to {high}")

    info = payload["info"]  # what train recorded, shown by the model card
    if not all(isinstance(key, str) for key in info):
        raise _Invalid("info: expected names for keys")
    if "params" in info and not (isinstance(info["params"], dict) and all(isinstance(k, str) for k in info["params"])):
        raise _Invalid("info.params: expected a dict of params")
    if "task" in info and info["task"] not in TASKS:
        raise _Invalid(f"info.task: {str(info['task'])[:40]!r} is not one of {', '.join(TASKS)}")
    if "best_epoch" in info and not _is_int(info["best_epoch"]):
        raise _Invalid("info.best_epoch: expected an integer")
    accuracy = info.get("best_val_accuracy")
    if accuracy is not None and (not isinstance(accuracy, (int, float)) or isinstance(accuracy, bool)
                                 or not math.isfinite(accuracy)):
        raise _Invalid("info.best_val_accuracy: expected a finite number")

    state_dict = payload["state_dict"]
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state_dict.items()):
        raise _Invalid("state_dict: expected names of tensors")
    if payload["format"] == 2:
        state_dict = {_format_2_key(key): value for key, value in state_dict.items()}
    # The shapes the config implies, from a model on the meta device: nothing is allocated.
    with torch.device("meta"):
        expected = TextClassifier(cfg).state_dict()
    for name in expected:
        if name not in state_dict:
            raise _Invalid(f"state_dict: no {name!r}, which the config implies")
    for name, tensor in state_dict.items():
        if name not in expected:
            raise _Invalid(f"state_dict: {name[:80]!r} is not a weight of the model the config describes")
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise _Invalid(f"state_dict: {name!r} is {tuple(tensor.shape)}, but the config implies "
                           f"{tuple(expected[name].shape)}")
        if not tensor.is_floating_point():
            raise _Invalid(f"state_dict: {name!r} holds {tensor.dtype}, not floating-point numbers")
        if not bool(torch.isfinite(tensor).all()):
            raise _Invalid(f"state_dict: {name!r} holds NaN or infinite values")
    return cfg, state_dict, text_config


def _format_2_key(key: str) -> str:
    prefix = next((old for old in _FORMAT_2_KEYS if key.startswith(old)), None)
    return key if prefix is None else _FORMAT_2_KEYS[prefix] + key[len(prefix):]
