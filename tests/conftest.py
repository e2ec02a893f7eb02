"""Shared fixtures: tiny real data (from gensim's test fixtures), a tiny trained checkpoint, and
throw-away DVC projects (one fully reproduced, copied for each test that changes it).

Plain helpers (paths, params for tests, the toy training problem) are in tests/helpers.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import GENSIM_DATA, copy_of, make_project, polarity_rows, repro_and_commit, tiny_params


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """The tests' models are tiny: on one thread they train several times faster than on two, and do
    not slow to a crawl when another job holds a core (stages run in subprocesses keep their setting)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def glove_small() -> Path:
    """The first 76 lines of the real GloVe 6B 50d file."""
    return GENSIM_DATA / "test_glove.txt"


@pytest.fixture(scope="session")
def polarity_csv(tmp_path_factory) -> Path:
    import pandas as pd

    path = tmp_path_factory.mktemp("corpus") / "polarity.csv"
    pd.DataFrame(polarity_rows(), columns=["review", "sentiment"]).to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> Path:
    """A small checkpoint trained on the polarity sentences (tests/tiny_model.py); read it, never change it."""
    from tests.tiny_model import train_tiny_checkpoint

    return train_tiny_checkpoint(tmp_path_factory.mktemp("model") / "model.pt")


@pytest.fixture(scope="session")
def tiny_ckpt(tiny_model_path):
    from pipeline.checkpoint import load_checkpoint

    return load_checkpoint(tiny_model_path)


@pytest.fixture(scope="session")
def tiny_multilabel_path(tmp_path_factory) -> Path:
    """A small multi-label checkpoint (tests/tiny_model.py: labels film, long, neg, pos; thresholds chosen);
    read it, never change it."""
    from tests.tiny_model import train_tiny_multilabel_checkpoint

    return train_tiny_multilabel_checkpoint(tmp_path_factory.mktemp("multilabel") / "model.pt")


@pytest.fixture(scope="session")
def tiny_multilabel_ckpt(tiny_multilabel_path):
    from pipeline.checkpoint import load_checkpoint

    return load_checkpoint(tiny_multilabel_path)


@pytest.fixture(scope="session")
def tiny_fused_path(tiny_model_path, tmp_path_factory) -> Path:
    """The tiny checkpoint fused with a TF-IDF model fitted on the same sentences (tests/tiny_model.py:
    tiny_shipped_checkpoint, weight 0.4), as the stage ship writes it; read it, never change it."""
    from tests.tiny_model import tiny_shipped_checkpoint

    return tiny_shipped_checkpoint(tiny_model_path, tmp_path_factory.mktemp("fused") / "model.pt")


@pytest.fixture(scope="session")
def tiny_fused_ckpt(tiny_fused_path):
    from pipeline.checkpoint import load_checkpoint

    return load_checkpoint(tiny_fused_path)


@pytest.fixture
def project(tmp_path, polarity_csv, glove_small) -> Path:
    """A fresh git + DVC project of this pipeline on the tiny data, nothing run yet."""
    return make_project(tmp_path / "project", tiny_params(polarity_csv, glove_small))


@pytest.fixture(scope="session")
def reproduced(tmp_path_factory, polarity_csv, glove_small) -> Path:
    """One full `dvc repro` on the tiny data, committed; tests work on copies of it (`repo`)."""
    return repro_and_commit(make_project(tmp_path_factory.mktemp("reproduced") / "repo",
                                         tiny_params(polarity_csv, glove_small)))


@pytest.fixture
def repo(reproduced, tmp_path) -> Path:
    """A copy of the reproduced project, for one test to change."""
    return copy_of(reproduced, tmp_path)
