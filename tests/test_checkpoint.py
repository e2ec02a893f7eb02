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
