"""Several labels per text: the task, the thresholds, the figures, and the train, evaluate and baseline stages
on multi-label prepared splits."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
import yaml
from sklearn.metrics import accuracy_score, f1_score, hamming_loss

from pipeline.checkpoint import load_checkpoint
from pipeline.errors import PipelineError
from pipeline.multilabel_metrics import (THRESHOLD_GRID, choose_thresholds, label_matrix, label_sets,
                                         multilabel_metrics)
from pipeline.prepared_task import prepared_task, task_metadata
from pipeline.tasks import MultiLabel, checkpoint_task, get_task
from pipeline.text import TextConfig, text_config_metadata, tokenize
from tests.helpers import GENSIM_DATA, ROOT, polarity_rows, tiny_params

LABELS = ["a", "b", "c", "d"]


def random_sets(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.random((n, len(LABELS))) < [0.5, 0.3, 0.1, 0.02]


def test_the_figures_are_scikit_learns():
    truth, predicted = random_sets(300, 0), random_sets(300, 1)
    truth[:20] = False
    predicted[:10] = False  # texts with no label, predicted none: samples-F1 counts them as right
    ours = multilabel_metrics(truth, predicted, LABELS)
    assert ours["micro_f1"] == round(f1_score(truth, predicted, average="micro"), 4)
    assert ours["macro_f1"] == round(f1_score(truth, predicted, average="macro", zero_division=0), 4)
    assert ours["samples_f1"] == round(f1_score(truth, predicted, average="samples", zero_division=1), 4)
    assert ours["accuracy"] == round(accuracy_score(truth, predicted), 4)
    assert ours["hamming_loss"] == round(hamming_loss(truth, predicted), 4)
    per_label = f1_score(truth, predicted, average=None, zero_division=0)
    assert [ours["per_class"][label]["f1"] for label in LABELS] == [round(v, 4) for v in per_label]
    assert [ours["per_class"][label]["support"] for label in LABELS] == truth.sum(axis=0).tolist()
    truth[:, 3] = predicted[:, 3] = False  # a label neither had nor given: no F1, left out of the mean
    assert multilabel_metrics(truth, predicted, LABELS)["macro_f1"] == \
        round(f1_score(truth, predicted, average="macro", zero_division=np.nan), 4)


def test_label_sets_round_trip_and_an_unknown_label_is_a_key_error():
    sets = [["a", "c"], [], ["d"]]
    matrix = label_matrix(sets, LABELS)
    assert matrix.tolist() == [[True, False, True, False], [False] * 4, [False, False, False, True]]
    assert label_sets(matrix, LABELS) == sets
    with pytest.raises(KeyError):
        label_matrix([["z"]], LABELS)


def test_thresholds_are_chosen_per_label_on_validation():
    rng = np.random.default_rng(0)
    truth = np.zeros((400, 3), dtype=bool)
    truth[:100, 0] = True   # label 0: positives score 0.3, negatives 0.1: the best threshold lies between
    truth[:200, 1] = True   # label 1: perfectly separated at 0.5 as well as anywhere in (0.2, 0.8]: 0.5 kept
    probs = np.zeros((400, 3), dtype=np.float32)
    probs[:, 0] = np.where(truth[:, 0], 0.3, 0.1) + rng.uniform(-0.02, 0.02, 400)
    probs[:, 1] = np.where(truth[:, 1], 0.8, 0.2)
    probs[:, 2] = rng.random(400)   # label 2: no validation text has it: 0.5
    thresholds = choose_thresholds(probs, truth)
    assert 0.1 < thresholds[0] <= 0.3 and thresholds[0] in THRESHOLD_GRID
    assert thresholds[1] == pytest.approx(0.5)
    assert thresholds[2] == pytest.approx(0.5)
    assert multilabel_metrics(truth[:, :1], probs[:, :1] >= thresholds[0], ["x"])["micro_f1"] == 1.0


def test_the_multi_label_task_loss_decision_and_answer():
    task = get_task("multi_label")
    assert isinstance(task, MultiLabel) and task.thresholds is None
    targets = task.targets(pd.Series([["a"], ["b", "c"], []]), LABELS, "train.parquet")
    assert targets.dtype == np.uint8 and targets.tolist() == [[1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]]
    with pytest.raises(PipelineError, match=r"^val\.parquet: label 'z' does not occur in the training split$"):
        task.targets(pd.Series([["a", "z"]]), LABELS, "val.parquet")
    logits = torch.tensor([[2.0, -1.0, 0.5, -3.0], [-0.5, 1.0, -1.0, 2.0], [-2.0, -2.0, -2.0, -2.0]])
    target = torch.from_numpy(targets)
    expected = F.binary_cross_entropy_with_logits(logits, target.float(), reduction="sum")
    assert task.loss(logits, target).item() == pytest.approx(expected.item())
    # samples-F1 at 0.5: row 0 {a, c} against {a}: 2/3; row 1 {b, d} against {b, c}: 1/2; row 2 none, none: 1
    assert task.correct(logits, target) == pytest.approx(2 / 3 + 1 / 2 + 1)
    rare = np.zeros((400, 4), dtype=np.uint8)
    rare[:1, 0] = rare[1:301, 1] = rare[:2, 2] = rare[:200, 3] = 1
    weights = task.loss_weights(rare, 4, "balanced")  # negatives / positives, at most 100
    assert weights.tolist() == pytest.approx([100.0, 1 / 3, 100.0, 1.0])
    assert task.loss_weights(targets, 4, "none") is None
    tuned = checkpoint_task({"task": "multi_label"}, thresholds=[0.9, 0.5, 0.2, 0.5])
    probs = np.array([0.8, 0.6, 0.25, 0.1], dtype=np.float32)
    assert tuned.answer(probs, LABELS)["labels"] == ["b", "c"]
    assert get_task("multi_label").answer(probs, LABELS)["labels"] == ["a", "b"]
    assert tuned.confidence(probs[None])[0] == pytest.approx(0.2)  # the least sure decision: 'a' left out at 0.8


def multi_label_project(dest: Path) -> Path:
    """Multi-label prepared splits of the polarity sentences (sentiment, 'long', 'film'; every seventh text
    none), with the project's params shrunk to train in seconds: what the prepare stage writes."""
    dest.mkdir(parents=True)
    shutil.copytree(ROOT / "data/unlabelled", dest / "data/unlabelled")
    project = tiny_params(Path("unused.csv"), GENSIM_DATA / "test_glove.txt")
    project["domain_vectors"]["method"] = "none"
    (dest / "params.yaml").write_text(yaml.safe_dump(project, sort_keys=False))
    cfg = TextConfig(True, True, True, "keep", "words")
    schema = pa.schema([("text", pa.string()), ("tokens", pa.list_(pa.string())), ("label", pa.list_(pa.string()))],
                       metadata={**text_config_metadata(cfg), **task_metadata("multi_label")})
    splits = {"train": [], "val": [], "test": []}
    for i, (text, sentiment) in enumerate(polarity_rows()):
        tokens = tokenize(text, cfg)
        labels = [] if i % 7 == 0 else sorted({sentiment} | ({"long"} if len(tokens) > 20 else set())
                                              | ({"film"} if {"film", "movie"} & set(tokens) else set()))
        splits["test" if i % 5 == 0 else "val" if i % 5 == 1 else "train"].append((text, tokens, labels))
    (dest / "data/prepared").mkdir(parents=True)
    for name, rows in splits.items():
        table = pa.table({"text": [r[0] for r in rows], "tokens": [r[1] for r in rows], "label": [r[2] for r in rows]},
                         schema=schema)
        pq.write_table(table, dest / "data/prepared" / f"{name}.parquet")
    return dest


def run_stage(stage: str, cwd: Path) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT), CI="true")
    proc = subprocess.run([sys.executable, "-m", f"pipeline.stages.{stage}"], cwd=cwd, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.returncode == 0, proc.stdout[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_train_baseline_ship_and_evaluate_on_multi_label_splits(tmp_path):
    project = multi_label_project(tmp_path / "project")
    assert prepared_task(project / "data/prepared/train.parquet") == "multi_label"
    for stage in ("domain_vectors", "vocab"):
        run_stage(stage, project)
    out = run_stage("train", project)
    assert "per-label thresholds chosen on validation" in out
    ckpt = load_checkpoint(project / "models/lstm.pt")
    assert ckpt.labels == ["film", "long", "neg", "pos"] and ckpt.info["task"] == "multi_label"
    assert ckpt.model.multi_label and isinstance(ckpt.task, MultiLabel)
    assert len(ckpt.thresholds) == 4 and all(t in THRESHOLD_GRID for t in np.round(ckpt.thresholds, 2))
    best = json.loads((project / "metrics/train/best.json").read_text())
    assert set(best) == {"lstm_best_epoch", "lstm_val_micro_f1", "lstm_val_macro_f1", "lstm_val_samples_f1"}

    run_stage("baseline", project)
    baseline = json.loads((project / "metrics/baseline.json").read_text())
    assert set(baseline) == {"baseline_test_acc", "baseline_test_f1", "baseline_test_micro_f1",
                             "baseline_test_samples_f1", "baseline_test_hamming"}
    baseline_report = json.loads((project / "metrics/baseline/report.json").read_text())
    assert "one-vs-rest" in baseline_report["model"] and list(baseline_report["thresholds"]) == ckpt.labels

    # What ships: the LSTM, the one-vs-rest TF-IDF model or their fusion (logits, thresholds re-chosen), the best
    # validation micro-F1; evaluate scores it, the LSTM part alone keeps its figures.
    out = run_stage("ship", project)
    ship = json.loads((project / "metrics/ship.json").read_text())
    assert set(ship) == {"ship_model", "ship_fusion_weight", "ship_val_micro_f1_lstm", "ship_val_micro_f1_tfidf",
                         "ship_val_micro_f1_fusion", "fusion_test_acc", "fusion_test_f1"}, out
    shipped = load_checkpoint(project / "models/model.pt")
    assert shipped.shipped == json.loads((project / "metrics/ship/report.json").read_text())["shipped"]
    if shipped.shipped != "lstm":
        assert shipped.tfidf.output == "one_vs_rest" and len(shipped.shipped_thresholds) == 4

    run_stage("evaluate", project)
    figures = json.loads((project / "metrics/eval.json").read_text())
    assert set(figures) == {"lstm_test_acc", "lstm_test_f1", "lstm_test_micro_f1", "lstm_test_samples_f1",
                            "lstm_test_hamming", "lstm_test_ece", "lstm_test_brier", "shipped_test_acc",
                            "shipped_test_f1"}
    report = json.loads((project / "metrics/eval/report.json").read_text())
    test = pd.read_parquet(project / "data/prepared/test.parquet")
    assert report["test_rows"] == len(test) and report["shipped"] == shipped.shipped
    assert (figures["shipped_test_acc"], figures["shipped_test_f1"]) == (report["accuracy"], report["macro_f1"])
    if shipped.shipped == "fusion":
        assert (figures["shipped_test_acc"], figures["shipped_test_f1"]) == pytest.approx(
            (ship["fusion_test_acc"], ship["fusion_test_f1"]), abs=5e-5)
    assert {label: v["support"] for label, v in report["per_class"].items()} == \
        {label: int(sum(label in set(names) for names in test["label"])) for label in ckpt.labels}
    assert list(report["thresholds"]) == ckpt.labels
    confusion = pd.read_csv(project / "metrics/eval/confusion.csv")
    assert set(confusion["actual"]) | set(confusion["predicted"]) <= {*ckpt.labels, "(none)"}


def test_a_checkpoint_with_wrong_thresholds_or_an_unknown_task_is_refused(tiny_model_path, tmp_path):
    payload = torch.load(tiny_model_path, weights_only=True)
    for change, message in [
        (lambda p: p["calibration"].update(thresholds=[0.5]), r"calibration\.thresholds: expected 2 numbers"),
        (lambda p: p["calibration"].update(thresholds=[0.5, float("nan")]), r"calibration\.thresholds"),
        (lambda p: p["info"].update(task="regression"), r"info\.task: 'regression' is not one of"),
    ]:
        broken = {**payload, "calibration": dict(payload["calibration"]), "info": dict(payload["info"])}
        change(broken)
        buffer = io.BytesIO()
        torch.save(broken, buffer)
        path = tmp_path / "model.pt"
        path.write_bytes(buffer.getvalue())
        with pytest.raises(PipelineError, match=message):
            load_checkpoint(path)


@pytest.mark.slow
def test_a_multi_label_corpus_goes_through_dvc_repro_by_params_alone(tmp_path):
    """JSON lines whose labels are lists, with a title and a body: `dvc repro` with params.yaml alone; the
    splits, the model, the figures in `dvc exp show`, and the predictions are label sets."""
    from tests.helpers import make_project, run

    corpus = tmp_path / "news.jsonl"
    with open(corpus, "w", encoding="utf-8") as out:
        for i, (text, sentiment) in enumerate(polarity_rows()):
            words = text.split()
            labels = sorted({sentiment} | ({"long"} if len(words) > 20 else set())
                            | ({"film"} if {"film", "movie"} & set(words) else set()))
            row = {"title": " ".join(words[:3]), "body": " ".join(words[3:]), "tags": [] if i % 7 == 0 else labels}
            if i % 11 == 0:
                del row["tags"]  # no label: dropped, counted
            out.write(json.dumps(row) + "\n")
    project = tiny_params(corpus, GENSIM_DATA / "test_glove.txt")
    project["corpus"].update(text_column=["title", "body"], label_column="tags", format="auto", task="auto")
    repo = make_project(tmp_path / "repo", project)
    run(["dvc", "repro"], repo)
    prepared = json.loads((repo / "metrics/prepare.json").read_text())
    assert prepared["task"] == "multi_label" and prepared["dropped_missing_label"] == len(range(0, 200, 11))
    assert prepare_task_of(repo) == "multi_label"
    figures = json.loads(run(["dvc", "exp", "show", "--json"], repo).stdout)[0]["data"]["metrics"]
    assert {"lstm_test_micro_f1", "lstm_test_samples_f1", "lstm_test_hamming"} <= set(figures["metrics/eval.json"]["data"])
    assert "baseline_test_micro_f1" in figures["metrics/baseline.json"]["data"]
    per_label = figures["metrics/eval/per_label/metrics.json"]["data"]
    report = json.loads((repo / "metrics/eval/report.json").read_text())
    assert per_label == {label: report["per_class"][label] for label in report["per_class"]}
    predictions = pq.read_table(repo / "data/predictions/test.parquet")
    assert predictions.schema.field("predicted_labels").type == pa.list_(pa.string())
    ckpt = load_checkpoint(repo / "models/model.pt")
    out = run([str(Path(sys.executable).parent / "textclf-predict"), "--model", str(repo / "models/model.pt"),
               "--json", "a gripping film , long and good"], repo).stdout
    answer = json.loads(out.strip().splitlines()[-1])
    assert set(answer["labels"]) <= set(ckpt.labels) and set(answer["probabilities"]) == set(ckpt.labels)


def prepare_task_of(repo: Path) -> str:
    return prepared_task(repo / "data/prepared/train.parquet")
