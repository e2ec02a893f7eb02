"""The second audit's bad inputs and faults (issue 16; docs/bad-inputs.md): each ends in a clear error
naming the file, line or key, or in a stated, counted policy; nothing half-written is left."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import unicodedata
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import params
from pipeline.batch_predict import predict_file
from pipeline.checkpoint import load_checkpoint
from pipeline.corpus import prepare
from pipeline.errors import PipelineError
from pipeline.files import atomic_path
from pipeline.readers import iter_jsonl
from pipeline.text import TextConfig, tokenize
from tests.helpers import ROOT, VENV_BIN, corpus_params, prepare_params, run

WORDS = ("good bad fine dull great awful neat poor grand weak sharp flat warm cold bright dim rich thin "
         "bold tame").split()


def texts(n: int, seed: int = 0) -> list[str]:
    """n different short texts."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=6)) + f" number{i}" for i in range(n)]


def prepared(tmp_path: Path, source: Path, **corpus) -> tuple[dict, dict[str, pd.DataFrame]]:
    out = tmp_path / "prepared"
    out.mkdir()
    report = prepare(source, corpus_params(source=str(source), **corpus), prepare_params(), out, workers=1)
    return report, {name: pd.read_parquet(out / f"{name}.parquet") for name in ("train", "val", "test")}


# --- silent wrong results ---------------------------------------------------------------------------


def test_integer_labels_with_a_missing_value_stay_integers(tmp_path):
    """Item 1: one NaN turns an int64 label column into float64; the classes stay '0', '1', '2', and
    drop_labels: ['0'] drops class 0."""
    n = 300
    labels = pd.array([i % 3 for i in range(n)], dtype="float64")
    labels[5] = np.nan
    source = tmp_path / "corpus.parquet"
    pd.DataFrame({"text": texts(n), "label": labels}).to_parquet(source)
    report, _ = prepared(tmp_path, source)
    assert set(report["class_counts"]) == {"0", "1", "2"}
    assert report["labels_changed"] == {"integer_from_float": n - 1}
    assert report["dropped_missing_label"] == 1
    out = tmp_path / "dropped"
    out.mkdir()
    dropped = prepare(source, corpus_params(source=str(source), drop_labels=["0"]), prepare_params(), out, 1)
    assert dropped["dropped_excluded_label"] == 100
    assert set(dropped["class_counts"]) == {"1", "2"}


def test_texts_differing_only_in_line_breaks_are_duplicates(tmp_path):
    """Item 2: a text written with LF and with CRLF is one text: one copy kept, never in two splits."""
    base = [f"{t}\nsecond line {i}" for i, t in enumerate(texts(200))]
    rows = [(t, "pos" if i % 2 else "neg") for i, t in enumerate(base)]
    rows += [(t.replace("\n", "\r\n"), label) for t, label in rows]
    source = tmp_path / "corpus.csv"
    pd.DataFrame(rows, columns=["text", "label"]).to_csv(source, index=False)
    report, splits = prepared(tmp_path, source)
    assert report["dropped_duplicate_text"] == 200
    train_tokens = {tuple(t) for t in splits["train"]["tokens"]}
    assert not any(tuple(t) in train_tokens for t in splits["test"]["tokens"])


def test_a_label_in_two_unicode_forms_is_one_class(tmp_path):
    """Item 3: 'café' composed (U+00E9) and decomposed (e + U+0301) is one class, counted."""
    composed, decomposed = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    assert composed != decomposed
    rows = [(t, [composed, decomposed, "tea"][i % 3]) for i, t in enumerate(texts(300))]
    source = tmp_path / "corpus.csv"
    pd.DataFrame(rows, columns=["text", "label"]).to_csv(source, index=False)
    report, _ = prepared(tmp_path, source)
    assert set(report["class_counts"]) == {composed, "tea"}
    assert report["class_counts"][composed] == 200
    assert report["labels_changed"] == {"unicode_normalized": 100}


@pytest.mark.parametrize("label", [{"name": "fresh"}, ["fresh", ["rotten"]], [{"name": "fresh"}]])
def test_a_json_lines_label_that_is_an_object_or_a_nested_array_is_an_error(tmp_path, label):
    """Item 4: no class named by a Python repr. (An array of strings or numbers is a set of labels:
    tests/test_multilabel_prepare.py.)"""
    source = tmp_path / "corpus.jsonl"
    source.write_text(json.dumps({"text": "a fine film", "label": "rotten"}) + "\n"
                      + json.dumps({"text": "a fine film", "label": label}) + "\n")
    with pytest.raises(PipelineError, match=r"corpus\.jsonl: line 2: label field 'label' holds a JSON (array|object)"):
        list(iter_jsonl(source, "text", "label", None))


def test_control_characters_are_never_tokens():
    """Item 9: a NUL byte or another control character inside a text is a blank."""
    assert tokenize("good\x00film\x07 \x1bbad", TextConfig()) == ["good", "film", "bad"]


# --- params read as DVC reads them ------------------------------------------------------------------


def params_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text((ROOT / "params.yaml").read_text() + text)
    return path


def test_params_are_read_with_dvcs_yaml_rules(tmp_path):
    """Item 20: `1e-3` is a number for DVC (YAML 1.2), so it is one here too."""
    text = (ROOT / "params.yaml").read_text().replace("  lr: 0.002", "  lr: 1e-3")
    path = tmp_path / "params.yaml"
    path.write_text(text)
    assert params.load("train", path).lr == 0.001


def test_a_duplicate_key_and_an_unknown_section_are_errors_in_every_stage(tmp_path):
    """Item 22: DVC refuses a duplicated key; every stage's load() refuses an unknown section."""
    text = (ROOT / "params.yaml").read_text().replace("  lr: 0.002", "  lr: 0.002\n  lr: 0.003")
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(PipelineError, match=r"params\.yaml: line \d+, column \d+: invalid YAML: .*duplicate key"):
        params.load("train", path)
    with pytest.raises(PipelineError, match=r"unknown section 'trian'"):
        params.load("corpus", params_file(tmp_path, "\ntrian:\n  lr: 1\n"))


def test_a_yaml_alias_bomb_gives_a_short_error(tmp_path):
    """Item 14: seven levels of ten aliases (10 million items) as a value: the error quotes a short prefix."""
    anchors = ["&a0 [x, x, x, x, x, x, x, x, x, x]"]
    anchors += [f"&a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 8)]
    text = (ROOT / "params.yaml").read_text()
    path = tmp_path / "params.yaml"
    path.write_text(text.replace("  embeddings: freeze_then_finetune", f"  embeddings: [{', '.join(anchors)}]"))
    started = time.monotonic()
    with pytest.raises(PipelineError, match=r"params\.yaml: 'train\.embeddings' must be one of") as error:
        params.load("train", path)
    assert len(str(error.value)) < 300, str(error.value)[:300]
    assert time.monotonic() - started < 5


# --- the model in use ---------------------------------------------------------------------------------


def test_a_checkpoint_of_garbage_never_advises_weights_only_false(tmp_path):
    """Item 21: torch's advice would run arbitrary code; the error names the file and stops there."""
    import zipfile

    bad = tmp_path / "model.pt"
    with zipfile.ZipFile(bad, "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02cos\nsystem\nq\x00.")
        archive.writestr("archive/version", "3\n")
    with pytest.raises(PipelineError) as error:
        load_checkpoint(bad)
    message = str(error.value)
    assert message.startswith(f"{bad}: cannot load the model")
    assert "weights_only" not in message and "\n" not in message


@pytest.mark.parametrize("kind", ["parquet", "csv"])
def test_batch_prediction_over_no_rows_is_an_error_and_writes_nothing(tmp_path, tiny_ckpt, kind):
    """Item 23: a 0-row Parquet file or a header-only CSV is an error, as the docs say, and no output."""
    source = tmp_path / f"empty.{kind}"
    if kind == "parquet":
        pq.write_table(pa.table({"text": pa.array([], pa.string())}), source)
    else:
        source.write_text("text,id\n")
    output = tmp_path / "out.parquet"
    with pytest.raises(PipelineError, match=rf"empty\.{kind}: the file has no rows"):
        predict_file(tiny_ckpt, source, output)
    assert not output.exists() and not list(tmp_path.glob(".out.parquet.*"))


# --- faults: signals, a dying dvc, a full disk ------------------------------------------------------


def stage_env(**extra) -> dict:
    return dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", CI="true",
                PYTHONPATH=str(ROOT), **extra)


def big_corpus(folder: Path, rows: int = 400_000) -> None:
    """A corpus that takes prepare several seconds, with its params.yaml."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    words = np.array(WORDS)
    text = [" ".join(words[rng.integers(0, len(words), 12)]) + f" n{i}" for i in range(rows)]
    pd.DataFrame({"text": text, "label": np.where(np.arange(rows) % 2, "pos", "neg")}).to_csv(
        folder / "corpus.csv", index=False)
    data = params.load_yaml(ROOT / "params.yaml")
    data["corpus"].update(download=None, source="corpus.csv", members=[], drop_labels=[], label_column="label")
    data["prepare"]["workers"] = 1
    import yaml

    (folder / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


@pytest.mark.slow
def test_sigterm_to_a_stage_removes_its_partial_outputs(tmp_path):
    """Item 10: SIGTERM (timeout, a scheduler, a container stop) is handled like Ctrl-C: the staged
    folder goes, nothing is left for git or DVC to see, exit status 143."""
    big_corpus(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.stages.prepare"], cwd=tmp_path, env=stage_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list((tmp_path / "data").glob(".prepared.*.partial/.shards/*.arrow")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert err.strip().endswith("terminated")
    assert not list(tmp_path.rglob("*.partial")) and not (tmp_path / "data" / "prepared").exists()


@pytest.mark.slow
def test_a_stage_ends_when_the_dvc_that_started_it_is_killed(tmp_path):
    """Item 11: kill -9 of `dvc repro` leaves no orphan stage to replace outputs behind dvc.lock's back."""
    big_corpus(tmp_path, rows=1_500_000)
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  prepare:\n    cmd: python -m pipeline.stages.prepare\n    deps: [corpus.csv]\n"
        "    outs: [data/prepared]\n")
    env = stage_env()
    run(["git", "init", "-q"], tmp_path)
    run(["dvc", "init", "-q"], tmp_path)
    dvc = subprocess.Popen(["dvc", "repro"], cwd=tmp_path, env={k: v for k, v in env.items() if k != "SHELL"},
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    import psutil

    deadline = time.monotonic() + 90
    stage = None
    while stage is None:
        assert dvc.poll() is None and time.monotonic() < deadline
        stage = next((p for p in psutil.Process(dvc.pid).children(recursive=True)
                      if "pipeline.stages.prepare" in p.cmdline()[-1:]), None)
        time.sleep(0.05)
    while not list((tmp_path / "data").glob(".prepared.*.partial")):
        assert stage.is_running() and time.monotonic() < deadline
        time.sleep(0.05)
    dvc.kill()
    dvc.wait()
    stage.wait(timeout=30)  # raises psutil.TimeoutExpired if the stage outlived dvc
    assert not (tmp_path / "data" / "prepared").exists()
    assert not list(tmp_path.rglob(".prepared.*.partial"))


def test_a_full_disk_is_one_line_naming_the_output(tmp_path):
    """Item 16: ENOSPC (or a file-size limit) while an output is written: one line naming it."""
    target = tmp_path / "out.bin"
    with pytest.raises(PipelineError, match=rf"{target}: cannot write the output \(no space left on the device\)"):
        with atomic_path(target) as tmp:
            raise OSError(28, os.strerror(28), str(tmp))
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_prepare_under_a_file_size_limit_fails_in_one_line(tmp_path):
    """Item 16 through the real stage: `ulimit -f` during prepare; no traceback, nothing left."""
    import resource

    big_corpus(tmp_path, rows=50_000)

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))  # the corpus is read, shards are bigger

    proc = subprocess.run([sys.executable, "-m", "pipeline.stages.prepare"], cwd=tmp_path, env=stage_env(),
                          capture_output=True, text=True, preexec_fn=limit, timeout=300)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: data/prepared: cannot write the output (file too large"), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not list(tmp_path.rglob("*.partial"))


def mount_tmpfs(path: Path, options: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.decode().strip()}): needs root")


@pytest.mark.slow
def test_a_read_only_models_folder_is_refused_before_training(tmp_path):
    """Item 17: train checks that models/ and metrics/ take files before it spends an epoch."""
    from pipeline.files import check_writable

    folder = tmp_path / "models"
    mount_tmpfs(folder, "ro,size=1m")
    try:
        with pytest.raises(PipelineError, match=rf"{folder}: cannot write there \(Read-only file system\)"):
            check_writable(folder)
        proc = subprocess.run([sys.executable, "-m", "pipeline.stages.train"], cwd=tmp_path,
                              env=stage_env(), capture_output=True, text=True, timeout=120)
        # params.yaml is not even there: the check comes first, before anything is read or trained.
        (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
        proc = subprocess.run([sys.executable, "-m", "pipeline.stages.train"], cwd=tmp_path,
                              env=stage_env(), capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1
        assert proc.stderr.strip() == "error: models: cannot write there (Read-only file system); the outputs go there"
    finally:
        subprocess.run(["umount", str(folder)])


def test_gzip_data_named_csv_is_read_as_gzip(tmp_path):
    """Item 19: compressed data is known by its magic bytes, whatever the file is called (and .zst and
    .zip names are opened by what they hold)."""
    import gzip
    import zipfile

    from pipeline.layouts import corpus_chunks

    frame = pd.DataFrame({"text": texts(30), "label": ["pos", "neg", "mid"] * 10})
    plain = frame.to_csv(index=False).encode()
    (tmp_path / "gz.csv").write_bytes(gzip.compress(plain))
    with zipfile.ZipFile(tmp_path / "one.csv.zip", "w") as archive:
        archive.writestr("inner/corpus.csv", plain)
    for name in ("gz.csv", "one.csv.zip"):
        chunks, _ = corpus_chunks(tmp_path / name, corpus_params(source=name))
        read = pd.concat(list(chunks))
        assert read["text"].tolist() == frame["text"].tolist() and read["label"].tolist() == frame["label"].tolist()


def test_evaluate_with_a_model_of_other_labels_fails_before_writing(tmp_path, tiny_model_path):
    """Item 12: the labels are checked first; the last good outputs stay, none is replaced."""
    import shutil

    (tmp_path / "models").mkdir()
    shutil.copy(tiny_model_path, tmp_path / "models" / "model.pt")
    (tmp_path / "data" / "prepared").mkdir(parents=True)
    pd.DataFrame({"text": ["a film"], "tokens": [["a", "film"]], "label": ["fresh"]}).to_parquet(
        tmp_path / "data" / "prepared" / "test.parquet")
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    (tmp_path / "metrics" / "eval").mkdir(parents=True)
    before = tmp_path / "metrics" / "eval" / "confusion.csv"
    before.write_text("actual,predicted\nlast,good\n")
    proc = subprocess.run([sys.executable, "-m", "pipeline.stages.evaluate"], cwd=tmp_path, env=stage_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: data/prepared/test.parquet: label 'fresh' is not one the model knows")
    assert before.read_text() == "actual,predicted\nlast,good\n"
    assert sorted(p.name for p in (tmp_path / "metrics").rglob("*")) == ["confusion.csv", "eval"]
