"""Bad inputs of issue 16 that reach the data readers, the vectors reader and the core count: a GloVe
file whose first line is short (item 18), another repository's or user's queue workers (item 8), a
zip of NUL bytes and other overlong lines, fields and documents (item 13), and a label folder whose
name is not UTF-8 (item 15). Real files, real processes."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from pipeline import resources, vectors
from pipeline.errors import PipelineError
from pipeline.readers import MAX_FIELD_BYTES
from tests.helpers import ROOT, corpus_params, read_corpus

TOO_LONG = MAX_FIELD_BYTES + (1 << 20)


# --- item 18: the dimension of a GloVe file comes from more than its first line --------------------


def _glove_with_short_first_line(glove_small: Path, tmp_path: Path) -> Path:
    lines = glove_small.read_bytes().splitlines(keepends=True)
    first = lines[0].rstrip(b"\n").rsplit(b" ", 1)[0] + b"\n"  # its last value cut off: 49 of 50
    path = tmp_path / "glove.txt"
    path.write_bytes(first + b"".join(lines[1:]))
    return path


def test_a_short_first_glove_line_is_the_line_named(glove_small, tmp_path):
    path = _glove_with_short_first_line(glove_small, tmp_path)
    with pytest.raises(PipelineError, match=r"glove\.txt: line 1: 49 values, expected 50 \(set embeddings\.bad_lines"):
        vectors.align_text(path, ["the", "of"])


def test_a_short_first_glove_line_is_the_only_line_skipped(glove_small, tmp_path):
    path = _glove_with_short_first_line(glove_small, tmp_path)
    total = len(glove_small.read_bytes().splitlines())
    first_word = glove_small.read_bytes().split(b" ", 1)[0].decode()
    result = vectors.align_text(path, [first_word, "of", "and"], bad_lines="skip")
    assert result.dim == 50
    assert result.stats["bad_lines_skipped"] == 1
    assert result.stats["lines"] == total
    assert result.found.tolist() == [False, True, True]
    good = vectors.align_text(glove_small, ["of", "and"])
    np.testing.assert_array_equal(result.matrix[1:], good.matrix)


def test_a_word_with_spaces_on_the_first_line_keeps_the_dimension(tmp_path):
    path = tmp_path / "v.txt"
    path.write_bytes(b"new york 3 4\na 1 2\nb 5 6\nc 7 8\n")
    result = vectors.align_text(path, ["new york", "a", "c"])
    np.testing.assert_array_equal(result.matrix, [[3, 4], [1, 2], [7, 8]])
    assert result.stats["words_with_spaces"] == 1 and result.dim == 2


def test_a_word2vec_header_still_decides_the_dimension(tmp_path):
    path = tmp_path / "v.vec"
    path.write_bytes(b"4 3\na 1 2\nb 1 2 3\nc 4 5 6\nd 7 8 9\n")
    with pytest.raises(PipelineError, match=r"v\.vec: line 2: 2 values, expected 3"):
        vectors.align(vectors.VectorsSource("word2vec", path), ["a", "b"])


# --- item 8: only this repository's queue workers, and only this user's, share the cores -----------


@pytest.fixture
def fake_workers():
    """Start processes whose command line is a DVC queue worker's (`sh -c ... exp queue-worker <node>`),
    in a given folder, optionally as another user; all are killed at the end. (The shell waits in its
    builtin `read`: it starts no child that would show the same command line for a moment.)"""
    started: list[subprocess.Popen] = []

    def start(cwd: Path, node: str = "x", user: int | None = None) -> subprocess.Popen:
        proc = subprocess.Popen(["/bin/sh", "-c", "read line", "exp", "queue-worker", node], cwd=cwd,
                                user=user, stdin=subprocess.PIPE, start_new_session=True)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdin.close()


def _repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    (repo / ".dvc" / "tmp" / "exps" / "tmpabc").mkdir(parents=True)
    (repo / "sub").mkdir()
    return repo


def test_only_this_repositorys_queue_workers_are_counted(tmp_path, fake_workers, monkeypatch):
    repo = _repo(tmp_path)
    elsewhere = tmp_path / "other-project"
    (elsewhere / ".dvc").mkdir(parents=True)
    fake_workers(elsewhere)                                # another repository's queue
    fake_workers(tmp_path)                                 # a folder above this repository
    fake_workers(repo)                                     # `dvc queue start` in the repository
    fake_workers(repo / "sub")                             # ... or in a folder of it
    celery = os.path.join(str(repo.resolve()), ".dvc", "tmp", "exps", "celery")
    node = f"dvc-exp-{hashlib.sha256(celery.encode()).hexdigest()[:6]}-2@localhost"
    fake_workers(elsewhere, node=node)                     # this repository's node name, from elsewhere
    assert resources.queue_workers(repo) == 3
    assert resources.queue_workers(elsewhere) == 2
    fake_workers(repo / ".dvc" / "tmp" / "exps" / "tmpabc")  # a worker inside a queued run's copy
    assert resources.queue_workers(repo) == 4
    # What a stage sees: in the repository, 4 workers and this run share 10 cores; in a queued run's
    # copy, this run is one of the 4. (Before, every worker on the machine counted: 6, and 10 // 7 = 1.)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.chdir(repo)
    assert resources.cpu_share("auto", cores=10) == 2
    monkeypatch.chdir(repo / ".dvc" / "tmp" / "exps" / "tmpabc")
    assert resources.cpu_share("auto", cores=10) == 2
    monkeypatch.setenv("DVC_ROOT", str(repo / ".dvc" / "tmp" / "exps" / "tmpabc"))  # as dvc sets it
    monkeypatch.chdir(tmp_path)
    assert resources.queue_workers() == 4
    assert resources.cpu_share(3, cores=10) == 3


@pytest.mark.skipif(os.getuid() != 0, reason="starting another user's process needs root")
def test_another_users_queue_worker_is_never_counted(tmp_path, fake_workers):
    repo = _repo(tmp_path)
    fake_workers(repo, user=65534)  # nobody, in this very repository
    fake_workers(repo)
    assert resources.queue_workers(repo) == 1


# --- item 13: memory follows the chunk size whatever the data: no line, field or document over the limit ---


def _nul_zip(path: Path, header: bytes = b"text,label\n", mib: int = 200) -> Path:
    """A small zip (about 200 KB) holding a header and `mib` MiB of NUL bytes: no line break after it."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive, archive.open("corpus.csv", "w") as f:
        f.write(header)
        zeros = bytes(1 << 20)
        for _ in range(mib):
            f.write(zeros)
    return path


READ_IN_A_CHILD = """
import json, sys
from pathlib import Path
from pipeline.errors import PipelineError
from tests.helpers import corpus_params
from pipeline.layouts import corpus_chunks
try:
    chunks, _ = corpus_chunks(Path(sys.argv[1]), corpus_params())
    rows = sum(len(c) for c in chunks)
    error = None
except PipelineError as err:
    rows, error = None, str(err)
# VmHWM: this program's own peak (ru_maxrss would carry over the forking test process's, which exec keeps).
peak_kib = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"rows": rows, "error": error, "peak_mib": peak_kib / 1024}))
"""


def test_a_zip_of_nul_bytes_stops_at_the_limit_in_bounded_memory(tmp_path):
    path = _nul_zip(tmp_path / "corpus.csv.zip")
    assert path.stat().st_size < 1 << 20
    child = subprocess.run([sys.executable, "-c", READ_IN_A_CHILD, str(path)], cwd=ROOT, capture_output=True,
                           text=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert child.returncode == 0, child.stderr[-2000:]
    out = json.loads(child.stdout)
    assert out["error"] == (f"{path}: data row 1 (line 2): a line of more than 10 MiB: not text? (a longer "
                            "document: split it, or raise pipeline.readers.MAX_FIELD_BYTES)")
    assert out["peak_mib"] < 1024, out


def test_an_overlong_csv_or_tsv_field_names_its_data_row(tmp_path):
    path = tmp_path / "corpus.tsv"
    with open(path, "wb") as f:  # row 1 spans two lines inside quotes: row 2 starts on line 4
        f.write(b'text\tlabel\n"two\nlines"\tpos\n' + b"z" * TOO_LONG + b"\tneg\nfine\tpos\n")
    with pytest.raises(PipelineError, match=r"corpus\.tsv: data row 2 \(line 4\): a line of more than 10 MiB"):
        read_corpus(path, corpus_params())
    header_only = tmp_path / "wide.csv"
    header_only.write_bytes(b"text," + b"h" * TOO_LONG + b"\na,b\n")
    with pytest.raises(PipelineError, match=r"wide\.csv: line 1 \(the header\): a line of more than 10 MiB"):
        read_corpus(header_only, corpus_params())


def test_long_texts_under_the_limit_are_read_whole(tmp_path):
    text = "word " * (MAX_FIELD_BYTES // 10)  # 5 MiB
    path = tmp_path / "corpus.csv"
    path.write_text(f"text,label\n{text},pos\nshort,neg\n")
    out, _ = read_corpus(path, corpus_params(), chunk_rows=1)
    assert out["text"].tolist() == [text, "short"]


def test_an_overlong_json_or_fasttext_line_is_named(tmp_path):
    jsonl = tmp_path / "corpus.jsonl"
    jsonl.write_text('{"text": "ok", "label": "a"}\n' + json.dumps({"text": "y" * TOO_LONG, "label": "b"}) + "\n")
    with pytest.raises(PipelineError, match=r"corpus\.jsonl: line 2: a line of more than 10 MiB: not text\?"):
        read_corpus(jsonl, corpus_params())
    fasttext = tmp_path / "corpus.txt"
    fasttext.write_text("__label__a fine\n\n__label__b " + "w" * TOO_LONG)  # the last line, no line break
    with pytest.raises(PipelineError, match=r"corpus\.txt: line 3: a line of more than 10 MiB"):
        read_corpus(fasttext, corpus_params())


def test_an_overlong_document_file_is_named(tmp_path):
    root = tmp_path / "corpus"
    for split in ("train", "test"):
        (root / split / "pos").mkdir(parents=True)
        (root / split / "pos" / "1.txt").write_text("fine")
    big = root / "train" / "pos" / "2.txt"
    big.write_bytes(b"\0" * TOO_LONG)
    with pytest.raises(PipelineError, match=rf"{big}: {TOO_LONG:,} bytes, a document of more than 10 MiB"):
        read_corpus(tmp_path / "corpus", corpus_params())


# --- item 15: a label folder whose name is not UTF-8 ------------------------------------------------


def test_a_label_folder_name_that_is_not_utf8_is_one_error_naming_it(tmp_path):
    root = os.fsencode(tmp_path / "corpus")
    for split in (b"train", b"test"):
        for label in (b"pos", b"caf\xe9"):  # a Latin-1 name, as an old archive unpacks it
            os.makedirs(os.path.join(root, split, label))
            with open(os.path.join(root, split, label, b"1.txt"), "w") as f:
                f.write(f"a {split!r} document")
    shown = f"{tmp_path}/corpus/test/caf\\xe9"
    with pytest.raises(PipelineError) as caught:
        read_corpus(tmp_path / "corpus", corpus_params())
    assert str(caught.value) == (f"{shown}: the label folder's name is not UTF-8 text (labels are written out "
                                 "as UTF-8): rename the folder")
    # As a stage prints it: one line on stderr, exit status 1, no traceback.
    child = subprocess.run(
        [sys.executable, "-c", "import sys; from pathlib import Path; from pipeline.errors import run_main; "
         "from pipeline.layouts import corpus_chunks; from tests.helpers import corpus_params; "
         "run_main(lambda: list(corpus_chunks(Path(sys.argv[1]), corpus_params())[0]))", str(tmp_path / "corpus")],
        cwd=ROOT, capture_output=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
    assert child.returncode == 1
    assert child.stderr.decode("utf-8").splitlines() == [f"error: {shown}: the label folder's name is not UTF-8 "
                                                         "text (labels are written out as UTF-8): rename the folder"]
