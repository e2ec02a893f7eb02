"""The exported model (TorchScript, ONNX under onnxruntime) gives the PyTorch model's probabilities."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch

from pipeline import export
from pipeline.checkpoint import load_checkpoint
from pipeline.cli import export as export_cli
from pipeline.errors import PipelineError
from pipeline.inference import classify_texts, encode_texts
from pipeline.text import tokenize
from tests.helpers import ROOT, VENV_BIN
from tests.tiny_model import MAX_TOKENS, TEXTS, TRUNCATION, train_tiny_checkpoint

# The repository on the path, as if installed, wherever the command runs.
ENV = dict(os.environ, PYTHONPATH=str(ROOT))

# The default (bidirectional LSTM, attention), the others' harder paths (reading the last true step,
# two stacked layers, two embedding channels), and the other encoders.
ARCHITECTURES = {
    "bilstm-attention": {},
    "2-layer-last-multichannel": {"pooling": "last", "num_layers": 2, "embedding_channels": 2},
    "bigru-last": {"encoder": "gru", "pooling": "last"},
    "2-layer-cnn-max": {"encoder": "cnn", "pooling": "max", "num_layers": 2},
}


@pytest.fixture(scope="module", params=list(ARCHITECTURES))
def tiny_model(request, tmp_path_factory):
    return train_tiny_checkpoint(tmp_path_factory.mktemp("model") / "model.pt", **ARCHITECTURES[request.param])


def run_exported(fmt: str, path, ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    if fmt == "onnx":
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {"ids": ids, "lengths": lengths})[0]
    module = torch.jit.load(str(path))
    return module(torch.from_numpy(ids), torch.from_numpy(lengths)).numpy()


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
@pytest.mark.parametrize("fmt", export.FORMATS)
def test_the_exported_model_gives_the_pytorch_probabilities(tiny_model, tmp_path, fmt):
    ckpt = load_checkpoint(tiny_model)
    output = tmp_path / f"model.{fmt}"
    meta = export.read_sidecar(export.export_model(ckpt, fmt, output))

    expected = classify_texts(ckpt, TEXTS)
    assert np.ptp(expected[:, 0]) > 0.05  # a trained model: the texts do not all get the same answer
    ids, lengths = export.encode_batch(meta, TEXTS)
    assert len(set(lengths.tolist())) >= 4
    assert (ids == meta["pad_id"]).any()  # a padded batch of mixed lengths
    padded = run_exported(fmt, output, ids, lengths)
    np.testing.assert_allclose(padded, expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(padded.sum(axis=1), 1, atol=1e-5)
    # Each text alone, unpadded, and the batch in another order (so another length is the longest).
    for row in range(len(TEXTS)):
        alone = run_exported(fmt, output, ids[row:row + 1, :lengths[row]], lengths[row:row + 1])
        np.testing.assert_allclose(alone[0], padded[row], atol=1e-5, rtol=0)
    order = np.argsort(lengths)
    short_first = run_exported(fmt, output, ids[order][:3, :lengths[order][2]], lengths[order][:3])
    np.testing.assert_allclose(short_first, expected[order][:3], atol=1e-5, rtol=0)
    # A batch larger than the tracing example (2 rows, 5 steps) and longer in time.
    many = export.encode_batch(meta, TEXTS * 3)
    np.testing.assert_allclose(run_exported(fmt, output, *many), np.tile(expected, (3, 1)), atol=1e-5, rtol=0)


def test_the_sidecar_encodes_texts_as_the_checkpoint_does(tmp_path):
    path = train_tiny_checkpoint(tmp_path / "model.pt", steps=1)
    ckpt = load_checkpoint(path)
    meta = export.read_sidecar(export.export_model(ckpt, "onnx", tmp_path / "exported" / "model.onnx"))
    assert meta["labels"] == ckpt.labels and meta["itos"] == ckpt.itos
    assert (meta["pad_id"], meta["unk_id"], meta["max_tokens"], meta["truncation"]) == (0, 1, MAX_TOKENS, TRUNCATION)
    assert meta["model_file"] == "model.onnx" and meta["model_format"] == "onnx"
    assert meta["tokenizer"]["settings"] == ckpt.text_config.__dict__
    ids, lengths = export.encode_batch(meta, TEXTS)
    sequences = encode_texts(ckpt, [tokenize(t, ckpt.text_config) for t in TEXTS])
    for row, seq in enumerate(sequences):
        assert lengths[row] == len(seq) and ids[row, :len(seq)].tolist() == seq.tolist()
        assert (ids[row, len(seq):] == meta["pad_id"]).all()
    assert lengths.max() == MAX_TOKENS and lengths[TEXTS.index("")] == 1  # truncated; empty -> [unk]
    # Batch and time are dynamic axes of the ONNX graph.
    session = ort.InferenceSession(str(tmp_path / "exported" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.shape for i in session.get_inputs()] == [["batch", "time"], ["batch"]]
    assert [i.type for i in session.get_inputs()] == ["tensor(int64)", "tensor(int64)"]
    assert session.get_outputs()[0].name == "probabilities"
    assert not list(tmp_path.rglob("*.partial"))


def test_exporting_to_onnx_twice_gives_the_same_bytes(tmp_path):
    """So that a DVC stage exporting the model caches one file, not one per run."""
    ckpt = load_checkpoint(train_tiny_checkpoint(tmp_path / "model.pt", steps=1))
    first, second = tmp_path / "a" / "m.onnx", tmp_path / "b" / "other-name.onnx"
    export.export_model(ckpt, "onnx", first)
    export.export_model(ckpt, "onnx", second)
    assert first.read_bytes() == second.read_bytes()


def test_export_cli_runs_from_another_directory(tmp_path, monkeypatch):
    model = train_tiny_checkpoint(tmp_path / "elsewhere" / "model.pt", steps=1)
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli.export", "--model", str(model), "--format", "torchscript",
                           "--output", "out/model.ts"], cwd=work, capture_output=True, text=True, env=ENV)
    assert proc.returncode == 0, proc.stderr
    assert (work / "out" / "model.ts").is_file()
    assert json.loads((work / "out" / "model.ts.json").read_text())["model_format"] == "torchscript"
    # Without --output: beside the checkpoint.
    export_cli.main(["--model", str(model)])
    assert (model.parent / "model.onnx").is_file() and (model.parent / "model.onnx.json").is_file()

    # The default --model is models/model.pt under the current directory; the error says where it looked.
    monkeypatch.chdir(work)
    with pytest.raises(PipelineError, match="no trained model") as err:
        export_cli.main([])
    assert str(work / "models" / "model.pt") in str(err.value) and "--model" in str(err.value)
    monkeypatch.setattr(sys, "argv", [str(work / "export.py")])
    assert export_cli.build_parser().format_usage().startswith("usage: python -m pipeline.cli.export")
    monkeypatch.setattr(sys, "argv", [str(VENV_BIN / "textclf-export")])
    assert export_cli.build_parser().format_usage().startswith("usage: textclf-export")


def test_the_installed_console_script_exports(tmp_path):
    script = VENV_BIN / "textclf-export"
    if not script.exists():
        pytest.skip("the package is not installed in this environment (make venv installs it)")
    model = train_tiny_checkpoint(tmp_path / "model.pt", steps=1)
    proc = subprocess.run([str(script), "--model", str(model), "--output", "m.onnx"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert export.read_sidecar(tmp_path / "m.onnx.json")["model_format"] == "onnx"


def test_export_errors_are_clear(tmp_path):
    ckpt = load_checkpoint(train_tiny_checkpoint(tmp_path / "model.pt", steps=1))
    with pytest.raises(PipelineError, match="unknown export format 'tflite'"):
        export.export_model(ckpt, "tflite", tmp_path / "m.tflite")
    with pytest.raises(PipelineError, match="no sidecar"):
        export.read_sidecar(tmp_path / "nothing.json")


def test_export_refuses_a_folder_or_the_checkpoint_as_its_output(tmp_path):
    models = tmp_path / "models"
    model = train_tiny_checkpoint(models / "model.pt", steps=1)
    original = model.read_bytes()
    with pytest.raises(PipelineError, match=r"models: is a directory.*name a file"):
        export_cli.main(["--model", str(model), "--output", str(models)])
    with pytest.raises(PipelineError, match=r"model\.pt: the output would replace the input"):
        export_cli.main(["--model", str(model), "--format", "torchscript",
                "--output", str(models / ".." / "models" / "model.pt")])
    # The sidecar, <output>.json, must not land on a folder (or the checkpoint) either.
    (tmp_path / "m.onnx.json").mkdir()
    with pytest.raises(PipelineError, match=r"m\.onnx\.json: is a directory"):
        export_cli.main(["--model", str(model), "--output", str(tmp_path / "m.onnx")])
    assert not (tmp_path / "m.onnx").exists()  # refused before anything was written
    assert model.read_bytes() == original and sorted(p.name for p in models.iterdir()) == ["model.pt"]


class _FailingModel(torch.nn.Module):
    """A model that fails while it is traced: what an export that breaks part-way looks like."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg

    def forward(self, ids, lengths):
        raise RuntimeError("this model cannot be traced")


@pytest.mark.parametrize("fmt", export.FORMATS)
def test_a_failed_export_leaves_nothing_behind(tmp_path, fmt):
    ckpt = load_checkpoint(train_tiny_checkpoint(tmp_path / "model.pt", steps=1))
    broken = dataclasses.replace(ckpt, model=_FailingModel(ckpt.model.cfg))
    output = tmp_path / "out" / "model.export"
    with pytest.raises(RuntimeError, match="cannot be traced"):
        export.export_model(broken, fmt, output)
    assert not output.exists() and not export.sidecar_path(output).exists()
    assert not list(tmp_path.rglob("*.partial"))


def test_a_bad_sidecar_is_named(tmp_path):
    for name, content in (("bad.json", b"{not json"), ("latin.json", "{\"caf\u00e9\": 1}".encode("latin-1"))):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(PipelineError, match=rf"{name.replace('.', '[.]')}: "):
            export.read_sidecar(tmp_path / name)
    (tmp_path / "folder.json").mkdir()
    with pytest.raises(PipelineError, match=r"folder\.json: cannot read"):
        export.read_sidecar(tmp_path / "folder.json")
    (tmp_path / "other.json").write_text("[1, 2]")
    with pytest.raises(PipelineError, match=r"other\.json: not an export sidecar"):
        export.read_sidecar(tmp_path / "other.json")


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
@pytest.mark.parametrize("fmt", export.FORMATS)
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_a_multi_label_model_exports_its_sigmoid_probabilities_and_thresholds(tiny_multilabel_path, tmp_path, fmt,
                                                                            temperature):
    from pipeline.inference import predict_texts
    from tests.tiny_model import MULTI_TEXTS

    ckpt = load_checkpoint(tiny_multilabel_path)
    ckpt.model.temperature.fill_(temperature)  # as a checkpoint calibrated to this temperature loads
    ckpt = dataclasses.replace(ckpt, temperature=temperature)
    output = tmp_path / f"model.{fmt}"
    meta = export.read_sidecar(export.export_model(ckpt, fmt, output))
    assert meta["task"] == "multi_label" and meta["labels"] == ckpt.labels
    assert meta["thresholds"] == pytest.approx(ckpt.thresholds) and meta["temperature"] == temperature
    assert "sigmoid" in meta["output"]["meaning"] and "threshold" in meta["output"]["meaning"]

    texts = [t for t in MULTI_TEXTS if t != "<br/>"]
    expected = classify_texts(ckpt, texts)
    logits = torch.logit(torch.from_numpy(expected).double()).numpy() * temperature
    assert np.abs(logits).max() > 1  # the temperature matters to these texts' probabilities
    ids, lengths = export.encode_batch(meta, texts)
    exported = run_exported(fmt, output, ids, lengths)
    np.testing.assert_allclose(exported, expected, atol=1e-5, rtol=0)
    assert not np.allclose(exported.sum(axis=1), 1, atol=1e-3)  # sigmoids, not a softmax
    # The sidecar's thresholds decide as the pipeline does.
    decided = exported >= np.asarray(meta["thresholds"])
    predictions = predict_texts(ckpt, texts)
    assert [[lab for lab, yes in zip(meta["labels"], row) if yes] for row in decided] == \
        [predictions.label(i, ckpt.labels) for i in range(len(texts))]


def test_a_single_label_sidecar_names_its_task_and_has_no_thresholds(tiny_model_path, tmp_path):
    meta = export.read_sidecar(export.export_model(load_checkpoint(tiny_model_path), "onnx", tmp_path / "m.onnx"))
    assert meta["task"] == "single_label" and "thresholds" not in meta and "softmax" in meta["output"]["meaning"]
