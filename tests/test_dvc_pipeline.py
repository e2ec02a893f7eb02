"""The real pipeline under the real DVC, in temporary git repositories, on tiny real data."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.helpers import (copy_of, make_project, repro_and_commit, run, s3_server, set_param, stages_run,
                           tiny_params)

pytestmark = pytest.mark.slow  # every test here runs DVC

AFTER_TRAIN = {"train", "ship", "evaluate", "predict", "card"}  # what a new model reruns
CACHED_OUTPUTS = ["data/raw/embeddings", "data/raw/corpus", "data/prepared", "data/vocab", "models/lstm.pt",
                  "models/tfidf.npz", "models/model.pt", "metrics/ship/report.json",
                  "data/predictions/test.parquet"]


def tree_digest(path: Path) -> dict[str, bytes]:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p.relative_to(path.parent)): p.read_bytes() for p in files}


def test_full_repro_writes_every_artefact(repo):
    for path in CACHED_OUTPUTS:
        assert (repo / path).exists(), path
    # The metrics `dvc exp show` compares, each named once (the headline figures, and DVCLive's summary of
    # training, which it updates every epoch); the details are plain reports beside them.
    metrics = json.loads(run(["dvc", "metrics", "show", "--json"], repo).stdout)[""]["data"]
    assert sorted(metrics) == ["metrics/baseline.json", "metrics/eval.json", "metrics/eval/per_label/metrics.json",
                               "metrics/ship.json", "metrics/train/best.json", "metrics/train/metrics.json"], metrics
    # Each label's test precision, recall, F1 and support, so that `dvc metrics diff` shows a label that got worse.
    per_label = metrics["metrics/eval/per_label/metrics.json"]["data"]
    assert sorted(per_label) == ["neg", "pos"], per_label
    assert all(set(figures) == {"precision", "recall", "f1", "support"} for figures in per_label.values()), per_label
    assert sum(figures["support"] for figures in per_label.values()) == \
        len(pd.read_parquet(repo / "data/predictions/test.parquet")), per_label
    names = [key for path, m in metrics.items()
             if path not in ("metrics/train/metrics.json", "metrics/eval/per_label/metrics.json") for key in m["data"]]
    calibration = [f"lstm_{split}_{m}" for split in ("test", "val") for m in ("brier", "brier_raw", "ece", "ece_raw")]
    ship = ["ship_model", "ship_fusion_weight", "fusion_test_acc", "fusion_test_f1",
            *(f"ship_val_{m}_{part}" for m in ("acc", "nll") for part in ("lstm", "tfidf", "fusion"))]
    assert sorted(names) == sorted(["baseline_test_acc", "baseline_test_f1", "lstm_best_epoch", "lstm_temperature",
                                    "lstm_test_acc", "lstm_test_f1", "lstm_val_acc", *calibration, *ship,
                                    "shipped_test_acc", "shipped_test_f1"]), metrics
    live = metrics["metrics/train/metrics.json"]["data"]
    assert {"train", "val", "best_epoch", "best_val_accuracy"} <= set(live), live
    # precision: auto, resolved for this machine's CPU and recorded beside the thread count
    import torch

    from pipeline.plan import resolve_precision
    assert live["precision"] == resolve_precision("auto", torch.device("cpu")), live
    evaluation = json.loads((repo / "metrics/eval/report.json").read_text())
    # What ships (ship.model: best): the one of the LSTM, the TF-IDF model and their fusion best on validation;
    # models/model.pt is it, evaluate scores it, and the LSTM part alone keeps its own figures.
    from pipeline.checkpoint import load_checkpoint
    from pipeline.fusion import choose_shipped
    shipped = json.loads((repo / "metrics/ship/report.json").read_text())
    assert shipped["shipped"] == choose_shipped(shipped, "best") == load_checkpoint(repo / "models/model.pt").shipped
    assert evaluation["shipped"] == shipped["shipped"]
    lstm = evaluation if shipped["shipped"] == "lstm" else evaluation["lstm"]
    if shipped["shipped"] == "lstm":
        assert (repo / "models/model.pt").read_bytes() == (repo / "models/lstm.pt").read_bytes()
    assert json.loads((repo / "metrics/eval.json").read_text()) == {
        "lstm_test_acc": lstm["accuracy"], "lstm_test_f1": lstm["macro_f1"],
        **{f"lstm_test_{k}": evaluation["calibration"][k] for k in ("ece_raw", "ece", "brier_raw", "brier")},
        "shipped_test_acc": evaluation["accuracy"], "shipped_test_f1": evaluation["macro_f1"]}
    # Temperature scaling: the checkpoint's temperature, fitted on validation, is the one evaluate used.
    assert load_checkpoint(repo / "models/model.pt").temperature == pytest.approx(
        json.loads((repo / "metrics/train/best.json").read_text())["lstm_temperature"], abs=1e-4)
    assert set(evaluation["per_class"]) == {"neg", "pos"}
    # The predict stage: every test row with its probabilities; the model card beside the model.
    predictions = pd.read_parquet(repo / "data/predictions/test.parquet")
    assert len(predictions) == evaluation["test_rows"]
    assert ((predictions["prob_neg"] + predictions["prob_pos"]) - 1).abs().max() < 1e-5
    # ... the same predictions, row for row, as the evaluate stage's (confusion.csv: actual,predicted).
    confusion = pd.read_csv(repo / "metrics/eval/confusion.csv", dtype=str)
    assert predictions["predicted_label"].tolist() == confusion["predicted"].tolist()
    assert predictions["label"].tolist() == confusion["actual"].tolist()
    card = (repo / "models/MODEL_CARD.md").read_text()
    from pipeline.model_card import _cell
    from pipeline.model_card import SHIPPED_NAMES
    name = "LSTM" if shipped["shipped"] == "lstm" else SHIPPED_NAMES[shipped["shipped"]]
    assert f"| {name} (this model) | {_cell(evaluation['accuracy'])} | {_cell(evaluation['macro_f1'])} |" in card
    if shipped["shipped"] != "lstm":
        assert f"| LSTM part alone | {_cell(lstm['accuracy'])} | {_cell(lstm['macro_f1'])} |" in card
        assert "## What ships" in card
    assert "## Limits" in card
    baseline = json.loads((repo / "metrics/baseline/report.json").read_text())
    assert {"accuracy", "macro_f1", "per_class", "C"} <= set(baseline)
    vocab = json.loads((repo / "metrics/vocab.json").read_text())
    itos = json.loads((repo / "data/vocab/vocab.json").read_text())["itos"]
    source = yaml.safe_load((repo / "params.yaml").read_text())["embeddings"]["source"]
    glove_words = {line.split(" ", 1)[0] for line in Path(source).read_text(encoding="utf-8").splitlines()}
    assert vocab["embedding_dim"] == 50 and vocab["pretrained_rows"] == len(set(itos) & glove_words)
    confusion = (repo / "metrics/eval/confusion.csv").read_text().splitlines()
    assert confusion[0] == "actual,predicted" and len(confusion) == 1 + evaluation["test_rows"]
    assert (repo / "metrics/eval/confusion.png").read_bytes()[:4] == b"\x89PNG"
    assert (repo / "metrics/train/curves.png").read_bytes()[:4] == b"\x89PNG"
    # DVCLive: step loss every log_every_steps optimizer steps; per-epoch series over epochs 1, 2, ...
    every = yaml.safe_load((repo / "params.yaml").read_text())["train"]["log_every_steps"]
    plots = repo / "metrics/train/plots/metrics"
    step_rows = (plots / "train/step_loss.tsv").read_text().splitlines()
    assert step_rows[0] == "step\tstep_loss" and len(step_rows) > 2
    assert all(int(row.split("\t")[0]) % every == 0 for row in step_rows[1:])
    val_rows = [row.split("\t") for row in (plots / "val/accuracy.tsv").read_text().splitlines()[1:]]
    assert [int(r[0]) for r in val_rows] == list(range(1, len(val_rows) + 1))
    # The saved epoch's figures, not the last epoch's.
    best = json.loads((repo / "metrics/train/best.json").read_text())
    assert best["lstm_val_acc"] == round(max(float(r[1]) for r in val_rows), 4)
    assert float(val_rows[best["lstm_best_epoch"] - 1][1]) == max(float(r[1]) for r in val_rows)
    assert (plots / "lr.tsv").exists()
    # prepare.tokenizer: auto, resolved by the (English) corpus, and carried into the model
    from pipeline.checkpoint import load_checkpoint
    assert json.loads((repo / "metrics/prepare.json").read_text())["tokenizer"] == "words"
    assert load_checkpoint(repo / "models/model.pt").text_config.tokenizer == "words"
    # Nothing changed: nothing reruns.
    assert stages_run(run(["dvc", "repro"], repo).stdout) == set()


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_the_exported_model_gives_the_trained_models_probabilities_on_the_test_split(repo, fmt):
    """The issue's bar: the `textclf-export` files, run by onnxruntime / TorchScript, against the
    predict stage's probabilities (the PyTorch model) on every text of the test split, to 1e-5."""
    import numpy as np

    from pipeline.export import encode_batch, read_sidecar

    output = repo / f"models/model.{'onnx' if fmt == 'onnx' else 'torchscript.pt'}"
    # A fused or TF-IDF model does not export (the TF-IDF part looks up strings): one line says what to do.
    # Under ship.model: lstm the LSTM alone ships, and its export gives the predict stage's probabilities.
    from pipeline.checkpoint import load_checkpoint
    if load_checkpoint(repo / "models/model.pt").shipped != "lstm":
        refused = run(["textclf-export", "--format", fmt, "--output", str(output)], repo, check=False)
        assert refused.returncode == 1 and "ship.model: lstm" in refused.stdout and not output.exists()
        set_param(repo, "ship", "model", "lstm")
        assert stages_run(run(["dvc", "repro"], repo).stdout) == {"ship", "evaluate", "predict", "card"}
    run(["textclf-export", "--format", fmt, "--output", str(output)], repo)
    expected = pd.read_parquet(repo / "data/predictions/test.parquet")
    meta = read_sidecar(Path(f"{output}.json"))
    ids, lengths = encode_batch(meta, expected["text"].tolist())
    if fmt == "onnx":
        import onnxruntime

        got = onnxruntime.InferenceSession(str(output)).run(None, {"ids": ids, "lengths": lengths})[0]
    else:
        import torch

        with torch.no_grad():
            got = torch.jit.load(str(output))(torch.from_numpy(ids), torch.from_numpy(lengths)).numpy()
    want = expected[[f"prob_{label}" for label in meta["labels"]]].to_numpy()
    assert got.shape == want.shape and len(want) > 0
    assert np.abs(got - want).max() < 1e-5


def test_train_param_change_reruns_only_train_and_evaluate(repo):
    set_param(repo, "train", "lr", 0.01)
    out = run(["dvc", "repro"], repo).stdout
    assert stages_run(out) == AFTER_TRAIN, out


def test_train_processes_runs_torchrun_and_writes_once(repo):
    """train.processes: 2 under `dvc repro`: the stage relaunches itself under torchrun (gloo); process 0
    alone writes the model and the metrics, one row per epoch."""
    from pipeline.checkpoint import load_checkpoint

    set_param(repo, "train", "processes", 2)
    out = run(["dvc", "repro"], repo).stdout
    assert stages_run(out) == AFTER_TRAIN, out
    assert "training in 2 processes" in out
    assert json.loads((repo / "metrics/train/metrics.json").read_text())["processes"] == 2
    epochs = [int(row.split("\t")[0]) for row in
              (repo / "metrics/train/plots/metrics/val/accuracy.tsv").read_text().splitlines()[1:]]
    assert epochs == list(range(1, len(epochs) + 1)) and epochs
    assert load_checkpoint(repo / "models/model.pt").info["processes"] == 2
    assert "up to date" in run(["dvc", "status"], repo).stdout


def test_prepare_workers_change_nothing_dvc_tracks(repo):
    """prepare.workers changes the speed, never the data: not a dependency. Its other keys are."""
    set_param(repo, "prepare", "workers", 1)
    assert "up to date" in run(["dvc", "status"], repo).stdout
    set_param(repo, "prepare", "seed", 7)
    assert "prepare.seed" in run(["dvc", "status"], repo).stdout


def test_vocab_param_change_leaves_download_and_prepare(repo):
    set_param(repo, "vocab", "min_freq", 2)
    out = run(["dvc", "repro"], repo).stdout
    assert stages_run(out) == {"vocab"} | AFTER_TRAIN, out
    status = run(["dvc", "params", "diff", "--json"], repo).stdout
    change = json.loads(status)["params.yaml"]["vocab.min_freq"]
    assert (change["old"], change["new"]) == (1, 2)
    diff = json.loads(run(["dvc", "metrics", "diff", "--all", "--json"], repo).stdout)
    assert {"lstm_test_acc", "lstm_test_f1"} <= set(diff["metrics/eval.json"]), diff
    assert "metrics/vocab.json" in run(["dvc", "diff"], repo).stdout  # the report (in DVC's cache) moved too


def test_domain_vectors_are_trained_stacked_and_carried_into_the_model(repo):
    """domain_vectors.method: fasttext on the tiny corpus (auto leaves it off there): its stage trains,
    the vocab rows become [GloVe 50 | domain 8], and the model, its evaluation and predictions follow."""
    import torch

    from pipeline.checkpoint import load_checkpoint

    assert json.loads((repo / "metrics/domain_vectors.json").read_text())["method"] == "none"
    set_param(repo, "domain_vectors", "method", "fasttext")
    set_param(repo, "domain_vectors", "dim", 8)
    out = run(["dvc", "repro"], repo).stdout
    assert stages_run(out) == {"domain_vectors", "vocab"} | AFTER_TRAIN, out
    vocab = json.loads((repo / "metrics/vocab.json").read_text())
    assert (vocab["embedding_dim"], vocab["pretrained_dim"], vocab["domain_dim"]) == (58, 50, 8)
    assert vocab["domain_rows"] == vocab["vocab_size"] - 2  # every training word: min_count 1
    weights = load_checkpoint(repo / "models/model.pt").model.embedder.embedding.weight
    assert tuple(weights.shape) == (vocab["vocab_size"], 58) and torch.isfinite(weights).all()
    assert json.loads((repo / "metrics/eval.json").read_text())["lstm_test_acc"] > 0
    run(["git", "checkout", "--", "params.yaml"], repo)  # and back: every stage from the run cache
    assert stages_run(run(["dvc", "repro"], repo).stdout) == set()
    assert json.loads((repo / "metrics/vocab.json").read_text())["embedding_dim"] == 50


def test_unlabelled_text_dropped_in_its_folder_reruns_domain_vectors(repo):
    """data/unlabelled is a DVC dependency: a new .txt file there reruns domain_vectors (auto still trains
    nothing on so small a training split, so vocab and what follows stay as they are)."""
    (repo / "data/unlabelled/more.txt").write_text("An unlabelled review of a film.\nAnother one, unlabelled.\n")
    out = run(["dvc", "repro"], repo).stdout
    assert stages_run(out) == {"domain_vectors"}, out
    report = json.loads((repo / "metrics/domain_vectors.json").read_text())
    assert (report["method"], report["unlabelled_files"], report["unlabelled_tokens"]) == ("none", 1, None)
    (repo / "data/unlabelled/more.csv").write_text("text\nnot plain text\n")
    failed = run(["dvc", "repro"], repo, check=False)
    assert failed.returncode != 0
    assert "data/unlabelled/more.csv: not a .txt file" in failed.stdout


def test_experiment_run_and_show(repo):
    run(["dvc", "exp", "run", "-n", "faster-lr", "-S", "train.lr=0.003"], repo)
    shown = json.loads(run(["dvc", "exp", "show", "--json"], repo).stdout)
    experiments = [exp for commit in shown for exp in (commit.get("experiments") or [])]
    found = [e for e in experiments if e.get("name") == "faster-lr"]
    assert found, shown
    data = found[0]["revs"][0]["data"]
    assert data["params"]["params.yaml"]["data"]["train"]["lr"] == 0.003
    assert "lstm_test_acc" in data["metrics"]["metrics/eval.json"]["data"]


def test_queued_experiments_run_through_the_queue_worker(repo):
    """`dvc exp run --queue` + `dvc queue start`: the worker finds dvc on PATH and sees the committed params."""
    run(["dvc", "exp", "run", "--queue", "-S", "train.pooling=last,max"], repo)
    run(["dvc", "queue", "start", "--jobs", "1"], repo)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        status = run(["dvc", "queue", "status"], repo).stdout
        if "Failed" in status:
            raise AssertionError(status)
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(2)
    else:
        raise AssertionError(f"queue still busy:\n{status}")
    shown = json.loads(run(["dvc", "exp", "show", "--json"], repo).stdout)
    done = {}
    for commit in shown:
        for exp in commit.get("experiments") or []:
            data = exp["revs"][0]["data"]
            done[data["params"]["params.yaml"]["data"]["train"]["pooling"]] = data["metrics"]["metrics/eval.json"]["data"]
    assert set(done) == {"last", "max"}, shown
    evaluated = {"lstm_test_acc", "lstm_test_f1", "lstm_test_ece_raw", "lstm_test_ece", "lstm_test_brier_raw",
                 "lstm_test_brier", "shipped_test_acc", "shipped_test_f1"}
    assert all(set(m) == evaluated for m in done.values()), done  # evaluate ran in each


def test_plots_render_with_static_images(repo, tmp_path):
    out_dir = tmp_path / "plots"
    run(["dvc", "plots", "show", "-o", str(out_dir)], repo)
    html = (out_dir / "index.html").read_text()
    assert "curves.png" in html and "confusion.png" in html
    pngs = list(out_dir.rglob("*.png"))
    assert len(pngs) >= 2 and all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)


def _assert_pull_restores(repo: Path, clone_dir: Path) -> None:
    """In a fresh clone (empty cache), `dvc pull` restores every output and nothing needs rerunning."""
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", "remote"], repo)
    run(["dvc", "push"], repo)
    run(["git", "clone", "-q", str(repo), str(clone_dir)], repo.parent)
    assert not (clone_dir / "models/model.pt").exists()
    run(["dvc", "pull"], clone_dir)
    for path in CACHED_OUTPUTS:
        assert tree_digest(clone_dir / path) == tree_digest(repo / path), path
    assert stages_run(run(["dvc", "repro"], clone_dir).stdout) == set()


def test_push_and_pull_through_directory_remote(repo, tmp_path):
    run(["dvc", "remote", "add", "-d", "store", str(tmp_path / "remote")], repo)
    _assert_pull_restores(repo, tmp_path / "clone")


def _share_through(repo: Path, tmp_path: Path) -> Path:
    """A bare git repository as `origin` and a directory DVC remote, both holding the current commit."""
    origin = tmp_path / "origin.git"
    run(["git", "init", "-q", "--bare", str(origin)], tmp_path)
    run(["dvc", "remote", "add", "-d", "store", str(tmp_path / "dvc-store")], repo)
    run(["git", "commit", "-q", "-am", "share"], repo)
    run(["git", "remote", "add", "origin", str(origin)], repo)
    run(["git", "push", "-q", "origin", "HEAD"], repo)
    run(["dvc", "push"], repo)
    return origin


def test_experiments_are_shared_with_exp_push_and_exp_pull(repo, tmp_path):
    """An experiment travels as a git ref (to origin) and its outputs (to the DVC remote); a fresh
    clone pulls it, sees its metrics in `dvc exp show`, and applies it with nothing to rerun."""
    origin = _share_through(repo, tmp_path)
    run(["dvc", "exp", "run", "-n", "shared-lr", "-S", "train.lr=0.003"], repo)
    run(["dvc", "exp", "push", "origin", "shared-lr"], repo)
    clone = tmp_path / "clone"
    branch = run(["git", "branch", "--show-current"], repo).stdout.strip()
    run(["git", "clone", "-q", "-b", branch, str(origin), str(clone)], tmp_path)
    assert "shared-lr" in run(["dvc", "exp", "list", "--all-commits", "origin"], clone).stdout
    run(["dvc", "exp", "pull", "origin", "shared-lr"], clone)
    shown = json.loads(run(["dvc", "exp", "show", "--json"], clone).stdout)
    found = [e for c in shown for e in (c.get("experiments") or []) if e.get("name") == "shared-lr"]
    assert found, shown
    theirs = json.loads((repo / "metrics/eval.json").read_text())
    assert found[0]["revs"][0]["data"]["metrics"]["metrics/eval.json"]["data"] == theirs
    run(["dvc", "exp", "apply", "shared-lr"], clone)
    assert (clone / "models/model.pt").read_bytes() == (repo / "models/model.pt").read_bytes()
    assert "up to date" in run(["dvc", "status"], clone).stdout


def test_model_versions_are_tagged_and_fetched_from_the_registry(repo, tmp_path):
    """dvc.yaml's `artifacts:` entry + GTO tags: `dvc artifacts get` by version, by stage, and latest."""
    _share_through(repo, tmp_path)
    first = (repo / "models/model.pt").read_bytes()
    run(["gto", "register", "text-classifier", "--version", "v1.0.0"], repo)
    run(["gto", "assign", "text-classifier", "--version", "v1.0.0", "--stage", "prod"], repo)
    set_param(repo, "train", "lr", 0.01)
    run(["dvc", "repro"], repo)
    second = (repo / "models/model.pt").read_bytes()
    assert second != first
    run(["git", "commit", "-q", "-am", "retrained"], repo)
    run(["dvc", "push"], repo)
    run(["gto", "register", "text-classifier", "--version", "v1.1.0"], repo)

    def fetch(*how: str) -> bytes:
        out = tmp_path / f"fetched-{'-'.join(how)}.pt"
        run(["dvc", "artifacts", "get", str(repo), "text-classifier", *how, "-o", str(out)], tmp_path)
        return out.read_bytes()

    assert fetch("--rev", "v1.0.0") == first
    assert fetch("--stage", "prod") == first
    assert fetch() == second  # the latest version
    assert fetch("--rev", "v1.1.0") == second


def test_push_and_pull_through_s3_remote(repo, tmp_path, monkeypatch):
    """A real S3-protocol server (moto) on 127.0.0.1."""
    import boto3

    with s3_server(monkeypatch) as endpoint:
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="pipeline-cache")
        run(["dvc", "remote", "add", "-d", "s3store", "s3://pipeline-cache/dvc"], repo)
        run(["dvc", "remote", "modify", "s3store", "endpointurl", endpoint], repo)
        _assert_pull_restores(repo, tmp_path / "clone")
        listed = boto3.client("s3", endpoint_url=endpoint).list_objects_v2(Bucket="pipeline-cache")
        assert listed["KeyCount"] > 0


def test_a_bad_param_then_the_way_back_restores_the_last_good_outputs(repo):
    """`-S train.pooling=avg`: the stage fails with the key named. DVC removed its outputs before it ran;
    the README's way back (`git checkout -- params.yaml`, then `dvc repro`) restores every one of them
    from the run cache, byte for byte, without running anything."""
    before = {p: tree_digest(repo / p) for p in ("models/model.pt", "metrics/train", "metrics/eval.json",
                                                 "metrics/eval/report.json", "models/MODEL_CARD.md")}
    set_param(repo, "train", "pooling", "avg")
    proc = run(["dvc", "repro"], repo, check=False)
    assert proc.returncode != 0 and "'train.pooling' must be one of" in proc.stdout, proc.stdout
    assert not (repo / "metrics/train/best.json").exists()  # nothing that looks like a finished run
    run(["git", "checkout", "--", "params.yaml"], repo)
    out = run(["dvc", "repro"], repo).stdout
    assert stages_run(out) == set() and "Stage 'train' is cached - skipping run" in out, out
    assert {p: tree_digest(repo / p) for p in before} == before
    assert "up to date" in run(["dvc", "status"], repo).stdout
    assert run(["git", "status", "--porcelain"], repo).stdout == ""


def test_failed_stage_leaves_no_output_and_names_the_problem(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["corpus"]["text_column"] = "no_such_column"
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = run(["dvc", "repro", "prepare"], project, check=False)
    assert proc.returncode != 0
    assert "no text column 'no_such_column'" in proc.stdout and "polarity.csv" in proc.stdout
    assert not (project / "data/prepared").exists()
    assert not list((project / "data").glob("*.partial")) and not list((project / "data").glob(".*partial"))


@pytest.fixture(scope="module")
def own_data_repo(tmp_path_factory, polarity_csv, glove_small) -> Path:
    """The README's 'Your own data' recipe: files inside the repository named in corpus/embeddings.source."""
    root = tmp_path_factory.mktemp("own") / "repo"
    (root / "data").mkdir(parents=True)
    shutil.copy(polarity_csv, root / "data/my_reviews.csv")
    shutil.copy(glove_small, root / "data/my_vectors.txt")
    params = tiny_params(root / "data/my_reviews.csv", root / "data/my_vectors.txt")
    params["corpus"]["source"], params["embeddings"]["source"] = "data/my_reviews.csv", "data/my_vectors.txt"
    return repro_and_commit(make_project(root, params))


@pytest.fixture
def own_repo(own_data_repo, tmp_path) -> Path:
    return copy_of(own_data_repo, tmp_path)


def test_editing_a_local_corpus_file_reruns_prepare_and_what_follows(own_repo):
    with open(own_repo / "data/my_reviews.csv", "a") as f:
        f.write('"an extra, quite wonderful film",pos\n')
    status = run(["dvc", "status"], own_repo).stdout
    assert "data/my_reviews.csv" in status and "modified" in status, status
    train_split = own_repo / "data/prepared/train.parquet"
    before = train_split.read_bytes()
    ran = stages_run(run(["dvc", "repro"], own_repo).stdout)
    # domain_vectors reads the training split alone: it reruns only when the new row landed there
    trained_on = {"domain_vectors"} if train_split.read_bytes() != before else set()
    assert ran == {"prepare", "vocab", "baseline"} | trained_on | AFTER_TRAIN
    assert json.loads((own_repo / "metrics/prepare.json").read_text())["rows_read"] == 201
    assert "up to date" in run(["dvc", "status"], own_repo).stdout


def test_editing_a_local_vectors_file_reruns_vocab_and_what_follows(own_repo):
    lines = (own_repo / "data/my_vectors.txt").read_text().splitlines()
    (own_repo / "data/my_vectors.txt").write_text("\n".join(lines[:-5]) + "\n")
    assert "data/my_vectors.txt" in run(["dvc", "status"], own_repo).stdout
    assert stages_run(run(["dvc", "repro"], own_repo).stdout) == {"vocab"} | AFTER_TRAIN


def test_dvc_added_corpus_reaches_temp_experiments(own_repo):
    """`dvc add` keeps the file in DVC's cache and its .dvc file in git: --temp and queued runs see it."""
    run(["git", "rm", "-q", "--cached", "data/my_reviews.csv"], own_repo)
    run(["dvc", "add", "data/my_reviews.csv"], own_repo)
    run(["git", "add", "-A"], own_repo)
    run(["git", "commit", "-q", "-m", "track the corpus with dvc"], own_repo)
    assert stages_run(run(["dvc", "repro"], own_repo).stdout) == set()
    run(["dvc", "exp", "run", "--temp", "-n", "temp-lr", "-S", "train.lr=0.003"], own_repo)
    shown = json.loads(run(["dvc", "exp", "show", "--json"], own_repo).stdout)
    found = [e for c in shown for e in (c.get("experiments") or []) if e.get("name") == "temp-lr"]
    assert found and "lstm_test_acc" in found[0]["revs"][0]["data"]["metrics"]["metrics/eval.json"]["data"]


def test_import_url_corpus_is_updated_through_dvc(own_repo, polarity_csv, tmp_path):
    upstream = tmp_path / "upstream.csv"
    shutil.copy(polarity_csv, upstream)
    run(["dvc", "import-url", str(upstream), "data/imported.csv"], own_repo)
    set_param(own_repo, "corpus", "source", "data/imported.csv")
    # The same bytes under a new name: prepare reruns, gives the same splits, and nothing after it
    # reruns but the model card, which names the corpus's source.
    assert stages_run(run(["dvc", "repro"], own_repo).stdout) == {"prepare", "card"}
    with open(upstream, "a") as f:
        f.write('"one more, rather dull film",neg\n')
    run(["dvc", "update", "data/imported.csv.dvc"], own_repo)
    out = run(["dvc", "repro"], own_repo).stdout
    assert "prepare" in stages_run(out) and "download_corpus" not in stages_run(out)
    assert json.loads((own_repo / "metrics/prepare.json").read_text())["rows_read"] == 201


# What shows a stage mid-work: its staged outputs half written (before the atomic rename), or, for
# train, an epoch finished (its resume state written) and the next one under way.
MID_WORK = {
    "prepare": lambda repo: any(any(d.glob("*")) for d in (repo / "data").glob(".prepared.*.partial")),
    "vocab": lambda repo: any(any(d.glob("*")) for d in (repo / "data").glob(".vocab.*.partial")),
    "train": lambda repo: (repo / "models/.train-resume.pt").is_file(),
}


def _kill_stage_mid_work(repo: Path, stage: str, how: str = "kill -9") -> int:
    """Start `dvc repro` and, while the stage's staged outputs are half written, kill -9 the stage's own
    process (`how`: "kill -9"), send it SIGTERM ("SIGTERM"), or kill -9 the `dvc repro` that runs it
    ("kill -9 dvc": the stage must then end by itself); return dvc's exit code.

    No sleeps to guess at: the stage runs in short slices between SIGSTOP and SIGCONT, and is looked
    at only while stopped, so the kill lands mid-work on a fast machine and a slow one alike."""
    import os
    import signal
    import subprocess

    from tests.helpers import VENV_BIN

    env = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", CI="true")
    proc = subprocess.Popen(["dvc", "repro"], cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = f"pipeline.stages.{stage}".encode()
    is_mid_work = MID_WORK[stage]
    deadline = time.monotonic() + 300
    pid = None
    while pid is None and proc.poll() is None and time.monotonic() < deadline:
        for entry in filter(str.isdigit, os.listdir("/proc")):
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
                cwd = os.readlink(f"/proc/{entry}/cwd")
            except OSError:
                continue
            # The Python process itself (`python -m pipeline.stages.X`), never a `sh -c "..."` wrapper
            # around it: dash (/bin/sh when SHELL is unset, as in CI) forks rather than execs, and
            # killing only the shell would leave the stage running to the end.
            if cwd == str(repo) and any(a == b"-m" and b == target for a, b in zip(argv, argv[1:])):
                pid = int(entry)
                break
        time.sleep(0.005)
    mid_work = False
    try:
        assert pid is not None, f"{stage} never ran"
        while not mid_work and time.monotonic() < deadline:
            try:
                os.kill(pid, signal.SIGSTOP)
                _wait_until_stopped(pid)
            except ProcessLookupError:
                break
            mid_work = is_mid_work(repo)
            if mid_work and how == "SIGTERM":
                os.kill(pid, signal.SIGTERM)
            elif mid_work and how == "kill -9 dvc":
                proc.kill()
            os.kill(pid, signal.SIGKILL if mid_work and how == "kill -9" else signal.SIGCONT)
            time.sleep(0.0002)
        code = proc.wait(timeout=300)
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:  # the stage ends too
            time.sleep(0.01)
        assert not Path(f"/proc/{pid}").exists(), f"{stage} outlived the kill ({how})"
    finally:
        if proc.poll() is None:  # a failed assertion above: leave no `dvc repro` behind
            proc.kill()
            proc.wait()
    assert mid_work, f"{stage} ended before it was seen mid-work"
    return code


def _wait_until_stopped(pid: int) -> None:
    """SIGSTOP is asynchronous: wait until the kernel reports the process stopped (state T)."""
    stat = Path(f"/proc/{pid}/stat")
    while True:
        try:
            state = stat.read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            raise ProcessLookupError(pid) from None
        if state in ("T", "t", "Z", "X"):  # stopped, or already dead
            if state in ("Z", "X"):
                raise ProcessLookupError(pid)
            return
        time.sleep(0.0001)


@pytest.mark.parametrize("stage, how", [("prepare", "kill -9"), ("vocab", "kill -9"), ("train", "kill -9"),
                                        ("prepare", "SIGTERM"), ("train", "SIGTERM"), ("train", "kill -9 dvc")])
def test_kill_9_mid_stage_then_repro_recovers(own_data_repo, tmp_path, stage, how):
    """Fault injection: kill -9 a stage mid-work, send it SIGTERM, or kill -9 the `dvc repro` running it;
    nothing of the killed run looks finished, and the next `dvc repro` finishes (a training resumes
    after its last finished epoch), caches nothing corrupt and leaves no temporary files.
    (Killed downloads: test_leftovers_of_a_killed_run_are_removed_by_the_next.)"""
    def changed_copy(dest: Path) -> Path:
        repo = copy_of(own_data_repo, dest)
        set_param(repo, "prepare", "seed", 7)  # a new split: every stage from prepare on must run again
        set_param(repo, "train", "epochs", 12)  # long enough to be killed mid-training
        set_param(repo, "train", "patience", 12)
        set_param(repo, "train", "threads", 1)  # the same float sums in both runs compared below
        return repo

    repo = changed_copy(tmp_path / "killed")
    before = tree_digest(repo / "metrics/train")
    assert _kill_stage_mid_work(repo, stage, how) != 0
    if how != "kill -9":  # a signal the stage sees: it removes its staged outputs at once
        assert not [p for p in repo.rglob("*.partial")], how
    if stage == "train":
        assert not (repo / "metrics/train/best.json").exists()  # nothing of the killed run looks finished
    assert "changed" in run(["dvc", "status"], repo).stdout or "deleted" in run(["dvc", "status"], repo).stdout
    out = run(["dvc", "repro"], repo).stdout
    assert stage in stages_run(out), out
    if stage == "train":
        # It went on from its last finished epoch, and ended as a run never interrupted ends.
        assert re.search(r"resuming after epoch \d+", out), out
        assert not (repo / "models/.train-resume.pt").exists()
        uninterrupted = changed_copy(tmp_path / "uninterrupted")
        run(["dvc", "repro"], uninterrupted)
        assert (repo / "models/model.pt").read_bytes() == (uninterrupted / "models/model.pt").read_bytes()
        for series in ("train", "val", "lr.tsv"):  # not the timings
            path = f"metrics/train/plots/metrics/{series}"
            assert tree_digest(repo / path) == tree_digest(uninterrupted / path), series
    assert "up to date" in run(["dvc", "status"], repo).stdout
    leftovers = [str(p.relative_to(repo)) for p in repo.rglob("*")
                 if p.name.endswith(".partial") or p.name.startswith(".download-")]
    assert leftovers == []
    assert json.loads((repo / "metrics/eval/report.json").read_text())["test_rows"] > 0
    assert json.loads((repo / "metrics/prepare.json").read_text())["rows_kept"] == 200
    assert tree_digest(repo / "metrics/train") != before


def test_a_stage_run_by_hand_never_overwrites_the_corpus(own_repo):
    """predict.output at the corpus (by name, through a symbolic link, or a hard link): DVC refuses such
    params, and the predict stage run by hand now does too, with one line naming the key, the corpus
    untouched."""
    import os

    corpus = own_repo / "data/my_reviews.csv"
    before = corpus.read_bytes()
    (own_repo / "data/link.csv").symlink_to("my_reviews.csv")
    os.link(corpus, own_repo / "data/hard.csv")
    for output in ("data/my_reviews.csv", "data/link.csv", "data/hard.csv"):
        set_param(own_repo, "predict", "output", output)
        proc = run(["python", "-m", "pipeline.stages.predict"], own_repo, check=False)
        assert proc.returncode == 1, proc.stdout
        assert proc.stdout.strip().splitlines() == [
            f"error: params.yaml: 'predict.output' ({output}), an output of stage predict, "
            f"{'is a hard link of' if output == 'data/hard.csv' else 'is'} data/my_reviews.csv (corpus.source), "
            "read by stage prepare: running predict would overwrite it; name another path"], proc.stdout
        assert corpus.read_bytes() == before


def test_an_abandoned_trainings_resume_state_is_not_left_behind(repo):
    """A training killed mid-run leaves its resume state (models/.train-resume.pt). Going back to the
    committed params, `dvc repro` restores train from the run cache and runs none of this project's
    code; the next thing of it that runs (any stage, textclf-exp, `python -m pipeline.params`, which
    `make repro` runs after DVC) removes the state, which a finished training's marker shows abandoned.
    While the training is unfinished, it is kept for the run that resumes it."""
    resume = repo / "models/.train-resume.pt"
    set_param(repo, "train", "epochs", 12)
    set_param(repo, "train", "patience", 12)
    assert _kill_stage_mid_work(repo, "train") != 0
    assert resume.is_file() and not (repo / "metrics/train/best.json").exists()
    run(["python", "-m", "pipeline.params"], repo)
    assert resume.is_file()  # unfinished: kept
    run(["git", "checkout", "--", "params.yaml"], repo)
    out = run(["dvc", "repro"], repo).stdout
    assert not stages_run(out) and "Stage 'train' is cached - skipping run" in out, out
    assert resume.is_file()  # DVC ran nothing of ours
    out = run(["python", "-m", "pipeline.params"], repo).stdout
    assert "removed models/.train-resume.pt" in out and not resume.exists(), out
    assert run(["git", "status", "--porcelain"], repo).stdout == ""
