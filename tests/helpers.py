"""Plain helpers the tests share (fixtures are in conftest.py): paths, tiny real data, throw-away DVC
projects, params built for tests, a toy training problem, and the whole-corpus views of the prepare
library that only tests need (a corpus read at once, cleaned at once, split at once)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import gensim
import numpy as np
import pandas as pd
import yaml

from pipeline import params
from pipeline.corpus import (SPLIT_CODE, SPLITS, CorpusFacts, canonical_labels, check_val_test_sizes, final_splits,
                             given_split_codes, hashed_split_codes, select_rows, text_hash_unit, tokenize_chunk)
from pipeline.layouts import corpus_chunks
from pipeline.readers import CHUNK_ROWS
from pipeline.text import TextConfig

ROOT = Path(__file__).resolve().parents[1]
GENSIM_DATA = Path(gensim.__file__).parent / "test" / "test_data"
VENV_BIN = Path(sys.executable).parent


# --- tiny real data ---------------------------------------------------------------------------------


def polarity_rows() -> list[tuple[str, str]]:
    """200 real movie-review sentences (Pang & Lee), labelled pos/neg."""
    rows = []
    for line in (GENSIM_DATA / "pang_lee_polarity.cor").read_text(encoding="cp1252").splitlines():  # the original MR files are Windows-1252
        label, _, text = line.partition(" ")
        rows.append((text.strip(), label.removeprefix("__label__")))
    return rows


# --- throw-away DVC projects ------------------------------------------------------------------------


def tiny_params(corpus: Path, embeddings: Path) -> dict:
    """The project's params.yaml, pointed at tiny local data and shrunk to train in seconds."""
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["embeddings"].update(download=None, source=str(embeddings), members=[], sha256=None)
    data["corpus"].update(download=None, source=str(corpus), members=[], text_column="review",
                          label_column="sentiment", drop_labels=[])
    data["prepare"].update(val_size=0.2, test_size=0.2)
    data["vocab"].update(min_token_coverage=0.2)  # the fixture's 76 GloVe words cover 31% of the tokens
    data["train"].update(hidden_size=16, epochs=2, patience=2, min_steps=0, batch_size=16, log_every_steps=3)
    data["baseline"].update(C=[1.0])
    return data


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", CI="true",
               DVC_NO_ANALYTICS="1", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.com")
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}")
    return proc


def make_project(dest: Path, project_params: dict) -> Path:
    """A fresh git + DVC repository holding this project's pipeline and the given params."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, dest / name)
    shutil.copytree(ROOT / "pipeline", dest / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "data/unlabelled", dest / "data/unlabelled")  # the default domain_vectors.unlabelled
    (dest / ".dvc").mkdir()
    shutil.copy(ROOT / ".dvc" / "config", dest / ".dvc" / "config")
    shutil.copy(ROOT / ".dvc" / ".gitignore", dest / ".dvc" / ".gitignore")
    shutil.copytree(ROOT / ".dvc" / "plots", dest / ".dvc" / "plots")  # vega templates and the offline page
    (dest / ".gitignore").write_text("__pycache__/\n")
    (dest / "params.yaml").write_text(yaml.safe_dump(project_params, sort_keys=False))
    run(["git", "init", "-q", "-b", "main"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-q", "-m", "pipeline"], dest)
    return dest


ALL_STAGES = {"download_embeddings", "download_corpus", "prepare", "domain_vectors", "vocab", "train", "evaluate", "baseline",
              "ship", "predict", "card"}


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def set_param(repo: Path, section: str, key: str, value) -> None:
    data = yaml.safe_load((repo / "params.yaml").read_text())
    data[section][key] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


def repro_and_commit(repo: Path) -> Path:
    out = run(["dvc", "repro"], repo).stdout
    assert stages_run(out) == ALL_STAGES, out
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", "repro"], repo)
    return repo


def copy_of(repo: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "repo"
    shutil.copytree(repo, dest, symlinks=True)
    return dest


# --- params for tests -------------------------------------------------------------------------------


def corpus_params(**over) -> params.CorpusParams:
    base = dict(download=None, members=[], sha256=None, source="unused", format="auto", encoding="utf-8",
                header=True, text_column="text", label_column="label", split_column=None, drop_labels=[],
                label_variants="error")
    return params.CorpusParams(**{**base, **over})


def prepare_params(**over) -> params.PrepareParams:
    base = dict(lowercase=True, strip_html=True, strip_urls=True, numbers="keep", tokenizer="auto", drop_duplicates=True,
                val_size=0.2, test_size=0.2, seed=3, workers=1)
    return params.PrepareParams(**{**base, **over})


def train_params(**over) -> params.TrainParams:
    """The shipped train section, shrunk for the toy problem (a small model, a few epochs)."""
    tp = params.load("train", ROOT / "params.yaml")
    return dataclasses.replace(tp, **{"hidden_size": 16, "epochs": 6, "patience": 6, "min_steps": 0, "batch_size": 16,
                                      "embeddings": "random", "lr": 0.01, "lr_schedule": "constant",
                                      "warmup_steps": 0, "word_dropout": 0.0, "class_weights": "none", **over})


# --- the prepare library, a whole corpus at once ------------------------------------------------------


def read_corpus(source: Path, c: params.CorpusParams, chunk_rows: int = CHUNK_ROWS) -> tuple[pd.DataFrame, str]:
    """The whole corpus at once (corpus_chunks, joined): rows of text, label and split; and its layout."""
    chunks, layout = corpus_chunks(source, c, chunk_rows)
    parts = list(chunks)
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        {c: [] for c in ("text", "label", "split")}, dtype=object)
    return frame, layout


def clean_corpus(df: pd.DataFrame, cfg: TextConfig, drop_labels: list[str], drop_duplicates: bool,
                 source: str = "corpus", label_variants: str = "error") -> tuple[pd.DataFrame, dict]:
    """The prepare stage's cleaning on one in-memory frame: the kept rows (text, tokens, label, the
    corpus's own split) and the count of each reason for dropping."""
    if "split" not in df:
        df = df.assign(split=None)
    table, facts = tokenize_chunk(df, cfg, seed=0, val_size=0.1, test_size=0.1)
    rows = CorpusFacts.join([facts])
    canonical = canonical_labels(rows, label_variants, source)
    keep, row_class, names, report = select_rows(rows, canonical, drop_labels, drop_duplicates, source)
    idx = np.flatnonzero(keep)
    out = pd.DataFrame({"text": table.column("text").take(idx).to_pylist(),
                        "tokens": table.column("tokens").take(idx).to_pylist(),
                        "label": [names[c] for c in row_class[idx]],
                        "split": df["split"].to_numpy()[idx]})
    return out, report


def assign_splits(df: pd.DataFrame, val_size: float, test_size: float, seed: int) -> tuple[pd.Series, dict]:
    """Each row's split name (corpus.final_splits) for an in-memory frame of text and split."""
    check_val_test_sizes(val_size, test_size)
    u = text_hash_unit(df["text"].astype(str).tolist(), seed)
    split, info = final_splits(given_split_codes(df["split"]), hashed_split_codes(u, val_size, test_size),
                               u < val_size, np.ones(len(df), dtype=bool))
    return pd.Series(np.array(list(SPLIT_CODE))[split], index=df.index), info


def by_split(labels: pd.Series, split: pd.Series) -> pd.DataFrame:
    """Rows per class (index) and split (columns train, val, test), as corpus.check_classes reads them."""
    return pd.crosstab(labels, split).reindex(columns=list(SPLITS), fill_value=0)


def count_tokens(token_lists) -> Counter:
    """Token counts of token lists held in memory (what vocabulary.count_split_tokens counts in chunks)."""
    counts: Counter = Counter()
    for tokens in token_lists:
        counts.update(tokens)
    return counts


# --- a toy training problem -------------------------------------------------------------------------


def toy_problem(n: int = 240, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    """Label is 1 iff token 3 appears: learnable only by reading the sequence, whatever its length."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for _ in range(n):
        length = int(rng.integers(2, 25))
        seq = rng.integers(4, 20, size=length)
        label = int(rng.random() < 0.5)
        if label:
            seq[rng.integers(0, length)] = 3
        xs.append(seq.astype(np.int64))
        ys.append(label)
    return xs, np.array(ys)


def toy_matrix() -> np.ndarray:
    """Embeddings for the toy problem's 20 token ids."""
    return np.random.default_rng(0).normal(size=(20, 8)).astype(np.float32)


def cpu_plan(tp: params.TrainParams, train_sequences):
    """The training plan of `tp` on the CPU (whatever train.device says) for these training sequences."""
    from pipeline.plan import make_plan

    return make_plan(dataclasses.replace(tp, device="cpu"), [len(s) for s in train_sequences])


def fit_toy(tp: params.TrainParams, hooks=None, resume=None, seed: int | None = None):
    """A fresh model (seeded by tp.seed, or `seed`) trained on the CPU on the toy problem's first 180
    examples and validated on the other 60."""
    from pipeline.training import build_model, fit, set_determinism

    set_determinism(tp.seed if seed is None else seed)
    model = build_model(tp, toy_matrix(), 2)
    xs, ys = toy_problem()
    return fit(model, cpu_plan(tp, xs[:180]), ((xs[:180], ys[:180]), (xs[180:], ys[180:])), hooks, resume)


@contextlib.contextmanager
def s3_server(monkeypatch):
    """A real S3-protocol server (moto) on a free port of 127.0.0.1, with test credentials in the
    environment; yields its endpoint URL. Create a bucket before using it."""
    from moto.server import ThreadedMotoServer

    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
