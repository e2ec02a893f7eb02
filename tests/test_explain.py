"""Explanations (pipeline.explain): integrated gradients over the embeddings, attention weights, the report of
misclassified examples, and textclf-predict --explain.

The decisive check trains a toy model where one word alone decides the label ("zap" present: yes) and
asks that word's attribution to outrank every other word's, for several encoders and poolings."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from pipeline.batching import truncate
from pipeline.checkpoint import Checkpoint
from pipeline.cli import predict
from pipeline.errors import PipelineError
from pipeline.explain import explain_texts, explain_tokens, misclassified_html, write_misclassified_report
from pipeline.inference import classify_texts
from pipeline.model import ModelConfig, TextClassifier
from pipeline.text import TextConfig, tokenize
from tests.tiny_model import MAX_TOKENS

FILLER = [f"w{i}" for i in range(12)]
ITOS = ["<pad>", "<unk>", "zap"] + FILLER


def _toy_texts(n: int, rng: np.random.Generator) -> tuple[list[list[str]], list[int]]:
    """Random filler sentences; half with "zap" somewhere in them (label 1), half without (label 0)."""
    texts, labels = [], []
    for i in range(n):
        words = list(rng.choice(FILLER, size=int(rng.integers(3, 9))))
        if i % 2:
            words.insert(int(rng.integers(0, len(words) + 1)), "zap")
        texts.append(words)
        labels.append(i % 2)
    return texts, labels


def toy_checkpoint(encoder: str, pooling: str, channels: int = 1) -> Checkpoint:
    """A model trained until "zap" alone decides: every training text right, by a wide margin."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    cfg = ModelConfig(vocab_size=len(ITOS), embedding_dim=8, num_classes=2, hidden_size=8, dropout=0.0,
                      embedding_dropout=0.0, pooling=pooling, encoder=encoder, embedding_channels=channels)
    model = TextClassifier(cfg)
    ckpt = Checkpoint(model, ITOS, ["no", "yes"], TextConfig(), 1, {}, None, "head")
    texts, labels = _toy_texts(200, rng)
    from pipeline.batching import pad
    ids, lengths = pad([np.array([ITOS.index(w) for w in t]) for t in texts])
    ids, lengths, ys = torch.from_numpy(ids), torch.from_numpy(lengths), torch.tensor(labels)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.03)
    for _ in range(300):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(ids, lengths), ys)
        loss.backward()
        optimizer.step()
        if loss.item() < 0.01:
            break
    model.eval()
    probs = classify_texts(ckpt, [" ".join(t) for t in texts])
    assert (probs.argmax(axis=1) == np.array(labels)).all(), "the toy model did not learn its one rule"
    return ckpt


@pytest.mark.parametrize("encoder, pooling, channels", [("lstm", "attention", 1), ("lstm", "max", 1),
                                                        ("gru", "last", 1), ("cnn", "mean", 1), ("lstm", "max", 2)])
def test_the_deciding_word_outranks_every_other_word(encoder, pooling, channels):
    ckpt = toy_checkpoint(encoder, pooling, channels)
    texts, _ = _toy_texts(40, np.random.default_rng(1))
    with_zap = [t for t in texts if "zap" in t]
    explanations = explain_tokens(ckpt, with_zap)
    for tokens, explanation in zip(with_zap, explanations):
        assert explanation.tokens == tokens and ckpt.labels[explanation.target] == "yes"
        attributions = np.array(explanation.attributions)
        zap = tokens.index("zap")
        assert attributions[zap] > 0, (tokens, attributions)
        others = np.delete(np.abs(attributions), zap)
        assert attributions[zap] > others.max(), (tokens, attributions)
        if pooling == "attention":
            assert len(explanation.attention) == len(tokens) and sum(explanation.attention) == pytest.approx(1, abs=1e-5)
        else:
            assert explanation.attention is None


def test_attributions_add_up_to_the_change_from_the_all_padding_baseline(tiny_ckpt):
    """Completeness: the attributions of a text sum to p(text) - p(all padding) for the explained class."""
    texts = ["a gripping , beautifully acted film", "dull and far too long", "one of the year's best movies"]
    explanations = explain_texts(tiny_ckpt, texts, steps=64)
    for text, explanation in zip(texts, explanations):
        n = len(explanation.tokens)
        with torch.no_grad():
            baseline = torch.softmax(tiny_ckpt.model(torch.zeros(1, n, dtype=torch.long), torch.tensor([n])), -1)
        change = explanation.probabilities[explanation.target] - float(baseline[0, explanation.target])
        assert sum(explanation.attributions) == pytest.approx(change, abs=max(0.01, 2 * abs(explanation.delta)))
        assert abs(explanation.delta) < 0.01


def test_probabilities_are_the_models_and_the_other_class_mirrors_the_first(tiny_ckpt):
    texts = ["a gripping , beautifully acted film", "dull", "zxqv wvut"]
    toward_first = explain_texts(tiny_ckpt, texts, targets=[0, 0, 0])
    toward_second = explain_texts(tiny_ckpt, texts, targets=[1, 1, 1])
    expected = classify_texts(tiny_ckpt, texts)
    for i, (first, second) in enumerate(zip(toward_first, toward_second)):
        np.testing.assert_allclose(first.probabilities, expected[i], atol=1e-5)
        # Two classes: p(second) = 1 - p(first), so each word's push toward one is its push away from the other.
        np.testing.assert_allclose(second.attributions, -np.array(first.attributions), atol=1e-5)
    assert all(x.unknown == [True, True] for x in toward_first[2:])  # words the vocabulary lacks are flagged


def test_the_tokens_are_those_the_model_read(tiny_ckpt):
    long_text = " ".join(f"word{i}" for i in range(30))
    tokens = tokenize(long_text, tiny_ckpt.text_config)
    long, empty = explain_texts(tiny_ckpt, [long_text, "   "])
    assert long.tokens == list(truncate(tokens, MAX_TOKENS, "head+tail")) and len(long.attributions) == MAX_TOKENS
    assert long.dropped == 30 - MAX_TOKENS and long.cut == MAX_TOKENS // 4  # head+tail: a quarter, then the end
    assert long.tokens[long.cut - 1] == "word2" and long.tokens[long.cut] == f"word{30 - (MAX_TOKENS - 3)}"
    assert empty.tokens == empty.attributions == empty.attention == [] and empty.dropped == 0
    as_dict = long.to_dict(tiny_ckpt.labels)
    assert json.loads(json.dumps(as_dict)) == as_dict
    assert as_dict["dropped_tokens"] == 18 and as_dict["target"] in tiny_ckpt.labels


def test_the_misclassified_report_is_one_page_in_the_order_given(tiny_ckpt, tmp_path):
    rows = [{"text": "<script>alert(1)</script> dull film", "label": "pos", "predicted": "neg", "confidence": 0.91},
            {"text": "a gripping film", "label": "neg", "predicted": "pos", "confidence": 0.83,
             "tokens": np.array(["a", "gripping", "film"])},
            {"text": "fine", "label": "pos", "predicted": "neg", "confidence": 0.6}]
    import pandas as pd

    path = tmp_path / "misclassified.html"
    assert write_misclassified_report(tiny_ckpt, pd.DataFrame(rows), path, limit=2) == 2
    page = path.read_text(encoding="utf-8")
    assert "The 2 most confident of 3" in page
    assert "<script" not in page and "&lt;script&gt;" in page  # texts are escaped; the page runs nothing
    assert not re.search(r"""(src|href)\s*=\s*["']?https?:""", page)  # and loads nothing
    body = page[page.index("<tbody>"):]
    assert body.index("dull") < body.index("gripping") and ">fine<" not in body
    assert re.search(r'<span class="[pn]" style="--a:[0-9.]+;--w:[0-9.]+" title="[+-]', body)  # attention: --w
    assert "All 0" in misclassified_html(tiny_ckpt, [])


def test_predict_explain_prints_the_words_and_json(tiny_model_path, capsys):
    predict.main(["--model", str(tiny_model_path), "--explain", "a gripping film", "dull and far too long"])
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("\ta gripping film") and out[1].startswith("  for ")
    assert any(line.startswith("  attention: ") for line in out)  # the tiny model pools by attention
    predict.main(["--model", str(tiny_model_path), "--explain", "--json", "a gripping film"])
    row = json.loads(capsys.readouterr().out)
    assert row["explanation"]["tokens"] == ["a", "gripping", "film"]
    assert row["explanation"]["target"] == row["label"] and len(row["explanation"]["attributions"]) == 3
    with pytest.raises(PipelineError, match="--explain"):
        predict.main(["--model", str(tiny_model_path), "--explain", "--input", "x.csv", "--output", "y.csv"])


@pytest.mark.slow
def test_the_evaluate_stage_writes_the_report(reproduced):
    """`dvc repro` on the tiny data: the evaluate stage's page has one row per misclassified example."""
    import pandas as pd

    wrong = pd.read_csv(reproduced / "metrics/eval/misclassified.csv")
    page = (reproduced / "metrics/eval/misclassified.html").read_text(encoding="utf-8")
    assert page.count("<tr><td class=num>") == len(wrong) > 0
    assert f"All {len(wrong)} misclassified" in page


def test_the_multi_label_misclassified_report_explains_each_wrong_label(tiny_multilabel_ckpt, tmp_path):
    """The rows as the evaluate stage writes them to misclassified.csv (label sets as " | "-joined strings, ""
    for none): each label missed or wrongly given is explained by its own probability's attributions."""
    import pandas as pd

    from pipeline.explain import explain_label_sets

    ckpt = tiny_multilabel_ckpt
    text = "a gripping , beautifully acted film"  # the model gives it film and pos
    rows = [{"text": text, "label": "long | neg | pos", "predicted": "film | pos", "confidence": 0.9},
            {"text": "everything is off .", "label": "neg", "predicted": "", "confidence": 0.8}]
    path = tmp_path / "misclassified.html"
    assert write_misclassified_report(ckpt, pd.DataFrame(rows), path) == 2
    page = path.read_text(encoding="utf-8")
    assert re.findall(r"<b>(missed|wrongly given) ([^<]*)</b>", page) == [
        ("missed", "long"), ("missed", "neg"), ("wrongly given", "film"), ("missed", "neg")]
    assert "<i>(none)</i>" in page and "All 2 test texts not given exactly their labels" in page
    expected = explain_label_sets(ckpt, [tokenize(text, ckpt.text_config)],
                                  [[ckpt.labels.index(n) for n in ("long", "neg", "film")]])[0]
    titles = [float(t) for t in re.findall(r'title="([+-][0-9.]+)', page)]
    first = [round(a, 4) for e in expected for a in e.attributions]
    assert titles[:len(first)] == pytest.approx(first, abs=1e-4)
    assert expected[0].attributions != expected[1].attributions  # each label its own attributions
    # The sets themselves (what the evaluate stage passes beside the strings) win over the strings.
    with_sets = misclassified_html(ckpt, [{**rows[1], "label_set": ["film"], "predicted_set": []}])
    assert re.findall(r"<b>(missed|wrongly given) ([^<]*)</b>", with_sets) == [("missed", "film")]


def test_the_multi_label_evaluate_stage_writes_its_misclassified_page(tmp_path, tiny_multilabel_ckpt, monkeypatch):
    import pandas as pd

    from pipeline.stages.evaluate import evaluate_multi_label
    from tests.tiny_model import multilabel_rows

    rows = multilabel_rows()[:70]
    test = pd.DataFrame({"text": [t for t, _ in rows], "tokens": [tokenize(t, TextConfig()) for t, _ in rows],
                         "label": [names for _, names in rows]})
    monkeypatch.chdir(tmp_path)
    evaluate_multi_label(tiny_multilabel_ckpt, test, 32)
    wrong = pd.read_csv(tmp_path / "metrics/eval/misclassified.csv", keep_default_na=False)
    page = (tmp_path / "metrics/eval/misclassified.html").read_text(encoding="utf-8")
    assert len(wrong) > 0 and f"All {len(wrong)} test texts" in page
    mistakes = sum(len((set(a.split(" | ")) ^ set(p.split(" | "))) - {""})
                   for a, p in zip(wrong["label"], wrong["predicted"]))
    assert len(re.findall(r"<b>(missed|wrongly given) ", page)) == mistakes
