"""params.yaml validation and the tokenizer."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from pipeline import params as P
from pipeline.common import PipelineError
from pipeline.text import TextConfig, tokenize
from tests.conftest import ROOT


def test_the_shipped_params_file_is_valid():
    sections = P.load_all(ROOT / "params.yaml")
    assert sections["train"].lr > 0 and sections["prepare"].seed == 42


def _write(tmp_path, mutate):
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    mutate(data)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["train"].update(lrr=0.1), r"unknown key 'train\.lrr'"),
    (lambda d: d["train"].update(lr="fast"), r"'train\.lr' must be a number, got 'fast' \(str\)"),
    (lambda d: d["train"].update(epochs=2.5), r"'train\.epochs' must be an integer"),
    (lambda d: d["train"].update(bidirectional="yes"), r"'train\.bidirectional' must be true/false"),
    (lambda d: d["train"].update(pooling="median"), r"'train\.pooling' must be one of 'last', 'max'"),
    (lambda d: d["train"].update(dropout=1.5), r"'train\.dropout' must be >= 0 and < 1, got 1\.5"),
    (lambda d: d["vocab"].pop("min_freq"), r"missing key 'vocab\.min_freq'"),
    (lambda d: d["corpus"].update(drop_labels="plot"), r"'corpus\.drop_labels' must be a list of a string"),
    (lambda d: d["train"].update(max_tokens="all"), r"'train\.max_tokens' must be one of 'auto' or an integer"),
    (lambda d: d["train"].update(max_tokens=10**6), r"'train\.max_tokens' must be >= 1 and <= 10000"),
    (lambda d: d["corpus"].update(encoding="utf9"), r"'corpus\.encoding' is 'utf9', not a text encoding"),
    (lambda d: d["train"].update(threads=0), r"'train\.threads' must be >= 1"),
    (lambda d: d["baseline"].update(hash_bits=40), r"'baseline\.hash_bits' must be >= 10 and <= 28"),
])
def test_bad_params_name_the_file_and_key(tmp_path, mutate, message):
    path = _write(tmp_path, mutate)
    with pytest.raises(PipelineError, match=message) as err:
        P.load_all(path)
    assert str(path) in str(err.value)


def test_a_url_as_source_points_to_download():
    src = P.SourceParams(download=None, members=[], sha256=None, source="https://example.org/c.csv")
    with pytest.raises(PipelineError, match=r"'corpus\.source' is 'https://example\.org/c\.csv'.*'corpus\.download: https"):
        P.check_local_source("corpus", src)
    P.check_local_source("corpus", dataclasses.replace(src, source="data/my.csv"))


def test_integers_are_accepted_where_numbers_are_asked(tmp_path):
    path = _write(tmp_path, lambda d: d["train"].update(lr=1))
    assert P.load("train", path).lr == 1.0 and isinstance(P.load("train", path).lr, float)


def test_invalid_yaml_reports_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  lr: [1,\n")
    with pytest.raises(PipelineError, match=r"params\.yaml: line \d+, column \d+: invalid YAML"):
        P.load("train", path)


def test_tokenizer_splits_clitics_like_the_embedding_corpora():
    cfg = TextConfig()
    assert tokenize("Don't miss the film's <b>well-made</b> finale!", cfg) == [
        "do", "n't", "miss", "the", "film", "'s", "well-made", "finale", "!"]


def test_tokenizer_options():
    text = "See https://example.com for 3.5 STARS in the 1960s..."
    assert tokenize(text, TextConfig()) == ["see", "for", "3.5", "stars", "in", "the", "1960s", "..."]
    assert tokenize(text, TextConfig(numbers="token", lowercase=False))[2:4] == ["<num>", "STARS"]
    assert "3.5" not in tokenize(text, TextConfig(numbers="drop"))
    assert tokenize(text, TextConfig(strip_urls=False))[1] == "https"


def test_typographic_quotes_and_dashes_give_the_plain_tokens():
    curly = "The film\u2019s best scene isn\u2019t enough \u2014 \u201cdull\u201d\u2026 \uff21\u00a0\ufb01ne"
    straight = "The film's best scene isn't enough -- \"dull\"... A fine"
    assert tokenize(curly, TextConfig()) == tokenize(straight, TextConfig()) == [
        "the", "film", "'s", "best", "scene", "is", "n't", "enough", "--", '"', "dull", '"', "...", "a", "fine"]
    assert tokenize("don&rsquo;t", TextConfig()) == ["do", "n't"]


def test_truncation_strategies():
    from pipeline.data import auto_max_tokens, truncate

    tokens = list(range(10))
    assert truncate(tokens, 4, "head") == [0, 1, 2, 3]
    assert truncate(tokens, 4, "tail") == [6, 7, 8, 9]
    assert truncate(tokens, 8, "head+tail") == [0, 1, 5, 6, 7, 8, 9, 10][:2] + [4, 5, 6, 7, 8, 9]
    assert truncate(tokens, 20, "head+tail") == tokens
    assert auto_max_tokens(list(range(1, 1001)), floor=128, cap=800) == 800
    assert auto_max_tokens(list(range(1, 501)), floor=128, cap=800) == 476
    assert auto_max_tokens([20] * 10, floor=128, cap=800) == 128
