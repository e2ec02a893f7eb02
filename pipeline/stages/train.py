"""Stage train: the classifier on the aligned embedding matrix, early-stopped on validation accuracy.

Writes models/lstm.pt (the best epoch; the stage ship makes models/model.pt of it), metrics/train/best.json
(the saved epoch and its validation accuracy: what `dvc exp show` compares), and DVCLive's folder metrics/train/: per-epoch loss and
accuracy over epochs, step loss and learning rate over optimizer steps, metrics.json (DVCLive's
summary: the last values, timings; a plain output), and curves.png (a static image of the curves).
With `train.processes` > 1 it runs itself again under torchrun (pipeline.distributed).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline import distributed, params, resume, search_trial
from pipeline.batching import TokenIds
from pipeline.calibration import calibrate_checkpoint, threshold_checkpoint
from pipeline.checkpoint import save_checkpoint
from pipeline.errors import PipelineError, run_main
from pipeline.files import check_writable, read_json, write_json
from pipeline.prepared_task import prepared_task
from pipeline.live import LiveLogger, plot_curves
from pipeline.model import ENCODERS
from pipeline.plan import TrainPlan, make_plan
from pipeline.tasks import DEFAULT
from pipeline.text import TextConfig, prepared_text_config
from pipeline.training import Hooks, build_model, fit, set_determinism
from pipeline.workspace import start_stage

PREPARED = Path("data/prepared")
MODEL_PATH = Path("models/lstm.pt")  # the LSTM; what ships is the stage ship's models/model.pt
VOCAB_DIR = Path("data/vocab")
LIVE_DIR = Path("metrics/train")
# What an interrupted training resumes from: its last finished epoch. Beside the model, not a DVC
# output, git-ignored; removed when training ends.
RESUME_PATH = Path("models/.train-resume.pt")
BEST = "best.json"  # in LIVE_DIR


def main() -> None:
    start_stage("train")
    train_params, prepare_params = params.load("train"), params.load("prepare")
    if train_params.encoder not in ENCODERS:
        raise PipelineError(f"params.yaml: 'train.encoder' is {train_params.encoder!r}; known encoders: "
                            f"{', '.join(ENCODERS)}")
    if train_params.processes > 1 and not distributed.launched():
        return distributed.launch(train_params.processes, "pipeline.stages.train")
    rank, world = distributed.rank_and_world()
    if rank == 0:
        check_writable(MODEL_PATH.parent, LIVE_DIR.parent)  # before an epoch is spent, not after
    set_determinism(train_params.seed)
    vocab = read_json(VOCAB_DIR / "vocab.json")
    lengths = TokenIds(VOCAB_DIR, "train", vocab["unk_id"]).full_lengths
    # Every "auto" of train.* resolved, once (pipeline.plan), then applied here.
    # The task is the prepared corpus's (corpus.task, resolved by prepare): one label per text, or a set.
    plan = make_plan(train_params, lengths, vocab["unk_id"], show_progress=rank == 0 and os.environ.get("CI") != "true",
                     task=prepared_task(PREPARED / "train.parquet"))
    torch.set_num_threads(plan.threads)
    if world > 1:
        distributed.start(plan.device)
    try:
        train_and_save(plan, prepare_params, vocab, lengths)
    finally:
        if world > 1:
            distributed.stop()


def train_and_save(plan: TrainPlan, prep: params.PrepareParams, vocab: dict, lengths: np.ndarray) -> None:
    """Load the data, train, and (process 0 only, when there are several) write the model and metrics."""
    from dvclive import Live

    tp, rank, world, threads, precision, max_tokens = (plan.params, plan.rank, plan.world, plan.threads,
                                                       plan.precision, plan.max_tokens)
    itos, unk_id = vocab["itos"], vocab["unk_id"]
    matrix = np.load(VOCAB_DIR / "embeddings.npy")
    # The texts as the vocab stage's compact ids, memory-mapped (4 bytes a token, read as batches ask):
    # no token strings are read here. Labels from the prepared splits.
    train_labels, val_labels = (pd.read_parquet(PREPARED / f"{name}.parquet", columns=["label"])["label"]
                                for name in ("train", "val"))
    multi_label = plan.task.name == "multi_label"
    labels = sorted({name for names in train_labels for name in names} if multi_label else train_labels.unique().tolist())
    if rank == 0:
        print(f"{world} process(es) of {threads} CPU thread(s), {plan.device.type} {precision}; model input: at most {max_tokens} tokens "
              f"({tp.truncation}); {(lengths > max_tokens).mean():.1%} of training texts are longer", flush=True)
    data = ((TokenIds(VOCAB_DIR, "train", unk_id, max_tokens, tp.truncation),
             plan.task.targets(train_labels, labels, PREPARED / "train.parquet")),
            (TokenIds(VOCAB_DIR, "val", unk_id, max_tokens, tp.truncation),
             plan.task.targets(val_labels, labels, PREPARED / "val.parquet")))

    model = build_model(tp, matrix, len(labels))
    if world > 1:
        torch.manual_seed(tp.seed + rank)  # the same initial weights everywhere; each its own dropout
        if rank != 0:  # the others train their share and write nothing
            fit(model, plan, data)
            return
    key = resume.run_key([tp.__dict__, prep.__dict__, threads, precision],
                         [PREPARED / "train.parquet", PREPARED / "val.parquet", VOCAB_DIR / "vocab.json",
                          VOCAB_DIR / "embeddings.npy"])
    # Resuming is for one process: under torchrun the state would be each process's own.
    resumed = resume.load(RESUME_PATH, key) if world == 1 else None
    if resumed is not None:
        print(f"resuming after epoch {resumed[0].epoch} (from {RESUME_PATH}, left by an interrupted run "
              "with the same params and data)", flush=True)
    # DVCLive writes straight into the declared folder, a row per epoch (and per logged step) as it goes, so
    # `dvc exp show`, `dvc plots show` and the VS Code extension follow the run live. best.json (the metric
    # `dvc exp show` compares) marks a finished run: it goes first and comes back last, after the model,
    # so a killed run never leaves anything that looks finished (and DVC sees the outputs changed).
    (LIVE_DIR / BEST).unlink(missing_ok=True)
    with Live(dir=str(LIVE_DIR), dvcyaml=None, save_dvc_exp=False, report=None) as live:
        logger = LiveLogger(live, tp.log_every_steps, tp.lr)
        if resumed is not None:
            logger.replay(resumed[1])
        # A search trial (textclf-search) reports each epoch to its study and may stop early (pruned).
        pruner = search_trial.epoch_pruner() if world == 1 else None
        hooks = Hooks(on_step=logger.step, on_epoch=logger.epoch, on_checkpoint=None if world > 1 else
                      lambda state: resume.save(RESUME_PATH, key, state, logger.events), stop=pruner)
        result = fit(model, plan, data, hooks, resumed[0] if resumed else None)
        live.summary["best_epoch"] = result.best_epoch
        live.summary["best_val_accuracy"] = result.best_val_accuracy
        live.summary["train_seconds"] = round(result.seconds, 2)
        live.summary["max_tokens"] = max_tokens
        live.summary["threads"] = threads
        live.summary["precision"] = precision
        live.summary["processes"] = world
    # No timings in the checkpoint: the same params and seed give the same weights and metadata.
    info = {"best_epoch": result.best_epoch, "best_val_accuracy": result.best_val_accuracy,
            "params": tp.__dict__, "threads": threads, "processes": world, "precision": precision}
    if plan.task.name != DEFAULT:  # a single-label model names no task (tasks.checkpoint_task)
        info["task"] = plan.task.name
    save_checkpoint(MODEL_PATH, model, result.best_state, itos, labels,
                    prepared_text_config(PREPARED / "train.parquet", TextConfig.from_params(prep)), unk_id,
                    info, max_tokens, tp.truncation)
    plot_curves(result, LIVE_DIR / "curves.png")
    pruned = {"pruned": True} if pruner is not None and pruner.pruned_after else {}  # only a pruned trial says so
    if multi_label:
        return finish_multi_label(result, tp.batch_size, pruned)
    # Temperature scaling, fitted on validation and written into the checkpoint (pipeline.calibration).
    calibrated = calibrate_checkpoint(MODEL_PATH, PREPARED / "val.parquet", tp.batch_size)
    # The saved model's figures, not the last epoch's (DVCLive's summary holds the last values).
    write_json(LIVE_DIR / BEST, {"lstm_val_acc": round(result.best_val_accuracy, 4),
                                 "lstm_best_epoch": result.best_epoch, "lstm_temperature": calibrated["temperature"],
                                 **{f"lstm_val_{k}": calibrated[k] for k in ("ece_raw", "ece", "brier_raw", "brier")},
                                 **pruned})
    RESUME_PATH.unlink(missing_ok=True)
    print(f"best epoch {result.best_epoch}: val accuracy {result.best_val_accuracy:.4f}; "
          f"{result.seconds:.1f}s; saved {MODEL_PATH}; temperature {calibrated['temperature']:.3f}: validation ECE "
          f"{calibrated['ece_raw']:.4f} -> {calibrated['ece']:.4f}, Brier {calibrated['brier_raw']:.4f} -> {calibrated['brier']:.4f}")



def finish_multi_label(result, batch_size: int, pruned: dict) -> None:
    """A multi-label model's thresholds, one per label, chosen on validation and written into the checkpoint;
    best.json with the saved epoch and its validation figures at those thresholds (early stopping followed
    samples-F1 at 0.5, in DVCLive's val/accuracy)."""
    tuned = threshold_checkpoint(MODEL_PATH, PREPARED / "val.parquet", batch_size)
    write_json(LIVE_DIR / BEST, {"lstm_best_epoch": result.best_epoch,
                                 **{f"lstm_val_{k}": tuned[k] for k in ("micro_f1", "macro_f1", "samples_f1")}, **pruned})
    RESUME_PATH.unlink(missing_ok=True)
    print(f"best epoch {result.best_epoch}: val samples-F1 at 0.5 {result.best_val_accuracy:.4f}; "
          f"{result.seconds:.1f}s; saved {MODEL_PATH}; per-label thresholds chosen on validation: micro-F1 "
          f"{tuned['micro_f1_raw']:.4f} -> {tuned['micro_f1']:.4f}, macro-F1 {tuned['macro_f1_raw']:.4f} -> "
          f"{tuned['macro_f1']:.4f}")


if __name__ == "__main__":
    run_main(main)
