"""Batch prediction over a table (pipeline.batch_predict, and the DVC stage `predict`): CSV, TSV, JSON
lines and Parquet, compressed or not, read and written a chunk at a time, every row in its place."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.batch_predict import predict_file
from pipeline.cli import predict as predict_cli
from pipeline.errors import PipelineError
from pipeline.inference import NO_TEXT, NO_TOKENS, classify_texts
from pipeline.tables import TableReader, jsonl_schema
from pipeline.stages import predict as predict_stage


TEXTS = ["a gripping , beautifully acted film", "dull", "", "NA",
         "the plot goes nowhere , slowly , for two long hours , and the cast cannot save it",
         "funny and moving", "zxqv", "   ", "one of the year's best movies : smart , warm and sharp"]


def _input_frame() -> pd.DataFrame:
    return pd.DataFrame({"id": [f"r{i}" for i in range(len(TEXTS))], "review": TEXTS,
                         "source": ["web", "print"] * 4 + ["web"]})


def _write_input(df: pd.DataFrame, path) -> None:
    name = path.name.removesuffix(".gz")
    if name.endswith(".parquet"):
        df.to_parquet(path, index=False)
    elif name.endswith(".jsonl"):
        lines = "".join(json.dumps(row) + "\n" for row in df.to_dict("records"))
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "wt", encoding="utf-8") as f:
            f.write(lines)
    else:
        df.to_csv(path, sep="\t" if name.endswith(".tsv") else ",", index=False)


def _read_output(path) -> pd.DataFrame:
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    if path.suffix == ".jsonl":
        return pd.DataFrame([json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()])
    return pd.read_csv(path, sep="\t" if path.suffix == ".tsv" else ",", dtype={"id": str, "review": str},
                       keep_default_na=False, na_values=[""])


@pytest.mark.parametrize("input_name, output_name", [
    ("reviews.csv", "predictions.parquet"),
    ("reviews.parquet", "predictions.csv"),
    ("reviews.jsonl", "predictions.jsonl"),
    ("reviews.tsv.gz", "predictions.tsv"),
    ("reviews.jsonl.gz", "predictions.parquet"),
])
def test_batch_prediction_writes_every_row_with_its_probabilities(tmp_path, tiny_model_path, tiny_ckpt, input_name,
                                                                  output_name, capsys):
    source, output = tmp_path / input_name, tmp_path / "out" / output_name
    _write_input(_input_frame(), source)
    # chunk_rows=4: three chunks, so rows cross chunk boundaries.
    predict_cli.main(["--model", str(tiny_model_path), "--input", str(source), "--text-column", "review",
                  "--output", str(output), "--chunk-rows", "4", "--batch-size", "3"])
    out = _read_output(output)
    prob_columns = [f"prob_{lab}" for lab in tiny_ckpt.labels]
    assert list(out.columns) == ["id", "review", "source", "predicted_label", *prob_columns, "no_label_reason"]
    assert out["id"].tolist() == [f"r{i}" for i in range(len(TEXTS))]  # every row, in order
    assert out["source"].tolist() == _input_frame()["source"].tolist()

    has_text = np.array([bool(t.strip()) for t in TEXTS])  # 'NA' is text, as in the prepare stage
    probs = out[prob_columns].to_numpy(dtype=float)
    np.testing.assert_allclose(probs[has_text].sum(axis=1), 1, atol=1e-5)
    expected = classify_texts(tiny_ckpt, [t for t, ok in zip(TEXTS, has_text) if ok])
    np.testing.assert_allclose(probs[has_text], expected, atol=1e-6)
    assert out["predicted_label"][has_text].tolist() == [tiny_ckpt.labels[i] for i in expected.argmax(axis=1)]
    # Rows without text keep their place, with no prediction.
    assert out["predicted_label"][~has_text].isna().all() and np.isnan(probs[~has_text]).all()
    assert out["no_label_reason"][~has_text].tolist() == [NO_TEXT] * (~has_text).sum()
    assert out["no_label_reason"][has_text].isna().all()
    # ... and are counted.
    assert (f"wrote {len(TEXTS)} rows ({(~has_text).sum()} without text: no label, the reason in no_label_reason)"
            in capsys.readouterr().err)
    assert not list(output.parent.glob(".*.partial"))


@pytest.mark.parametrize("name, compress", [
    ("reviews.csv", gzip.compress),                  # a gzip file named .csv
    ("reviews.jsonl", bz2.compress),
    ("reviews.tsv.xz", lzma.compress),
    ("reviews.csv.zst", lambda data: pa.compress(data, "zstd", asbytes=True)),
], ids=["gzip-named-csv", "bz2-named-jsonl", "xz", "zstd"])
def test_compressed_input_is_known_by_its_first_bytes(tmp_path, tiny_ckpt, name, compress):
    plain = tmp_path / name.replace(".xz", "").replace(".zst", "")
    _write_input(_input_frame(), plain)
    source = tmp_path / "packed" / name
    source.parent.mkdir()
    source.write_bytes(compress(plain.read_bytes()))
    predict_file(tiny_ckpt, plain, tmp_path / "plain.parquet", "review", chunk_rows=4)
    summary = predict_file(tiny_ckpt, source, tmp_path / "packed.parquet", "review", chunk_rows=4)
    assert summary.rows == len(TEXTS)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "packed.parquet"), pd.read_parquet(tmp_path / "plain.parquet"))


def test_the_file_is_read_in_chunks_of_bounded_size(tmp_path, tiny_ckpt):
    """What keeps memory flat: no chunk holds more than chunk_rows rows, whatever the file's size."""
    frame = pd.concat([_input_frame()] * 5, ignore_index=True)  # 45 rows
    for name in ("big.csv", "big.parquet", "big.jsonl"):
        _write_input(frame, tmp_path / name)
        sizes = [t.num_rows for t in TableReader(tmp_path / name, chunk_rows=7).chunks()]
        assert max(sizes) <= 7 and sum(sizes) == 45 and len(sizes) == 7, (name, sizes)
    # Parquet keeps its row groups; chunks still stay within chunk_rows.
    pq.write_table(pa.Table.from_pandas(frame), tmp_path / "groups.parquet", row_group_size=10)
    sizes = [t.num_rows for t in TableReader(tmp_path / "groups.parquet", chunk_rows=4).chunks()]
    assert max(sizes) <= 4 and sum(sizes) == 45

    one = predict_file(tiny_ckpt, tmp_path / "big.csv", tmp_path / "one.parquet", "review", chunk_rows=1000)
    many = predict_file(tiny_ckpt, tmp_path / "big.csv", tmp_path / "many.parquet", "review", chunk_rows=7)
    assert (one.chunks, many.chunks) == (1, 7) and one.rows == many.rows == 45
    assert one.rows_without_text == 10  # '' and '   ', five times each
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "one.parquet"), pd.read_parquet(tmp_path / "many.parquet"))


def test_json_lines_columns_keep_their_types(tmp_path, tiny_ckpt):
    rows = [{"id": 1, "text": "good film", "score": 4.5, "ok": True, "tags": ["a"]},
            {"id": 2, "text": "bad film", "score": 3, "ok": False, "extra": "only here", "tags": "b"},
            {"id": 3, "text": None, "score": None, "ok": None}]
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    schema = jsonl_schema(source)
    assert schema.names == ["id", "text", "score", "ok", "tags", "extra"]
    assert [str(schema.field(n).type) for n in schema.names] == ["int64", "string", "double", "bool", "string", "string"]
    predict_file(tiny_ckpt, source, tmp_path / "out.jsonl", "text", chunk_rows=2)
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    # the blank line at the end is a row too (every line is one), with nothing in it
    assert [r["id"] for r in out] == [1, 2, 3, None] and out[0]["score"] == 4.5 and out[1]["ok"] is False
    assert out[3]["text"] is None and out[3]["no_label_reason"] == NO_TEXT
    assert out[0]["tags"] == '["a"]' and out[1]["tags"] == '"b"'  # mixed kinds: each value's JSON text
    assert out[0]["extra"] is None and out[1]["extra"] == "only here"
    assert out[2]["predicted_label"] is None and out[2][f"prob_{tiny_ckpt.labels[0]}"] is None


def test_batch_errors_name_the_file_and_the_column(tmp_path, tiny_ckpt):
    source = tmp_path / "reviews.csv"
    _write_input(_input_frame(), source)
    with pytest.raises(PipelineError, match=r"reviews\.csv: no text column 'text' \(name it with --text-column.*"
                                            r"columns are: id, review, source"):
        predict_file(tiny_ckpt, source, tmp_path / "out.parquet", "text")
    with pytest.raises(PipelineError, match=r"missing\.csv: no such input file \(looked for /"):
        predict_file(tiny_ckpt, tmp_path / "missing.csv", tmp_path / "out.parquet", "review")
    with pytest.raises(PipelineError, match=r"reviews\.xlsx: unknown input format"):
        predict_file(tiny_ckpt, tmp_path / "reviews.xlsx", tmp_path / "out.parquet", "review")
    with pytest.raises(PipelineError, match=r"out\.xlsx: unknown output format"):
        predict_file(tiny_ckpt, source, tmp_path / "out.xlsx", "review")
    with pytest.raises(PipelineError, match="the output would replace the input"):
        predict_file(tiny_ckpt, source, source, "review")
    predict_file(tiny_ckpt, source, tmp_path / "done.csv", "review")
    with pytest.raises(PipelineError, match="already has a column 'predicted_label'"):
        predict_file(tiny_ckpt, tmp_path / "done.csv", tmp_path / "again.csv", "review")
    with pytest.raises(PipelineError, match=r"holds int64 values, not text"):
        predict_file(tiny_ckpt, _parquet_with_numbers(tmp_path), tmp_path / "n.csv", "review")
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text('{"review": "fine"}\n{"review": 3}\n', encoding="utf-8")
    with pytest.raises(PipelineError, match=r"mixed\.jsonl: text column 'review' holds values that are not all text"):
        predict_file(tiny_ckpt, mixed, tmp_path / "m.csv", "review")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"review": "fine"}\n{"review": oops}\n', encoding="utf-8")
    with pytest.raises(PipelineError, match=r"bad\.jsonl: line 2, column 12: invalid JSON"):
        predict_file(tiny_ckpt, bad, tmp_path / "b.csv", "review")
    latin = tmp_path / "latin.csv"
    latin.write_bytes("review\ncaf\u00e9 cr\u00e8me\n".encode("latin-1"))
    with pytest.raises(PipelineError, match=r"latin\.csv: not valid utf-8 text .*--encoding"):
        predict_file(tiny_ckpt, latin, tmp_path / "l.csv", "review")
    assert predict_file(tiny_ckpt, latin, tmp_path / "l.csv", "review", encoding="latin-1").rows == 1
    truncated = tmp_path / "cut.csv.gz"
    whole = gzip.compress(("review\n" + "".join(f"film number {i}\n" for i in range(5000))).encode())
    truncated.write_bytes(whole[:len(whole) // 2])
    with pytest.raises(PipelineError, match=r"cut\.csv\.gz: cannot read as csv"):
        predict_file(tiny_ckpt, truncated, tmp_path / "c.csv", "review")
    # A failed run leaves neither an output nor a temporary file.
    assert not (tmp_path / "out.parquet").exists() and not (tmp_path / "again.csv").exists()
    assert not (tmp_path / "c.csv").exists()
    assert not list(tmp_path.glob(".*.partial"))


def _parquet_with_numbers(tmp_path):
    path = tmp_path / "numbers.parquet"
    pd.DataFrame({"review": [1, 2]}).to_parquet(path)
    return path


def test_the_dvc_stage_mode_reads_params(tmp_path, tiny_model_path, monkeypatch):
    """`python -m pipeline.stages.predict`: the DVC stage `predict`, set by params.yaml's predict section."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "model.pt").write_bytes(tiny_model_path.read_bytes())
    _write_input(_input_frame(), tmp_path / "reviews.csv")
    params = {"predict": {"input": "reviews.csv", "text_column": "review", "output": "data/predictions/reviews.parquet",
                          "encoding": "utf-8", "batch_size": 4, "chunk_rows": 5,
                          "min_confidence": None}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    predict_stage.main()
    out = pd.read_parquet(tmp_path / "data" / "predictions" / "reviews.parquet")
    assert len(out) == len(TEXTS) and "predicted_label" in out.columns


def _write_params(tmp_path, **predict_params) -> None:
    params = {"input": "reviews.csv", "text_column": "review", "output": "data/predictions/reviews.parquet",
              "encoding": "utf-8", "batch_size": 4, "chunk_rows": 5, "min_confidence": None, **predict_params}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"predict": params}), encoding="utf-8")


def test_an_unknown_encoding_in_params_is_named_by_its_key(tmp_path, tiny_model_path, monkeypatch):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "model.pt").write_bytes(tiny_model_path.read_bytes())
    _write_input(_input_frame(), tmp_path / "reviews.csv")
    _write_params(tmp_path, encoding="utf9")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PipelineError, match=r"^params\.yaml: 'predict\.encoding': 'utf9' is not a text encoding"):
        predict_stage.main()
    assert not (tmp_path / "data").exists()


def test_a_folder_at_the_output_path_is_refused_and_kept(tmp_path, tiny_model_path, tiny_ckpt):
    source = tmp_path / "reviews.csv"
    _write_input(_input_frame(), source)
    folder = tmp_path / "out.csv"  # a folder, whatever its name says
    folder.mkdir()
    (folder / "keep.txt").write_text("precious")
    with pytest.raises(PipelineError, match=r"out\.csv: is a directory.*name a file"):
        predict_file(tiny_ckpt, source, folder, "review")
    with pytest.raises(PipelineError, match=r"out\.csv: is a directory"):
        predict_cli.main(["--model", str(tiny_model_path), "--input", str(source), "--text-column", "review",
                      "--output", str(folder)])
    assert (folder / "keep.txt").read_text() == "precious"
    # The input, named another way, is refused too.
    with pytest.raises(PipelineError, match="the output would replace the input"):
        predict_file(tiny_ckpt, source, tmp_path / "sub" / ".." / "reviews.csv", "review")


def test_a_tsv_is_read_by_the_corpus_rule(tmp_path, tiny_ckpt):
    """The prepare stage's rule for TSV (pipeline.readers): a quote inside a field is text; a quoted
    field may hold a tab or a doubled quote; every row stays in its place."""
    texts = ["a gripping film", 'she said "fine', 'the "end"', "a tab\there", 'a "quoted" word']
    cells = ["a gripping film", 'she said "fine', 'the "end"', '"a tab\there"', '"a ""quoted"" word"']
    source = tmp_path / "reviews.tsv"
    source.write_text("id\ttext\n" + "".join(f"r{i}\t{cell}\n" for i, cell in enumerate(cells)), encoding="utf-8")
    summary = predict_file(tiny_ckpt, source, tmp_path / "out.jsonl", "text", chunk_rows=2)
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    assert summary.rows == 5 and [r["id"] for r in out] == [f"r{i}" for i in range(5)]
    assert [r["text"] for r in out] == texts
    expected = classify_texts(tiny_ckpt, texts)
    assert [r["predicted_label"] for r in out] == [tiny_ckpt.labels[i] for i in expected.argmax(axis=1)]


def test_a_stray_quote_that_swallows_tsv_rows_is_an_error_naming_the_row(tmp_path, tiny_ckpt):
    """A quote opening a field, closed by another one rows later, would merge those rows into one
    field: an error naming the data row where it opened, and nothing written."""
    rows = [f"r{i}\treview number {i}" for i in range(12)]
    rows[6] = 'r6\t"a stray quote opens here'
    rows[9] = 'r9\treview number 9"'
    source = tmp_path / "reviews.tsv"
    source.write_text("id\ttext\n" + "\n".join(rows) + "\n", encoding="utf-8")
    with pytest.raises(PipelineError, match=r"reviews\.tsv: data row 7: a field runs over several lines and tabs"):
        predict_file(tiny_ckpt, source, tmp_path / "out.jsonl", "text", chunk_rows=4)
    assert not (tmp_path / "out.jsonl").exists() and not list(tmp_path.glob(".*.partial"))


def _strict_json(line: str):
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")
    return json.loads(line, parse_constant=refuse)


def test_output_values_are_valid_json_and_binary_is_base64(tmp_path, tiny_ckpt):
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": ["good film", "bad film", "fine"],
                             "score": [float("nan"), float("inf"), 1.5],
                             "blob": pa.array([b"\x00\xff", None, b"ok"], pa.binary()),
                             "nested": pa.array([[float("nan")], [], None], pa.list_(pa.float64()))}), source)
    predict_file(tiny_ckpt, source, tmp_path / "out.jsonl", "text")
    rows = [_strict_json(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["score"] for r in rows] == [None, None, 1.5]
    assert [r["blob"] for r in rows] == ["AP8=", None, "b2s="]  # base64
    assert rows[0]["nested"] == [None]
    for name in ("out.csv", "out.tsv"):
        predict_file(tiny_ckpt, source, tmp_path / name, "text")
        out = pd.read_csv(tmp_path / name, sep="," if name.endswith("csv") else "\t", keep_default_na=False)
        assert out["blob"].tolist() == ["AP8=", "", "b2s="] and out["nested"].tolist()[:2] == ["[null]", "[]"]
    # A column a format cannot hold: an error naming the output file and the column, nothing written.
    uuids = tmp_path / "uuids.parquet"
    pq.write_table(pa.table({"text": ["good film"], "key": pa.array([bytes(16)], pa.uuid())}), uuids)
    with pytest.raises(PipelineError, match=r"bad\.csv: cannot write column 'key' \(extension<arrow\.uuid>\) as csv"):
        predict_file(tiny_ckpt, uuids, tmp_path / "bad.csv", "text")
    assert not (tmp_path / "bad.csv").exists() and not list(tmp_path.glob(".*.partial"))


@pytest.mark.parametrize("name, content", [
    ("empty.jsonl", b""), ("blank.jsonl", b"\n  \n\n"), ("empty.csv", b""), ("blank.tsv", b"\n\n"),
    ("empty.csv.gz", gzip.compress(b"", mtime=0)),
], ids=lambda value: value if isinstance(value, str) else "")
def test_an_input_without_rows_says_so(tmp_path, tiny_ckpt, name, content):
    source = tmp_path / name
    source.write_bytes(content)
    with pytest.raises(PipelineError, match=rf"{name.replace('.', r'[.]')}: the file has no rows"):
        predict_file(tiny_ckpt, source, tmp_path / "out.csv", "text")


def _open_files() -> list[str]:
    fds = "/proc/self/fd"
    return [os.path.realpath(os.path.join(fds, fd)) for fd in os.listdir(fds)]


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_a_parquet_input_is_closed_after_reading(tmp_path):
    source = tmp_path / "big.parquet"
    pq.write_table(pa.Table.from_pandas(pd.concat([_input_frame()] * 5)), source, row_group_size=10)
    with TableReader(source, chunk_rows=4) as reader:
        chunks = reader.chunks()
        next(chunks)  # stopped part-way: the file is open
        assert os.path.realpath(source) in _open_files()
    assert os.path.realpath(source) not in _open_files()


# Texts with nothing left after the pipeline's own cleaning (prepare drops such rows): markup only, a link
# only, invisible characters only. Before, each got the label an empty input happens to score.
EMPTY_AFTER_CLEANING = ["<br/>", "https://example.com/a-long-path?q=1", "\u200b\u200d\ufeff", "<p></p> www.example.org",
                        "&nbsp;<b></b>"]


@pytest.mark.parametrize("output_name", ["out.parquet", "out.csv", "out.jsonl"])
def test_texts_without_tokens_after_cleaning_get_no_label_and_a_reason(tmp_path, tiny_model_path, tiny_ckpt,
                                                                       output_name, capsys):
    texts = ["a gripping , beautifully acted film", *EMPTY_AFTER_CLEANING, "dull"]
    source, output = tmp_path / "in.csv", tmp_path / output_name
    pd.DataFrame({"text": texts}).to_csv(source, index=False)
    predict_cli.main(["--model", str(tiny_model_path), "--input", str(source), "--output", str(output)])
    out = _read_output(output)
    empty = np.array([t in EMPTY_AFTER_CLEANING for t in texts])
    assert out["text"].tolist() == texts
    assert out["predicted_label"][empty].isna().all() and out["predicted_label"][~empty].notna().all()
    probs = out[[f"prob_{lab}" for lab in tiny_ckpt.labels]].to_numpy(dtype=float)
    assert np.isnan(probs[empty]).all() and not np.isnan(probs[~empty]).any()
    assert out["no_label_reason"][empty].tolist() == [NO_TOKENS] * empty.sum()
    assert f"wrote {len(texts)} rows ({empty.sum()} with no tokens after cleaning: no label" in capsys.readouterr().err


@pytest.mark.parametrize("name, content, texts", [
    ("one.csv", "text\ngood film\n\nbad film\n\n\nfine\n", ["good film", None, "bad film", None, None, "fine"]),
    ("two.csv", "\nid,text\n1,good film\n\n3,bad film\n", ["good film", None, "bad film"]),
    ("one.tsv", "text\ngood film\n\nbad film\n", ["good film", None, "bad film"]),
    ("one.jsonl", '{"text": "good film"}\n\n{"text": "bad film"}\n  \n', ["good film", None, "bad film", None]),
    ("one.csv.gz", "text\ngood film\n\nbad film\n", ["good film", None, "bad film"]),
])
def test_blank_lines_are_rows_so_output_row_i_is_input_row_i(tmp_path, tiny_ckpt, name, content, texts):
    """A one-column CSV of texts with blank lines: before, the blank lines vanished uncounted, so the
    predictions no longer lined up with the input lines."""
    source = tmp_path / name
    data = content.encode("utf-8")
    source.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    for output in (tmp_path / "out.parquet", tmp_path / "out.jsonl", tmp_path / "out.csv"):
        summary = predict_file(tiny_ckpt, source, output, "text")
        out = _read_output(output)
        assert len(out) == summary.rows == len(texts)
        assert [None if pd.isna(t) else t for t in out["text"]] == texts
        blank = np.array([t is None for t in texts])
        assert out["predicted_label"][blank].isna().all() and out["predicted_label"][~blank].notna().all()
        assert out["no_label_reason"][blank].tolist() == [NO_TEXT] * blank.sum()
        assert summary.rows_without_text == blank.sum()


def test_a_batch_input_with_a_column_given_twice_is_an_error(tmp_path, tiny_ckpt):
    """Batch prediction read the second 'text' column as 'text.1' and wrote it out under that name."""
    source = tmp_path / "in.csv"
    source.write_text("text,id,text\ngood film,1,bad film\n", encoding="utf-8")
    with pytest.raises(PipelineError, match=r"in\.csv: line 1 \(the header\): the column name 'text' is given twice"):
        predict_file(tiny_ckpt, source, tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists()


def test_a_folder_as_the_batch_input_is_named_a_folder(tmp_path, tiny_ckpt):
    """A folder named like a table (`reviews.csv/`): the error said 'no such input file', which sent the
    user looking for a missing file."""
    (tmp_path / "reviews.csv").mkdir()
    with pytest.raises(PipelineError, match=r"reviews\.csv: is a folder, not an input file"):
        predict_file(tiny_ckpt, tmp_path / "reviews.csv", tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.parametrize("output_name", ["predictions.parquet", "predictions.jsonl", "predictions.csv",
                                         "predictions.tsv"])
def test_a_multi_label_model_writes_its_label_sets(tmp_path, tiny_multilabel_path, tiny_multilabel_ckpt,
                                                   output_name):
    from pipeline.inference import predict_texts
    from tests.tiny_model import MULTI_TEXTS

    ckpt = tiny_multilabel_ckpt
    texts = MULTI_TEXTS + [""]
    source, output = tmp_path / "in.parquet", tmp_path / output_name
    pd.DataFrame({"id": [f"r{i}" for i in range(len(texts))], "text": texts}).to_parquet(source, index=False)
    predict_cli.main(["--model", str(tiny_multilabel_path), "--input", str(source), "--output", str(output),
                      "--chunk-rows", "3"])
    expected = predict_texts(ckpt, texts)
    prob_columns = [f"prob_{lab}" for lab in ckpt.labels]
    if output.suffix == ".parquet":
        table = pq.read_table(output)
        assert table.schema.field("predicted_labels").type == pa.list_(pa.string())
        given = table.column("predicted_labels").to_pylist()
        out = table.to_pandas()
    elif output.suffix == ".jsonl":
        rows = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
        given, out = [r["predicted_labels"] for r in rows], pd.DataFrame(rows)
    else:
        out = _read_output(output)
        assert "|" in output.read_text(encoding="utf-8")  # some text has two labels or more, joined by '|'
        given = [None if pd.isna(v) else v.split("|") for v in out["predicted_labels"]]
        given = [g if g is not None or r is not None else [] for g, r in zip(given, expected.reasons)]
    assert list(out.columns) == ["id", "text", "predicted_labels", *prob_columns, "no_label_reason"]
    assert given == [expected.label(i, ckpt.labels) for i in range(len(texts))]
    assert any(len(g) > 1 for g in given if g) and given[-1] is None and given[MULTI_TEXTS.index("<br/>")] is None
    np.testing.assert_allclose(out[prob_columns].to_numpy(dtype=float), expected.probs, atol=1e-6)  # NaN: null
    assert out["no_label_reason"].tolist()[-1] == NO_TEXT


def test_a_multi_label_model_s_minimum_confidence_is_its_least_sure_decision(tmp_path, tiny_multilabel_ckpt):
    from pipeline.inference import predict_texts, uncertain
    from tests.tiny_model import MULTI_TEXTS

    ckpt = tiny_multilabel_ckpt
    source, output = tmp_path / "in.csv", tmp_path / "out.jsonl"
    pd.DataFrame({"text": MULTI_TEXTS}).to_csv(source, index=False)
    level = 0.9
    summary = predict_file(ckpt, source, output, min_confidence=level)
    rows = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    confidence = ckpt.task.confidence(np.nan_to_num(predict_texts(ckpt, MULTI_TEXTS).probs, nan=1.0))
    unsure = [i for i, t in enumerate(MULTI_TEXTS) if t != "<br/>" and confidence[i] < level]
    assert unsure and summary.rows_uncertain == len(unsure)
    for i in unsure:
        assert rows[i]["predicted_labels"] is None and rows[i]["no_label_reason"] == uncertain(level, ckpt.task)
        assert rows[i][f"prob_{ckpt.labels[0]}"] is not None


def test_multi_label_columns_are_refused_where_they_would_clash(tmp_path, tiny_multilabel_path):
    import io

    import torch

    source = tmp_path / "in.csv"
    pd.DataFrame({"text": ["a film"], "predicted_labels": ["x"]}).to_csv(source, index=False)
    with pytest.raises(PipelineError, match="already has a column 'predicted_labels'"):
        predict_file(load_multilabel(tiny_multilabel_path), source, tmp_path / "out.parquet")
    # A label holding '|' could not be split back out of a CSV or TSV field: refused there, not in Parquet.
    payload = torch.load(tiny_multilabel_path, weights_only=True)
    payload["labels"] = ["film|movie", *payload["labels"][1:]]
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    piped = tmp_path / "piped.pt"
    piped.write_bytes(buffer.getvalue())
    pd.DataFrame({"text": ["a film"]}).to_csv(source, index=False)
    with pytest.raises(PipelineError, match=r"out\.tsv: the model's label 'film\|movie' holds '\|'.*\.parquet or "
                                            r"\.jsonl"):
        predict_file(load_multilabel(piped), source, tmp_path / "out.tsv")
    assert not (tmp_path / "out.tsv").exists()
    predict_file(load_multilabel(piped), source, tmp_path / "out.parquet")
    assert pq.read_table(tmp_path / "out.parquet").column("prob_film|movie").num_chunks >= 1


def load_multilabel(path):
    from pipeline.checkpoint import load_checkpoint

    return load_checkpoint(path)
