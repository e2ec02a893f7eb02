"""Shared fixtures: tiny real data (from gensim's test fixtures) and a throw-away DVC project."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import gensim
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
GENSIM_DATA = Path(gensim.__file__).parent / "test" / "test_data"
VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def glove_small() -> Path:
    """The first 76 lines of the real GloVe 6B 50d file."""
    return GENSIM_DATA / "test_glove.txt"


def polarity_rows() -> list[tuple[str, str]]:
    """200 real movie-review sentences (Pang & Lee), labelled pos/neg."""
    rows = []
    for line in (GENSIM_DATA / "pang_lee_polarity.cor").read_text(encoding="cp1252").splitlines():  # the original MR files are Windows-1252
        label, _, text = line.partition(" ")
        rows.append((text.strip(), label.removeprefix("__label__")))
    return rows


@pytest.fixture(scope="session")
def polarity_csv(tmp_path_factory) -> Path:
    import pandas as pd

    path = tmp_path_factory.mktemp("corpus") / "polarity.csv"
    pd.DataFrame(polarity_rows(), columns=["review", "sentiment"]).to_csv(path, index=False)
    return path


def tiny_params(corpus: Path, embeddings: Path) -> dict:
    """The project's params.yaml, pointed at tiny local data and shrunk to train in seconds."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["embeddings"].update(download=None, source=str(embeddings), members=[], sha256=None)
    params["corpus"].update(download=None, source=str(corpus), members=[], text_column="review",
                            label_column="sentiment", drop_labels=[])
    params["prepare"].update(val_size=0.2, test_size=0.2)
    params["vocab"].update(min_token_coverage=0.2)  # the fixture's 76 GloVe words cover 31% of the tokens
    params["train"].update(hidden_size=16, epochs=2, patience=2, min_steps=0, batch_size=16, log_every_steps=3)
    params["baseline"].update(C=[1.0])
    return params


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", CI="true",
               DVC_NO_ANALYTICS="1", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.com")
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}")
    return proc


def make_project(dest: Path, params: dict) -> Path:
    """A fresh git + DVC repository holding this project's pipeline and the given params."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, dest / name)
    shutil.copytree(ROOT / "pipeline", dest / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    (dest / ".dvc").mkdir()
    shutil.copy(ROOT / ".dvc" / "config", dest / ".dvc" / "config")
    shutil.copy(ROOT / ".dvc" / ".gitignore", dest / ".dvc" / ".gitignore")
    shutil.copytree(ROOT / ".dvc" / "plots", dest / ".dvc" / "plots")  # vega templates and the offline page
    (dest / ".gitignore").write_text("__pycache__/\n")
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q", "-b", "main"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-q", "-m", "pipeline"], dest)
    return dest


@pytest.fixture
def project(tmp_path, polarity_csv, glove_small) -> Path:
    return make_project(tmp_path / "project", tiny_params(polarity_csv, glove_small))
