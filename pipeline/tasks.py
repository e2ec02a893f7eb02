"""The task: what the model's outputs mean. It owns the training targets and loss, the decision rule,
the metrics and the shape of an answer; training, evaluation and inference ask it, never the softmax
or the arg-max themselves.

A task is one class in TASKS, chosen by name like the encoders (pipeline/model.py's ENCODERS): another
task shape (several labels per text, with sigmoid outputs and thresholds) is one new class here.

- single_label: each text has exactly one label; the model's logits go through a softmax, the loss is
  cross-entropy (optionally class-weighted), the answer is the most probable label, and the metrics
  are accuracy, macro-F1 and per-class figures (pipeline/metrics.py).
- multi_label: each text has a set of labels, possibly empty; one sigmoid per label, binary cross-entropy
  summed over the labels (`train.class_weights: balanced` sets its pos_weight, negatives / positives per
  label, at most MAX_POS_WEIGHT, so rare labels are not drowned by their negatives), the answer is every
  label whose probability reaches its own threshold (chosen on validation after training and kept in the
  checkpoint: pipeline/multilabel_metrics.py), and the metrics are micro-, macro- and samples-F1, subset
  accuracy, Hamming loss and per-label figures. During training its running score (what early stopping
  follows) is samples-F1 at 0.5.

A checkpoint names its task in `info["task"]`; one that names none is single_label (every model this
pipeline has written so far: the built-in model's bytes are unchanged). The task of a corpus is the
prepared splits' (pipeline.labels.prepared_task), resolved by the prepare stage from `corpus.task`.
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


MAX_POS_WEIGHT = 100.0


class MultiLabel(Task):
    """A set of labels per text: a sigmoid per label, binary cross-entropy, a threshold per label."""
    name = "multi_label"

    def __init__(self, thresholds: Sequence[float] | None = None):
        self.thresholds = None if thresholds is None else np.asarray(thresholds, dtype=np.float32)

    def targets(self, values: pd.Series, labels: list[str], source) -> np.ndarray:
        """Label lists (a pandas Series of lists) as a (texts, labels) uint8 multi-hot matrix in the order of
        `labels`; a label the training split lacks is an error naming `source`."""
        from pipeline.multilabel_metrics import label_matrix

        unknown = sorted({name for names in values for name in names} - set(labels))
        if unknown:
            raise PipelineError(f"{source}: label {unknown[0]!r} does not occur in the training split")
        return label_matrix(values, labels).view(np.uint8)

    def loss_weights(self, targets: np.ndarray, num_classes: int, mode: str) -> torch.Tensor | None:
        """BCE's pos_weight (train.class_weights: balanced): negatives / positives per label, from 1/MAX_POS_WEIGHT
        to MAX_POS_WEIGHT; None for 'none'."""
        if mode == "none":
            return None
        positives = targets.sum(axis=0, dtype=np.float64)
        weights = (len(targets) - positives) / np.maximum(positives, 1)
        return torch.tensor(np.clip(weights, 1 / MAX_POS_WEIGHT, MAX_POS_WEIGHT), dtype=torch.float32)

    def loss(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """The batch's binary cross-entropy summed over its texts and labels, in float32."""
        return F.binary_cross_entropy_with_logits(logits.float(), target.float(), pos_weight=weight, reduction="sum")

    def correct(self, logits: torch.Tensor, target: torch.Tensor) -> float:
        """The batch's summed per-text F1 at 0.5 (its mean over a split: samples-F1)."""
        from pipeline.multilabel_metrics import samples_f1_sum

        return samples_f1_sum(target.bool().cpu().numpy(), (logits >= 0).cpu().numpy())

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """(batch, labels) probabilities, each label's own, in float32."""
        return torch.sigmoid(logits.float())

    def decide(self, probs: np.ndarray) -> np.ndarray:
        """Each row's labels, as a bool per label: its probability at or above the label's threshold."""
        from pipeline.multilabel_metrics import decide

        return decide(probs, self.thresholds)

    def confidence(self, probs: np.ndarray) -> np.ndarray:
        """How sure each row's answer is: the least sure of its label decisions (p for a label given, 1 - p
        for one left out)."""
        chosen = self.decide(probs)
        return np.where(chosen, probs, 1 - probs).min(axis=-1)

    def metrics(self, actual: list, predicted: list, labels: list[str]) -> dict:
        """Subset accuracy, Hamming loss, micro-, macro- and samples-F1, per-label figures."""
        from pipeline.multilabel_metrics import label_matrix, multilabel_metrics

        return multilabel_metrics(label_matrix(actual, labels), label_matrix(predicted, labels), labels)

    def headline(self, metrics: dict, model: str) -> dict:
        """The figures `dvc exp show` compares: subset accuracy (acc), macro-F1 (f1), micro- and samples-F1,
        Hamming loss."""
        from pipeline.metrics import headline

        return {**headline(metrics, model), f"{model}_test_micro_f1": metrics["micro_f1"],
                f"{model}_test_samples_f1": metrics["samples_f1"], f"{model}_test_hamming": metrics["hamming_loss"]}

    def answer(self, probs: np.ndarray, labels: Sequence[str]) -> dict:
        """One text's answer: its labels (a list, maybe empty) and every label's probability."""
        chosen = self.decide(probs)
        return {"labels": [label for label, yes in zip(labels, chosen) if yes],
                "probabilities": {label: float(p) for label, p in zip(labels, probs)}}

    def __repr__(self) -> str:
        return f"MultiLabel(thresholds={None if self.thresholds is None else self.thresholds.tolist()})"

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and (
            (self.thresholds is None and other.thresholds is None)
            or (self.thresholds is not None and other.thresholds is not None
                and np.array_equal(self.thresholds, other.thresholds)))

    def __hash__(self) -> int:
        return hash(type(self))


TASKS: dict[str, type[Task]] = {"single_label": SingleLabel, "multi_label": MultiLabel}
SINGLE_LABEL = SingleLabel()


def get_task(name: str, where: str = "params.yaml: the task") -> Task:
    """The task called `name`; an unknown name is an error that names `where` it came from."""
    if name not in TASKS:
        raise PipelineError(f"{where} is {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[name]()


def checkpoint_task(info: dict, source="the checkpoint", thresholds: Sequence[float] | None = None) -> Task:
    """The task a checkpoint's model was trained for (its info's "task"; single_label when it names none),
    with the checkpoint's decision thresholds where the task has them (multi_label)."""
    task = get_task(info.get("task", DEFAULT), f"{source}: its task")
    if isinstance(task, MultiLabel) and thresholds is not None:
        task = MultiLabel(thresholds)
    return task
