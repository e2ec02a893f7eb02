"""Corpus layouts (pipeline.layouts): one table, a folder of per-split files, a <split>/<label>/ tree, and
the corpus's own split column."""

from __future__ import annotations

import pandas as pd
import pytest

from pipeline.errors import PipelineError
from tests.helpers import corpus_params, read_corpus


def test_one_table_is_the_table_layout_in_a_folder_or_alone(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    pd.DataFrame({"text": ["a", "b"], "label": ["x", "y"]}).to_csv(folder / "anything.csv", index=False)
    for source in (folder, folder / "anything.csv"):
        out, layout = read_corpus(source, corpus_params())
        assert layout == "table"
        assert out["text"].tolist() == ["a", "b"] and out["split"].isna().all()  # no split of its own
    with pytest.raises(PipelineError, match=r"missing\.csv: no such file or folder \(params corpus\.source\)"):
        read_corpus(tmp_path / "missing.csv", corpus_params())
    (tmp_path / "empty").mkdir()
    with pytest.raises(PipelineError, match=r"empty: the folder is empty"):
        read_corpus(tmp_path / "empty", corpus_params())


def test_folder_tree_layout(tmp_path):
    root = tmp_path / "corpus" / "aclImdb"  # found one level down too
    for split, label, name, text in [("train", "pos", "1.txt", "great"), ("train", "neg", "2.txt", "awful"),
                                     ("test", "pos", "3.txt", "superb"), ("test", "neg", "4.txt", "dire")]:
        (root / split / label).mkdir(parents=True, exist_ok=True)
        (root / split / label / name).write_text(text)
    (root / "train" / "labeledBow.feat").write_text("ignored")
    out, layout = read_corpus(tmp_path / "corpus", corpus_params())
    assert layout == "folder tree"
    assert sorted(zip(out["split"], out["label"], out["text"])) == [
        ("test", "neg", "dire"), ("test", "pos", "superb"), ("train", "neg", "awful"), ("train", "pos", "great")]
    # Read a few documents at a time, the same rows.
    again, _ = read_corpus(tmp_path / "corpus", corpus_params(), chunk_rows=3)
    pd.testing.assert_frame_equal(again, out)


def test_folder_of_per_split_parquet_files(tmp_path):
    data = tmp_path / "hub" / "data"
    data.mkdir(parents=True)
    pd.DataFrame({"text": ["a", "b"], "label": [0, 1]}).to_parquet(data / "train-00000-of-00002.parquet")
    pd.DataFrame({"text": ["c"], "label": [1]}).to_parquet(data / "train-00001-of-00002.parquet")
    pd.DataFrame({"text": ["d"], "label": [0]}).to_parquet(data / "validation-00000-of-00001.parquet")
    pd.DataFrame({"text": ["e"], "label": [1]}).to_parquet(data / "test-00000-of-00001.parquet")
    out, layout = read_corpus(tmp_path / "hub", corpus_params())
    assert layout == "one file per split"
    assert dict(zip(out["text"], out["split"])) == {"a": "train", "b": "train", "c": "train", "d": "val", "e": "test"}
    (data / "extra.parquet").write_bytes((data / "test-00000-of-00001.parquet").read_bytes())
    with pytest.raises(PipelineError, match="extra.parquet names no split"):
        read_corpus(tmp_path / "hub", corpus_params())


def test_split_column_values(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("text,label,part\na,x,train\nb,y,Test\nc,x,validation\nd,y,\n")
    out, _ = read_corpus(path, corpus_params(split_column="part"))
    assert out["split"].fillna("none").tolist() == ["train", "test", "val", "none"]
    path.write_text("text,label,part\na,x,train\nb,y,holdout\n")
    with pytest.raises(PipelineError, match=r"c\.csv: data row 2: split column 'part' holds 'holdout'"):
        read_corpus(path, corpus_params(split_column="part"))


def test_a_bad_split_value_names_its_row_across_chunks(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("text,label,part\n" + "".join(f"t{i},x,train\n" for i in range(40)) + "b,y,holdout\n")
    with pytest.raises(PipelineError, match=r"c\.csv: data row 41: split column 'part' holds 'holdout'"):
        read_corpus(path, corpus_params(split_column="part"), chunk_rows=16)
