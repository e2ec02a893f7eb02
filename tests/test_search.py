"""textclf-search (issue 29): a hyperparameter search whose trials are DVC experiments. The space is checked by
params.py's rules; the sampler repeats with its seed, across an interruption too; a real search on the tiny
project ends with its trials in `dvc exp show` and the best one applicable; pruning stops a real training."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline.errors import PipelineError
from pipeline.search import SHIPPED_NAMES, Search, load_space
from tests.helpers import ROOT, VENV_BIN, run, set_param

SMALL_SPACE = {"train.lr": {"low": 0.001, "high": 0.02, "log": True}, "train.hidden_size": {"choices": [8, 16]}}


def base_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


# --- the space ----------------------------------------------------------------------------------------


def test_the_default_space_is_valid_params():
    dims = load_space(ROOT / "search.yaml", base_params())
    assert {d.key for d in dims} >= {"train.lr", "train.hidden_size", "train.dropout", "train.embeddings"}
    lr = next(d for d in dims if d.key == "train.lr")
    assert lr.log and lr.low > 0 and not lr.integer


@pytest.mark.parametrize("line, message", [
    ("train.lrate: {low: 0.1, high: 1}", "line 2, 'train.lrate': not a params.yaml key"),
    ("train.lr: {low: 0.1, high: 0.01}", "line 2, 'train.lr': 'low' and 'high' must be numbers with low < high"),
    ("train.lr: {low: 0, high: 0.01, log: true}", "a log scale needs low > 0"),
    ("train.lr: {low: -1, high: 0.01}", "'train.lr'"),  # params.py: lr must be > 0
    ("train.pooling: {choices: [max, sum]}", "'train.pooling' must be one of"),
    ("train.hidden_size: {low: 8.5, high: 64}", "must be whole numbers"),
    ("train.dropout: {choices: []}", "'choices' must be a list of distinct values"),
    ("train.dropout: 0.5", "expected {low: A, high: B}"),
])
def test_a_bad_space_is_one_line_naming_the_file_line_and_key(tmp_path, line, message):
    space = tmp_path / "space.yaml"
    space.write_text(f"train.batch_size: {{choices: [16, 32]}}\n{line}\n")
    with pytest.raises(PipelineError) as err:
        load_space(space, base_params())
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)


# --- the sampler: the same seed, the same trials ------------------------------------------------------


def proposals(name: str, seed: int, finished: int, interrupt_at: int | None = None) -> list[dict]:
    """`finished` trials of a search's own sampler, told a fixed function of their params (a stand-in
    for training, which is deterministic); with `interrupt_at`, the run stops there with a trial left
    running, and a new Search over the same study goes on (what --resume does)."""
    dims = load_space(ROOT / "search.yaml", base_params())
    settings = {"seed": seed, "space_file": "search.yaml", "pruner": None,
                "space": [{k: v for k, v in d.__dict__.items() if v is not None} for d in dims]}
    (Path(".search") / name).mkdir(parents=True)
    search = Search(name, settings)

    def step():
        search.study.sampler = search.sampler(len(search.finished()))
        trial = search.study.ask()
        values = {d.key: d.suggest(trial) for d in search.dims}
        return trial, values

    while len(search.finished()) < finished:
        if interrupt_at is not None and len(search.finished()) == interrupt_at:
            step()  # proposed, never told: the search was killed during this trial
            search = Search(name, settings)
            assert search.abandon_interrupted() == 1
            interrupt_at = None
            continue
        trial, values = step()
        score = -abs(values["train.lr"] - 0.003) * 100 + values["train.hidden_size"] / 1000 - values["train.dropout"]
        search.study.tell(trial, score)
    return [t.params for t in search.finished()]


def test_the_same_seed_proposes_the_same_trials_even_after_an_interruption(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = proposals("a", 3, 8)  # past TPE's 5 random start-up trials
    assert proposals("b", 3, 8) == first
    assert proposals("c", 3, 8, interrupt_at=6) == first
    assert proposals("d", 4, 8) != first


# --- the command line ---------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, message", [
    ([], "give a budget: --trials N"),
    (["--trials", "0"], "--trials 0: must be at least 1"),
    (["--trials", "three"], "--trials 'three': not a whole number"),
    (["--minutes", "-5"], "--minutes -5: must be a positive number"),
    (["--minutes", "nan"], "--minutes nan: must be a positive number"),
    (["--trials", "2", "--seed", "-1"], "--seed -1: must be at least 0"),
    (["--trials", "2", "--name", "../x"], "--name '../x': use letters"),
    (["--trials", "2", "--resume", "--name", "never"], "--resume: no search 'never' here"),
])
def test_bad_options_are_one_line_errors(tmp_path, monkeypatch, argv, message):
    from pipeline.cli.search import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    with pytest.raises(PipelineError) as err:
        main(argv)
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_a_resume_keeps_the_objective_of_its_search(tmp_path, monkeypatch):
    from pipeline.cli.search import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    (tmp_path / ".search" / "n").mkdir(parents=True)
    (tmp_path / ".search" / "n" / "search.json").write_text(json.dumps({"seed": 0, "space_file": "search.yaml",
                                                                         "space": [], "pruner": None}))
    with pytest.raises(PipelineError, match=r"--resume: search 'n' maximizes lstm, not shipped; leave --objective out"):
        main(["--resume", "--name", "n", "--trials", "2", "--objective", "shipped"])
    with pytest.raises(SystemExit):  # argparse: only the two objectives
        main(["--trials", "2", "--objective", "test_acc"])


def _reader(files: dict):
    return lambda path: json.dumps(files[path])


@pytest.mark.parametrize("best, ship, objective, expected", [
    ({"lstm_val_acc": 0.81, "pruned": True}, {}, "lstm", ("lstm_val_acc", 0.81, True)),
    ({"lstm_val_acc": 0.81}, {"ship_model": 1, "ship_val_acc_lstm": 0.81, "ship_val_acc_fusion": 0.825},
     "shipped", ("shipped_val_acc", 0.825, False)),
    ({"lstm_val_acc": 0.81}, {"ship_model": 2, "ship_val_acc_lstm": 0.81, "ship_val_acc_tfidf": 0.83},
     "shipped", ("shipped_val_acc", 0.83, False)),
    ({"lstm_val_micro_f1": 0.7}, {"ship_model": 0, "ship_val_micro_f1_lstm": 0.7}, "shipped",
     ("shipped_val_micro_f1", 0.7, False)),
])
def test_the_objective_is_the_lstm_s_or_the_shipped_model_s_validation_figure(best, ship, objective, expected):
    from pipeline.search import BEST, SHIP, objective_of

    assert objective_of(_reader({BEST: best, SHIP: ship}), objective, "x") == expected


def test_a_run_without_its_objective_is_one_line_naming_the_run_and_file():
    from pipeline.search import BEST, SHIP, objective_of
    from pipeline.shipped import CODES

    assert SHIPPED_NAMES == {code: name for name, code in CODES.items()}  # the ship stage's codes, read back
    with pytest.raises(PipelineError, match=r"^search-x-t001: metrics/train/best.json holds none of lstm_val_acc"):
        objective_of(_reader({BEST: {"lstm_test_acc": 0.8}}), "lstm", "search-x-t001")
    with pytest.raises(PipelineError, match=r"^search-x-t001: metrics/ship.json holds no ship_val_acc_<model> of its "
                       r"ship_model 7"):
        objective_of(_reader({BEST: {"lstm_val_acc": 0.8}, SHIP: {"ship_model": 7}}), "shipped", "search-x-t001")


def test_the_summary_says_how_far_apart_validation_accuracies_may_be_by_chance():
    from pipeline.search import noise_note

    best = {"experiment": "search-a-t009", "value": 0.8168}
    note = noise_note({"best": best, "defaults": {"objective": "lstm_val_acc", "value": 0.8111}, "val_rows": 1239})
    # sqrt(0.8168 * 0.1832 / 1239) = 0.01099: a lead of 0.0057 is half a standard error.
    assert "Validation holds 1,239 texts: an accuracy near 0.817 has a standard error of 0.0110" in note
    assert "less than about 0.0220 apart may differ by chance; the best leads the workspace's run by +0.0057" in note
    assert "`dvc exp apply search-a-t009` then `dvc exp run -S train.seed=N` (N other than params.yaml's" in note
    assert "standard error of 0.0011" in noise_note({"best": best, "defaults": None, "val_rows": 123900})
    assert noise_note({"best": best, "defaults": None, "val_rows": None}) is None
    assert noise_note({"best": None, "defaults": None, "val_rows": 99}) is None


def test_the_noise_is_measured_on_a_single_label_validation_split_only(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.labels import TASK_KEY
    from pipeline.search import VAL_SPLIT, validation_rows

    monkeypatch.chdir(tmp_path)
    assert validation_rows() is None  # nothing prepared
    VAL_SPLIT.parent.mkdir(parents=True)
    pq.write_table(pa.table({"text": ["a", "b", "c"], "label": ["x", "y", "x"]}), VAL_SPLIT)
    assert validation_rows() == 3
    multi = pa.table({"text": ["a"], "label": [["x", "y"]]}).replace_schema_metadata({TASK_KEY: "multi_label"})
    pq.write_table(multi, VAL_SPLIT)
    assert validation_rows() is None  # micro-F1: no binomial standard error


def test_a_bad_budget_from_the_shell_is_one_line_and_status_1(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli.search", "--trials", "0"], cwd=tmp_path,
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 1 and proc.stderr == "error: --trials 0: must be at least 1\n", proc.stderr


# --- the training hook --------------------------------------------------------------------------------


def test_a_stop_hook_ends_training_with_the_best_epoch_so_far_and_one_that_never_stops_changes_nothing():
    import torch

    from pipeline.training import Hooks
    from tests.helpers import fit_toy, train_params

    tp = train_params(epochs=4, patience=4)
    plain = fit_toy(tp)
    never = fit_toy(tp, Hooks(stop=lambda epoch, value: False))
    assert len(never.history) == len(plain.history) == 4
    assert all(torch.equal(plain.best_state[k], never.best_state[k]) for k in plain.best_state)
    seen = []
    stopped = fit_toy(tp, Hooks(stop=lambda epoch, value: seen.append((epoch, value)) or epoch == 2))
    assert len(stopped.history) == 2 and [e for e, _ in seen] == [1, 2]
    assert stopped.best_epoch in (1, 2) and seen[0][1] == plain.history[0]["val_accuracy"]


# --- real searches on the tiny project ----------------------------------------------------------------


def search(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run([str(VENV_BIN / "python"), "-m", "pipeline.cli.search", *args], repo, check=check)


def exp_names(repo: Path) -> set[str]:
    data = json.loads(run(["dvc", "exp", "show", "--json"], repo).stdout)
    return {e["name"] for b in data for e in (b.get("experiments") or [])}


def trials_of(repo: Path, name: str) -> list[dict]:
    return [r["params"] for r in json.loads((repo / ".search" / name / "summary.json").read_text())["trials"]
            if r["state"] != "fail"]


@pytest.mark.slow
def test_a_search_ends_with_its_trials_in_exp_show_repeats_with_its_seed_resumes_and_applies(repo):
    (repo / "space.yaml").write_text(yaml.safe_dump(SMALL_SPACE))
    out = search(repo, "--trials", "3", "--seed", "7", "--space", "space.yaml", "--name", "a").stdout
    assert "best: search-a-t00" in out and "to take it: dvc exp apply search-a-t00" in out, out
    assert {"search-a-t000", "search-a-t001", "search-a-t002"} <= exp_names(repo)
    summary = json.loads((repo / ".search" / "a" / "summary.json").read_text())
    assert summary["objective"] == "shipped" and summary["defaults"]["objective"] == "shipped_val_acc"  # the default
    assert set(summary["importance"]) == set(SMALL_SPACE)
    assert summary["val_rows"] > 0 and "may differ by chance" in out
    assert not run(["git", "status", "--porcelain", "--untracked-files=no"], repo).stdout  # the workspace untouched
    first = trials_of(repo, "a")
    assert len(first) == 3

    # The same seed again: the same proposals (DVC's run cache gives back the same results in seconds).
    search(repo, "--trials", "3", "--seed", "7", "--space", "space.yaml", "--name", "b")
    assert trials_of(repo, "b") == first

    # Interrupted during its second trial, then resumed: the count goes on, and the proposals are the same.
    env = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", CI="true")
    # Ctrl-C's default action restored in the child: a shell runs a background job (CI's, say) with SIGINT
    # ignored, and the children inherit that, so the interrupt would otherwise never arrive.
    proc = subprocess.Popen([str(VENV_BIN / "python"), "-m", "pipeline.cli.search", "--trials", "3", "--seed", "7",
                             "--space", "space.yaml", "--name", "c"], cwd=repo, env=env, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while not (repo / ".search" / "c" / "search-c-t001.log").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode != 0, out
    out = search(repo, "--resume", "--trials", "3", "--name", "c").stdout
    assert "1 trial(s) left unfinished by an interrupted run" in out and "1 finished trial(s) so far" in out, out
    assert trials_of(repo, "c") == first
    refused = search(repo, "--trials", "3", "--name", "c", check=False)
    assert refused.returncode == 1 and "search 'c' exists" in refused.stdout
    shutil.rmtree(repo / ".search" / "c")  # its study gone, its experiments still there: names would clash
    refused = search(repo, "--trials", "3", "--name", "c", check=False)
    assert refused.returncode == 1 and "experiments of an earlier search 'c' exist (search-c-t00" in refused.stdout

    # Each trial's objective is the validation figure of what its ship stage chose (the default), or with
    # --objective lstm the LSTM's saved epoch's.
    search(repo, "--trials", "2", "--seed", "7", "--space", "space.yaml", "--name", "l", "--objective", "lstm")
    lstm = json.loads((repo / ".search" / "l" / "summary.json").read_text())
    assert lstm["objective"] == "lstm" and lstm["defaults"]["objective"] == "lstm_val_acc"
    assert [t["params"] for t in lstm["trials"]] == first[:2]  # the first proposals do not depend on it
    shown = {e["name"]: e["revs"][0]["data"]["metrics"] for b in json.loads(run(["dvc", "exp", "show", "--json"],
                                                                                 repo).stdout)
             for e in (b.get("experiments") or [])}
    for name, figure in (("a", "shipped"), ("l", "lstm")):
        for t in json.loads((repo / ".search" / name / "summary.json").read_text())["trials"]:
            metrics = shown[t["experiment"]]
            ship, best = metrics["metrics/ship.json"]["data"], metrics["metrics/train/best.json"]["data"]
            model = SHIPPED_NAMES[ship["ship_model"]]
            assert t["value"] == (ship[f"ship_val_acc_{model}"] if figure == "shipped" else best["lstm_val_acc"])

    # The best trial, applied: its params and its validation figure in the workspace.
    best = json.loads((repo / ".search" / "a" / "summary.json").read_text())["best"]
    run(["dvc", "exp", "apply", best["experiment"]], repo)
    assert yaml.safe_load((repo / "params.yaml").read_text())["train"]["lr"] == best["params"]["train.lr"]
    ship = json.loads((repo / "metrics/ship.json").read_text())
    model = SHIPPED_NAMES[ship["ship_model"]]
    assert ship[f"ship_val_acc_{model}"] == best["value"]


@pytest.mark.slow
def test_a_trial_below_the_median_is_pruned_and_still_ends_as_a_normal_run(repo):
    import optuna

    from pipeline.search_trial import ENV

    set_param(repo, "train", "epochs", 4)
    set_param(repo, "train", "patience", 4)
    storage = f"sqlite:///{repo / 'study.db'}"
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    earlier = study.ask()
    for epoch in range(1, 5):
        earlier.report(1.0, epoch)  # a perfect earlier trial: the median to beat
    study.tell(earlier, 1.0)
    trial = study.ask()
    pruner = {"startup_trials": 1, "warmup_epochs": 1}
    env = {ENV: json.dumps({"storage": storage, "study": "s", "trial_id": trial._trial_id, "pruner": pruner})}
    out = run(["env", *(f"{k}={v}" for k, v in env.items()), str(VENV_BIN / "python"), "-m", "pipeline.stages.train"],
              repo).stdout
    assert f"trial {trial.number} pruned after epoch 2" in out, out
    best = json.loads((repo / "metrics/train/best.json").read_text())
    assert best["pruned"] is True and best["lstm_best_epoch"] in (1, 2)
    accuracy = repo / "metrics/train/plots/metrics/val/accuracy.tsv"
    assert len(accuracy.read_text().splitlines()) == 1 + 2  # two epochs trained, of four
    assert (repo / "models/model.pt").exists()
    assert sorted(study.trials[trial.number].intermediate_values) == [1, 2]


def test_a_trial_variable_that_textclf_search_did_not_set_stops_training_with_one_line(monkeypatch):
    from pipeline.search_trial import ENV, epoch_pruner

    monkeypatch.delenv(ENV, raising=False)
    assert epoch_pruner() is None  # a normal run: no hook at all
    monkeypatch.setenv(ENV, "trial 3")
    with pytest.raises(PipelineError, match=f"environment variable {ENV}: not what textclf-search sets"):
        epoch_pruner()


@pytest.mark.slow
def test_failing_trials_are_recorded_and_three_failures_first_stop_the_search(repo):
    (repo / "space.yaml").write_text("train.encoder: {choices: [transformer]}\n")  # params.py takes it; train refuses
    proc = search(repo, "--trials", "5", "--space", "space.yaml", "--name", "f", check=False)
    assert proc.returncode == 1, proc.stdout
    assert proc.stdout.count("\n  failed (error: params.yaml: 'train.encoder' is 'transformer'") == 3, proc.stdout
    assert "error: the first trials all failed" in proc.stdout.splitlines()[-1]
    summary = json.loads((repo / ".search" / "f" / "summary.json").read_text())
    assert [t["state"] for t in summary["trials"]] == ["fail"] * 3 and summary["best"] is None


def test_each_override_is_parsed_by_dvc_back_to_its_value():
    """`dvc exp run -S` parses with Hydra's grammar: what a trial sets is what the search proposed, non-ASCII
    names in a list too; quotes and backslashes, which the grammar would change, are refused."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from pipeline.search import override

    parser = OverridesParser.create()
    for value in [0.009103784164516612, 128, "attention", ["título", "cuerpo"], None, True, 1e-5]:
        parsed = parser.parse_override(override("train.x", value))
        assert parsed.value() == value, (value, override("train.x", value))
    for bad in ["it's", ['a"b'], "back\\slash"]:
        with pytest.raises(PipelineError, match="quotes and backslashes cannot pass through"):
            override("train.x", bad)
