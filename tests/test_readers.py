"""Reading one corpus file (pipeline.readers): every format, the one rule for CSV and TSV, compressed data
known by its first bytes, and errors that name the file and the line or row."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import zipfile

import pandas as pd
import pyarrow as pa
import pytest

from pipeline.errors import PipelineError
from pipeline.readers import CHUNK_ROWS, corpus_kind, input_kind, iter_table
from tests.helpers import corpus_params


def read_table(path, chunk_rows: int = CHUNK_ROWS, **over) -> pd.DataFrame:
    """One table file read as the prepare stage reads it (iter_table's chunks, joined)."""
    c = corpus_params(**over)
    chunks = iter_table(path, corpus_kind(path, c.format), c.text_column, c.label_column, c.split_column,
                        c.encoding, c.header, chunk_rows)
    return pd.concat(list(chunks), ignore_index=True)


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".parquet", ".csv.gz"])
def test_read_table_formats(tmp_path, suffix):
    df = pd.DataFrame({"t": ["good film", "NA", "null"], "y": ["pos", "neg", "NA"]})
    path = tmp_path / f"c{suffix}"
    if suffix.startswith(".csv"):
        df.to_csv(path, index=False)
    elif suffix == ".tsv":
        df.to_csv(path, sep="\t", index=False)
    elif suffix == ".jsonl":
        df.to_json(path, orient="records", lines=True)
    else:
        df.to_parquet(path)
    out = read_table(path, text_column="t", label_column="y")
    assert out["text"].tolist() == ["good film", "NA", "null"]  # 'NA' and 'null' are text, not missing
    assert out["label"].tolist() == ["pos", "neg", "NA"]


def _compressed(kind: str, data: bytes) -> bytes:
    if kind == "gzip":
        return gzip.compress(data)
    if kind == "bz2":
        return bz2.compress(data)
    if kind == "xz":
        return lzma.compress(data)
    if kind == "zstd":
        sink = pa.BufferOutputStream()
        with pa.CompressedOutputStream(sink, "zstd") as out:
            out.write(data)
        return sink.getvalue().to_pybytes()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("corpus/c.csv", data)
    return buffer.getvalue()


@pytest.mark.parametrize("kind", ["gzip", "bz2", "xz", "zstd", "zip"])
@pytest.mark.parametrize("name", ["c.csv", "c.csv.{kind}"])
def test_compressed_data_is_known_by_its_first_bytes_whatever_its_name(tmp_path, kind, name):
    """A gzip file named .csv is read as gzip; .zst and .zip names are opened, not refused or misread."""
    data = 'text,label\n"a fine, quiet film",pos\ndull,neg\n'.encode()
    path = tmp_path / name.format(kind={"gzip": "gz", "zstd": "zst"}.get(kind, kind))
    path.write_bytes(_compressed(kind, data))
    out = read_table(path)
    assert out["text"].tolist() == ["a fine, quiet film", "dull"] and out["label"].tolist() == ["pos", "neg"]


def test_a_compression_suffix_on_plain_text_is_only_a_name(tmp_path):
    path = tmp_path / "c.jsonl.gz"
    path.write_text('{"text": "fine", "label": "pos"}\n')
    assert read_table(path)["text"].tolist() == ["fine"]


def test_headerless_csv_and_orange_tab_headers(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("\ufeff1,a fine film\n-1,a dull film\n", encoding="utf-8")
    out = read_table(path, header=False, text_column="1", label_column="0")
    assert out["label"].tolist() == ["1", "-1"] and out["text"].tolist() == ["a fine film", "a dull film"]
    tab = tmp_path / "r8-train.tab"
    tab.write_text("Category\tText\nd\tstring\nclass\t\nearn\tprofit rose\nacq\tbought a firm\n")
    out = read_table(tab, text_column="Text", label_column="Category")
    assert out["label"].tolist() == ["earn", "acq"]  # Orange's type and flag rows are not data


def test_tsv_is_read_with_quoting_like_csv(tmp_path):
    """The one rule for delimited text: a quoted TSV field may hold a tab, a line break or a doubled
    quote; a quote inside a field is text. (A field holding both a tab and a line break is what a stray
    quote makes: an error, test_malformed_json_line_and_unbalanced_tsv_quote_are_named.)"""
    path = tmp_path / "c.tsv"
    path.write_text('text\tlabel\n"a tab\there"\tpos\n"a new\nline"\tneg\nshe said "fine\tneg\n'
                    '"a ""quoted"" word"\tpos\n')
    out = read_table(path)
    assert out["text"].tolist() == ["a tab\there", "a new\nline", 'she said "fine', 'a "quoted" word']
    assert out["label"].tolist() == ["pos", "neg", "neg", "pos"]


def test_missing_column_names_file_and_column(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("text,label\nhello,pos\n")
    with pytest.raises(PipelineError, match=r"c\.csv: no label column 'sentiment'.*columns are: text, label"):
        read_table(path, label_column="sentiment")


def test_malformed_csv_names_file_and_line(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text('text,label\n"ok",pos\n"unterminated,neg\n')
    with pytest.raises(PipelineError, match=r"c\.csv: cannot read as csv"):
        read_table(path)


def test_wrong_encoding_and_non_text_column_are_named(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("text,label\ncaf\xe9 noir,pos\nbad,neg\n".encode("latin-1"))
    with pytest.raises(PipelineError, match=r"latin\.csv: line 2: not valid utf-8 text .*corpus\.encoding"):
        read_table(path)
    out = read_table(path, encoding="latin-1")
    assert out["text"][0] == "café noir"
    numbers = tmp_path / "n.parquet"
    pd.DataFrame({"text": [1, 2], "label": ["a", "b"]}).to_parquet(numbers)
    with pytest.raises(PipelineError, match=r"n\.parquet: text column 'text' holds int64 values"):
        read_table(numbers)


def test_malformed_json_line_and_unbalanced_tsv_quote_are_named(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "fine", "label": "pos"}\n{"text": "oops", "label": \n{"text": "x", "label": "neg"}\n')
    with pytest.raises(PipelineError, match=r"c\.jsonl: line 2, column \d+: invalid JSON"):
        read_table(path)
    tsv = tmp_path / "c.tsv"
    rows = [f"review number {i}\t{'pos' if i % 2 else 'neg'}" for i in range(400)]
    rows[9] = '"unbalanced start ' + rows[9]
    rows[49] = rows[49].replace("\t", '"\t')  # a quote 40 lines further down closes it
    tsv.write_text("text\tlabel\n" + "\n".join(rows) + "\n")
    with pytest.raises(PipelineError, match=r"c\.tsv: data row 10: a field runs over several lines and tabs"):
        read_table(tsv)


def test_an_unbalanced_tsv_quote_names_its_row_across_chunks(tmp_path):
    tsv = tmp_path / "c.tsv"
    rows = [f"review number {i}\t{'pos' if i % 2 else 'neg'}" for i in range(400)]
    rows[29] = '"unbalanced start ' + rows[29]
    rows[69] = rows[69].replace("\t", '"\t')
    tsv.write_text("text\tlabel\n" + "\n".join(rows) + "\n")
    with pytest.raises(PipelineError, match=r"c\.tsv: data row 30: a field runs over several lines"):
        read_table(tsv, chunk_rows=16)


@pytest.mark.parametrize("name", ["c.csv.gz", "c.jsonl.gz"])
def test_a_truncated_compressed_corpus_names_the_file(tmp_path, name):
    rows = "".join(f'{{"text": "review {i}", "label": "pos"}}\n' for i in range(2000)) if "jsonl" in name \
        else "text,label\n" + "".join(f"review {i},pos\n" for i in range(2000))
    data = gzip.compress(rows.encode())
    (tmp_path / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(PipelineError, match=rf"{name.replace('.', '[.]')}: cannot read"):
        read_table(tmp_path / name)


def test_fasttext_lines(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("__label__pos a fine film\n\n__label__neg __label__meh dull\n")
    out = read_table(path)
    # a line of several labels has them all (a multi-label corpus; it used to keep the first)
    assert out["label"].tolist() == ["pos", ["neg", "meh"]] and out["text"].tolist() == ["a fine film", "dull"]
    path.write_text("__label__pos ok\nno label here\n")
    with pytest.raises(PipelineError, match=r"train\.txt: line 2: expected '__label__<label> <text>'"):
        read_table(path)


def test_formats_are_named_by_the_file_name_or_the_params(tmp_path):
    assert [corpus_kind(tmp_path / n) for n in ("a.CSV", "a.tab", "a.ndjson.bz2", "a.pq", "a.ft.zst")] == [
        "csv", "tsv", "jsonl", "parquet", "fasttext"]
    assert corpus_kind(tmp_path / "a.data", "tsv") == "tsv"
    with pytest.raises(PipelineError, match=r"a\.data: unknown corpus format .*corpus\.format"):
        corpus_kind(tmp_path / "a.data")
    assert input_kind(tmp_path / "in.tsv.xz") == "tsv"
    with pytest.raises(PipelineError, match=r"in\.txt: unknown input format"):
        input_kind(tmp_path / "in.txt")  # batch prediction reads tables, not fastText lines
    with pytest.raises(PipelineError, match=r"in\.parquet\.gz: unknown input format"):
        input_kind(tmp_path / "in.parquet.gz")


@pytest.mark.parametrize("name, data, message", [
    ("c.csv", "text,label,text\nfine film,pos,other\n",
     r"c\.csv: line 1 \(the header\): the column name 'text' is given twice \(columns 1 and 3\)"),
    ("c.csv", "\ufefftext,label,text\nfine film,pos,other\n", r"the column name 'text' is given twice"),
    ("c.tsv", "text\tlabel\tlabel\nfine film\tpos\tneg\n", r"the column name 'label' is given twice \(columns 2 and 3\)"),
    ("c.jsonl", '{"text": "fine film", "label": "pos"}\n{"text": "bad", "label": "pos", "label": "neg"}\n',
     r"c\.jsonl: line 2: the field 'label' is given twice in one object"),
])
def test_a_column_or_field_given_twice_is_an_error_not_a_silent_pick(tmp_path, name, data, message):
    """pandas renamed a second 'text' column 'text.1' and json.loads kept the last 'label' of a line, without
    a word: the text or the label read was one of two the user cannot tell apart."""
    path = tmp_path / name
    path.write_text(data, encoding="utf-8")
    with pytest.raises(PipelineError, match=message):
        read_table(path)


def test_unnamed_columns_are_no_duplicates(tmp_path):
    """A spreadsheet's export with trailing commas: several columns without a name are not one name twice."""
    path = tmp_path / "c.csv"
    path.write_text("text,label,,\nfine film,pos,,\n", encoding="utf-8")
    assert read_table(path)["text"].tolist() == ["fine film"]


@pytest.mark.parametrize("name, lines", [
    ("c.jsonl", ['{"text": "fine film", "label": "pos"}', '{"text": "dull film", "label": "neg"}']),
    ("c.txt", ["__label__pos fine film", "__label__neg dull film"]),
])
def test_a_byte_order_mark_and_crlf_in_json_lines_and_fasttext_are_read_like_a_csvs(tmp_path, name, lines):
    """Notepad's UTF-8 (a BOM, CRLF): a CSV was read, but JSON lines stopped at 'line 1, column 1: invalid
    JSON: Unexpected UTF-8 BOM' and fastText at "line 1: expected '__label__<label> <text>'"."""
    path = tmp_path / name
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode("utf-8") + b"\r\n")
    df = read_table(path)
    assert df["text"].tolist() == ["fine film", "dull film"] and df["label"].tolist() == ["pos", "neg"]


def test_one_registry_of_formats_names_what_every_reader_and_writer_takes(tmp_path):
    """pipeline.formats is the one list: corpus.format's names, the readers' dispatch, batch prediction's
    input and output, and the suffixes each one takes."""
    import typing

    from pipeline import params
    from pipeline.batch_predict import output_kind
    from pipeline.formats import FORMATS

    hints = typing.get_type_hints(params.CorpusParams)
    assert set(typing.get_args(hints["format"])) == {"auto", "folder"} | {k for k, f in FORMATS.items() if f.corpus}
    for kind, f in FORMATS.items():
        for suffix in f.suffixes:
            assert corpus_kind(tmp_path / f"a{suffix.upper()}") == kind
            if f.batch_input:
                assert input_kind(tmp_path / f"a{suffix}") == kind
            else:
                with pytest.raises(PipelineError, match="unknown input format"):
                    input_kind(tmp_path / f"a{suffix}")
        for suffix in f.output_suffixes:
            assert output_kind(tmp_path / f"out{suffix}") == kind
    # every corpus format is read, and named in the error for a name that is none of them
    frame = pd.DataFrame({"text": ["a fine film", "a dull film"], "label": ["pos", "neg"]})
    writers = {"csv": lambda p: frame.to_csv(p, index=False), "tsv": lambda p: frame.to_csv(p, index=False, sep="\t"),
               "jsonl": lambda p: frame.to_json(p, orient="records", lines=True), "parquet": frame.to_parquet,
               "fasttext": lambda p: p.write_text("__label__pos a fine film\n__label__neg a dull film\n")}
    assert set(writers) == set(FORMATS)
    for kind, write in writers.items():
        write(tmp_path / f"c{FORMATS[kind].suffixes[0]}")
        assert read_table(tmp_path / f"c{FORMATS[kind].suffixes[0]}")["label"].tolist() == ["pos", "neg"]


@pytest.mark.parametrize("chunk_rows", [CHUNK_ROWS, 1])
def test_the_text_of_several_columns_is_joined_and_a_field_a_line_lacks_is_missing(tmp_path, chunk_rows):
    """A title and a body (Reuters in JSON: half its stories have no topics, some no body): the present
    values joined by a line break; a line without the label field is a row without a label."""
    lines = [{"title": "Oil up", "body": "Crude rose.", "topics": ["crude"]}, {"title": "Talks", "topics": ["trade", "crude"]},
             {"title": "No topics here", "body": "Nothing."}, {"body": "Only a body", "topics": []}]
    path = tmp_path / "news.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    c = corpus_params(text_column=["title", "body"], label_column="topics")
    frame = pd.concat(iter_table(path, "jsonl", c.text_column, c.label_column, None, chunk_rows=chunk_rows),
                      ignore_index=True)
    assert frame["text"].tolist() == ["Oil up\nCrude rose.", "Talks", "No topics here\nNothing.", "Only a body"]
    assert frame["label"].tolist() == [["crude"], ["trade", "crude"], None, []]
    csv_path = tmp_path / "news.csv"
    pd.DataFrame({"title": ["A", None, "C"], "body": ["a", "b", None], "label": ["x", "y", "x"]}).to_csv(csv_path, index=False)
    frame = pd.concat(iter_table(csv_path, "csv", ["title", "body"], "label"), ignore_index=True)
    assert frame["text"].tolist() == ["A\na", "b", "C"] and frame["label"].tolist() == ["x", "y", "x"]


def test_a_field_no_line_has_is_named(tmp_path):
    path = tmp_path / "news.jsonl"
    path.write_text('{"title": "a", "topics": ["x"]}\n{"title": "b"}\n')
    with pytest.raises(PipelineError, match=r"news\.jsonl: none of the first 10,000 lines has a text field 'body' \(params "
                                            r"corpus\.text_column\); fields are: title, topics$"):
        list(iter_table(path, "jsonl", ["title", "body"], "topics"))
    with pytest.raises(PipelineError, match=r"none of the first 10,000 lines has a label field 'topic' \(params corpus\.label_column\)"):
        list(iter_table(path, "jsonl", "title", "topic"))
