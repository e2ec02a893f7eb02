"""benchmarks/peers.py's preparation for the peers, on a corpus and vectors unlike the built-in ones:
labels with spaces and accents, word2vec-format vectors of another dimension. (The peers themselves,
flair and fastText, live in their own environment: `make peers`.)"""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from gensim.models import KeyedVectors
from ruamel.yaml import YAML

from benchmarks import peers
from pipeline.errors import PipelineError

ROOT = Path(__file__).resolve().parent.parent
LABELS = ["sci fi", "négatif", "a\tb"]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A checkout's outputs as the pipeline leaves them: params.yaml naming the vectors, prepared splits."""
    work = tmp_path / "work"
    (work / "data/prepared").mkdir(parents=True)
    vectors = work / "vectors.txt"
    words = ["alpha", "beta", "gamma", "delta"]
    rng = np.random.default_rng(0)
    table = {w: rng.normal(size=7).astype(np.float32) for w in words}
    # word2vec text format: a "count dim" header; "Gamma" is only reachable through the lowercase fallback
    vectors.write_text(f"{len(words)} 7\n" + "".join(
        f"{w} " + " ".join(f"{x:.6f}" for x in v) + "\n" for w, v in table.items()), encoding="utf-8")
    yaml = YAML()
    params = yaml.load((ROOT / "params.yaml").read_text())
    params["embeddings"]["source"] = "vectors.txt"  # relative: to the checkout, as DVC runs the stages
    params["embeddings"]["download"] = None
    with open(work / "params.yaml", "w", encoding="utf-8") as f:
        yaml.dump(params, f)
    rows = {"train": [(["alpha", "beta", "zeta"], LABELS[0]), (["Gamma", "alpha"], LABELS[1]), (["delta"], LABELS[2])],
            "val": [(["beta"], LABELS[1])],
            "test": [(["gamma", "omega"], LABELS[0]), (["delta", "beta"], LABELS[2])]}
    for split, items in rows.items():
        pd.DataFrame({"text": [" ".join(t) for t, _ in items], "tokens": [t for t, _ in items],
                      "label": [label for _, label in items]}).to_parquet(work / f"data/prepared/{split}.parquet")
    monkeypatch.setattr(peers, "ROOT", ROOT)
    peers.configure(work, "unseen")
    monkeypatch.setattr(peers, "CACHE", tmp_path / "cache")
    yield work, table
    peers.configure(ROOT, "builtin")


def test_vectors_job_writes_the_pipelines_vectors_in_any_format_and_dimension(workdir):
    work, table = workdir
    summary = peers.job_vectors({})
    assert summary["dim"] == 7 and "word2vec" in summary["vectors"]
    assert summary["train_tokens"] == 6
    vec_lines = (peers.CACHE / "vectors.vec").read_text(encoding="utf-8").splitlines()
    assert vec_lines[0] == f"{len(vec_lines) - 1} 7"
    written = {line.split(" ")[0]: np.array(line.split(" ")[1:], dtype=np.float32) for line in vec_lines[1:]}
    # the split's words that have a vector, 'Gamma' through vocab.case_fallback; 'zeta' and 'omega' have none
    assert set(written) == {"alpha", "beta", "Gamma", "gamma", "delta"}
    np.testing.assert_allclose(written["Gamma"], table["gamma"], atol=1e-6)
    kv = KeyedVectors.load(str(peers.CACHE / "vectors.kv"))
    assert kv.vector_size == 7
    np.testing.assert_allclose(kv["delta"], table["delta"], atol=1e-6)


def test_fasttext_files_round_trip_labels_with_spaces_and_accents(workdir):
    peers.job_vectors({})
    for split in ("train", "val", "test"):
        lines = (peers.CACHE / f"{split}.fasttext.txt").read_text(encoding="utf-8").split("\n")[:-1]
        # one line per row, each starting with one space-free label token
        assert all(line.split(" ")[0].removeprefix("__label__").isdigit() for line in lines)
    labels, texts = peers._fasttext_lines("train")
    assert labels == LABELS
    assert texts == ["alpha beta zeta", "Gamma alpha", "delta"]
    assert peers._fasttext_lines("test") == ([LABELS[0], LABELS[2]], ["gamma omega", "delta beta"])
    assert json.loads((peers.CACHE / "labels.json").read_text(encoding="utf-8")) == sorted(LABELS)


def test_vectors_job_names_a_missing_vectors_file(workdir):
    work, _ = workdir
    (work / "vectors.txt").unlink()
    with pytest.raises(Exception, match="vectors.txt"):
        peers.job_vectors({})


def test_the_tfidf_job_reads_params_as_the_pipeline_does(workdir):
    """`baseline.C: [1e-3, ...]` is a number list for DVC and the pipeline (YAML 1.2): the peers' TF-IDF
    read params.yaml with PyYAML, got the string '1e-3' and failed inside scikit-learn; a non-finite C
    is the pipeline's one-line error naming the key, not a fit."""
    work, _ = workdir
    yaml = YAML()
    params = yaml.load((work / "params.yaml").read_text(encoding="utf-8"))
    params["baseline"].update(C="C_VALUES", min_df=1)
    with open(work / "params.yaml", "w", encoding="utf-8") as f:
        yaml.dump(params, f)
    fixed = (work / "params.yaml").read_text(encoding="utf-8").replace("C: C_VALUES", "C: [1e-3, 1e1]")
    (work / "params.yaml").write_text(fixed, encoding="utf-8")
    result = peers.job_tfidf({"repeat": 1})
    assert result["C"] in (1e-3, 10.0), result
    (work / "params.yaml").write_text(fixed.replace("C: [1e-3, 1e1]", "C: [1e-3, .inf]"), encoding="utf-8")
    with pytest.raises(PipelineError, match="baseline.C"):
        peers.job_tfidf({"repeat": 1})


@pytest.mark.parametrize("corpus", ["../../../elsewhere", "a/b", "-x", ".."])
def test_a_corpus_name_that_is_a_path_is_refused(corpus, capsys):
    """--corpus names folders under benchmarks/.cache/peers/ that are deleted and rewritten (lstm-s42, the
    flair runs): a path there would delete folders elsewhere."""
    with pytest.raises(SystemExit) as exit_info:
        peers.main([f"--corpus={corpus}", "--workdir", ".", "--render"])
    assert exit_info.value.code == 2
    assert f"--corpus {corpus!r}: not a name" in capsys.readouterr().err
