"""benchmarks/corpora.py's rows and table: what shipped on each seed, and a run made outside the queue."""

import json

import pytest

from benchmarks import corpora


def write_run(folder, shipped_code: int, shipped_acc: float, lstm_acc: float, weight: float) -> None:
    """The metrics files `dvc repro` leaves, with the fields the results table reads."""
    files = {
        "metrics/eval.json": {"lstm_test_acc": lstm_acc, "lstm_test_f1": lstm_acc - 0.01,
                              "shipped_test_acc": shipped_acc, "shipped_test_f1": shipped_acc - 0.01},
        "metrics/ship.json": {"ship_model": shipped_code, "ship_fusion_weight": weight, "fusion_test_acc": 0.9},
        "metrics/baseline.json": {"baseline_test_acc": 0.8, "baseline_test_f1": 0.79},
        "metrics/prepare.json": {"class_counts": {"a": 3, "b": 2, "c": 1}, "train_rows": 6, "val_rows": 2,
                                 "test_rows": 2, "split_from_corpus": True, "train_tokens": {"mean": 12.4}},
        "metrics/train/metrics.json": {"max_tokens": 64},
        "metrics/train/best.json": {"lstm_val_acc": 0.85, "train_seconds": 10.0},
    }
    for path, data in files.items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_text(json.dumps(data))


def test_a_checkout_row_reads_what_shipped_and_the_table_shows_it_per_seed(tmp_path):
    first, second = tmp_path / "s42", tmp_path / "s43"
    write_run(first, corpora.CODES["fusion"], 0.87, 0.83, 0.2)
    write_run(second, corpora.CODES["lstm"], 0.85, 0.85, 0.4)
    rows = [corpora.checkout_row(first, "news", 42), corpora.checkout_row(second, "news", 43)]
    assert [(r["shipped"], r["shipped_accuracy"], r["lstm_accuracy"]) for r in rows] == \
        [("fusion", 0.87, 0.83), ("lstm", 0.85, 0.85)]
    assert rows[0]["name"] == f"checkout {first}" and rows[0]["classes"] == 3 and rows[0]["split"] == "given"
    table = corpora.table(rows, ["news"])
    assert table.startswith("The shipped columns are what each run's ship stage chose by the rule of its day")
    line = next(row for row in table.splitlines() if row.startswith("| news |"))
    # the mean of the two seeds and their range, and which model each seed shipped (the weight where fused)
    assert "| **0.860 (0.850–0.870)** |" in line and "| fusion w=0.2, lstm |" in line, line


def test_rows_from_before_the_ship_stage_show_a_dash_not_a_wrong_figure(tmp_path):
    write_run(tmp_path, corpora.CODES["lstm"], 0.85, 0.85, 0.4)
    row = corpora.checkout_row(tmp_path, "news", 42)
    old = {key: value for key, value in row.items() if not key.startswith(("shipped", "fusion"))}
    assert "| - | - | - | 0.850 |" in next(row for row in corpora.table([old], ["news"]).splitlines()
                                           if row.startswith("| news |"))


def test_a_checkout_without_a_run_names_the_missing_file(tmp_path):
    with pytest.raises(SystemExit, match=r"no metrics/eval.json \(has `dvc repro` run there\?\)"):
        corpora.checkout_row(tmp_path, "news", 42)
