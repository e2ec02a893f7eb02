"""A hyperparameter-search trial as the train stage sees it.

textclf-search (pipeline.search) runs each trial as `dvc exp run` with TEXTCLF_SEARCH_TRIAL set to where
the trial lives (its Optuna study's storage, the study's name, the trial's id, the pruner's settings). The
train stage then reports each epoch's validation figure to that trial and asks the study's pruner whether
to go on: a trial worse than the median of the earlier ones at the same epoch stops there, keeps its best
epoch so far and is marked `pruned` in metrics/train/best.json. Without the variable nothing here runs,
and training is the same to the bit. Under torchrun (train.processes > 1) no trial is pruned.
"""

from __future__ import annotations

import json
import os

from pipeline.errors import PipelineError, short

ENV = "TEXTCLF_SEARCH_TRIAL"


def make_pruner(settings: dict | None):
    """Optuna's MedianPruner with the search's settings, or none (None): no trial is pruned before
    `startup_trials` trials have finished, nor during its first `warmup_epochs` epochs."""
    import optuna

    if not settings:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=settings["startup_trials"],
                                       n_warmup_steps=settings["warmup_epochs"] + 1)  # steps: epochs from 1


class EpochPruner:
    """stop(epoch, val_figure) for training.Hooks: reports the figure to the trial, True when it is pruned."""

    def __init__(self, trial):
        self.trial = trial
        self.pruned_after: int | None = None  # the epoch after which the pruner stopped the training

    def __call__(self, epoch: int, value: float) -> bool:
        self.trial.report(value, epoch)
        if self.trial.should_prune():
            self.pruned_after = epoch
            print(f"search: trial {self.trial.number} pruned after epoch {epoch} (validation {value:.4f} below "
                  "the median of the earlier trials at that epoch); the best epoch so far is saved", flush=True)
            return True
        return False


def epoch_pruner() -> EpochPruner | None:
    """The trial's pruner when this training is a search trial (TEXTCLF_SEARCH_TRIAL set), else None."""
    raw = os.environ.get(ENV)
    if not raw:
        return None
    try:
        spec = json.loads(raw)
        storage, study_name, trial_id, pruner = spec["storage"], spec["study"], int(spec["trial_id"]), spec["pruner"]
    except (ValueError, KeyError, TypeError):
        raise PipelineError(f"environment variable {ENV}: not what textclf-search sets ({short(raw)}); "
                            "unset it to train normally") from None
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage, pruner=make_pruner(pruner))
    except KeyError:
        raise PipelineError(f"environment variable {ENV}: no study {study_name!r} in {storage}") from None
    return EpochPruner(optuna.trial.Trial(study, trial_id))
