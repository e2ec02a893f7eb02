"""Multi-label corpora through the prepare stage (pipeline.label_sets, pipeline.corpus): each shape of a
set of labels (a JSON-lines array, a separated string in CSV/TSV/Parquet, a Parquet list column, fastText
lines of several labels) becomes a sorted, unique list<string> `label` column and the task in the splits'
Parquet metadata; corpus.task auto, single_label (refusing several labels, naming the row) and
multi_label; empty sets, drop_labels, label variants, labels without training rows; and single-label
splits exactly as they were (string labels, no task in their metadata)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import corpus
from pipeline.errors import PipelineError
from pipeline.labels import TASK_KEY, prepared_task, task_metadata
from pipeline.text import TextConfig, text_config_metadata
from tests.helpers import corpus_params, make_project, polarity_rows, prepare_params, run, tiny_params

TOPICS = ("arts", "science", "sport")


def _rows(n: int = 90) -> list[tuple[str, list[str]]]:
    """Texts with 0 to 3 topics each, every topic often enough to reach every split."""
    out = []
    for i in range(n):
        labels = [t for k, t in enumerate(TOPICS) if (i >> k) & 1]
        out.append((f"document {i} about {' and '.join(labels) or 'nothing much'}", labels))
    return out


def _prepare(tmp_path: Path, source: Path, name: str = "out", **over) -> tuple[dict, dict[str, pd.DataFrame]]:
    out = tmp_path / name
    report = corpus.prepare(source, corpus_params(source=str(source), **over), prepare_params(), out, workers=1)
    return report, {s: pq.read_table(out / f"{s}.parquet").to_pandas() for s in corpus.SPLITS}


def _labels_by_text(splits: dict[str, pd.DataFrame]) -> dict[str, list[str]]:
    return {t: labels if isinstance(labels, str) else list(labels)
            for df in splits.values() for t, labels in zip(df["text"], df["label"])}


def _check_multi_label_files(out: Path) -> None:
    for name in corpus.SPLITS:
        schema = pq.read_schema(out / f"{name}.parquet")
        assert schema.field("label").type == pa.list_(pa.string())
        assert schema.metadata[TASK_KEY] == b"multi_label" and prepared_task(out / f"{name}.parquet") == "multi_label"
        assert corpus.text_config_metadata(TextConfig()).keys() <= schema.metadata.keys()  # the text config kept


def test_json_lines_arrays_are_label_sets_sorted_unique_and_maybe_empty(tmp_path):
    source = tmp_path / "c.jsonl"
    rows = [{"text": t, "label": list(reversed(labels)) + labels[:1]} for t, labels in _rows()]  # unsorted, repeated
    rows += [{"text": "no label at all", "label": None}, {"text": "a blank item", "label": ["sport", " ", None]}]
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report, splits = _prepare(tmp_path, source)
    _check_multi_label_files(tmp_path / "out")
    labels = _labels_by_text(splits)
    assert labels["document 3 about arts and science"] == ["arts", "science"]
    assert labels["document 0 about nothing much"] == []  # an empty set is a real example: kept
    assert labels["a blank item"] == ["sport"]  # missing and blank items are no labels
    assert "no label at all" not in labels and report["dropped_missing_label"] == 1  # a missing label: dropped
    assert report["task"] == "multi_label" and report["rows_kept"] == 91
    assert report["class_counts"] == {"arts": 45, "science": 44, "sport": 45}  # 44 sport, and the blank item's
    assert sum(report["class_counts_by_split"][s]["arts"] for s in corpus.SPLITS) == 45
    assert report["label_cardinality"] == round((45 + 44 + 45) / 91, 4)
    assert sum(report["rows_without_labels"].values()) == 12  # 0, 8, 16, ... 88
    assert report["train_rows"] + report["val_rows"] + report["test_rows"] == 91


def test_separated_labels_in_csv_tsv_and_parquet_and_a_parquet_list_column(tmp_path):
    rows = _rows()
    strings = [" | ".join(labels) if labels else "|" for _, labels in rows]  # '|' alone: an empty set
    frame = pd.DataFrame({"text": [t for t, _ in rows], "label": strings})
    frame.to_csv(tmp_path / "c.csv", index=False)
    frame.to_csv(tmp_path / "c.tsv", index=False, sep="\t")
    frame.to_parquet(tmp_path / "c.parquet")
    pd.DataFrame({"text": [t for t, _ in rows], "label": [labels for _, labels in rows]}).to_parquet(
        tmp_path / "list.parquet")
    results = []
    for name in ("c.csv", "c.tsv", "c.parquet", "list.parquet"):
        over = {} if name == "list.parquet" else {"label_separator": "|"}
        report, splits = _prepare(tmp_path, tmp_path / name, f"out-{name}", **over)
        _check_multi_label_files(tmp_path / f"out-{name}")
        results.append((report["class_counts"], _labels_by_text(splits)))
        assert report["task"] == "multi_label"
    assert all(r == results[0] for r in results)
    assert results[0][1]["document 7 about arts and science and sport"] == ["arts", "science", "sport"]
    assert results[0][1]["document 0 about nothing much"] == []


def test_fasttext_lines_of_several_labels(tmp_path):
    source = tmp_path / "c.txt"
    source.write_text("".join(" ".join(f"__label__{x}" for x in labels or ["none"]) + f" {t}\n" for t, labels in _rows()))
    report, splits = _prepare(tmp_path, source)
    assert report["task"] == "multi_label"
    assert _labels_by_text(splits)["document 5 about arts and sport"] == ["arts", "sport"]
    assert _labels_by_text(splits)["document 2 about science"] == ["science"]  # a line of one label: a set of one


def test_auto_is_single_label_without_sets_and_multi_label_forced_makes_sets_of_one(tmp_path):
    """A separator alone decides nothing: no row of several labels, and auto is single_label."""
    source = tmp_path / "c.csv"
    pd.DataFrame(polarity_rows(), columns=["text", "label"]).to_csv(source, index=False)
    report, splits = _prepare(tmp_path, source, label_separator="|")
    assert report["task"] == "single_label" and splits["train"]["label"].map(type).eq(str).all()
    report, splits = _prepare(tmp_path, source, "forced", task="multi_label")
    _check_multi_label_files(tmp_path / "forced")
    assert report["task"] == "multi_label" and splits["train"]["label"].map(len).eq(1).all()
    assert report["label_cardinality"] == 1.0 and report["rows_without_labels"] == {"train": 0, "val": 0, "test": 0}


def test_a_json_list_of_one_label_makes_the_corpus_multi_label(tmp_path):
    source = tmp_path / "c.jsonl"
    rows = [{"text": t, "label": l} for t, l in polarity_rows()]
    rows[7]["label"] = [rows[7]["label"]]
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert _prepare(tmp_path, source)[0]["task"] == "multi_label"
    report, splits = _prepare(tmp_path, source, "single", task="single_label")  # a list of one is its label
    assert report["task"] == "single_label" and _labels_by_text(splits)[rows[7]["text"]] == rows[7]["label"][0]


@pytest.mark.parametrize("name, content, over, where", [
    ("c.jsonl", '{"text": "a", "label": "x"}\n\n{"text": "b", "label": ["x", "y"]}\n', {}, "line 3"),
    ("c.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "label": []}\n', {}, "line 2"),
    ("c.txt", "__label__x a\n\n\n__label__x __label__y b\n", {}, "line 4"),
    ("c.csv", 'text,label\na,x\n"b\nc",x\nd,x|y\n', {"label_separator": "|"}, "data row 3"),
])
def test_several_labels_in_a_single_label_corpus_are_an_error_naming_the_row(tmp_path, name, content, over, where):
    source = tmp_path / name
    source.write_text(content)
    with pytest.raises(PipelineError, match=rf"^{source}: {where}: the label holds \d labels .*, and corpus\.task "
                                            r"is single_label \(one label per text\); set corpus\.task: multi_label"):
        _prepare(tmp_path, source, task="single_label", **over)


def test_drop_labels_takes_a_label_out_of_the_sets_and_keeps_the_rows(tmp_path):
    source = tmp_path / "c.jsonl"
    source.write_text("".join(json.dumps({"text": t, "label": labels}) + "\n" for t, labels in _rows()))
    report, splits = _prepare(tmp_path, source, drop_labels=["sport"])
    labels = _labels_by_text(splits)
    assert len(labels) == 90 and labels["document 4 about sport"] == [] and "sport" not in report["class_counts"]
    assert labels["document 5 about arts and sport"] == ["arts"]
    assert report["rows_with_excluded_labels"] == 44


def test_label_variants_across_sets_are_an_error_or_merged(tmp_path):
    source = tmp_path / "c.jsonl"
    rows = [{"text": t, "label": labels} for t, labels in _rows()]
    rows[10]["label"] = ["Science", "arts"]
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(PipelineError, match=r"labels 'science' \(43; first at row 3\), 'Science' \(1; first at row 11\) "
                                            r"differ only by case or surrounding blanks"):
        _prepare(tmp_path, source)
    report, splits = _prepare(tmp_path, source, "merged", label_variants="merge")
    assert report["labels_merged"] == {"Science": {"into": "science", "rows": 1}}
    assert _labels_by_text(splits)[rows[10]["text"]] == ["arts", "science"]


def test_a_label_without_training_rows_leaves_the_val_and_test_sets_with_a_warning(tmp_path):
    """Reuters has such labels: the stage goes on, the label taken out of the sets (its rows stay)."""
    source = tmp_path / "c.csv"
    rows = [(t, "|".join(labels) or "|", "train") for t, labels in _rows()]
    rows += [("a rare test text", "arts|rare", "test"), ("another rare one", "rare", "test")]
    pd.DataFrame(rows, columns=["text", "label", "part"]).to_csv(source, index=False)
    report, splits = _prepare(tmp_path, source, label_separator="|", split_column="part")
    labels = _labels_by_text(splits)
    assert labels["a rare test text"] == ["arts"] and labels["another rare one"] == []
    assert "rare" not in report["class_counts"] and "rare" not in report["class_counts_by_split"]["test"]
    assert any("label 'rare' has no training rows (0 val, 2 test): taken out" in w for w in report["warnings"])
    assert "label 'rare' has no test rows" not in report["warnings"]


def test_fewer_than_two_labels_with_training_rows_is_an_error(tmp_path):
    source = tmp_path / "c.jsonl"
    rows = [{"text": t, "label": ["spam"] if i % 2 else []} for i, (t, _) in enumerate(_rows())]
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(PipelineError, match=r"c\.jsonl: 1 label\(s\) with training rows \('spam'\); a multi-label "
                                            "classifier needs two or more"):
        _prepare(tmp_path, source)


def test_multi_label_prepare_in_chunks_and_workers_gives_the_same_bytes(tmp_path):
    source = tmp_path / "c.jsonl"
    rows = [{"text": t, "label": labels, "part": "test" if i % 9 == 0 else "train"} for i, (t, labels) in enumerate(_rows())]
    rows[3] = {"text": rows[81]["text"], "label": ["sport"], "part": "train"}  # a copy of test row 81, earlier
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    params = corpus_params(source=str(source), split_column="part")
    files = []
    for chunk_rows, workers in [(7, 1), (7, 2), (10_000, 1)]:
        out = tmp_path / f"out-{chunk_rows}-{workers}"
        report = corpus.prepare(source, params, prepare_params(workers=workers), out, workers, chunk_rows=chunk_rows)
        files.append([(out / f"{name}.parquet").read_bytes() for name in corpus.SPLITS])
    assert files[0] == files[1] == files[2] and report["dropped_duplicate_text"] == 1


def test_single_label_splits_have_string_labels_and_no_task_in_their_metadata(tmp_path):
    """The single-label output is what it always was, byte for byte: the same schema and metadata as before
    multi-label corpora existed, whatever corpus.task (auto or single_label) and label_separator say."""
    source = tmp_path / "c.jsonl"
    source.write_text("".join(json.dumps({"text": t, "label": label}) + "\n" for t, label in polarity_rows()))
    outputs = []
    for name, over in [("auto", {}), ("single", {"task": "single_label"}), ("sep", {"label_separator": ","})]:
        report, _ = _prepare(tmp_path, source, name, **over)
        assert report["task"] == "single_label"
        outputs.append([(tmp_path / name / f"{s}.parquet").read_bytes() for s in corpus.SPLITS])
        for split in corpus.SPLITS:
            schema = pq.read_schema(tmp_path / name / f"{split}.parquet")
            assert schema.remove_metadata().equals(corpus.OUTPUT_SCHEMA) and schema.field("label").type == pa.string()
            assert list(schema.metadata) == list(text_config_metadata(TextConfig()))  # the text config, no task
            assert prepared_task(tmp_path / name / f"{split}.parquet") == "single_label"
    assert outputs[0] == outputs[1] == outputs[2]
    assert task_metadata("single_label") == {}


@pytest.mark.slow
def test_dvc_repro_prepare_of_a_multi_label_corpus(tmp_path, glove_small):
    """The stage under DVC: params.yaml's corpus.task and label_separator, the splits and the report."""
    source = tmp_path / "topics.csv"
    pd.DataFrame({"review": [t for t, _ in _rows()], "sentiment": [";".join(l) or ";" for _, l in _rows()]}).to_csv(
        source, index=False)
    data = tiny_params(source, glove_small)
    data["corpus"].update(label_separator=";", task="auto")
    project = make_project(tmp_path / "project", data)
    run(["dvc", "repro", "prepare"], project)
    report = json.loads((project / "metrics/prepare.json").read_text())
    assert report["task"] == "multi_label" and report["class_counts"] == {"arts": 45, "science": 44, "sport": 44}
    _check_multi_label_files(project / "data/prepared")
