"""Domain vectors (pipeline.domain_vectors, pipeline.unlabelled and the stage): trained from the training
split and any unlabelled text, the same bytes for the same params, stacked beside the pretrained rows by
the vocab stage, and `auto` off below its threshold."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline import domain_vectors, unlabelled
from pipeline.errors import PipelineError
from pipeline.text import TextConfig
from tests.helpers import ROOT, polarity_rows


@pytest.fixture
def train_split(tmp_path):
    rows = polarity_rows()
    tokens = [text.lower().split() for text, _ in rows]
    path = tmp_path / "train.parquet"
    pd.DataFrame({"text": [t for t, _ in rows], "tokens": tokens, "label": [lab for _, lab in rows]}).to_parquet(path)
    return path


def test_auto_trains_fasttext_from_the_threshold_up():
    assert domain_vectors.resolve_method("auto", 999, 1000) == "none"
    assert domain_vectors.resolve_method("auto", 1000, 1000) == "fasttext"
    assert domain_vectors.resolve_method("word2vec", 0, 1000) == "word2vec"
    assert domain_vectors.resolve_method("none", 10**9, 1000) == "none"


def test_token_stream_reads_the_split_in_batches_and_counts_tokens(train_split):
    expected = pd.read_parquet(train_split)["tokens"].map(list).tolist()
    assert list(domain_vectors.TokenStream(train_split, batch_rows=7)) == [t for t in expected if t]
    assert domain_vectors.count_tokens(train_split) == sum(map(len, expected))


@pytest.mark.parametrize("method", ["fasttext", "word2vec"])
def test_every_training_word_gets_a_vector_and_the_same_params_give_the_same_bytes(train_split, method):
    stream = domain_vectors.TokenStream(train_split)
    words, vectors = domain_vectors.train(stream, method, dim=8, epochs=2, window=3, min_count=1, seed=1, buckets=1000)
    vocabulary = {w for tokens in stream for w in tokens}
    assert set(words) == vocabulary and vectors.shape == (len(words), 8) and vectors.dtype == np.float32
    again = domain_vectors.train(stream, method, dim=8, epochs=2, window=3, min_count=1, seed=1, buckets=1000)
    assert again[0] == words and again[1].tobytes() == vectors.tobytes()
    other_seed = domain_vectors.train(stream, method, dim=8, epochs=2, window=3, min_count=1, seed=2, buckets=1000)
    assert other_seed[1].tobytes() != vectors.tobytes()


def test_words_that_co_occur_end_up_closer_than_words_that_never_do(tmp_path):
    # two topics that never share a document: each word's nearest neighbours are its own topic's
    space = "orbit rocket launch nasa shuttle satellite".split()
    hockey = "puck goalie rink playoff skate stick".split()
    rng = np.random.default_rng(0)
    docs = [list(rng.choice(topic, 12)) for _ in range(400) for topic in (space, hockey)]
    path = tmp_path / "train.parquet"
    pd.DataFrame({"tokens": docs}).to_parquet(path)
    words, vectors = domain_vectors.train(domain_vectors.TokenStream(path), "word2vec", dim=16, epochs=5, window=4,
                                          min_count=1, seed=1)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    row = {w: i for i, w in enumerate(words)}
    for topic, other in ((space, hockey), (hockey, space)):
        within = np.mean([unit[row[a]] @ unit[row[b]] for a in topic for b in topic if a != b])
        across = np.mean([unit[row[a]] @ unit[row[b]] for a in topic for b in other])
        assert within > across + 0.3, (within, across)


def test_the_vectors_do_not_depend_on_pythons_string_hash(train_split):
    code = ("import sys; from pathlib import Path; from pipeline import domain_vectors as d; "
            "words, vectors = d.train(d.TokenStream(Path(sys.argv[1])), 'fasttext', 8, 1, 3, 1, 1, 1000); "
            "sys.stdout.write(str(hash(tuple(words))) + ' ' + vectors.tobytes().hex()[:4000])")
    outputs = {subprocess.run([sys.executable, "-c", code, str(train_split)], capture_output=True, text=True, check=True,
                              env={"PYTHONPATH": str(ROOT), "PYTHONHASHSEED": seed}).stdout.split(" ")[1]
               for seed in ("1", "2")}
    assert len(outputs) == 1


@pytest.mark.parametrize("method", ["fasttext", "word2vec"])
def test_too_rare_words_are_a_clear_error(train_split, method):
    with pytest.raises(PipelineError, match=r"train\.parquet: no word occurs domain_vectors\.min_count=100000 times"):
        domain_vectors.train(domain_vectors.TokenStream(train_split), method, 8, 1, 3, 100_000, 1, 1000)


def test_stack_puts_the_domain_block_beside_the_pretrained_rows_at_the_same_spread():
    rng = np.random.default_rng(0)
    itos = ["<pad>", "<unk>", "a", "b", "c"]
    pretrained = rng.normal(0, 0.4, (5, 3)).astype(np.float32)
    pretrained[0] = 0
    words, vectors = ["b", "a", "zzz", "<unk>"], rng.normal(0, 5.0, (4, 2)).astype(np.float32)
    matrix, found = domain_vectors.stack(pretrained, itos, words, vectors)
    assert matrix.shape == (5, 5) and matrix.dtype == np.float32 and found == 2
    assert np.array_equal(matrix[:, :3], pretrained)
    assert not matrix[[0, 1, 4], 3:].any()  # <pad>, <unk> (even if trained as a word) and the word without one
    scale = matrix[2, 3] / vectors[1, 0]
    assert np.allclose(matrix[2, 3:], vectors[1] * scale) and np.allclose(matrix[3, 3:], vectors[0] * scale)
    # the rows that hold a domain vector get the pretrained spread (the empty ones do not dilute it)
    assert np.isclose(matrix[[2, 3], 3:].std(), pretrained[2:].std(), rtol=1e-5)
    assert domain_vectors.has_domain_vector(itos, words).tolist() == [False, False, True, True, False]


def test_read_refuses_a_word_list_that_does_not_match(tmp_path):
    assert domain_vectors.read(tmp_path) is None
    np.save(tmp_path / "vectors.npy", np.zeros((3, 2), np.float32))
    (tmp_path / "words.json").write_text('["a", "b"]', encoding="utf-8")
    with pytest.raises(PipelineError, match=r"vectors\.npy: shape \(3, 2\) does not match the 2 words of words\.json"):
        domain_vectors.read(tmp_path)
    (tmp_path / "words.json").write_text('["a", "b\\r\\nc", "\\u2028"]', encoding="utf-8")
    assert domain_vectors.read(tmp_path)[0] == ["a", "b\r\nc", "\u2028"]  # any character survives


def _stage(cwd, method: str, auto_min_tokens: int = 1_000_000, unlabelled: str = "data/unlabelled") -> subprocess.CompletedProcess:
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["domain_vectors"].update(method=method, auto_min_tokens=auto_min_tokens, dim=6, epochs=1, buckets=1000,
                                  unlabelled=unlabelled)
    (cwd / "data/unlabelled").mkdir(parents=True, exist_ok=True)
    (cwd / "params.yaml").write_text(yaml.safe_dump(data))
    return subprocess.run([sys.executable, "-m", "pipeline.stages.domain_vectors"], cwd=cwd, capture_output=True,
                          text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


@pytest.mark.parametrize("method, auto_min_tokens, trained", [("auto", 10**6, False), ("auto", 100, True),
                                                               ("none", 100, False), ("word2vec", 10**6, True)])
def test_the_stage_writes_vectors_or_a_marker(tmp_path, train_split, method, auto_min_tokens, trained):
    (tmp_path / "data/prepared").mkdir(parents=True)
    train_split.rename(tmp_path / "data/prepared/train.parquet")
    proc = _stage(tmp_path, method, auto_min_tokens)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "data/domain_vectors"
    report = json.loads((tmp_path / "metrics/domain_vectors.json").read_text())
    assert report["train_tokens"] == domain_vectors.count_tokens(tmp_path / "data/prepared/train.parquet")
    if trained:
        words, vectors = domain_vectors.read(out)
        assert report["method"] in ("fasttext", "word2vec") and vectors.shape == (len(words), 6)
        assert report["words"] == len(words)
    else:
        assert sorted(p.name for p in out.iterdir()) == [".none"] and domain_vectors.read(out) is None
        assert report["method"] == "none"
        assert ("below 1,000,000" in proc.stdout) == (method == "auto")


def test_an_empty_training_split_is_named(tmp_path):
    (tmp_path / "data/prepared").mkdir(parents=True)
    pd.DataFrame({"tokens": pd.Series([], dtype=object)}).to_parquet(tmp_path / "data/prepared/train.parquet")
    proc = _stage(tmp_path, "fasttext")
    assert proc.returncode == 1
    assert "data/prepared/train.parquet: the training split has no tokens" in proc.stderr
    assert not (tmp_path / "data/domain_vectors").exists()


# --- unlabelled text (domain_vectors.unlabelled) ------------------------------------------------------


def test_a_folder_of_unlabelled_text_is_its_txt_files_in_order_notes_passed_over(tmp_path):
    folder = tmp_path / "unlabelled"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.txt").write_text("b\n")
    (folder / "a.TXT").write_text("a\n")
    (folder / "sub/c.txt.gz").write_bytes(gzip.compress(b"c\n"))
    (folder / "README.md").write_text("notes")
    (folder / "big.txt.dvc").write_text("outs: []")
    (folder / ".gitignore").write_text("/big.txt")
    (folder / ".cache").mkdir()
    (folder / ".cache/x.bin").write_bytes(b"\0")
    assert unlabelled.text_files(folder) == [folder / "a.TXT", folder / "b.txt", folder / "sub/c.txt.gz"]
    assert unlabelled.text_files(folder / "README.md") == [folder / "README.md"]  # a file named: read as it is
    (folder / "sub/posts.csv").write_text("text\nhello\n")
    with pytest.raises(PipelineError, match=r"sub/posts\.csv: not a \.txt file: the unlabelled text \(domain_vectors\.unlabelled\)"):
        unlabelled.text_files(folder)
    with pytest.raises(PipelineError, match=r"nowhere: no such file or folder \(params domain_vectors\.unlabelled\)"):
        unlabelled.text_files(tmp_path / "nowhere")


def test_unlabelled_text_is_tokenized_as_prepare_tokenizes_a_line_at_a_time(tmp_path):
    (tmp_path / "a.txt").write_text("The <b>Rocket</b> launched!\n\n   \nSee https://example.com now\n", encoding="utf-8")
    (tmp_path / "b.txt.bz2").write_bytes(bz2.compress("Zorbl ORBIT\n".encode()))
    text = unlabelled.UnlabelledText([tmp_path / "a.txt", tmp_path / "b.txt.bz2"], TextConfig())
    assert list(text) == [["the", "rocket", "launched", "!"], ["see", "now"], ["zorbl", "orbit"]]
    assert list(text) == list(text)  # gensim iterates it once per epoch
    assert text.tokens == 8  # counted on the pass, for the stage's report


def test_undecodable_unlabelled_text_names_the_file_and_line(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"fine\nstill fine\nbad \xff byte\n")
    with pytest.raises(PipelineError, match=r"a\.txt: line 3: not valid utf-8 text .*set corpus\.encoding"):
        list(unlabelled.UnlabelledText([tmp_path / "a.txt"], TextConfig()))


def test_truncated_compressed_unlabelled_text_names_the_file_and_the_line_reached(tmp_path):
    """A .txt.gz cut short (a copy that stopped) is one line naming the file and the last line read, not
    a traceback of gzip's EOFError; the same for bz2 and xz."""
    text = "".join(f"a good movie, review number {i}\n" for i in range(20000)).encode()
    for suffix, compress in ((".gz", gzip.compress), (".bz2", bz2.compress), (".xz", lzma.compress)):
        data = compress(text)
        path = tmp_path / f"more.txt{suffix}"
        path.write_bytes(data[: len(data) * 3 // 4])
        with pytest.raises(PipelineError, match=rf"more\.txt\{suffix}: cannot read (past line [1-9]\d*|it) \(.*\): "
                                                r"a truncated or corrupt file\? \(domain_vectors\.unlabelled\)$"):
            list(unlabelled.UnlabelledText(unlabelled.text_files(tmp_path), TextConfig()))
        path.unlink()


def test_unlabelled_text_teaches_a_training_word_its_neighbours(tmp_path):
    # 'zorbl' occurs once in training, among hockey words; the unlabelled text uses it as a space word
    space = "orbit rocket launch nasa shuttle satellite".split()
    hockey = "puck goalie rink playoff skate stick".split()
    rng = np.random.default_rng(0)
    docs = [list(rng.choice(topic, 12)) for _ in range(300) for topic in (space, hockey)] + [hockey + ["zorbl"]]
    path = tmp_path / "train.parquet"
    pd.DataFrame({"tokens": docs}).to_parquet(path)
    (tmp_path / "more.txt").write_text("".join(" ".join(list(rng.choice(space, 8)) + ["zorbl"]) + "\n"
                                               for _ in range(300)))

    def closeness(sentences) -> float:
        words, vectors = domain_vectors.train(sentences, "word2vec", dim=16, epochs=5, window=4, min_count=1, seed=1)
        unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        row = {w: i for i, w in enumerate(words)}
        return (np.mean([unit[row["zorbl"]] @ unit[row[w]] for w in space])
                - np.mean([unit[row["zorbl"]] @ unit[row[w]] for w in hockey]))

    alone = closeness(domain_vectors.TokenStream(path))
    with_text = closeness(domain_vectors.Sentences(domain_vectors.TokenStream(path),
                                                   unlabelled.UnlabelledText([tmp_path / "more.txt"], TextConfig())))
    assert alone < 0 < with_text - 0.3, (alone, with_text)


def test_the_stage_learns_from_unlabelled_text_and_auto_decides_on_the_training_split(tmp_path, train_split):
    (tmp_path / "data/prepared").mkdir(parents=True)
    train_split.rename(tmp_path / "data/prepared/train.parquet")
    train_tokens = domain_vectors.count_tokens(tmp_path / "data/prepared/train.parquet")
    (tmp_path / "extra").mkdir()
    (tmp_path / "extra/posts.txt").write_text("Quasar pulsar nebula\n" * 50)  # 150 tokens
    threshold = train_tokens + 100
    # auto: the unlabelled text would take it past the threshold, but only the training split counts
    proc = _stage(tmp_path, "auto", threshold, unlabelled="extra")
    assert proc.returncode == 0, proc.stderr
    assert f"none (auto: {train_tokens:,} training tokens, below {threshold:,})" in proc.stdout
    report = json.loads((tmp_path / "metrics/domain_vectors.json").read_text())
    assert (report["method"], report["unlabelled_files"], report["unlabelled_tokens"]) == ("none", 1, None)
    proc = _stage(tmp_path, "auto", train_tokens, unlabelled="extra")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "metrics/domain_vectors.json").read_text())
    assert report["method"] == "fasttext" and report["unlabelled_files"] == 1 and report["unlabelled_tokens"] == 150
    assert f"and 150 unlabelled (1 file)" in proc.stdout
    words, _ = domain_vectors.read(tmp_path / "data/domain_vectors")
    # learnt from, but kept only for the training split's words: the vocabulary looks up no others
    assert set(words) == domain_vectors.word_set(tmp_path / "data/prepared/train.parquet")
    assert not {"quasar", "pulsar", "nebula"} & set(words)
    proc = _stage(tmp_path, "none", unlabelled="extra")  # nothing to train: the text is not even read
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "metrics/domain_vectors.json").read_text())["unlabelled_tokens"] is None


def test_a_wrong_unlabelled_path_stops_the_stage_and_writes_nothing(tmp_path, train_split):
    (tmp_path / "data/prepared").mkdir(parents=True)
    train_split.rename(tmp_path / "data/prepared/train.parquet")
    proc = _stage(tmp_path, "fasttext", unlabelled="data/unlabeled")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: data/unlabeled: no such file or folder (params domain_vectors.unlabelled)")
    assert not (tmp_path / "data/domain_vectors").exists()
