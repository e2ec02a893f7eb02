"""The training loop (pipeline.training): it learns, repeats to the bit, stops early, follows its
learning-rate schedules and class weights, and trains data-parallel under torchrun."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from pipeline.errors import PipelineError
from pipeline.inference import predict_proba
from pipeline.stages import train as train_stage
from pipeline.plan import native_bf16, resolve_precision, stretched_epochs
from pipeline.tasks import SINGLE_LABEL
from pipeline.training import Hooks, build_model, evaluate, fit, lr_factor, set_determinism
from tests.ddp_toy import DDP_PARAMS
from tests.helpers import ROOT, cpu_plan, fit_toy, toy_matrix, toy_problem, train_params


def test_training_learns_and_repeats_exactly():
    first, second = fit_toy(train_params()), fit_toy(train_params())
    assert first.best_val_accuracy >= 0.9
    assert [h["val_loss"] for h in first.history] == [h["val_loss"] for h in second.history]
    for key in first.best_state:
        assert torch.equal(first.best_state[key], second.best_state[key])


# bf16 needs the hardware (AMX or AVX512-BF16, and oneDNN allowed to use it): an AVX2-only CPU has none.
needs_bf16 = pytest.mark.skipif(not native_bf16(torch.device("cpu")),
                                reason="this CPU has no bf16 instructions (AMX or AVX512-BF16) that oneDNN can use")


@needs_bf16
def test_bf16_training_learns_repeats_exactly_and_is_not_fp32():
    bf16, again = fit_toy(train_params(precision="bf16")), fit_toy(train_params(precision="bf16"))
    fp32 = fit_toy(train_params(precision="fp32"))
    assert bf16.best_val_accuracy >= 0.9
    assert all(torch.equal(bf16.best_state[k], again.best_state[k]) for k in bf16.best_state)
    # the setting takes effect: bf16 products round differently, so the weights part
    assert not all(torch.equal(bf16.best_state[k], fp32.best_state[k]) for k in bf16.best_state)
    # ... and the weights stay float32 (the checkpoint and the exported model read them as such)
    assert {value.dtype for value in bf16.best_state.values()} == {torch.float32}


def test_auto_precision_is_bf16_only_where_the_hardware_has_it(monkeypatch):
    from pipeline import plan

    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) == "fp32"
    monkeypatch.setattr(plan, "onednn_bf16", lambda: True)  # what the CPU's flags say, below
    for capabilities, expected in [({"amx_bf16": True}, "bf16"), ({"avx512_bf16": True, "amx_bf16": False}, "bf16"),
                                   ({"avx512_f": True, "avx2": True}, "fp32"), ({}, "fp32")]:
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: capabilities)
        assert resolve_precision("auto", cpu) == expected, capabilities
        if expected == "bf16":
            assert resolve_precision("bf16", cpu) == "bf16"
        else:  # asked for explicitly on a CPU without it: one line naming the key and what the CPU lacks
            with pytest.raises(PipelineError, match=r"^params\.yaml: 'train\.precision' is bf16, but this CPU has "
                                                    r"no bf16 instructions \(AMX or AVX512-BF16\)"):
                resolve_precision("bf16", cpu)
    assert resolve_precision("auto", torch.device("meta")) == "fp32"


@pytest.mark.slow
def test_without_bf16_in_onednn_auto_trains_fp32_and_bf16_is_one_line(tmp_path):
    """ONEDNN_MAX_CPU_ISA=AVX2 makes this CPU an AVX2-only one for oneDNN, which runs the LSTM: there bf16
    autocast fails inside oneDNN ("could not create a primitive descriptor for the LSTM forward
    propagation primitive"). auto must train in fp32, and an explicit bf16 must be one error line."""
    script = ("import sys\n"
              "from pipeline.errors import run_main\n"
              "from tests.helpers import fit_toy, train_params\n"
              "def main():\n"
              "    result = fit_toy(train_params(precision=sys.argv[1], epochs=1, patience=1))\n"
              "    print('trained', result.best_epoch)\n"
              "run_main(main)\n")
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "PYTHONPATH": str(ROOT)}
    runs = {setting: subprocess.run([sys.executable, "-c", script, setting], cwd=ROOT, env=env, capture_output=True,
                                    text=True, timeout=300) for setting in ("auto", "bf16")}
    assert runs["auto"].returncode == 0 and "trained 1" in runs["auto"].stdout, runs["auto"].stderr[-2000:]
    bf16 = runs["bf16"]
    assert bf16.returncode == 1 and "Traceback" not in bf16.stderr and "primitive" not in bf16.stderr, bf16.stderr
    assert bf16.stderr.strip().splitlines() == [
        "error: params.yaml: 'train.precision' is bf16, but this CPU has no bf16 instructions (AMX or AVX512-BF16) "
        "that oneDNN can use: set it to auto (bf16 where the hardware has it) or fp32"]


def test_a_diverging_training_stops_naming_the_step_and_train_lr_and_keeps_no_best_epoch():
    """A learning rate that makes the loss NaN: before, the NaN model scored an accuracy and was kept as the
    best epoch. Now the first non-finite loss stops training, naming the epoch, the step and the keys."""
    with pytest.raises(PipelineError, match=r"^epoch 1, optimizer step \d+: the training loss is nan: training "
                                            r"diverged, and no model is saved; lower train\.lr \(now 1e\+30"):
        fit_toy(train_params(lr=1e30, grad_clip=None))


def test_the_train_stage_refuses_an_infinite_lr_before_training(tmp_path, monkeypatch):
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["train"]["lr"] = float("inf")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PipelineError, match=r"^params\.yaml: 'train\.lr' must be a finite number, got inf$"):
        train_stage.main()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # no model, no metrics


def test_a_run_too_short_to_unfreeze_the_embeddings_says_so(capsys):
    fit_toy(train_params(embeddings="freeze_then_finetune", freeze_epochs=3, epochs=2, patience=2))
    assert "stay frozen for the whole run" in capsys.readouterr().err
    fit_toy(train_params(embeddings="freeze_then_finetune", freeze_epochs=1, epochs=2, patience=2))
    assert "stay frozen" not in capsys.readouterr().err


def test_early_stopping_stops_after_patience():
    result = fit_toy(train_params(epochs=30, patience=1, lr=0.05))
    assert len(result.history) < 30
    assert len(result.history) == result.best_epoch + 1


def test_small_corpora_get_more_epochs_and_patience():
    tp = train_params(epochs=15, patience=5, min_steps=1000)
    assert stretched_epochs(tp, steps_per_epoch=322) == (15, 5)   # 4,830 steps already
    assert stretched_epochs(tp, steps_per_epoch=37) == (28, 10)   # 1,200 long reviews
    assert stretched_epochs(dataclasses.replace(tp, min_steps=0), 37) == (15, 5)


def test_lr_factor_warmup_and_cosine():
    assert [lr_factor("constant", s, 100, 0) for s in (0, 50, 99)] == [1.0, 1.0, 1.0]
    assert [lr_factor("constant", s, 100, 4) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    cosine = [lr_factor("cosine", s, 100, 0) for s in range(100)]
    assert cosine[0] == 1.0 and abs(cosine[50] - 0.5) < 1e-9 and cosine[-1] < 0.001
    assert all(a >= b for a, b in zip(cosine, cosine[1:]))
    # Warm-up, then the cosine starts from the top.
    assert lr_factor("cosine", 9, 100, 10) == 1.0 and lr_factor("cosine", 10, 100, 10) == 1.0


def _fit_with_steps(tp):
    steps = []
    result = fit_toy(tp, Hooks(on_step=lambda step, row: steps.append((step, row["lr"]))))
    return result, steps


def test_cosine_schedule_decays_per_step_to_zero():
    tp = train_params(lr_schedule="cosine", epochs=3, patience=3)
    result, steps = _fit_with_steps(tp)
    per_epoch = -(-180 // tp.batch_size)
    assert [s for s, _ in steps] == list(range(1, 3 * per_epoch + 1))
    lrs = [lr for _, lr in steps]
    assert lrs[0] == tp.lr and all(a > b for a, b in zip(lrs, lrs[1:])) and lrs[-1] < 0.01 * tp.lr
    assert [h["lr"] for h in result.history] == [lrs[0], lrs[per_epoch], lrs[2 * per_epoch]]
    assert len(result.step_losses) == len(steps)


def test_plateau_schedule_halves_lr_after_an_epoch_without_improvement():
    result, _ = _fit_with_steps(train_params(lr_schedule="plateau", epochs=12, patience=12, lr=0.05))
    history, best = result.history, -1.0
    for before, after in zip(history, history[1:]):
        improved = before["val_accuracy"] > best
        best = max(best, before["val_accuracy"])
        assert after["lr"] == (before["lr"] if improved else before["lr"] / 2)
    assert history[-1]["lr"] < history[0]["lr"]  # the run had epochs without improvement


def test_balanced_class_weights():
    assert SINGLE_LABEL.loss_weights(np.array([0, 0, 0, 1]), 2, "none") is None
    weights = SINGLE_LABEL.loss_weights(np.array([0, 0, 0, 1]), 2, "balanced")
    torch.testing.assert_close(weights, torch.tensor([4 / 6, 4 / 2]))
    # Each class then carries the same total weight.
    assert float(weights[0] * 3) == float(weights[1] * 1)


def test_balanced_class_weights_on_many_imbalanced_classes():
    labels = np.repeat(np.arange(12), [400 // (k + 1) for k in range(12)])
    weights = SINGLE_LABEL.loss_weights(labels, 12, "balanced").numpy()
    totals = weights * np.bincount(labels)
    np.testing.assert_allclose(totals, totals[0], rtol=1e-5)  # every class weighs the same in total
    assert weights[11] > 10 * weights[0]


def test_balanced_class_weights_raise_minority_predictions():
    """On a 9:1 corpus, weighting the loss makes the model predict the rare class more often."""
    xs, ys = toy_problem(n=600, seed=3)
    keep = [i for i in range(len(ys)) if ys[i] == 0 or i % 9 == 0]  # about one positive in ten
    xs, ys = [xs[i] for i in keep], ys[keep]
    predicted_rare = {}
    for mode in ("none", "balanced"):
        tp = train_params(class_weights=mode, epochs=2, patience=2, lr=0.003)
        set_determinism(tp.seed)
        model = build_model(tp, np.zeros((20, 8), dtype=np.float32), 2)
        result = fit(model, cpu_plan(tp, xs), ((xs, ys), (xs, ys)))
        model.load_state_dict(result.best_state)
        predicted_rare[mode] = int((predict_proba(model, xs).argmax(1) == 1).sum())
    assert predicted_rare["balanced"] > predicted_rare["none"], predicted_rare


@pytest.mark.slow
def test_data_parallel_training_under_torchrun_learns_like_one_process(tmp_path):
    """Two gloo processes launched by torchrun: each takes half of every epoch's batches, the gradients
    are averaged (DistributedDataParallel, rebuilt when the embeddings unfreeze), and both end with the
    same weights and a validation accuracy as good as one process's."""
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           "-m", "tests.ddp_toy"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "DDP_TOY_OUT": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted((json.loads(f.read_text()) for f in tmp_path.glob("rank*.json")), key=lambda r: r["rank"])
    assert [r["rank"] for r in runs] == [0, 1] and all(r["world"] == 2 for r in runs)
    assert runs[0]["checksum"] == runs[1]["checksum"]  # one model, not two
    assert runs[0]["steps"] == 8 * (180 // 8 // 2)    # half the batches each
    single = fit_toy(train_params(**DDP_PARAMS))
    assert runs[0]["val"] >= single.best_val_accuracy - 0.05 and runs[0]["val"] >= 0.9


def test_evaluate_measures_the_loss_and_accuracy_of_the_whole_split():
    """In length-sorted batches, the figures of the split in its own order (predict_proba's)."""
    tp = train_params()
    set_determinism(tp.seed)
    model = build_model(tp, toy_matrix(), 2)
    xs, ys = toy_problem(n=70, seed=5)
    result = evaluate(model, (xs, ys), 16, torch.device("cpu"))
    probs = predict_proba(model, xs)
    assert result.accuracy == float((probs.argmax(axis=1) == ys).mean())
    assert result.loss == pytest.approx(float(-np.log(probs[np.arange(len(ys)), ys]).mean()), rel=1e-5)
    assert (result.examples, result.tokens) == (70, sum(len(x) for x in xs))


# --- the train stage (pipeline.stages.train) ---------------------------------------------------------


def test_the_train_stage_refuses_an_unknown_encoder_before_anything_else(tmp_path, monkeypatch):
    """params.py leaves train.encoder's values to the model (it imports no torch): the stage checks it."""
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["train"]["encoder"] = "rnn"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PipelineError, match=r"^params\.yaml: 'train\.encoder' is 'rnn'; known encoders: lstm, gru, cnn$"):
        train_stage.main()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_labels_become_class_ids_and_an_unseen_one_is_named():
    label_ids = SINGLE_LABEL.targets
    split = "data/prepared/val.parquet"
    assert label_ids(pd.Series(["pos", "neg", "pos"]), ["neg", "pos"], split).tolist() == [1, 0, 1]
    with pytest.raises(PipelineError, match=r"data/prepared/val\.parquet: label 'meh' does not occur in the training"):
        label_ids(pd.Series(["pos", "meh"]), ["neg", "pos"], split)
