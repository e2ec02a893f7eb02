"""Files (pipeline.files): atomic outputs, refused output paths, compressed data known by its first
bytes, JSON that is always valid, and the encoding check."""

from __future__ import annotations

import bz2
import gzip
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.errors import PipelineError
from pipeline.files import (atomic_path, check_encoding, check_output_file, compression_of, json_dumps, open_text,
                            write_json)


def test_an_atomic_output_appears_whole_or_not_at_all(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("previous run")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / "half.txt").write_text("half written")
            raise RuntimeError("the stage failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the last good output, nothing partial
    assert sorted(p.name for p in target.iterdir()) == ["old.txt"]
    (tmp_path / ".out.abc123.partial").mkdir()  # what a killed run leaves
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "new.txt").write_text("this run")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]  # replaced whole, nothing stale
    write_json(tmp_path / "m.json", {"a": 1})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": 1}


WRITER = """
import sys, time
from pathlib import Path
from pipeline.files import atomic_path

target, started, go, label = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
with atomic_path(target) as tmp:
    tmp.mkdir()
    (tmp / "first.txt").write_text(label)
    started.touch()
    while not go.exists():
        time.sleep(0.01)
    (tmp / "second.txt").write_text(label)
"""


def test_two_writers_of_one_output_at_once_both_succeed_and_the_last_wins(tmp_path):
    """Two real processes write one output folder at once (two prepares by hand): the second to start
    never deletes the first's temporary folder; both succeed, the output is whole and the last writer's,
    and no temporary folder is left. A leftover of a writer that is gone is still removed."""
    target = tmp_path / "prepared"
    (tmp_path / ".prepared.pid99999999-dead.partial").mkdir()  # a killed writer's (no such process)
    (tmp_path / ".prepared.abc123.partial").mkdir()  # an older version's leftover (no pid)
    first = subprocess.Popen([sys.executable, "-c", WRITER, str(target), str(tmp_path / "a-started"),
                              str(tmp_path / "a-go"), "a"])
    deadline = time.monotonic() + 60
    while not (tmp_path / "a-started").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    (tmp_path / "b-go").touch()
    second = subprocess.run([sys.executable, "-c", WRITER, str(target), str(tmp_path / "b-started"),
                             str(tmp_path / "b-go"), "b"], capture_output=True, text=True)
    assert second.returncode == 0, second.stderr
    assert {p.read_text() for p in target.iterdir()} == {"b"}
    (tmp_path / "a-go").touch()
    assert first.wait(60) == 0  # its temporary folder was still there
    assert {p.read_text() for p in target.iterdir()} == {"a"}  # the last to finish
    assert not list(tmp_path.glob(".prepared*"))


def test_many_writers_replacing_one_folder_all_succeed(tmp_path):
    """Writers racing to rename their folder onto one output: each finds the other's folder there at
    times, moves it aside and tries again; none fails, none leaves anything behind."""
    code = ("import sys\nfrom pathlib import Path\nfrom pipeline.files import atomic_path\n"
            "for i in range(30):\n    with atomic_path(Path(sys.argv[1])) as tmp:\n        tmp.mkdir()\n"
            "        (tmp / 'f').write_text(sys.argv[2])\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "out"), str(i)],
                              stderr=subprocess.PIPE, text=True) for i in range(4)]
    for proc in procs:
        assert proc.wait(120) == 0, proc.stderr.read()
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and [p.name for p in (tmp_path / "out").iterdir()] == ["f"]


def test_an_output_file_may_not_be_a_folder_or_an_input(tmp_path):
    (tmp_path / "folder").mkdir()
    with pytest.raises(PipelineError, match=r"folder: is a directory, and writing the output there would delete it"):
        check_output_file(tmp_path / "folder")
    (tmp_path / "file").write_text("x")
    with pytest.raises(PipelineError, match=r"cannot write there: .*file is a file, not a folder"):
        check_output_file(tmp_path / "file" / "out.csv")
    with pytest.raises(PipelineError, match=r"the output would replace the input"):
        check_output_file(tmp_path / "folder" / ".." / "file", tmp_path / "file")
    assert check_output_file(tmp_path / "new" / "out.csv", tmp_path / "file", None) == tmp_path / "new" / "out.csv"
    import os

    os.link(tmp_path / "file", tmp_path / "hard")
    with pytest.raises(PipelineError, match=r"hard: the output would replace the input .*file"):
        check_output_file(tmp_path / "hard", tmp_path / "file")


def test_compressed_text_is_known_by_its_first_bytes(tmp_path):
    (tmp_path / "a.txt").write_bytes(gzip.compress("caf\u00e9\r\nline two\n".encode("utf-8")))
    (tmp_path / "b.gz").write_bytes(bz2.compress(b"plain"))
    (tmp_path / "c.gz").write_text("not compressed at all")
    assert [compression_of(tmp_path / n) for n in ("a.txt", "b.gz", "c.gz")] == ["gzip", "bz2", None]
    with open_text(tmp_path / "a.txt") as f:
        assert f.read() == "caf\u00e9\nline two\n"  # universal newlines
    with open_text(tmp_path / "c.gz") as f:
        assert f.read() == "not compressed at all"


def test_json_is_always_valid_json():
    text = json_dumps({"nan": float("nan"), "inf": [float("-inf"), 1.5], "blob": b"\x00\xff", "when": object})
    data = json.loads(text, parse_constant=lambda c: pytest.fail(f"not JSON: {c}"))
    assert data["nan"] is None and data["inf"] == [None, 1.5] and data["blob"] == "AP8="
    assert data["when"] == str(object)


def test_an_unknown_encoding_is_named_where_it_was_given():
    assert check_encoding("latin-1", "--encoding") == "latin-1"
    with pytest.raises(PipelineError, match=r"^--encoding: 'utf9' is not a text encoding Python knows \(e\.g\. utf-8"):
        check_encoding("utf9", "--encoding")


def _pipeline_in(tmp_path, **over):
    """This project's dvc.yaml and params.yaml in tmp_path, with `over` = {"section.key": value} set."""
    import shutil

    import yaml

    from tests.helpers import ROOT

    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key, value in over.items():
        section, name = key.split(".")
        data[section][name] = value
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return tmp_path


def test_no_stage_output_may_overwrite_what_the_pipeline_reads(tmp_path, monkeypatch):
    """A stage run by hand (where DVC checks nothing) refuses an output that is one of its inputs, an
    input of another stage, the pipeline's own files or another stage's output, also through a symbolic
    link, `..` or a hard link: one line naming the key, before anything is read or written."""
    import os

    from pipeline.workspace import check_stage_paths, check_workspace

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data/my.csv").write_text("review,sentiment\n")
    os.link(tmp_path / "data/my.csv", tmp_path / "data/hard.csv")
    (tmp_path / "data/link.csv").symlink_to("my.csv")
    refused = {  # (params, stage run by hand): what the message says
        (("predict.output", "data/my.csv"),): ("predict", r"'predict\.output' \(data/my\.csv\), an output of stage "
                                               r"predict, is data/my\.csv \(corpus\.source\), read by stage prepare"),
        (("predict.output", "data/link.csv"),): ("predict", r"'predict\.output' \(data/link\.csv\).* is data/my\.csv "
                                                 r"\(corpus\.source\)"),
        (("predict.output", "data/x/../my.csv"),): ("predict", r"'predict\.output' .* is data/my\.csv \(corpus\.source\)"),
        (("predict.output", "data/hard.csv"),): ("predict", r"'predict\.output' .* is a hard link of data/my\.csv "
                                                 r"\(corpus\.source\)"),
        (("predict.output", "data/prepared/test.parquet"),): ("predict", r"\(predict\.input\), an input of stage predict"),
        (("predict.output", "models/model.pt"),): ("predict", r"is models/model\.pt, an input of stage predict"),
        (("predict.output", "params.yaml"),): ("predict", r"is params\.yaml, the pipeline's own file"),
        (("predict.output", "metrics/eval.json"),): ("predict", r"the output of stage evaluate"),
        (("predict.output", "data/prepared/p.parquet"),): ("prepare", r"'predict\.output' \(data/prepared/p\.parquet\), "
                                                       r"the output of stage predict, is inside data/prepared"),
        (("corpus.source", "data/prepared"),): ("prepare", r"'corpus\.source' \(data/prepared\), an input of stage "
                                                r"prepare, is data/prepared, an output of stage prepare"),
        (("embeddings.source", "data/prepared/vectors.txt"),): ("prepare", r"'embeddings\.source' .* read by stage "
                                                                r"vocab, is inside data/prepared"),
        (("domain_vectors.unlabelled", "data/domain_vectors/more.txt"),): ("domain_vectors",
                                                                           r"'domain_vectors\.unlabelled'"),
    }
    for over, (stage, message) in refused.items():
        _pipeline_in(tmp_path, **{"corpus.source": "data/my.csv", **dict(over)})
        with pytest.raises(PipelineError, match=r"^params\.yaml: .*" + message + r".*: running \w+ would overwrite it"):
            check_stage_paths(stage)
        with pytest.raises(PipelineError, match=r"^params\.yaml: '[\w.]+' .*: running \w+ would overwrite it"):
            check_workspace()  # `python -m pipeline.params`: every stage
    _pipeline_in(tmp_path)  # the shipped params: every stage may run
    check_workspace()
    _pipeline_in(tmp_path, **{"corpus.source": "data/my.csv", "predict.output": "data/my.csv"})
    check_stage_paths("prepare")  # the stage at fault is predict, and only it is refused


def test_a_fifo_or_device_as_data_is_named_with_its_key(tmp_path, monkeypatch):
    """corpus.source, domain_vectors.unlabelled or embeddings.source at a FIFO or a device (or a folder
    holding one): each reader says what it is, naming the key, instead of 'Not a directory' or waiting
    forever; `python -m pipeline.params` says so before DVC, which would wait forever hashing it."""
    import os

    from pipeline import unlabelled, vectors
    from pipeline.layouts import corpus_chunks
    from tests.helpers import ROOT, corpus_params

    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder/a.txt").write_text("fine\n")
    os.mkfifo(tmp_path / "folder/b.txt")
    readers = {"corpus.source": lambda p: corpus_chunks(p, corpus_params(source=str(p))),
               "domain_vectors.unlabelled": unlabelled.text_files, "embeddings.source": vectors.detect}
    for key, read in readers.items():
        for path, kind in ((tmp_path / "pipe", "a FIFO"), (tmp_path / "folder", "a FIFO"),
                           (Path("/dev/zero"), "a character device")):
            shown = path if path.name != "folder" else path / "b.txt"
            with pytest.raises(PipelineError, match=rf"^{shown}: is {kind}.*, not a regular file or folder "
                                                    rf"\({re.escape(key)}\)"):
                read(path)
    _pipeline_in(tmp_path, **{"domain_vectors.unlabelled": str(tmp_path / "folder")})
    proc = subprocess.run([sys.executable, "-m", "pipeline.params"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 1, proc.stdout
    assert proc.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'folder/b.txt'}: is a FIFO (named pipe), not a regular file or folder "
        "(domain_vectors.unlabelled); reading it could wait forever, DVC's hashing too: move it out of the folder"]


@pytest.mark.parametrize("make, message", [
    (lambda d: (d / "pos/loop1").symlink_to("loop2") or (d / "pos/loop2").symlink_to("loop1"),
     r"pos/loop\d: a symbolic link that leads nowhere \(its target is missing, or it is a loop of links\)"),
    (lambda d: (d / "pos/gone.txt").symlink_to(d / "nowhere.txt"), r"pos/gone\.txt: a symbolic link that leads nowhere"),
    (lambda d: (d / "pos/more").symlink_to(d.parent.parent / "elsewhere"), r"pos/more: a symbolic link to a folder"),
    (lambda d: (d / "pos/up").symlink_to(".."), r"pos/up: a symbolic link to a folder"),
])
def test_a_symlink_loop_broken_link_or_linked_folder_in_a_data_folder_is_named(tmp_path, make, message):
    """A folder of documents (train/pos/...) holding a link loop, a broken link or a link to another folder:
    the stage passed each over without a word (the linked folder's documents silently missing) and DVC
    failed with 'unexpected error - [Errno 40] Too many levels of symbolic links'."""
    from pipeline import unlabelled
    from pipeline.layouts import corpus_chunks
    from tests.helpers import corpus_params

    folder = tmp_path / "data"
    for split in ("train", "test"):
        for label in ("pos", "neg"):
            (folder / split / label).mkdir(parents=True)
            (folder / split / label / "1.txt").write_text(f"a {label} review\n")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere/2.txt").write_text("another good review\n")
    make(folder / "train")
    with pytest.raises(PipelineError, match=message + r".*\(corpus\.source\)"):
        list(corpus_chunks(folder, corpus_params(source=str(folder)))[0])
    with pytest.raises(PipelineError, match=message + r".*\(domain_vectors\.unlabelled\)"):
        unlabelled.text_files(folder)
