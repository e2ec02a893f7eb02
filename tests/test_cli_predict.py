"""textclf-predict (pipeline.cli.predict): texts from arguments, a file and stdin, from any directory and
as the installed console script; its options and the errors it names."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from pipeline.checkpoint import load_checkpoint, save_checkpoint
from pipeline.cli import predict
from pipeline.errors import PipelineError
from pipeline.inference import classify_texts
from pipeline.text import TextConfig
from pipeline.training import build_model
from tests.helpers import ROOT, VENV_BIN, train_params

ENV = dict(os.environ, PYTHONPATH=str(ROOT))  # the repository importable, wherever the command runs


def test_the_cli_runs_from_another_directory(tmp_path, tiny_model_path, tiny_ckpt):
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli.predict", "--model", str(tiny_model_path), "--json",
                           "a gripping film", "dull and far too long"], cwd=tmp_path, capture_output=True,
                          text=True, env=ENV)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["text"] for r in rows] == ["a gripping film", "dull and far too long"]
    expected = classify_texts(tiny_ckpt, ["a gripping film", "dull and far too long"])
    for row, probs in zip(rows, expected):
        assert row["label"] == tiny_ckpt.labels[int(probs.argmax())]
        assert [row["probabilities"][lab] for lab in tiny_ckpt.labels] == pytest.approx(probs.tolist(), abs=1e-4)


def test_the_installed_console_script(tmp_path, tiny_model_path):
    script = VENV_BIN / "textclf-predict"
    if not script.exists():
        pytest.skip("the package is not installed in this environment (make venv installs it)")
    proc = subprocess.run([str(script), "--model", str(tiny_model_path), "a gripping film"], cwd=tmp_path,
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
    monkeypatch.setattr(sys, "argv", ["/somewhere/pipeline/cli/predict.py"])
    assert predict.build_parser().format_usage().startswith("usage: python -m pipeline.cli.predict ")
    monkeypatch.setattr(sys, "argv", ["/venv/bin/textclf-predict"])
    assert predict.build_parser().format_usage().startswith("usage: textclf-predict ")


def test_argument_texts_come_first_then_the_file_then_stdin(tmp_path, tiny_model_path, monkeypatch, capsys):
    texts = tmp_path / "texts.txt"
    texts.write_text("from the file\n\n  \nfile again\n", encoding="utf-8")
    predict.main(["--model", str(tiny_model_path), "--json", "--file", str(texts), "first", "second"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in rows] == ["first", "second", "from the file", "file again"]

    # '-' adds stdin's lines after the rest.
    monkeypatch.setattr("sys.stdin", io.StringIO("from stdin\n"))
    predict.main(["--model", str(tiny_model_path), "--json", "-f", str(texts), "first", "-"])
    assert [json.loads(line)["text"] for line in capsys.readouterr().out.splitlines()] == [
        "first", "from the file", "file again", "from stdin"]

    # Batch prediction takes a table, not texts.
    for extra in (["x"], ["--file", str(texts)], ["--json"]):
        with pytest.raises(PipelineError, match="give no texts, --file or --json with it"):
            predict.main(["--model", str(tiny_model_path), "--input", str(texts), "--output", "o.csv", *extra])
    with pytest.raises(PipelineError, match="--input needs --output"):
        predict.main(["--model", str(tiny_model_path), "--input", str(texts)])
    with pytest.raises(PipelineError, match="pass --input FILE too"):
        predict.main(["--model", str(tiny_model_path), "--output", "o.csv", "x"])
    # A file of blank lines has no text to classify.
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(PipelineError, match="no text to classify"):
        predict.main(["--model", str(tiny_model_path), "--file", str(blank)])


def test_an_unknown_encoding_is_named_as_the_option(tiny_model_path):
    for argv in (["x"], ["--input", "in.csv", "--output", "out.csv"]):
        with pytest.raises(PipelineError, match=r"^--encoding: 'utf9' is not a text encoding Python knows \(e\.g\. utf-8"):
            predict.main(["--model", str(tiny_model_path), "--encoding", "utf9", *argv])


def test_encoding_applies_to_file_and_table_options_need_input(tmp_path, tiny_model_path, capsys):
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\u00e9 cr\u00e8me\n".encode("latin-1"))
    with pytest.raises(PipelineError, match=r"latin\.txt: not valid utf-8 text .*--encoding"):
        predict.main(["--model", str(tiny_model_path), "--file", str(latin)])
    predict.main(["--model", str(tiny_model_path), "--json", "--encoding", "latin-1", "--file", str(latin)])
    assert json.loads(capsys.readouterr().out)["text"] == "caf\u00e9 cr\u00e8me"
    for option in (["--text-column", "review"], ["--chunk-rows", "5"], ["--output", "o.csv"]):
        with pytest.raises(PipelineError, match=f"{option[0]} is for batch prediction .*: pass --input FILE too"):
            predict.main(["--model", str(tiny_model_path), *option, "x"])


def test_dash_with_stdin_on_a_terminal_says_so(tmp_path, tiny_model_path):
    """A real terminal (a pty) on stdin: '-' cannot read lines from it."""
    primary, secondary = os.openpty()
    try:
        def run(*argv):
            return subprocess.run([sys.executable, "-m", "pipeline.cli.predict", "--model", str(tiny_model_path), *argv],
                                  stdin=secondary, cwd=tmp_path, capture_output=True, text=True, env=ENV, timeout=60)
        proc = run("a gripping film", "-")
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert "stdin is a terminal" in proc.stderr and "no text given" not in proc.stderr
        proc = run()
        assert proc.returncode == 1 and "no text given" in proc.stderr
    finally:
        os.close(primary)
        os.close(secondary)


def test_predict_cli_reads_args_file_and_stdin(tmp_path, monkeypatch, capsys):
    tp = train_params(embeddings="finetune")
    itos = ["<pad>", "<unk>", "good", "bad"]
    model = build_model(tp, np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32), 2)
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, model.state_dict(), itos, ["neg", "pos"], TextConfig(), 1, {})

    predict.main(["--model", str(path), "Good film", "bad film"])
    lines = capsys.readouterr().out.strip().splitlines()
    expected = classify_texts(load_checkpoint(path), ["Good film", "bad film"])
    for line, text, want in zip(lines, ["Good film", "bad film"], expected, strict=True):
        label, shown, printed_text = line.split("\t")
        assert printed_text == text and label == ["neg", "pos"][int(want.argmax())]
        probs = {part.split("=")[0]: float(part.split("=")[1]) for part in shown.split()}
        assert list(probs) == ["neg", "pos"] and list(probs.values()) == pytest.approx(want.tolist(), abs=5e-4)

    texts = tmp_path / "texts.txt"
    texts.write_text("good\n\nbad\n")
    predict.main(["--model", str(path), "--json", "--file", str(texts)])
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.strip().splitlines()]
    assert [r["text"] for r in rows] == ["good", "bad"] and set(rows[0]["probabilities"]) == {"neg", "pos"}
    assert f"{texts}: 1 blank line(s) skipped" in captured.err  # skipped, and said so

    # Typographic and plain apostrophes: the same tokens, so the same prediction.
    predict.main(["--model", str(path), "--json", "the film\u2019s good, isn\u2019t it", "the film's good, isn't it"])
    curly, straight = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert curly["probabilities"] == straight["probabilities"]

    monkeypatch.setattr("sys.stdin", io.StringIO("bad\n"))
    predict.main(["--model", str(path)])
    assert capsys.readouterr().out.strip().endswith("\tbad")

    with pytest.raises(PipelineError, match="no trained model"):
        predict.main(["--model", str(tmp_path / "missing.pt"), "x"])
    with pytest.raises(PipelineError, match="text argument 1 is empty"):
        predict.main(["--model", str(path), ""])
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    with pytest.raises(PipelineError, match="no text to classify"):
        predict.main(["--model", str(path)])


def _model_with_labels(tmp_path, labels):
    tp = train_params(embeddings="finetune")
    model = build_model(tp, np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32), len(labels))
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, model.state_dict(), ["<pad>", "<unk>", "good", "bad"], labels, TextConfig(), 1, {})
    return path


def test_a_text_with_no_tokens_after_cleaning_gets_no_label_and_a_reason(tmp_path, tiny_model_path, capsys):
    from pipeline.inference import NO_TOKENS

    texts = ["a gripping film", "<br/>", "https://example.com/x", "\u200b\u200d"]
    predict.main(["--model", str(tiny_model_path), "--json", *texts])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows[0]["label"] is not None and "reason" not in rows[0]
    assert rows[1:] == [{"text": t, "label": None, "probabilities": None, "reason": NO_TOKENS} for t in texts[1:]]
    predict.main(["--model", str(tiny_model_path), "--explain", *texts])
    out = capsys.readouterr().out
    assert out.count(f"\tno label: {NO_TOKENS}\t") == 3 and "\tno label: " + NO_TOKENS + "\t<br/>\n" in out


def test_the_plain_output_is_one_line_of_three_fields_whatever_the_labels_and_texts_hold(tmp_path, capsys):
    """Labels with a tab or a line break (a model trained on such a corpus), texts with them too: each is
    escaped (backslash, \\t, \\n, \\r, \\u2028...), so every text is one line of three tab-separated fields."""
    labels = ["neg\tative", "pos\nitive"]
    path = _model_with_labels(tmp_path, labels)
    texts = ["good\tfilm", "bad\nfilm\r\nreally", "good \\ bad\u2028end"]
    predict.main(["--model", str(path), *texts])
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert len(lines) == len(texts) and all(len(line.split("\t")) == 3 for line in lines), lines
    assert [line.split("\t")[2] for line in lines] == ["good\\tfilm", "bad\\nfilm\\r\\nreally",
                                                      "good \\\\ bad\\u2028end"]
    assert {line.split("\t")[0] for line in lines} <= {"neg\\tative", "pos\\nitive"}
    assert lines[0].split("\t")[1].startswith("neg\\tative=")
    # --json is JSON: the label as it is
    predict.main(["--model", str(path), "--json", "good\tfilm"])
    assert json.loads(capsys.readouterr().out)["label"] in labels


def test_a_byte_order_mark_is_no_part_of_the_first_text(tmp_path, tiny_model_path, tiny_ckpt, capsys):
    """--file of Notepad's UTF-8 (a BOM, CRLF), and a JSON-lines --input with one: the first text was
    echoed with U+FEFF, and the JSON-lines batch run stopped at 'Unexpected UTF-8 BOM'."""
    texts = tmp_path / "texts.txt"
    texts.write_bytes(b"\xef\xbb\xbfgood film\r\nbad film\r\n")
    predict.main(["--model", str(tiny_model_path), "--json", "--file", str(texts)])
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [r["text"] for r in rows] == ["good film", "bad film"]
    table = tmp_path / "in.jsonl"
    table.write_bytes(b'\xef\xbb\xbf{"text": "good film"}\r\n{"text": "bad film"}\r\n')
    predict.main(["--model", str(tiny_model_path), "--input", str(table), "--output", str(tmp_path / "out.jsonl")])
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["text"] for r in out] == ["good film", "bad film"]
    assert [r["predicted_label"] for r in out] == [r["label"] for r in rows]


def test_a_multi_label_model_prints_its_label_sets(tiny_multilabel_path, tiny_multilabel_ckpt, capsys):
    from pipeline.inference import NO_TOKENS, predict_texts, uncertain
    from tests.tiny_model import MULTI_TEXTS

    ckpt = tiny_multilabel_ckpt
    expected = predict_texts(ckpt, MULTI_TEXTS)
    sets = [expected.label(i, ckpt.labels) for i in range(len(MULTI_TEXTS))]
    assert [] in sets and any(s and len(s) > 1 for s in sets)  # a text given no label, one given several
    predict.main(["--model", str(tiny_multilabel_path), *MULTI_TEXTS])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(MULTI_TEXTS)
    for line, text, given, probs in zip(lines, MULTI_TEXTS, sets, expected.probs):
        first, shown, echoed = line.split("\t")
        assert echoed == text
        if given is None:
            assert first == "" and shown == f"no label: {NO_TOKENS}"
            continue
        assert first == ("|".join(given) if given else "(no label)")
        assert shown == "  ".join(f"{lab}={p:.3f}" for lab, p in zip(ckpt.labels, probs))

    predict.main(["--model", str(tiny_multilabel_path), "--json", *MULTI_TEXTS])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    for row, text, given, i in zip(rows, MULTI_TEXTS, sets, range(len(MULTI_TEXTS))):
        answer = expected.answer(i, ckpt.labels)
        assert "label" not in row and row["labels"] == answer["labels"] == given
        if given is not None:
            assert row == {"text": text, "labels": given,
                           "probabilities": {k: round(v, 4) for k, v in answer["probabilities"].items()}}

    # --min-confidence: uncertain when any label's decision is less sure than P (not the top probability).
    confidence = ckpt.task.confidence(np.nan_to_num(expected.probs, nan=1.0))
    level = 0.9
    unsure = [i for i, s in enumerate(sets) if s is not None and confidence[i] < level]
    assert unsure and any(expected.probs[i].max() >= level for i in unsure)
    predict.main(["--model", str(tiny_multilabel_path), "--json", "--min-confidence", str(level), *MULTI_TEXTS])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    for i, row in enumerate(rows):
        if i in unsure:
            assert row["labels"] is None and row["reason"] == uncertain(level, ckpt.task)
            assert row["probabilities"] is not None
        else:
            assert row["labels"] == sets[i]


def _split_labels(field: str) -> list[str]:
    """The reader's side: a backslash takes the next character as it is; a bare '|' separates."""
    names, current, chars = [], "", iter(field)
    for char in chars:
        if char == "\\":
            current += next(chars)
        elif char == "|":
            names, current = names + [current], ""
        else:
            current += char
    return names + [current]


def test_a_label_holding_the_separator_is_escaped_so_the_joined_labels_split_back():
    from pipeline.cli.predict import _format_label_set

    labels = ["a|b", "c\\", "d"]
    line = _format_label_set("text", labels, [0.9, 0.8, 0.1], False, ["a|b", "c\\", "d"], None)
    first = line.split("\t")[0]
    assert first == "a\\|b|c\\\\|d"
    assert _split_labels(first) == ["a|b", "c\\", "d"]
    assert _split_labels(_format_label_set("t", ["x", "y"], [0.9, 0.9], False, ["x", "y"], None).split("\t")[0]) \
        == ["x", "y"]  # plain labels: unchanged, 'x|y'


def test_a_multi_label_model_explains_each_label_it_gives(tiny_multilabel_path, tiny_multilabel_ckpt, capsys):
    from pipeline.explain import explain_label_sets
    from pipeline.text import tokenize

    ckpt = tiny_multilabel_ckpt
    text = "a gripping , beautifully acted film"
    predict.main(["--model", str(tiny_multilabel_path), "--json", "--explain", text])
    row = json.loads(capsys.readouterr().out)
    assert len(row["labels"]) >= 2 and [e["target"] for e in row["explanations"]] == row["labels"]
    index = [ckpt.labels.index(label) for label in row["labels"]]
    for served, direct in zip(row["explanations"], explain_label_sets(ckpt, [tokenize(text, ckpt.text_config)],
                                                                      [index])[0]):
        assert served == direct.to_dict(ckpt.labels)
    # Each label's attributions add up to that label's sigmoid probability less the all-padding baseline's.
    import torch

    first = explain_label_sets(ckpt, [tokenize(text, ckpt.text_config)], [index])[0]
    n = len(first[0].tokens)
    with torch.no_grad():
        baseline = ckpt.model.probabilities(torch.full((1, n), ckpt.model.cfg.pad_id), torch.tensor([n]))[0]
    for j, explanation in zip(index, first):
        assert explanation.probabilities[j] == pytest.approx(row["probabilities"][ckpt.labels[j]], abs=1e-4)
        gap = explanation.probabilities[j] - float(baseline[j])
        assert abs(sum(explanation.attributions) - gap) <= abs(explanation.delta) + 1e-4
    assert first[0].attributions != first[1].attributions
    predict.main(["--model", str(tiny_multilabel_path), "--explain", text])
    out = capsys.readouterr().out
    assert all(f"  for {label}: " in out for label in row["labels"])
