"""predict from anywhere (module, console script), and batch prediction over CSV, TSV, JSON lines and Parquet."""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline import predict
from pipeline import predict_batch as B
from pipeline.common import PipelineError
from pipeline.inference import classify_texts, load_checkpoint
from tests.conftest import ROOT, VENV_BIN
from tests.tiny_model import train_tiny_checkpoint

ENV = dict(os.environ, PYTHONPATH=str(ROOT))  # the repository importable, wherever the command runs


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return train_tiny_checkpoint(tmp_path_factory.mktemp("model") / "model.pt")


@pytest.fixture(scope="module")
def ckpt(model_path):
    return load_checkpoint(model_path)


# --- the command line, from another directory ---------------------------------------------------------


def test_the_cli_runs_from_another_directory(tmp_path, model_path, ckpt):
    proc = subprocess.run([sys.executable, "-m", "pipeline.predict", "--model", str(model_path), "--json",
                           "a gripping film", "dull and far too long"], cwd=tmp_path, capture_output=True,
                          text=True, env=ENV)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["text"] for r in rows] == ["a gripping film", "dull and far too long"]
    expected = classify_texts(ckpt, ["a gripping film", "dull and far too long"])
    for row, probs in zip(rows, expected):
        assert row["label"] == ckpt.labels[int(probs.argmax())]
        assert [row["probabilities"][lab] for lab in ckpt.labels] == pytest.approx(probs.tolist(), abs=1e-4)


def test_the_installed_console_script(tmp_path, model_path):
    script = VENV_BIN / "textclf-predict"
    if not script.exists():
        pytest.skip("the package is not installed in this environment (make venv installs it)")
    proc = subprocess.run([str(script), "--model", str(model_path), "a gripping film"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.rstrip("\n").endswith("\ta gripping film")
    # The default model path is relative to the current directory: here there is none.
    proc = subprocess.run([str(script), "x"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert str(tmp_path / "models" / "model.pt") in proc.stderr and "--model PATH" in proc.stderr
    usage = subprocess.run([str(script), "--help"], cwd=tmp_path, capture_output=True, text=True).stdout
    assert usage.startswith("usage: textclf-predict")


def test_a_missing_model_says_where_it_looked_and_how_to_name_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PipelineError) as err:
        predict.main(["some text"])
    message = str(err.value)
    assert message.startswith("models/model.pt: no trained model at ")
    assert str(tmp_path / "models" / "model.pt") in message and "--model PATH" in message
    with pytest.raises(PipelineError, match="no trained model"):
        predict.main(["--model", str(tmp_path / "elsewhere.pt"), "--input", "x.csv", "--output", "y.csv"])


def test_the_usage_line_names_a_command_one_can_type(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/somewhere/pipeline/predict.py"])
    assert predict.build_parser().format_usage().startswith("usage: python -m pipeline.predict ")
    monkeypatch.setattr(sys, "argv", ["/venv/bin/textclf-predict"])
    assert predict.build_parser().format_usage().startswith("usage: textclf-predict ")


def test_argument_texts_come_first_then_the_file_then_stdin(tmp_path, model_path, monkeypatch, capsys):
    texts = tmp_path / "texts.txt"
    texts.write_text("from the file\n\n  \nfile again\n", encoding="utf-8")
    predict.main(["--model", str(model_path), "--json", "--file", str(texts), "first", "second"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in rows] == ["first", "second", "from the file", "file again"]

    # '-' adds stdin's lines after the rest.
    monkeypatch.setattr("sys.stdin", io.StringIO("from stdin\n"))
    predict.main(["--model", str(model_path), "--json", "-f", str(texts), "first", "-"])
    assert [json.loads(line)["text"] for line in capsys.readouterr().out.splitlines()] == [
        "first", "from the file", "file again", "from stdin"]

    # Batch prediction takes a table, not texts.
    for extra in (["x"], ["--file", str(texts)], ["--json"]):
        with pytest.raises(PipelineError, match="give no texts, --file or --json with it"):
            predict.main(["--model", str(model_path), "--input", str(texts), "--output", "o.csv", *extra])
    with pytest.raises(PipelineError, match="--input needs --output"):
        predict.main(["--model", str(model_path), "--input", str(texts)])
    with pytest.raises(PipelineError, match="pass --input FILE too"):
        predict.main(["--model", str(model_path), "--output", "o.csv", "x"])
    # A file of blank lines has no text to classify.
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(PipelineError, match="no text to classify"):
        predict.main(["--model", str(model_path), "--file", str(blank)])


# --- batch prediction --------------------------------------------------------------------------------

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
def test_batch_prediction_writes_every_row_with_its_probabilities(tmp_path, model_path, ckpt, input_name,
                                                                  output_name, capsys):
    source, output = tmp_path / input_name, tmp_path / "out" / output_name
    _write_input(_input_frame(), source)
    # chunk_rows=4: three chunks, so rows cross chunk boundaries.
    predict.main(["--model", str(model_path), "--input", str(source), "--text-column", "review",
                  "--output", str(output), "--chunk-rows", "4", "--batch-size", "3"])
    out = _read_output(output)
    prob_columns = [f"prob_{lab}" for lab in ckpt.labels]
    assert list(out.columns) == ["id", "review", "source", "predicted_label", *prob_columns]
    assert out["id"].tolist() == [f"r{i}" for i in range(len(TEXTS))]  # every row, in order
    assert out["source"].tolist() == _input_frame()["source"].tolist()

    has_text = np.array([bool(t.strip()) for t in TEXTS])  # 'NA' is text, as in the prepare stage
    probs = out[prob_columns].to_numpy(dtype=float)
    np.testing.assert_allclose(probs[has_text].sum(axis=1), 1, atol=1e-5)
    expected = classify_texts(ckpt, [t for t, ok in zip(TEXTS, has_text) if ok])
    np.testing.assert_allclose(probs[has_text], expected, atol=1e-6)
    assert out["predicted_label"][has_text].tolist() == [ckpt.labels[i] for i in expected.argmax(axis=1)]
    # Rows without text keep their place, with no prediction.
    assert out["predicted_label"][~has_text].isna().all() and np.isnan(probs[~has_text]).all()
    # ... and are counted.
    assert f"wrote {len(TEXTS)} rows ({(~has_text).sum()} without text: no prediction)" in capsys.readouterr().err
    assert not list(output.parent.glob(".*.partial"))


def test_the_file_is_read_in_chunks_of_bounded_size(tmp_path, ckpt):
    """What keeps memory flat: no chunk holds more than chunk_rows rows, whatever the file's size."""
    frame = pd.concat([_input_frame()] * 5, ignore_index=True)  # 45 rows
    for name in ("big.csv", "big.parquet", "big.jsonl"):
        _write_input(frame, tmp_path / name)
        sizes = [t.num_rows for t in B.TableReader(tmp_path / name, chunk_rows=7).chunks()]
        assert max(sizes) <= 7 and sum(sizes) == 45 and len(sizes) == 7, (name, sizes)
    # Parquet keeps its row groups; chunks still stay within chunk_rows.
    pq.write_table(pa.Table.from_pandas(frame), tmp_path / "groups.parquet", row_group_size=10)
    sizes = [t.num_rows for t in B.TableReader(tmp_path / "groups.parquet", chunk_rows=4).chunks()]
    assert max(sizes) <= 4 and sum(sizes) == 45

    one = B.predict_file(ckpt, tmp_path / "big.csv", tmp_path / "one.parquet", "review", chunk_rows=1000)
    many = B.predict_file(ckpt, tmp_path / "big.csv", tmp_path / "many.parquet", "review", chunk_rows=7)
    assert (one.chunks, many.chunks) == (1, 7) and one.rows == many.rows == 45
    assert one.rows_without_text == 10  # '' and '   ', five times each
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "one.parquet"), pd.read_parquet(tmp_path / "many.parquet"))


def test_json_lines_columns_keep_their_types(tmp_path, ckpt):
    rows = [{"id": 1, "text": "good film", "score": 4.5, "ok": True, "tags": ["a"]},
            {"id": 2, "text": "bad film", "score": 3, "ok": False, "extra": "only here", "tags": "b"},
            {"id": 3, "text": None, "score": None, "ok": None}]
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    schema = B.jsonl_schema(source)
    assert schema.names == ["id", "text", "score", "ok", "tags", "extra"]
    assert [str(schema.field(n).type) for n in schema.names] == ["int64", "string", "double", "bool", "string", "string"]
    B.predict_file(ckpt, source, tmp_path / "out.jsonl", "text", chunk_rows=2)
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["id"] for r in out] == [1, 2, 3] and out[0]["score"] == 4.5 and out[1]["ok"] is False
    assert out[0]["tags"] == '["a"]' and out[1]["tags"] == '"b"'  # mixed kinds: each value's JSON text
    assert out[0]["extra"] is None and out[1]["extra"] == "only here"
    assert out[2]["predicted_label"] is None and out[2][f"prob_{ckpt.labels[0]}"] is None


def test_batch_errors_name_the_file_and_the_column(tmp_path, ckpt):
    source = tmp_path / "reviews.csv"
    _write_input(_input_frame(), source)
    with pytest.raises(PipelineError, match=r"reviews\.csv: no text column 'text' \(name it with --text-column.*"
                                            r"columns are: id, review, source"):
        B.predict_file(ckpt, source, tmp_path / "out.parquet", "text")
    with pytest.raises(PipelineError, match=r"missing\.csv: no such input file \(looked for /"):
        B.predict_file(ckpt, tmp_path / "missing.csv", tmp_path / "out.parquet", "review")
    with pytest.raises(PipelineError, match=r"reviews\.xlsx: unknown input format"):
        B.predict_file(ckpt, tmp_path / "reviews.xlsx", tmp_path / "out.parquet", "review")
    with pytest.raises(PipelineError, match=r"out\.xlsx: unknown output format"):
        B.predict_file(ckpt, source, tmp_path / "out.xlsx", "review")
    with pytest.raises(PipelineError, match="the output would replace the input"):
        B.predict_file(ckpt, source, source, "review")
    B.predict_file(ckpt, source, tmp_path / "done.csv", "review")
    with pytest.raises(PipelineError, match="already has a column 'predicted_label'"):
        B.predict_file(ckpt, tmp_path / "done.csv", tmp_path / "again.csv", "review")
    with pytest.raises(PipelineError, match=r"holds int64 values, not text"):
        B.predict_file(ckpt, _parquet_with_numbers(tmp_path), tmp_path / "n.csv", "review")
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text('{"review": "fine"}\n{"review": 3}\n', encoding="utf-8")
    with pytest.raises(PipelineError, match=r"mixed\.jsonl: text column 'review' holds values that are not all text"):
        B.predict_file(ckpt, mixed, tmp_path / "m.csv", "review")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"review": "fine"}\n{"review": oops}\n', encoding="utf-8")
    with pytest.raises(PipelineError, match=r"bad\.jsonl: line 2, column 12: invalid JSON"):
        B.predict_file(ckpt, bad, tmp_path / "b.csv", "review")
    latin = tmp_path / "latin.csv"
    latin.write_bytes("review\ncaf\u00e9 cr\u00e8me\n".encode("latin-1"))
    with pytest.raises(PipelineError, match=r"latin\.csv: not valid utf-8 text .*--encoding"):
        B.predict_file(ckpt, latin, tmp_path / "l.csv", "review")
    assert B.predict_file(ckpt, latin, tmp_path / "l.csv", "review", encoding="latin-1").rows == 1
    truncated = tmp_path / "cut.csv.gz"
    whole = gzip.compress(("review\n" + "".join(f"film number {i}\n" for i in range(5000))).encode())
    truncated.write_bytes(whole[:len(whole) // 2])
    with pytest.raises(PipelineError, match=r"cut\.csv\.gz: cannot read as csv"):
        B.predict_file(ckpt, truncated, tmp_path / "c.csv", "review")
    # A failed run leaves neither an output nor a temporary file.
    assert not (tmp_path / "out.parquet").exists() and not (tmp_path / "again.csv").exists()
    assert not (tmp_path / "c.csv").exists()
    assert not list(tmp_path.glob(".*.partial"))


def _parquet_with_numbers(tmp_path):
    path = tmp_path / "numbers.parquet"
    pd.DataFrame({"review": [1, 2]}).to_parquet(path)
    return path


def test_the_dvc_stage_mode_reads_params(tmp_path, model_path, monkeypatch):
    """`python -m pipeline.predict_batch`: the DVC stage `predict`, set by params.yaml's predict section."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "model.pt").write_bytes(model_path.read_bytes())
    _write_input(_input_frame(), tmp_path / "reviews.csv")
    params = {"predict": {"input": "reviews.csv", "text_column": "review", "output": "data/predictions/reviews.parquet",
                          "encoding": "utf-8", "batch_size": 4, "chunk_rows": 5}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    B.main()
    out = pd.read_parquet(tmp_path / "data" / "predictions" / "reviews.parquet")
    assert len(out) == len(TEXTS) and "predicted_label" in out.columns


def _write_params(tmp_path, **predict_params) -> None:
    params = {"input": "reviews.csv", "text_column": "review", "output": "data/predictions/reviews.parquet",
              "encoding": "utf-8", "batch_size": 4, "chunk_rows": 5, **predict_params}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"predict": params}), encoding="utf-8")


def test_an_unknown_encoding_is_named_where_it_was_given(tmp_path, model_path, monkeypatch):
    for argv in (["x"], ["--input", "in.csv", "--output", "out.csv"]):
        with pytest.raises(PipelineError, match=r"--encoding 'utf9': unknown text encoding"):
            predict.main(["--model", str(model_path), "--encoding", "utf9", *argv])
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "model.pt").write_bytes(model_path.read_bytes())
    _write_input(_input_frame(), tmp_path / "reviews.csv")
    _write_params(tmp_path, encoding="utf9")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PipelineError, match=r"params\.yaml: 'predict\.encoding' is 'utf9', not a text encoding"):
        B.main()
    assert not (tmp_path / "data").exists()


def test_encoding_applies_to_file_and_table_options_need_input(tmp_path, model_path, capsys):
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\u00e9 cr\u00e8me\n".encode("latin-1"))
    with pytest.raises(PipelineError, match=r"latin\.txt: not valid utf-8 text .*--encoding"):
        predict.main(["--model", str(model_path), "--file", str(latin)])
    predict.main(["--model", str(model_path), "--json", "--encoding", "latin-1", "--file", str(latin)])
    assert json.loads(capsys.readouterr().out)["text"] == "caf\u00e9 cr\u00e8me"
    for option in (["--text-column", "review"], ["--chunk-rows", "5"], ["--output", "o.csv"]):
        with pytest.raises(PipelineError, match=f"{option[0]} is for batch prediction .*: pass --input FILE too"):
            predict.main(["--model", str(model_path), *option, "x"])


def test_dash_with_stdin_on_a_terminal_says_so(tmp_path, model_path):
    """A real terminal (a pty) on stdin: '-' cannot read lines from it."""
    primary, secondary = os.openpty()
    try:
        def run(*argv):
            return subprocess.run([sys.executable, "-m", "pipeline.predict", "--model", str(model_path), *argv],
                                  stdin=secondary, cwd=tmp_path, capture_output=True, text=True, env=ENV, timeout=60)
        proc = run("a gripping film", "-")
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert "stdin is a terminal" in proc.stderr and "no text given" not in proc.stderr
        proc = run()
        assert proc.returncode == 1 and "no text given" in proc.stderr
    finally:
        os.close(primary)
        os.close(secondary)


def test_a_folder_at_the_output_path_is_refused_and_kept(tmp_path, model_path, ckpt):
    source = tmp_path / "reviews.csv"
    _write_input(_input_frame(), source)
    folder = tmp_path / "out.csv"  # a folder, whatever its name says
    folder.mkdir()
    (folder / "keep.txt").write_text("precious")
    with pytest.raises(PipelineError, match=r"out\.csv: is a directory.*name a file"):
        B.predict_file(ckpt, source, folder, "review")
    with pytest.raises(PipelineError, match=r"out\.csv: is a directory"):
        predict.main(["--model", str(model_path), "--input", str(source), "--text-column", "review",
                      "--output", str(folder)])
    assert (folder / "keep.txt").read_text() == "precious"
    # The input, named another way, is refused too.
    with pytest.raises(PipelineError, match="the output would replace the input"):
        B.predict_file(ckpt, source, tmp_path / "sub" / ".." / "reviews.csv", "review")


def test_a_stray_quote_in_a_tsv_keeps_every_row_in_place(tmp_path, ckpt):
    """TSV has no quoting: a '"' is text, and cannot merge the rows after it into one field."""
    texts = ['a gripping film', '"a stray quote opens here', 'dull', 'she said "fine', 'the "end"']
    source = tmp_path / "reviews.tsv"
    source.write_text("id\ttext\n" + "".join(f"r{i}\t{t}\n" for i, t in enumerate(texts)), encoding="utf-8")
    summary = B.predict_file(ckpt, source, tmp_path / "out.jsonl", "text", chunk_rows=2)
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    assert summary.rows == 5 and [r["id"] for r in out] == [f"r{i}" for i in range(5)]
    assert [r["text"] for r in out] == texts
    expected = classify_texts(ckpt, texts)
    assert [r["predicted_label"] for r in out] == [ckpt.labels[i] for i in expected.argmax(axis=1)]


def _strict_json(line: str):
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")
    return json.loads(line, parse_constant=refuse)


def test_output_values_are_valid_json_and_binary_is_base64(tmp_path, ckpt):
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": ["good film", "bad film", "fine"],
                             "score": [float("nan"), float("inf"), 1.5],
                             "blob": pa.array([b"\x00\xff", None, b"ok"], pa.binary()),
                             "nested": pa.array([[float("nan")], [], None], pa.list_(pa.float64()))}), source)
    B.predict_file(ckpt, source, tmp_path / "out.jsonl", "text")
    rows = [_strict_json(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["score"] for r in rows] == [None, None, 1.5]
    assert [r["blob"] for r in rows] == ["AP8=", None, "b2s="]  # base64
    assert rows[0]["nested"] == [None]
    for name in ("out.csv", "out.tsv"):
        B.predict_file(ckpt, source, tmp_path / name, "text")
        out = pd.read_csv(tmp_path / name, sep="," if name.endswith("csv") else "\t", keep_default_na=False)
        assert out["blob"].tolist() == ["AP8=", "", "b2s="] and out["nested"].tolist()[:2] == ["[null]", "[]"]
    # A column a format cannot hold: an error naming the output file and the column, nothing written.
    uuids = tmp_path / "uuids.parquet"
    pq.write_table(pa.table({"text": ["good film"], "key": pa.array([bytes(16)], pa.uuid())}), uuids)
    with pytest.raises(PipelineError, match=r"bad\.csv: cannot write column 'key' \(extension<arrow\.uuid>\) as csv"):
        B.predict_file(ckpt, uuids, tmp_path / "bad.csv", "text")
    assert not (tmp_path / "bad.csv").exists() and not list(tmp_path.glob(".*.partial"))


@pytest.mark.parametrize("name, content", [
    ("empty.jsonl", b""), ("blank.jsonl", b"\n  \n\n"), ("empty.csv", b""), ("blank.tsv", b"\n\n"),
    ("empty.csv.gz", gzip.compress(b"", mtime=0)),
], ids=lambda value: value if isinstance(value, str) else "")
def test_an_input_without_rows_says_so(tmp_path, ckpt, name, content):
    source = tmp_path / name
    source.write_bytes(content)
    with pytest.raises(PipelineError, match=rf"{name.replace('.', r'[.]')}: the file has no rows"):
        B.predict_file(ckpt, source, tmp_path / "out.csv", "text")


def _open_files() -> list[str]:
    fds = "/proc/self/fd"
    return [os.path.realpath(os.path.join(fds, fd)) for fd in os.listdir(fds)]


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_a_parquet_input_is_closed_after_reading(tmp_path):
    source = tmp_path / "big.parquet"
    pq.write_table(pa.Table.from_pandas(pd.concat([_input_frame()] * 5)), source, row_group_size=10)
    with B.TableReader(source, chunk_rows=4) as reader:
        chunks = reader.chunks()
        next(chunks)  # stopped part-way: the file is open
        assert os.path.realpath(source) in _open_files()
    assert os.path.realpath(source) not in _open_files()
