"""The corpus made into splits (pipeline.corpus): cleaning and its counts, duplicates, label variants,
hashed and given splits, classes each split must serve, and the streaming prepare() (chunks, workers,
row groups) giving what one pass over the whole corpus gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipeline import corpus
from pipeline.errors import PipelineError
from pipeline.text import TextConfig
from tests.helpers import assign_splits, by_split, clean_corpus, corpus_params, prepare_params


def test_clean_corpus_counts_every_drop():
    df = pd.DataFrame({"text": ["good", "bad", "", "plot text", "good", "fine", None],
                       "label": ["pos", "neg", "pos", "plot", "pos", None, "neg"]})
    out, report = clean_corpus(df, TextConfig(), ["plot"], drop_duplicates=True)
    assert out["text"].tolist() == ["good", "bad"]
    assert report == {"rows_read": 7, "dropped_missing_label": 1, "dropped_excluded_label": 1,
                      "dropped_empty_text": 2, "dropped_duplicate_text": 1, "rows_kept": 2,
                      "class_counts": {"neg": 1, "pos": 1}}


def test_duplicates_keep_the_test_copy():
    df = pd.DataFrame({"text": ["same", "other", "same", "third", "third"], "label": ["a", "b", "a", "b", "b"],
                       "split": ["train", "train", "test", "test", "test"]})
    out, report = clean_corpus(df, TextConfig(), [], drop_duplicates=True)
    assert report["dropped_duplicate_text"] == 1
    assert out.loc[out["text"] == "same", "split"].tolist() == ["test"]
    assert out.loc[out["text"] == "third", "split"].tolist() == ["test", "test"]  # the given test split stays whole


def test_label_variants_are_an_error_or_merged():
    df = pd.DataFrame({"text": ["a", "b", "c", "d"], "label": ["pos", "Pos ", " pos", "neg"]})
    with pytest.raises(PipelineError, match=r"c\.csv: labels 'pos' \(1; first at row 1\), 'Pos ' \(1; first at row 2\), "
                                            r"' pos' \(1; first at row 3\) differ only by case or surrounding blanks"):
        clean_corpus(df, TextConfig(), [], True, "c.csv")
    out, report = clean_corpus(df, TextConfig(), [], True, "c.csv", label_variants="merge")
    assert report["class_counts"] == {"neg": 1, "pos": 3}
    lone = pd.DataFrame({"text": ["a", "b"], "label": [" pos ", "neg"]})  # one spelling: just stripped
    assert clean_corpus(lone, TextConfig(), [], True)[0]["label"].tolist() == ["pos", "neg"]


def test_labels_that_differ_only_by_the_spelling_of_a_number_are_an_error_or_merged():
    """'01' and '1' (a column of codes written by two tools): before, two classes without a word."""
    df = pd.DataFrame({"text": [f"text {i}" for i in range(7)], "label": ["1", "2", "01", "1.0", "2", "1", " +1 "]})
    with pytest.raises(PipelineError, match=r"^c\.csv: labels '1' \(2; first at row 1\), '01' \(1; first at row 3\), "
                                            r"'1\.0' \(1; first at row 4\), ' \+1 ' \(1; first at row 7\) differ only by "
                                            r"the spelling of a number; rows are counted from 1"):
        clean_corpus(df, TextConfig(), [], True, "c.csv")
    out, report = clean_corpus(df, TextConfig(), [], True, "c.csv", label_variants="merge")
    assert report["class_counts"] == {"1": 5, "2": 2}
    # numbers that differ are different labels; so are codes that are not numbers
    other = pd.DataFrame({"text": ["a", "b", "c", "d"], "label": ["1", "10", "0.5", "A01"]})
    assert sorted(clean_corpus(other, TextConfig(), [], True)[0]["label"]) == ["0.5", "1", "10", "A01"]


def test_a_merge_of_label_variants_is_counted_in_the_report(tmp_path):
    from pipeline.corpus import prepare

    source = tmp_path / "c.csv"
    labels = (["1", "2"] * 20) + ["01"] * 3 + ["Pos"] * 10 + ["pos"] * 2
    pd.DataFrame({"text": [f"review number {i}" for i in range(len(labels))], "label": labels}).to_csv(source, index=False)
    report = prepare(source, corpus_params(source=str(source), label_variants="merge"),
                     prepare_params(val_size=0.3, test_size=0.3), tmp_path / "out", workers=1)
    assert report["labels_merged"] == {"01": {"into": "1", "rows": 3}, "pos": {"into": "Pos", "rows": 2}}


def test_empty_and_single_class_corpora_are_refused():
    with pytest.raises(PipelineError, match="the corpus is empty"):
        clean_corpus(pd.DataFrame({"text": [], "label": []}), TextConfig(), [], True, "c.csv")
    single = pd.DataFrame({"text": ["a", "b"], "label": ["pos", "pos"]})
    with pytest.raises(PipelineError, match=r"c\.csv: only one class \('pos'\)"):
        clean_corpus(single, TextConfig(), [], True, "c.csv")


def _unsplit(n, labels=("a", "b")):
    return pd.DataFrame({"text": [f"text number {i}" for i in range(n)],
                         "label": [labels[i % len(labels)] for i in range(n)], "split": [None] * n})


def test_hash_split_is_seeded_stratified_and_stable_when_rows_are_added():
    df = _unsplit(4000)
    split, info = assign_splits(df, 0.1, 0.2, seed=7)
    assert info == {"split_from_corpus": 0, "split_by_hash": 4000}
    shares = pd.crosstab(df["label"], split, normalize="index")
    assert np.allclose(shares["test"], 0.2, atol=0.03) and np.allclose(shares["val"], 0.1, atol=0.03)
    again, _ = assign_splits(df.sample(frac=1, random_state=1).sort_index(), 0.1, 0.2, seed=7)
    assert (again == split).all()
    grown = pd.concat([df, _unsplit(6000).iloc[4000:]])
    grown_split, _ = assign_splits(grown, 0.1, 0.2, seed=7)
    assert (grown_split.iloc[:4000].to_numpy() == split.to_numpy()).all()  # no old row moved
    other, _ = assign_splits(df, 0.1, 0.2, seed=8)
    assert (other != split).mean() > 0.2


def test_official_test_split_is_kept_and_val_carved_from_train():
    df = pd.concat([_unsplit(1000).assign(split="train"), _unsplit(1300).iloc[1000:].assign(split="test")])
    split, info = assign_splits(df.reset_index(drop=True), 0.1, 0.2, seed=0)
    assert (split.iloc[1000:] == "test").all()
    assert info["val_carved_from_train"] == (split == "val").sum() and 60 < info["val_carved_from_train"] < 140


def test_a_class_too_small_for_the_test_split_is_an_error():
    df = _unsplit(600)
    tiny = pd.DataFrame({"text": ["rare one", "rare two", "rare three"], "label": ["c"] * 3, "split": [None] * 3})
    df = pd.concat([df, tiny], ignore_index=True)
    seed = next(s for s in range(100) if "test" not in set(assign_splits(df, 0.1, 0.1, s)[0].iloc[-3:]))
    split, _ = assign_splits(df, 0.1, 0.1, seed)
    with pytest.raises(PipelineError, match=r"class 'c' has 3 row\(s\) and none fell in the test split"):
        corpus.check_classes(by_split(df["label"], split), False, "c.csv")
    # the corpus's own test split lacking a class is its authors' choice: a warning
    assert "class 'c' has no test rows" in corpus.check_classes(by_split(df["label"], split), True, "c.csv")
    split.iloc[-3:] = "test"
    with pytest.raises(PipelineError, match="class 'c' has 0 val and 3 test row.*none for training"):
        corpus.check_classes(by_split(df["label"], split), True, "c.csv")


def _prepared(out: Path) -> dict:
    return {name: pd.read_parquet(out / f"{name}.parquet").assign(tokens=lambda d: d["tokens"].map(list))
            for name in corpus.SPLITS}


def test_prepare_in_chunks_and_workers_gives_what_all_at_once_gives(tmp_path):
    """Chunks of 7 rows on one process and on two, and the whole corpus as one chunk: the same splits,
    rows, order and report. A text's test copy in a later chunk wins over its train copy in an earlier
    one; labels are merged, excluded and missing across chunk borders."""
    rows = [(f"review {i} of a {'fine' if i % 2 else 'dull'} film", "Pos " if i == 5 else ("pos" if i % 2 else "neg"),
             "test" if i % 9 == 0 else "train") for i in range(120)]
    rows[3] = ("review 90 of a dull film", "neg", "train")   # a copy of test row 90, 87 rows earlier
    rows[40] = ("plot summary", "plot", "train")
    rows[41] = ("", "pos", "train")
    rows[42] = ("no label", None, "train")
    path = tmp_path / "c.csv"
    pd.DataFrame(rows, columns=["text", "label", "part"]).to_csv(path, index=False)
    params = corpus_params(split_column="part", drop_labels=["plot"], label_variants="merge")
    results, files = [], []
    for chunk_rows, workers in [(7, 1), (7, 2), (10_000, 1)]:
        out = tmp_path / f"out-{chunk_rows}-{workers}"
        report = corpus.prepare(path, params, prepare_params(workers=workers), out, workers, chunk_rows=chunk_rows)
        assert sorted(p.name for p in out.iterdir()) == ["test.parquet", "train.parquet", "val.parquet"]  # no shards left
        results.append((report, _prepared(out)))
        files.append([(out / f"{name}.parquet").read_bytes() for name in corpus.SPLITS])
    assert files[0] == files[1] == files[2]  # byte for byte: DVC sees the same output
    (report, splits), *others = results
    for other_report, other_splits in others:
        assert other_report == report
        for name in corpus.SPLITS:
            pd.testing.assert_frame_equal(other_splits[name], splits[name])
    assert report["dropped_duplicate_text"] == 1 and report["dropped_excluded_label"] == 1
    assert report["dropped_missing_label"] == 1 and report["dropped_empty_text"] == 1
    assert "review 90 of a dull film" in splits["test"]["text"].tolist()
    assert "review 90 of a dull film" not in splits["train"]["text"].tolist() + splits["val"]["text"].tolist()
    assert report["class_counts"] == {"neg": 58, "pos": 58}  # 'Pos ' merged into 'pos'
    assert report["val_carved_from_train"] == report["val_rows"] > 0


def test_prepare_writes_row_groups_across_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus, "ROW_GROUP", 25)
    path = tmp_path / "c.jsonl"
    pd.DataFrame({"text": [f"text number {i}" for i in range(200)], "label": ["a", "b"] * 100}).to_json(
        path, orient="records", lines=True)
    corpus.prepare(path, corpus_params(), prepare_params(val_size=0.1, test_size=0.1), tmp_path / "out", 1, chunk_rows=9)
    train = pq.ParquetFile(tmp_path / "out/train.parquet")
    sizes = [train.metadata.row_group(i).num_rows for i in range(train.num_row_groups)]
    assert sizes[:-1] == [25] * (len(sizes) - 1) and 0 < sizes[-1] <= 25 and sum(sizes) > 100


def test_many_imbalanced_classes_reach_every_split():
    counts = [800 // (k + 1) for k in range(12)]  # 800 down to 66 rows
    df = pd.DataFrame({"text": [f"class {k} text {i}" for k, n in enumerate(counts) for i in range(n)],
                       "label": [f"topic-{k}" for k, n in enumerate(counts) for _ in range(n)], "split": None})
    split, _ = assign_splits(df, 0.1, 0.1, seed=42)
    assert corpus.check_classes(by_split(df["label"], split), False, "c.csv") == []
    shares = pd.crosstab(df["label"], split, normalize="index")
    assert shares["train"].between(0.65, 0.95).all() and (shares["test"] > 0).all()


def test_empty_and_blank_labels_are_missing_labels_not_variants():
    """'', ' ' and a tab (JSON lines keep each as written; a CSV reader may not) are all no label: dropped
    and counted. Before, two of them together were an error calling them spellings of one label."""
    df = pd.DataFrame({"text": ["a", "b", "c", "d", "e", "f"], "label": ["pos", "", " ", "\t", None, "neg"]})
    out, report = clean_corpus(df, TextConfig(), [], True, "c.jsonl")
    assert out["label"].tolist() == ["pos", "neg"]
    assert report["dropped_missing_label"] == 4
