"""The task: what the model's outputs mean. It owns the training targets and loss, the decision rule,
the metrics and the shape of an answer; training, evaluation and inference ask it, never the softmax
or the arg-max themselves.

A task is one class in TASKS, chosen by name like the encoders (pipeline/model.py's ENCODERS): another
task shape (several labels per text, with sigmoid outputs and thresholds) is one new class here.

- single_label: each text has exactly one label; the model's logits go through a softmax, the loss is
  cross-entropy (optionally class-weighted), the answer is the most probable label, and the metrics
  are accuracy, macro-F1 and per-class figures (pipeline/metrics.py).

A checkpoint names its task in `info["task"]`; one that names none is single_label (every model this
pipeline has written so far: the built-in model's bytes are unchanged).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from pipeline.errors import PipelineError

DEFAULT = "single_label"


class Task:
    """The interface every task implements (see SingleLabel for what each method means)."""
    name: str

    def targets(self, values: pd.Series, labels: list[str], source) -> np.ndarray:
        raise NotImplementedError

    def loss_weights(self, targets: np.ndarray, num_classes: int, mode: str) -> torch.Tensor | None:
        raise NotImplementedError

    def loss(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def correct(self, logits: torch.Tensor, target: torch.Tensor) -> int:
        raise NotImplementedError

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decide(self, probs: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def confidence(self, probs: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def metrics(self, actual: list[str], predicted: list[str], labels: list[str]) -> dict:
        raise NotImplementedError

    def headline(self, metrics: dict, model: str) -> dict:
        raise NotImplementedError

    def answer(self, probs: np.ndarray, labels: Sequence[str]) -> dict:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __eq__(self, other) -> bool:  # stateless: one task is as good as another of its class
        return type(self) is type(other)

    def __hash__(self) -> int:
        return hash(type(self))


class SingleLabel(Task):
    """Exactly one label per text: softmax, cross-entropy, arg-max."""
    name = "single_label"

    def targets(self, values: pd.Series, labels: list[str], source) -> np.ndarray:
        """Labels (a pandas Series) as class ids in the order of `labels`; a label the training split lacks
        is an error naming `source`, the split it came from."""
        label_id = {label: i for i, label in enumerate(labels)}
        unknown = sorted(set(values) - set(label_id))
        if unknown:
            raise PipelineError(f"{source}: label {unknown[0]!r} does not occur in the training split")
        return values.map(label_id).to_numpy(dtype=np.int64)

    def loss_weights(self, targets: np.ndarray, num_classes: int, mode: str) -> torch.Tensor | None:
        """Per-class loss weights (train.class_weights): None, or 'balanced' (n / (k * count)), so each
        class weighs the same in total."""
        if mode == "none":
            return None
        counts = np.bincount(targets, minlength=num_classes).astype(np.float64)
        weights = len(targets) / (num_classes * np.maximum(counts, 1))
        return torch.tensor(weights, dtype=torch.float32)

    def loss(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """The batch's summed cross-entropy, in float32 (weighted per class by `weight`, when given)."""
        return F.cross_entropy(logits.float(), target, weight=weight, reduction="sum")

    def correct(self, logits: torch.Tensor, target: torch.Tensor) -> int:
        """How many of the batch's examples the decision rule gets right."""
        return int((logits.argmax(-1) == target).sum())

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """(batch, classes) probabilities, summing to 1 per row, in float32."""
        return torch.softmax(logits.float(), dim=-1)

    def decide(self, probs: np.ndarray) -> np.ndarray:
        """Each row's class id: the most probable."""
        return probs.argmax(axis=-1)

    def confidence(self, probs: np.ndarray) -> np.ndarray:
        """Each row's probability of the class decided."""
        return probs.max(axis=-1)

    def metrics(self, actual: list[str], predicted: list[str], labels: list[str]) -> dict:
        """Accuracy, macro-F1, per-class precision, recall, F1 and support, the top confusions."""
        from pipeline.metrics import classification_metrics

        return classification_metrics(actual, predicted, labels)

    def headline(self, metrics: dict, model: str) -> dict:
        """The figures `dvc exp show` compares."""
        from pipeline.metrics import headline

        return headline(metrics, model)

    def answer(self, probs: np.ndarray, labels: Sequence[str]) -> dict:
        """One text's answer as the server and `--json` give it: its label and every label's probability."""
        return {"label": labels[int(self.decide(probs))],
                "probabilities": {label: float(p) for label, p in zip(labels, probs)}}


TASKS: dict[str, type[Task]] = {"single_label": SingleLabel}
SINGLE_LABEL = SingleLabel()


def get_task(name: str, where: str = "params.yaml: the task") -> Task:
    """The task called `name`; an unknown name is an error that names `where` it came from."""
    if name not in TASKS:
        raise PipelineError(f"{where} is {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[name]()


def checkpoint_task(info: dict, source="the checkpoint") -> Task:
    """The task a checkpoint's model was trained for (its info's "task"; single_label when it names none)."""
    return get_task(info.get("task", DEFAULT), f"{source}: its task")
