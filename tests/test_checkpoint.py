"""The saved model's format (pipeline.checkpoint): what it carries, the same bytes for the same model,
the previous format still read, and files that are not checkpoints named as such."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.checkpoint import load_checkpoint, require_model_file, save_checkpoint
from pipeline.errors import PipelineError
from pipeline.inference import encode_texts, predict_proba
from pipeline.text import TextConfig
from pipeline.training import build_model
from tests.helpers import train_params


def _model(**over):
    torch.manual_seed(0)
    return build_model(train_params(**{"embeddings": "finetune", **over}), np.ones((4, 8), dtype=np.float32), 2)


def test_the_same_model_saves_to_the_same_bytes(tmp_path):
    """So that `dvc repro` twice caches one model file, not two."""
    model = _model()
    paths = [tmp_path / "a" / "model.pt", tmp_path / "b" / "model.pt"]
    for path in paths:
        save_checkpoint(path, model, model.state_dict(), ["<pad>", "<unk>", "x", "y"], ["neg", "pos"], TextConfig(), 1, {})
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert not list(tmp_path.rglob("*.partial"))
    assert load_checkpoint(paths[0]).labels == ["neg", "pos"]


@pytest.mark.parametrize("tokenizer", ["words", "icu"])
def test_the_tokenizer_is_kept_where_it_is_not_the_default_words(tmp_path, tokenizer):
    """A corpus that needed no word breaking gives the checkpoint of before prepare.tokenizer existed, byte
    for byte (no `tokenizer` key); one cut by ICU keeps `icu`. Both load as what they were trained with."""
    model = _model()
    save_checkpoint(tmp_path / "m.pt", model, model.state_dict(), ["<pad>", "<unk>", "x", "y"], ["neg", "pos"],
                    TextConfig(tokenizer=tokenizer), 1, {})
    stored = torch.load(tmp_path / "m.pt", weights_only=True)["text_config"]
    assert ("tokenizer" in stored) == (tokenizer == "icu")
    assert load_checkpoint(tmp_path / "m.pt").text_config.tokenizer == tokenizer


def test_the_checkpoint_carries_the_truncation(tmp_path):
    model = _model()
    save_checkpoint(tmp_path / "m.pt", model, model.state_dict(), ["<pad>", "<unk>", "a", "b"], ["x", "y"],
                    TextConfig(), 1, {}, max_tokens=4, truncation="head+tail")
    ckpt = load_checkpoint(tmp_path / "m.pt")
    (ids,) = encode_texts(ckpt, [["a"] * 10 + ["b"] * 10])
    assert ids.tolist() == [2, 3, 3, 3]  # one head token, three tail tokens
    torch.save(model.state_dict(), tmp_path / "weights.pt")  # a weights-only file is not a checkpoint
    with pytest.raises(PipelineError, match=r"weights\.pt: not a checkpoint of this pipeline"):
        load_checkpoint(tmp_path / "weights.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a zip archive at all")
    with pytest.raises(PipelineError, match=r"garbage\.pt: cannot load the model"):
        load_checkpoint(tmp_path / "garbage.pt")
    with pytest.raises(PipelineError, match=r"missing\.pt: no trained model"):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(PipelineError, match=r"missing\.pt: no trained model at .*--model PATH"):
        require_model_file(tmp_path / "missing.pt")


@pytest.mark.parametrize("encoder", ["gru", "cnn"])
def test_the_encoder_is_part_of_the_checkpoint(tmp_path, encoder):
    model = _model(encoder=encoder)
    save_checkpoint(tmp_path / "m.pt", model, model.state_dict(), ["<pad>", "<unk>", "a", "b"], ["x", "y"],
                    TextConfig(), 1, {})
    loaded = load_checkpoint(tmp_path / "m.pt").model
    assert loaded.cfg.encoder == encoder and type(loaded.encoder) is type(model.encoder)
    sequences = [np.array([2, 3, 2]), np.array([3])]
    np.testing.assert_array_equal(predict_proba(loaded, sequences), predict_proba(model, sequences))


# The weights' names in format 2, before the embedder / encoder / pooler modules.
FORMAT_2_NAMES = {"embedder.embedding.": "embedding.", "embedder.static_embedding.": "static_embedding.",
                  "encoder.forward_layers.": "forward_layers.", "encoder.backward_layers.": "backward_layers.",
                  "pooler.attention.": "attention."}


def _format_2_name(key: str) -> str:
    prefix = next((new for new in FORMAT_2_NAMES if key.startswith(new)), None)
    return key if prefix is None else FORMAT_2_NAMES[prefix] + key[len(prefix):]


def test_a_format_2_checkpoint_still_loads_as_the_same_lstm(tmp_path):
    model = _model(pooling="attention", embeddings="multichannel", num_layers=2)
    save_checkpoint(tmp_path / "m.pt", model, model.state_dict(), ["<pad>", "<unk>", "a", "b"], ["x", "y"],
                    TextConfig(), 1, {"best_epoch": 3})
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    payload["format"] = 2
    del payload["config"]["encoder"]  # format 2 knew one encoder
    payload["state_dict"] = {_format_2_name(k): v for k, v in payload["state_dict"].items()}
    assert {"embedding.weight", "static_embedding.weight", "attention.weight", "forward_layers.1.weight_hh_l0",
            "backward_layers.0.bias_ih_l0", "classifier.weight"} <= set(payload["state_dict"])
    torch.save(payload, tmp_path / "old.pt")
    old = load_checkpoint(tmp_path / "old.pt")
    assert old.model.cfg.encoder == "lstm" and old.info == {"best_epoch": 3}
    for key, value in model.state_dict().items():
        assert torch.equal(old.model.state_dict()[key], value), key


def _tiny_payload(tiny_model_path) -> dict:
    return torch.load(tiny_model_path, weights_only=True)


def _drop(mapping: dict, key: str) -> dict:
    return {k: v for k, v in mapping.items() if k != key}


# (what, a change to the tiny checkpoint's dict, what the one-line error says)
INCONSISTENT = [
    ("fewer labels than outputs", lambda p: {**p, "labels": p["labels"][:1]},
     r"labels: 1 names, but the model has 2 outputs"),
    ("a label twice", lambda p: {**p, "labels": [p["labels"][0]] * 2}, r"labels: '.*' more than once"),
    ("an unknown config key", lambda p: {**p, "config": {**p["config"], "heads": 4}}, r"config: unknown key 'heads'"),
    ("a config key missing", lambda p: {**p, "config": _drop(p["config"], "vocab_size")}, r"config: no 'vocab_size'"),
    ("no labels", lambda p: _drop(p, "labels"), r"no 'labels' key"),
    ("an unknown top-level key", lambda p: {**p, "extra": 1}, r"unknown key 'extra'"),
    ("a string for hidden_size", lambda p: {**p, "config": {**p["config"], "hidden_size": "8"}},
     r"config\.hidden_size: expected an integer"),
    ("NaN dropout", lambda p: {**p, "config": {**p["config"], "dropout": float("nan")}},
     r"config\.dropout: nan is not a number"),
    ("an unknown pooling", lambda p: {**p, "config": {**p["config"], "pooling": "avg"}},
     r"config\.pooling: 'avg' is not one of"),
    ("more words than embedding rows", lambda p: {**p, "itos": p["itos"] + ["extra"]},
     r"itos: \d+ words, but config\.vocab_size is"),
    ("vocab_size beyond the embedding", lambda p: {**p, "itos": p["itos"] + ["extra"],
                                                   "config": {**p["config"], "vocab_size": len(p["itos"]) + 1}},
     r"state_dict: 'embedder\.embedding\.weight' is \(\d+, 8\), but the config implies"),
    ("a hidden size the weights do not have", lambda p: {**p, "config": {**p["config"], "hidden_size": 16}},
     r"state_dict: 'encoder\.forward_layers\.0\.weight_ih_l0' is \(32, 8\), but the config implies \(64, 8\)"),
    ("a weight missing", lambda p: {**p, "state_dict": _drop(p["state_dict"], "classifier.bias")},
     r"state_dict: no 'classifier\.bias'"),
    ("a NaN weight", lambda p: {**p, "state_dict": {**p["state_dict"],
                                                    "classifier.bias": torch.tensor([float("nan"), 0.0])}},
     r"state_dict: 'classifier\.bias' holds NaN"),
    ("unk_id past the vocabulary", lambda p: {**p, "unk_id": 10**6}, r"unk_id: 1000000 is not a word index"),
    ("an unknown truncation", lambda p: {**p, "input": {**p["input"], "truncation": "middle"}},
     r"input\.truncation: 'middle'"),
    ("a list for the params the card shows", lambda p: {**p, "info": {**p["info"], "params": [1, 2]}},
     r"info\.params: expected a dict"),
    ("a string for lowercase", lambda p: {**p, "text_config": {**p["text_config"], "lowercase": "no"}},
     r"text_config\.lowercase: expected true or false"),
    ("a tokenizer it cannot run", lambda p: {**p, "text_config": {**p["text_config"], "tokenizer": "spaces"}},
     r"text_config\.tokenizer: 'spaces' is not one of words, icu"),
    ("auto left unresolved", lambda p: {**p, "text_config": {**p["text_config"], "tokenizer": "auto"}},
     r"text_config\.tokenizer: 'auto' is not one of words, icu"),
]


@pytest.mark.parametrize("what,change,message", INCONSISTENT, ids=[c[0] for c in INCONSISTENT])
def test_an_inconsistent_checkpoint_is_one_error_naming_the_file_and_key(tiny_model_path, tmp_path, what, change,
                                                                        message):
    torch.save(change(_tiny_payload(tiny_model_path)), tmp_path / "bad.pt")
    with pytest.raises(PipelineError, match=r"bad\.pt: not a usable checkpoint: " + message) as err:
        load_checkpoint(tmp_path / "bad.pt")
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_a_small_checkpoint_asking_for_a_huge_model_allocates_nothing(tiny_model_path, tmp_path):
    """A few-KB file whose config says hidden_size 8192 (2 GB of LSTM weights): refused from the saved
    tensors' shapes before any model is built. Checked in a fresh process, by its peak memory; and the
    command-line tools that load a model (predict, export, card, serve) say so in one line, exit status 1."""
    import subprocess
    import sys

    from tests.helpers import ROOT

    payload = _tiny_payload(tiny_model_path)
    payload["config"] = {**payload["config"], "hidden_size": 8192}
    bad = tmp_path / "huge.pt"
    torch.save(payload, bad)
    assert bad.stat().st_size < 64 * 1024
    # The peak is this process's own (VmHWM): getrusage's ru_maxrss also counts the parent's memory that the
    # child had mapped before its exec, the whole pytest process when the suite has grown it past 1 GB.
    code = ("import re, sys\nfrom pipeline.checkpoint import load_checkpoint\nfrom pipeline.errors import "
            "PipelineError\ntry:\n    load_checkpoint(sys.argv[1])\nexcept PipelineError as err:\n    print(err)\n"
            "print(re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read())[1])")
    env = {**__import__("os").environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code, str(bad)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    message, peak_kib = proc.stdout.splitlines()
    assert "huge.pt: not a usable checkpoint: state_dict:" in message and "but the config implies" in message
    assert int(peak_kib) < 1_000_000, f"{int(peak_kib) // 1024} MiB at peak"
    for command in (["pipeline.cli.predict", "--model", str(bad), "a film"],
                    ["pipeline.cli.export", "--model", str(bad), "--output", str(tmp_path / "out.onnx")],
                    ["pipeline.cli.card", "--model", str(bad), "--output", str(tmp_path / "card.md")],
                    ["pipeline.cli.serve", "--model", str(bad), "--port", "0"]):
        run = subprocess.run([sys.executable, "-m", *command], capture_output=True, text=True, env=env,
                             cwd=tmp_path, timeout=300)
        errors = [line for line in run.stderr.splitlines() if not line.startswith("warning: ")]
        assert run.returncode == 1 and len(errors) == 1, (command, run.stderr[-2000:])
        assert errors[0].startswith(f"error: {bad}: not a usable checkpoint: state_dict:"), errors
