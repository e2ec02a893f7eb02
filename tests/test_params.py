"""params.yaml validation (pipeline.params): every key checked, errors naming the file and the key."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from pipeline import params
from pipeline.errors import PipelineError
from pipeline.model import ENCODERS
from tests.helpers import ROOT


def test_the_shipped_params_file_is_valid():
    sections = params.load_all(ROOT / "params.yaml")
    assert set(sections) == set(params.SECTIONS) and sections["prepare"].seed == 42
    assert sections["train"].encoder in ENCODERS  # params.py leaves the name to the model (no torch there)


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
    (lambda d: d["corpus"].update(encoding="utf9"),
     r"'corpus\.encoding': 'utf9' is not a text encoding Python knows \(e\.g\. utf-8"),
    (lambda d: d["predict"].update(encoding="xyz"), r"'predict\.encoding': 'xyz' is not a text encoding Python knows"),
    (lambda d: d["train"].update(threads=0), r"'train\.threads' must be >= 1"),
    (lambda d: d["train"].update(precision="fp16"), r"'train\.precision' must be one of 'auto', 'fp32', 'bf16'"),
    (lambda d: d["baseline"].update(hash_bits=40), r"'baseline\.hash_bits' must be >= 10 and <= 28"),
    # numbers: finite, in range, integers within what numpy and torch take
    (lambda d: d["train"].update(lr=float("inf")), r"'train\.lr' must be a finite number, got inf$"),
    (lambda d: d["train"].update(grad_clip=float("nan")), r"'train\.grad_clip' must be a finite number, got nan$"),
    (lambda d: d["train"].update(weight_decay=float("-inf")), r"'train\.weight_decay' must be a finite number"),
    (lambda d: d["train"].update(lr=10**400), r"'train\.lr' must be a finite number, got 1000"),
    (lambda d: d["prepare"].update(val_size=float("nan")), r"'prepare\.val_size' must be a finite number, got nan$"),
    (lambda d: d["vocab"].update(min_token_coverage=float("nan")), r"'vocab\.min_token_coverage' must be a finite"),
    (lambda d: d["baseline"].update(C=[1.0, float("inf")]), r"'baseline\.C\[1\]' must be a finite number, got inf$"),
    (lambda d: d["baseline"].update(C=[0.5, 0]), r"'baseline\.C\[1\]' must be > 0, got 0\.0$"),
    (lambda d: d["baseline"].update(C=[]), r"'baseline\.C' must hold at least one value, got \[\]$"),
    (lambda d: d["train"].update(seed=2**70), r"'train\.seed' must be >= 0 and <= 4294967295, got 1180591620717411303424$"),
    (lambda d: d["prepare"].update(seed=-1), r"'prepare\.seed' must be >= 0 and <= 4294967295, got -1$"),
    (lambda d: d["domain_vectors"].update(seed=2**32), r"'domain_vectors\.seed' must be >= 0 and <= 4294967295"),
    (lambda d: d["vocab"].update(seed=2**64), r"'vocab\.seed' must be >= 0 and <= 4294967295"),
    (lambda d: d["train"].update(batch_size=2**70), r"'train\.batch_size' must be >= 1 and <= 2147483647, got 118"),
    (lambda d: d["baseline"].update(chunk_rows=2**63), r"'baseline\.chunk_rows' must be >= 1 and <= 2147483647"),
    (lambda d: d["train"].update(threads=10**6), r"'train\.threads' must be >= 1 and <= 1024, got 1000000$"),
    (lambda d: d["train"].update(processes=5000), r"'train\.processes' must be >= 1 and <= 1024"),
    # nonsensical combinations: one column as both the text and the label made each text its own class
    (lambda d: d["corpus"].update(label_column=d["corpus"]["text_column"]),
     r"'corpus\.text_column' and 'corpus\.label_column' both name the column 'text': each names a different"),
    (lambda d: d["corpus"].update(split_column="category"),
     r"'corpus\.label_column' and 'corpus\.split_column' both name the column 'category'"),
    (lambda d: d["corpus"].update(text_column=" "), r"'corpus\.text_column' is ' ': name the column"),
    # a label separator is a few characters that can separate labels
    (lambda d: d["corpus"].update(task="multi"), r"'corpus\.task' must be one of 'auto', 'single_label', 'multi_label'"),
    (lambda d: d["corpus"].update(label_separator=""), r"'corpus\.label_separator' is '': expected a few characters"),
    (lambda d: d["corpus"].update(label_separator="  "), r"'corpus\.label_separator' is '  ': expected"),
    (lambda d: d["corpus"].update(label_separator="|\n"), r"'corpus\.label_separator' is '\|\\n': expected"),
    (lambda d: d["corpus"].update(label_separator="-" * 9), r"'corpus\.label_separator' is '-{9}': expected"),
    (lambda d: d["corpus"].update(label_separator=1), r"'corpus\.label_separator' must be a string or null"),
    # what the ship stage writes to models/model.pt
    (lambda d: d["ship"].update(model="fusion"), r"'ship\.model' must be one of 'lstm', 'best', got 'fusion'"),
    (lambda d: d["ship"].pop("model"), r"missing key 'ship\.model'"),
])
def test_bad_params_name_the_file_and_key(tmp_path, mutate, message):
    path = _write(tmp_path, mutate)
    with pytest.raises(PipelineError, match=message) as err:
        params.load_all(path)
    assert str(err.value).startswith(f"{path}: ")


def test_a_url_as_source_points_to_download():
    src = params.SourceParams(download=None, members=[], sha256=None, source="https://example.org/c.csv")
    with pytest.raises(PipelineError, match=r"'corpus\.source' is 'https://example\.org/c\.csv'.*'corpus\.download: https"):
        params.check_local_source("corpus", src)
    params.check_local_source("corpus", dataclasses.replace(src, source="data/my.csv"))


def test_every_float_is_finite_and_every_int_bounded_in_every_section(tmp_path):
    """The whole class, not the reported keys: every number-typed key of every section refuses NaN and
    infinities, and every integer key refuses 2**70, each with the key named."""
    import typing

    for name, cls in params.SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            args = typing.get_args(hints[f.name]) or (hints[f.name],)
            item = args[0] if typing.get_origin(hints[f.name]) is list else None
            bad = []
            if float in args or item is float:
                bad += [float("nan"), float("inf"), float("-inf")]
            if int in args:
                bad += [2**70, -(2**70)]
            for value in bad:
                path = _write(tmp_path, lambda d: d[name].update({f.name: [value] if item else value}))
                with pytest.raises(PipelineError, match=rf"'{name}\.{f.name}(\[0\])?' must be"):
                    params.load_all(path)


def test_integers_are_accepted_where_numbers_are_asked(tmp_path):
    path = _write(tmp_path, lambda d: d["train"].update(lr=1))
    assert params.load("train", path).lr == 1.0 and isinstance(params.load("train", path).lr, float)


def test_invalid_yaml_reports_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  lr: [1,\n")
    with pytest.raises(PipelineError, match=r"params\.yaml: line \d+, column \d+: invalid YAML"):
        params.load("train", path)


def test_several_text_columns_are_a_list_of_different_names():
    from pipeline.columns import check_corpus_columns

    base = {"text_column": ["title", "body"], "label_column": "topics", "split_column": None, "label_separator": None}
    check_corpus_columns(base, "params.yaml")
    for text, message in [([], r"'corpus\.text_column' is an empty list"),
                          (["title", "title"], r"'corpus\.text_column' and 'corpus\.text_column' both name the column 'title'"),
                          (["title", "topics"], r"'corpus\.text_column' and 'corpus\.label_column' both name the column 'topics'"),
                          (["title", " "], r"'corpus\.text_column' is ' ': name the column")]:
        with pytest.raises(PipelineError, match=message):
            check_corpus_columns({**base, "text_column": text}, "params.yaml")
