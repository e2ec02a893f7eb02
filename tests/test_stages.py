"""The stage functions on small real files: download, prepare, vocab, train, predict."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import http.server
import io
import json
import tarfile
import threading
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from pipeline import download as D
from pipeline import params as P
from pipeline import prepare as PR
from pipeline import vocab as V
from pipeline.common import PipelineError
from pipeline.embeddings import Alignment
from pipeline.text import TextConfig
from tests.conftest import ROOT, polarity_rows

# --- download -----------------------------------------------------------------------------------


def _src(download, members=(), sha256=None):
    return P.SourceParams(download=download, members=list(members), sha256=sha256, source="unused")


@contextlib.contextmanager
def loopback_server(handler):
    """An HTTP server on 127.0.0.1 in a thread; yields its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


class QuietHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass


def serve_directory(site: Path):
    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(site), **k)

        def log_message(self, *args):
            pass

    return loopback_server(Handler)


@pytest.fixture
def file_server(tmp_path):
    """A directory served over HTTP on 127.0.0.1; yields (directory, base URL)."""
    site = tmp_path / "site"
    site.mkdir()
    with serve_directory(site) as url:
        yield site, url


def test_download_file_and_zip_member(tmp_path, glove_small, file_server):
    site, url = file_server
    (site / "test_glove.txt").write_bytes(glove_small.read_bytes())
    out = tmp_path / "raw" / "emb"
    written = D.download(_src(f"{url}/test_glove.txt"), out)
    assert written == [out / "test_glove.txt"] and written[0].read_bytes() == glove_small.read_bytes()

    with zipfile.ZipFile(site / "glove.zip", "w") as zf:
        zf.write(glove_small, "glove/test_glove.txt")
    digest = hashlib.sha256((site / "glove.zip").read_bytes()).hexdigest()
    written = D.download(_src(f"{url}/glove.zip", ["glove/test_glove.txt"], digest), out)
    assert [p.name for p in out.iterdir()] == ["test_glove.txt"]  # replaced whole, nothing stale


def test_download_folder_member_keeps_its_layout(tmp_path, file_server):
    site, url = file_server
    with tarfile.open(site / "corpus.tar.gz", "w:gz") as tf:
        for name, text in {"aclImdb/train/pos/1.txt": "good", "aclImdb/test/neg/2.txt": "bad",
                           "aclImdb/README": "readme"}.items():
            info = tarfile.TarInfo(name)
            info.size = len(text)
            tf.addfile(info, io.BytesIO(text.encode()))
    out = tmp_path / "raw" / "corpus"
    written = D.download(_src(f"{url}/corpus.tar.gz", ["aclImdb/train/", "aclImdb/test/"]), out)
    assert sorted(str(p.relative_to(out)) for p in written) == ["test/neg/2.txt", "train/pos/1.txt"]
    assert (out / "train/pos/1.txt").read_text() == "good"


def test_download_refuses_local_paths_escaping_members_and_bad_checksums(tmp_path, glove_small, file_server):
    with pytest.raises(PipelineError, match=r"'corpus\.download' is .*test_glove\.txt.*read in place: name it in 'source'"):
        D.download(_src(str(glove_small)), tmp_path / "out", key="corpus.download")
    site, url = file_server
    with tarfile.open(site / "evil.tar.gz", "w:gz") as tf:
        tf.add(glove_small, "../../etc/passwd")
    with pytest.raises(PipelineError, match="escapes the output folder"):
        D.download(_src(f"{url}/evil.tar.gz", ["../../etc/passwd"]), tmp_path / "out")
    (site / "g.txt").write_bytes(glove_small.read_bytes())
    with pytest.raises(PipelineError, match="sha256 mismatch"):
        D.download(_src(f"{url}/g.txt", sha256="0" * 64), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.*"))  # no partial directory left behind


def test_a_truncated_http_body_fails_and_keeps_nothing(tmp_path, glove_small, monkeypatch):
    """The server announces the whole file in Content-Length, then closes after half of it."""
    payload = glove_small.read_bytes()
    monkeypatch.setattr(D.time, "sleep", lambda s: None)

    class Handler(QuietHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload[: len(payload) // 2])
            self.close_connection = True

    with loopback_server(Handler) as base:
        half, whole = len(payload) // 2, len(payload)
        with pytest.raises(PipelineError, match=rf"glove\.txt: received {half:,} of the {whole:,} bytes"):
            D.download(_src(f"{base}/glove.txt"), tmp_path / "raw" / "embeddings")
    assert not (tmp_path / "raw" / "embeddings").exists()
    assert not [p.name for p in (tmp_path / "raw").iterdir()]  # no partial output, no temporary file


@pytest.mark.parametrize("name, members", [("v.txt.gz", ["v.txt"]), ("v.tar.gz", ["v.txt"])])
def test_a_truncated_archive_names_the_file(tmp_path, glove_small, file_server, name, members):
    import gzip

    site, url = file_server
    if name.endswith(".tar.gz"):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
            tf.add(glove_small, "v.txt")
        data = buffer.getvalue()
    else:
        data = gzip.compress(glove_small.read_bytes())
    (site / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(PipelineError, match=rf"{name}: cannot read {name} to the end .*truncated or corrupt"):
        D.download(_src(f"{url}/{name}", members), tmp_path / "raw" / "emb")
    assert not (tmp_path / "raw" / "emb").exists()


def test_leftovers_of_a_killed_run_are_removed_by_the_next(tmp_path, file_server):
    site, url = file_server
    (site / "v.txt").write_text("the 0.1 0.2\n")
    raw = tmp_path / "raw"
    (raw / ".embeddings.abc123.partial").mkdir(parents=True)  # what kill -9 leaves mid-download
    (raw / ".embeddings.abc123.partial" / "big.bin").write_bytes(b"x" * 1000)
    (raw / ".download-embeddings-xyz").mkdir()
    D.download(_src(f"{url}/v.txt"), raw / "embeddings")
    assert sorted(p.name for p in raw.iterdir()) == ["embeddings"]


def test_no_download_writes_an_empty_folder(tmp_path):
    assert D.download(_src(None), tmp_path / "out") == []
    assert (tmp_path / "out").is_dir() and not list((tmp_path / "out").iterdir())


def test_download_over_http_from_loopback_retries_server_errors(tmp_path, glove_small, monkeypatch):
    payload = glove_small.read_bytes()
    requests = []
    monkeypatch.setattr(D.time, "sleep", lambda s: None)  # no real back-off wait in tests

    class Handler(QuietHandler):
        def do_GET(self):
            requests.append(self.path)
            if self.path.endswith("missing.txt"):
                self.send_error(404)
                return
            if len(requests) == 1:  # the first try meets a transient server error
                self.send_error(503)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    with loopback_server(Handler) as base:
        url = f"{base}/vectors/glove.txt"
        written = D.download(_src(url, sha256=hashlib.sha256(payload).hexdigest()), tmp_path / "out")
        assert written[0].name == "glove.txt" and written[0].read_bytes() == payload
        assert len(requests) == 2
        with pytest.raises(PipelineError, match=r"missing\.txt: HTTP 404"):
            D.download(_src(url.replace("glove.txt", "missing.txt")), tmp_path / "out2")


# --- prepare ------------------------------------------------------------------------------------


def _corpus_params(**over) -> P.CorpusParams:
    base = dict(download=None, members=[], sha256=None, source="unused", format="auto", encoding="utf-8",
                header=True, text_column="text", label_column="label", split_column=None, drop_labels=[],
                label_variants="error")
    return P.CorpusParams(**{**base, **over})


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".parquet", ".csv.gz"])
def test_read_table_formats(tmp_path, suffix):
    df = pd.DataFrame({"t": ["good film", "NA", "null"], "y": ["pos", "neg", "NA"]})
    path = tmp_path / f"c{suffix}"
    if suffix.startswith(".csv"):
        df.to_csv(path, index=False)
    elif suffix == ".tsv":
        df.to_csv(path, sep="\t", index=False)
    elif suffix == ".jsonl":
        df.to_json(path, orient="records", lines=True)
    else:
        df.to_parquet(path)
    out, layout = PR.read_corpus(path, _corpus_params(text_column="t", label_column="y"))
    assert layout == "table"
    assert out["text"].tolist() == ["good film", "NA", "null"]  # 'NA' and 'null' are text, not missing
    assert out["label"].tolist() == ["pos", "neg", "NA"]


def test_headerless_csv_and_orange_tab_headers(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("\ufeff1,a fine film\n-1,a dull film\n", encoding="utf-8")
    out, _ = PR.read_corpus(path, _corpus_params(header=False, text_column="1", label_column="0"))
    assert out["label"].tolist() == ["1", "-1"] and out["text"].tolist() == ["a fine film", "a dull film"]
    tab = tmp_path / "r8-train.tab"
    tab.write_text("Category\tText\nd\tstring\nclass\t\nearn\tprofit rose\nacq\tbought a firm\n")
    out, _ = PR.read_corpus(tab, _corpus_params(text_column="Text", label_column="Category"))
    assert out["label"].tolist() == ["earn", "acq"]  # Orange's type and flag rows are not data


def test_missing_column_names_file_and_column(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("text,label\nhello,pos\n")
    with pytest.raises(PipelineError, match=r"c\.csv: no label column 'sentiment'.*columns are: text, label"):
        PR.read_corpus(path, _corpus_params(label_column="sentiment"))


def test_malformed_csv_names_file_and_line(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text('text,label\n"ok",pos\n"unterminated,neg\n')
    with pytest.raises(PipelineError, match=r"c\.csv: cannot read as csv"):
        PR.read_corpus(path, _corpus_params())


def test_wrong_encoding_and_non_text_column_are_named(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("text,label\ncaf\xe9 noir,pos\nbad,neg\n".encode("latin-1"))
    with pytest.raises(PipelineError, match=r"latin\.csv: line 2: not valid utf-8 text .*corpus\.encoding"):
        PR.read_corpus(path, _corpus_params())
    out, _ = PR.read_corpus(path, _corpus_params(encoding="latin-1"))
    assert out["text"][0] == "café noir"
    numbers = tmp_path / "n.parquet"
    pd.DataFrame({"text": [1, 2], "label": ["a", "b"]}).to_parquet(numbers)
    with pytest.raises(PipelineError, match=r"n\.parquet: text column 'text' holds int64 values"):
        PR.read_corpus(numbers, _corpus_params())


def test_malformed_json_line_and_unbalanced_tsv_quote_are_named(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "fine", "label": "pos"}\n{"text": "oops", "label": \n{"text": "x", "label": "neg"}\n')
    with pytest.raises(PipelineError, match=r"c\.jsonl: line 2, column \d+: invalid JSON"):
        PR.read_corpus(path, _corpus_params())
    tsv = tmp_path / "c.tsv"
    rows = [f"review number {i}\t{'pos' if i % 2 else 'neg'}" for i in range(400)]
    rows[9] = '"unbalanced start ' + rows[9]
    rows[49] = rows[49].replace("\t", '"\t')  # a quote 40 lines further down closes it
    tsv.write_text("text\tlabel\n" + "\n".join(rows) + "\n")
    with pytest.raises(PipelineError, match=r"c\.tsv: data row 10: a field runs over several lines and tabs"):
        PR.read_corpus(tsv, _corpus_params())


@pytest.mark.parametrize("name", ["c.csv.gz", "c.jsonl.gz"])
def test_a_truncated_compressed_corpus_names_the_file(tmp_path, name):
    import gzip

    rows = "".join(f'{{"text": "review {i}", "label": "pos"}}\n' for i in range(2000)) if "jsonl" in name \
        else "text,label\n" + "".join(f"review {i},pos\n" for i in range(2000))
    data = gzip.compress(rows.encode())
    (tmp_path / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(PipelineError, match=rf"{name.replace('.', '[.]')}: cannot read"):
        PR.read_corpus(tmp_path / name, _corpus_params())


def test_fasttext_lines(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("__label__pos a fine film\n\n__label__neg __label__meh dull\n")
    out, _ = PR.read_corpus(path, _corpus_params())
    assert out["label"].tolist() == ["pos", "neg"] and out["text"].tolist() == ["a fine film", "dull"]
    path.write_text("__label__pos ok\nno label here\n")
    with pytest.raises(PipelineError, match=r"train\.txt: line 2: expected '__label__<label> <text>'"):
        PR.read_corpus(path, _corpus_params())


def test_folder_tree_layout(tmp_path):
    root = tmp_path / "corpus" / "aclImdb"  # found one level down too
    for split, label, name, text in [("train", "pos", "1.txt", "great"), ("train", "neg", "2.txt", "awful"),
                                     ("test", "pos", "3.txt", "superb"), ("test", "neg", "4.txt", "dire")]:
        (root / split / label).mkdir(parents=True, exist_ok=True)
        (root / split / label / name).write_text(text)
    (root / "train" / "labeledBow.feat").write_text("ignored")
    out, layout = PR.read_corpus(tmp_path / "corpus", _corpus_params())
    assert layout == "folder tree"
    assert sorted(zip(out["split"], out["label"], out["text"])) == [
        ("test", "neg", "dire"), ("test", "pos", "superb"), ("train", "neg", "awful"), ("train", "pos", "great")]


def test_folder_of_per_split_parquet_files(tmp_path):
    data = tmp_path / "hub" / "data"
    data.mkdir(parents=True)
    pd.DataFrame({"text": ["a", "b"], "label": [0, 1]}).to_parquet(data / "train-00000-of-00002.parquet")
    pd.DataFrame({"text": ["c"], "label": [1]}).to_parquet(data / "train-00001-of-00002.parquet")
    pd.DataFrame({"text": ["d"], "label": [0]}).to_parquet(data / "validation-00000-of-00001.parquet")
    pd.DataFrame({"text": ["e"], "label": [1]}).to_parquet(data / "test-00000-of-00001.parquet")
    out, layout = PR.read_corpus(tmp_path / "hub", _corpus_params())
    assert layout == "one file per split"
    assert dict(zip(out["text"], out["split"])) == {"a": "train", "b": "train", "c": "train", "d": "val", "e": "test"}
    (data / "extra.parquet").write_bytes((data / "test-00000-of-00001.parquet").read_bytes())
    with pytest.raises(PipelineError, match="extra.parquet names no split"):
        PR.read_corpus(tmp_path / "hub", _corpus_params())


def test_split_column_values(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("text,label,part\na,x,train\nb,y,Test\nc,x,validation\nd,y,\n")
    out, _ = PR.read_corpus(path, _corpus_params(split_column="part"))
    assert out["split"].fillna("none").tolist() == ["train", "test", "val", "none"]
    path.write_text("text,label,part\na,x,train\nb,y,holdout\n")
    with pytest.raises(PipelineError, match=r"c\.csv: data row 2: split column 'part' holds 'holdout'"):
        PR.read_corpus(path, _corpus_params(split_column="part"))


def test_clean_corpus_counts_every_drop():
    df = pd.DataFrame({"text": ["good", "bad", "", "plot text", "good", "fine", None],
                       "label": ["pos", "neg", "pos", "plot", "pos", None, "neg"]})
    out, report = PR.clean_corpus(df, TextConfig(), ["plot"], drop_duplicates=True)
    assert out["text"].tolist() == ["good", "bad"]
    assert report == {"rows_read": 7, "dropped_missing_label": 1, "dropped_excluded_label": 1,
                      "dropped_empty_text": 2, "dropped_duplicate_text": 1, "rows_kept": 2,
                      "class_counts": {"neg": 1, "pos": 1}}


def test_duplicates_keep_the_test_copy():
    df = pd.DataFrame({"text": ["same", "other", "same", "third", "third"], "label": ["a", "b", "a", "b", "b"],
                       "split": ["train", "train", "test", "test", "test"]})
    out, report = PR.clean_corpus(df, TextConfig(), [], drop_duplicates=True)
    assert report["dropped_duplicate_text"] == 1
    assert out.loc[out["text"] == "same", "split"].tolist() == ["test"]
    assert out.loc[out["text"] == "third", "split"].tolist() == ["test", "test"]  # the given test split stays whole


def test_label_variants_are_an_error_or_merged():
    df = pd.DataFrame({"text": ["a", "b", "c", "d"], "label": ["pos", "Pos ", " pos", "neg"]})
    with pytest.raises(PipelineError, match=r"c\.csv: labels 'pos' \(1\), 'Pos ' \(1\), ' pos' \(1\) differ only"):
        PR.clean_corpus(df, TextConfig(), [], True, "c.csv")
    out, report = PR.clean_corpus(df, TextConfig(), [], True, "c.csv", label_variants="merge")
    assert report["class_counts"] == {"neg": 1, "pos": 3}
    lone = pd.DataFrame({"text": ["a", "b"], "label": [" pos ", "neg"]})  # one spelling: just stripped
    assert PR.clean_corpus(lone, TextConfig(), [], True)[0]["label"].tolist() == ["pos", "neg"]


def test_empty_and_single_class_corpora_are_refused():
    with pytest.raises(PipelineError, match="the corpus is empty"):
        PR.clean_corpus(pd.DataFrame({"text": [], "label": []}), TextConfig(), [], True, "c.csv")
    single = pd.DataFrame({"text": ["a", "b"], "label": ["pos", "pos"]})
    with pytest.raises(PipelineError, match=r"c\.csv: only one class \('pos'\)"):
        PR.clean_corpus(single, TextConfig(), [], True, "c.csv")


def _unsplit(n, labels=("a", "b")):
    return pd.DataFrame({"text": [f"text number {i}" for i in range(n)],
                         "label": [labels[i % len(labels)] for i in range(n)], "split": [None] * n})


def test_hash_split_is_seeded_stratified_and_stable_when_rows_are_added():
    df = _unsplit(4000)
    split, info = PR.assign_splits(df, 0.1, 0.2, seed=7)
    assert info == {"split_from_corpus": 0, "split_by_hash": 4000}
    shares = pd.crosstab(df["label"], split, normalize="index")
    assert np.allclose(shares["test"], 0.2, atol=0.03) and np.allclose(shares["val"], 0.1, atol=0.03)
    again, _ = PR.assign_splits(df.sample(frac=1, random_state=1).sort_index(), 0.1, 0.2, seed=7)
    assert (again == split).all()
    grown = pd.concat([df, _unsplit(6000).iloc[4000:]])
    grown_split, _ = PR.assign_splits(grown, 0.1, 0.2, seed=7)
    assert (grown_split.iloc[:4000].to_numpy() == split.to_numpy()).all()  # no old row moved
    other, _ = PR.assign_splits(df, 0.1, 0.2, seed=8)
    assert (other != split).mean() > 0.2


def test_official_test_split_is_kept_and_val_carved_from_train():
    df = pd.concat([_unsplit(1000).assign(split="train"), _unsplit(1300).iloc[1000:].assign(split="test")])
    split, info = PR.assign_splits(df.reset_index(drop=True), 0.1, 0.2, seed=0)
    assert (split.iloc[1000:] == "test").all()
    assert info["val_carved_from_train"] == (split == "val").sum() and 60 < info["val_carved_from_train"] < 140


def test_a_class_too_small_for_the_test_split_is_an_error():
    df = _unsplit(600)
    tiny = pd.DataFrame({"text": ["rare one", "rare two", "rare three"], "label": ["c"] * 3, "split": [None] * 3})
    df = pd.concat([df, tiny], ignore_index=True)
    seed = next(s for s in range(100) if "test" not in set(PR.assign_splits(df, 0.1, 0.1, s)[0].iloc[-3:]))
    split, _ = PR.assign_splits(df, 0.1, 0.1, seed)
    with pytest.raises(PipelineError, match=r"class 'c' has 3 row\(s\) and none fell in the test split"):
        PR.check_classes(_by_split(df["label"], split), False, "c.csv")
    # the corpus's own test split lacking a class is its authors' choice: a warning
    assert "class 'c' has no test rows" in PR.check_classes(_by_split(df["label"], split), True, "c.csv")
    split.iloc[-3:] = "test"
    with pytest.raises(PipelineError, match="class 'c' has 0 val and 3 test row.*none for training"):
        PR.check_classes(_by_split(df["label"], split), True, "c.csv")


def _by_split(labels: pd.Series, split: pd.Series) -> pd.DataFrame:
    return pd.crosstab(labels, split).reindex(columns=list(PR.SPLITS), fill_value=0)


def _prepare_params(**over) -> P.PrepareParams:
    base = dict(lowercase=True, strip_html=True, strip_urls=True, numbers="keep", drop_duplicates=True,
                val_size=0.2, test_size=0.2, seed=3, workers=1)
    return P.PrepareParams(**{**base, **over})


def _prepared(out: Path) -> dict:
    return {name: pd.read_parquet(out / f"{name}.parquet").assign(tokens=lambda d: d["tokens"].map(list))
            for name in PR.SPLITS}


def test_prepare_in_chunks_and_workers_gives_what_all_at_once_gives(tmp_path):
    """Chunks of 7 rows on one process and on two, and the whole corpus as one chunk: the same splits,
    rows, order and report. A text's test copy in a later chunk wins over its train copy in an earlier
    one; labels are merged, excluded and missing across chunk borders."""
    rows = [(f"review {i} of a {'fine' if i % 2 else 'dull'} film", "Pos " if i == 5 else ("pos" if i % 2 else "neg"),
             "test" if i % 9 == 0 else "train") for i in range(120)]
    rows[3] = ("review 90 of a dull film", "neg", "train")   # a copy of test row 90, 87 rows earlier
    rows[40] = ("plot summary", "plot", "train")
    rows[41] = ("", "pos", "train")
    rows[42] = ("no label", None, "train")
    path = tmp_path / "c.csv"
    pd.DataFrame(rows, columns=["text", "label", "part"]).to_csv(path, index=False)
    corpus = _corpus_params(split_column="part", drop_labels=["plot"], label_variants="merge")
    results, files = [], []
    for chunk_rows, workers in [(7, 1), (7, 2), (10_000, 1)]:
        out = tmp_path / f"out-{chunk_rows}-{workers}"
        report = PR.prepare(path, corpus, _prepare_params(workers=workers), out, workers, chunk_rows=chunk_rows)
        assert sorted(p.name for p in out.iterdir()) == ["test.parquet", "train.parquet", "val.parquet"]  # no shards left
        results.append((report, _prepared(out)))
        files.append([(out / f"{name}.parquet").read_bytes() for name in PR.SPLITS])
    assert files[0] == files[1] == files[2]  # byte for byte: DVC sees the same output
    (report, splits), *others = results
    for other_report, other_splits in others:
        assert other_report == report
        for name in PR.SPLITS:
            pd.testing.assert_frame_equal(other_splits[name], splits[name])
    assert report["dropped_duplicate_text"] == 1 and report["dropped_excluded_label"] == 1
    assert report["dropped_missing_label"] == 1 and report["dropped_empty_text"] == 1
    assert "review 90 of a dull film" in splits["test"]["text"].tolist()
    assert "review 90 of a dull film" not in splits["train"]["text"].tolist() + splits["val"]["text"].tolist()
    assert report["class_counts"] == {"neg": 58, "pos": 58}  # 'Pos ' merged into 'pos'
    assert report["val_carved_from_train"] == report["val_rows"] > 0


def test_prepare_writes_row_groups_across_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(PR, "ROW_GROUP", 25)
    path = tmp_path / "c.jsonl"
    pd.DataFrame({"text": [f"text number {i}" for i in range(200)], "label": ["a", "b"] * 100}).to_json(
        path, orient="records", lines=True)
    PR.prepare(path, _corpus_params(), _prepare_params(val_size=0.1, test_size=0.1), tmp_path / "out", 1, chunk_rows=9)
    train = pq.ParquetFile(tmp_path / "out/train.parquet")
    sizes = [train.metadata.row_group(i).num_rows for i in range(train.num_row_groups)]
    assert sizes[:-1] == [25] * (len(sizes) - 1) and 0 < sizes[-1] <= 25 and sum(sizes) > 100


def test_errors_name_the_row_across_chunks(tmp_path):
    tsv = tmp_path / "c.tsv"
    rows = [f"review number {i}\t{'pos' if i % 2 else 'neg'}" for i in range(400)]
    rows[29] = '"unbalanced start ' + rows[29]
    rows[69] = rows[69].replace("\t", '"\t')
    tsv.write_text("text\tlabel\n" + "\n".join(rows) + "\n")
    with pytest.raises(PipelineError, match=r"c\.tsv: data row 30: a field runs over several lines"):
        PR.read_corpus(tsv, _corpus_params(), chunk_rows=16)
    path = tmp_path / "c.csv"
    path.write_text("text,label,part\n" + "".join(f"t{i},x,train\n" for i in range(40)) + "b,y,holdout\n")
    with pytest.raises(PipelineError, match=r"c\.csv: data row 41: split column 'part' holds 'holdout'"):
        PR.read_corpus(path, _corpus_params(split_column="part"), chunk_rows=16)


# --- vocab --------------------------------------------------------------------------------------


def test_build_vocab_min_freq_max_size_and_order():
    counts = Counter({"b": 3, "a": 3, "c": 1, "d": 2})
    assert V.build_vocab(counts, 1, None) == ["<pad>", "<unk>", "a", "b", "d", "c"]
    assert V.build_vocab(counts, 2, None) == ["<pad>", "<unk>", "a", "b", "d"]
    assert V.build_vocab(counts, 1, 4) == ["<pad>", "<unk>", "a", "b"]


def _alignment(found):
    matrix = np.zeros((len(found), 2), dtype=np.float32)
    rows = np.flatnonzero(found)
    matrix[rows] = np.arange(2 * len(rows), dtype=np.float32).reshape(-1, 2) + 1
    return Alignment(matrix, np.array(found), np.zeros(len(found), bool))


def test_oov_policies():
    itos = ["<pad>", "<unk>", "a", "b", "c"]
    found = [False, False, True, False, True]
    _, zeros = V.fill_missing(_alignment(found), itos, "zeros", 0)
    assert not zeros[[0, 1, 3]].any() and zeros[2].tolist() == [1, 2]
    _, mean = V.fill_missing(_alignment(found), itos, "mean", 0)
    assert mean[3].tolist() == [2, 3] and not mean[0].any()
    kept, unk = V.fill_missing(_alignment(found), itos, "unk", 0)
    assert kept == ["<pad>", "<unk>", "a", "c"] and unk[1].tolist() == [2, 3]
    _, rand = V.fill_missing(_alignment(found), itos, "random", 0)
    _, again = V.fill_missing(_alignment(found), itos, "random", 0)
    assert np.array_equal(rand, again) and not rand[0].any() and rand[3].any()


def test_random_oov_rows_follow_the_pretrained_statistics():
    rng = np.random.default_rng(0)
    n = 4000
    matrix = rng.normal(3.0, 0.5, size=(n, 4)).astype(np.float32)
    found = np.ones(n, bool)
    found[:2002] = False  # specials and 2000 words without vectors
    alignment = Alignment(np.where(found[:, None], matrix, 0), found, np.zeros(n, bool))
    _, filled = V.fill_missing(alignment, ["<pad>", "<unk>"] + [f"w{i}" for i in range(n - 2)], "random", 1)
    assert abs(filled[2:2002].mean() - 3.0) < 0.05 and abs(filled[2:2002].std() - 0.5) < 0.05


def test_a_single_found_vector_still_gives_distinct_random_rows():
    alignment = Alignment(np.array([[0, 0], [0, 0], [0.5, -0.5], [0, 0], [0, 0]], dtype=np.float32),
                          np.array([False, False, True, False, False]), np.zeros(5, dtype=bool))
    _, matrix = V.fill_missing(alignment, ["<pad>", "<unk>", "the", "x", "y"], "random", seed=0)
    assert not np.allclose(matrix[3], matrix[4]) and not np.allclose(matrix[3], matrix[2])


def test_no_vector_found_is_a_clear_error():
    with pytest.raises(PipelineError, match=r"vec\.txt: none of the 2 vocabulary words has a vector in it"):
        V.fill_missing(_alignment([False] * 4), ["<pad>", "<unk>", "x", "y"], "random", 0, "data/vec.txt")


def test_coverage():
    counts = Counter({"a": 3, "b": 1})
    assert V.coverage(counts, {"a": True}) == {"type_coverage": 0.5, "token_coverage": 0.75}


# --- train and predict --------------------------------------------------------------------------


def _toy_problem(n=240, seed=0):
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


def _train_params(**over):
    tp = P.load("train", ROOT / "params.yaml")
    return dataclasses.replace(tp, **{"hidden_size": 16, "epochs": 6, "patience": 6, "min_steps": 0, "batch_size": 16,
                                      "embeddings": "random", "lr": 0.01, "lr_schedule": "constant",
                                      "warmup_steps": 0, "word_dropout": 0.0, "class_weights": "none", **over})


def _fit_once(tp):
    from pipeline.train import build_model, fit, set_determinism

    set_determinism(tp.seed)
    matrix = np.random.default_rng(0).normal(size=(20, 8)).astype(np.float32)
    model = build_model(tp, matrix, 2)
    xs, ys = _toy_problem()
    return fit(model, tp, xs[:180], ys[:180], xs[180:], ys[180:], torch.device("cpu"))


def test_training_learns_and_repeats_exactly():
    first, second = _fit_once(_train_params()), _fit_once(_train_params())
    assert first.best_val_accuracy >= 0.9
    assert [h["val_loss"] for h in first.history] == [h["val_loss"] for h in second.history]
    for key in first.best_state:
        assert torch.equal(first.best_state[key], second.best_state[key])


def test_a_run_too_short_to_unfreeze_the_embeddings_says_so(capsys):
    _fit_once(_train_params(embeddings="freeze_then_finetune", freeze_epochs=3, epochs=2, patience=2))
    assert "stay frozen for the whole run" in capsys.readouterr().err
    _fit_once(_train_params(embeddings="freeze_then_finetune", freeze_epochs=1, epochs=2, patience=2))
    assert "stay frozen" not in capsys.readouterr().err


def test_early_stopping_stops_after_patience():
    result = _fit_once(_train_params(epochs=30, patience=1, lr=0.05))
    assert len(result.history) < 30
    assert len(result.history) == result.best_epoch + 1


def test_small_corpora_get_more_epochs_and_patience():
    from pipeline.train import stretched_epochs

    tp = _train_params(epochs=15, patience=5, min_steps=1000)
    assert stretched_epochs(tp, steps_per_epoch=322) == (15, 5)   # 4,830 steps already
    assert stretched_epochs(tp, steps_per_epoch=37) == (28, 10)   # 1,200 long reviews
    assert stretched_epochs(dataclasses.replace(tp, min_steps=0), 37) == (15, 5)


def test_lr_factor_warmup_and_cosine():
    from pipeline.train import lr_factor

    assert [lr_factor("constant", s, 100, 0) for s in (0, 50, 99)] == [1.0, 1.0, 1.0]
    assert [lr_factor("constant", s, 100, 4) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    cosine = [lr_factor("cosine", s, 100, 0) for s in range(100)]
    assert cosine[0] == 1.0 and abs(cosine[50] - 0.5) < 1e-9 and cosine[-1] < 0.001
    assert all(a >= b for a, b in zip(cosine, cosine[1:]))
    # Warm-up, then the cosine starts from the top.
    assert lr_factor("cosine", 9, 100, 10) == 1.0 and lr_factor("cosine", 10, 100, 10) == 1.0


def _fit_with_steps(tp):
    from pipeline.train import build_model, fit, set_determinism

    set_determinism(tp.seed)
    model = build_model(tp, np.random.default_rng(0).normal(size=(20, 8)).astype(np.float32), 2)
    xs, ys = _toy_problem()
    steps = []
    result = fit(model, tp, xs[:180], ys[:180], xs[180:], ys[180:], torch.device("cpu"),
                 on_step=lambda step, row: steps.append((step, row["lr"])))
    return result, steps


def test_cosine_schedule_decays_per_step_to_zero():
    tp = _train_params(lr_schedule="cosine", epochs=3, patience=3)
    result, steps = _fit_with_steps(tp)
    per_epoch = -(-180 // tp.batch_size)
    assert [s for s, _ in steps] == list(range(1, 3 * per_epoch + 1))
    lrs = [lr for _, lr in steps]
    assert lrs[0] == tp.lr and all(a > b for a, b in zip(lrs, lrs[1:])) and lrs[-1] < 0.01 * tp.lr
    assert [h["lr"] for h in result.history] == [lrs[0], lrs[per_epoch], lrs[2 * per_epoch]]
    assert len(result.step_losses) == len(steps)


def test_plateau_schedule_halves_lr_after_an_epoch_without_improvement():
    result, _ = _fit_with_steps(_train_params(lr_schedule="plateau", epochs=12, patience=12, lr=0.05))
    history, best = result.history, -1.0
    for before, after in zip(history, history[1:]):
        improved = before["val_accuracy"] > best
        best = max(best, before["val_accuracy"])
        assert after["lr"] == (before["lr"] if improved else before["lr"] / 2)
    assert history[-1]["lr"] < history[0]["lr"]  # the run had epochs without improvement


def test_balanced_class_weights():
    from pipeline.train import class_weights

    assert class_weights(np.array([0, 0, 0, 1]), 2, "none") is None
    weights = class_weights(np.array([0, 0, 0, 1]), 2, "balanced")
    torch.testing.assert_close(weights, torch.tensor([4 / 6, 4 / 2]))
    # Each class then carries the same total weight.
    assert float(weights[0] * 3) == float(weights[1] * 1)


def test_balanced_class_weights_on_many_imbalanced_classes():
    from pipeline.train import class_weights

    labels = np.repeat(np.arange(12), [400 // (k + 1) for k in range(12)])
    weights = class_weights(labels, 12, "balanced").numpy()
    totals = weights * np.bincount(labels)
    np.testing.assert_allclose(totals, totals[0], rtol=1e-5)  # every class weighs the same in total
    assert weights[11] > 10 * weights[0]


def test_many_imbalanced_classes_reach_every_split():
    counts = [800 // (k + 1) for k in range(12)]  # 800 down to 66 rows
    df = pd.DataFrame({"text": [f"class {k} text {i}" for k, n in enumerate(counts) for i in range(n)],
                       "label": [f"topic-{k}" for k, n in enumerate(counts) for _ in range(n)], "split": None})
    split, _ = PR.assign_splits(df, 0.1, 0.1, seed=42)
    assert PR.check_classes(_by_split(df["label"], split), False, "c.csv") == []
    shares = pd.crosstab(df["label"], split, normalize="index")
    assert shares["train"].between(0.65, 0.95).all() and (shares["test"] > 0).all()


def test_balanced_class_weights_raise_minority_predictions():
    """On a 9:1 corpus, weighting the loss makes the model predict the rare class more often."""
    from pipeline.inference import predict_proba
    from pipeline.train import build_model, fit, set_determinism

    xs, ys = _toy_problem(n=600, seed=3)
    keep = [i for i in range(len(ys)) if ys[i] == 0 or i % 9 == 0]  # about one positive in ten
    xs, ys = [xs[i] for i in keep], ys[keep]
    predicted_rare = {}
    for mode in ("none", "balanced"):
        tp = _train_params(class_weights=mode, epochs=2, patience=2, lr=0.003)
        set_determinism(tp.seed)
        model = build_model(tp, np.zeros((20, 8), dtype=np.float32), 2)
        result = fit(model, tp, xs, ys, xs, ys, torch.device("cpu"))
        model.load_state_dict(result.best_state)
        predicted_rare[mode] = int((predict_proba(model, xs).argmax(1) == 1).sum())
    assert predicted_rare["balanced"] > predicted_rare["none"], predicted_rare


def test_the_same_model_saves_to_the_same_bytes(tmp_path):
    """So that `dvc repro` twice caches one model file, not two."""
    from pipeline.inference import load_checkpoint, save_checkpoint
    from pipeline.train import build_model

    model = build_model(_train_params(embeddings="finetune"), np.ones((4, 8), dtype=np.float32), 2)
    paths = [tmp_path / "a" / "model.pt", tmp_path / "b" / "model.pt"]
    for path in paths:
        save_checkpoint(path, model, model.state_dict(), ["<pad>", "<unk>", "x", "y"], ["neg", "pos"], TextConfig(), 1, {})
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert not list(tmp_path.rglob("*.partial"))
    assert load_checkpoint(paths[0]).labels == ["neg", "pos"]


@pytest.mark.parametrize("every, step_points", [(2, [2, 4, 6, 8]), (0, [5, 9])])
def test_live_logger_puts_step_series_on_steps_and_epoch_series_on_epochs(tmp_path, every, step_points):
    """Real DVCLive files: step loss every `every` steps (0: once per epoch); epoch rows over epochs."""
    from dvclive import Live

    from pipeline.train import LiveLogger

    epoch_row = {"train_loss": 0.5, "train_accuracy": 0.7, "val_loss": 0.6, "val_accuracy": 0.65,
                 "lr": 0.1, "epoch_seconds": 1.0, "train_tokens_per_second": 10.0}
    with Live(dir=str(tmp_path / "live"), dvcyaml=None, save_dvc_exp=False, report=None) as live:
        logger = LiveLogger(live, every, lr=0.1)
        for step in range(1, 10):  # two epochs: steps 1-5 and 6-9
            logger.step(step, {"loss": float(step), "lr": 0.1 / step})
            if step in (5, 9):
                logger.epoch(step, {**epoch_row, "epoch": 1 if step == 5 else 2})

    def column(name):
        rows = [r.split("\t") for r in (tmp_path / "live/plots/metrics" / name).read_text().splitlines()[1:]]
        return [int(r[0]) for r in rows], [float(r[1]) for r in rows]

    steps, losses = column("train/step_loss.tsv")
    assert steps == step_points
    if every == 2:
        assert losses == [1.5, 3.5, 5.5, 7.5]  # the mean over each window
    else:
        assert losses == [3.0, 7.5]
    assert column("val/accuracy.tsv")[0] == [1, 2]
    assert column("train/loss.tsv")[0] == [1, 2]
    assert column("lr.tsv")[1][-1] == pytest.approx(0.1 / step_points[-1])


def test_predict_cli_reads_args_file_and_stdin(tmp_path, monkeypatch, capsys):
    from pipeline import predict
    from pipeline.inference import save_checkpoint
    from pipeline.train import build_model

    tp = _train_params(embeddings="finetune")
    itos = ["<pad>", "<unk>", "good", "bad"]
    model = build_model(tp, np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32), 2)
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, model.state_dict(), itos, ["neg", "pos"], TextConfig(), 1, {})

    predict.main(["--model", str(path), "Good film", "bad film"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].split("\t")[0] in {"neg", "pos"} and lines[0].endswith("Good film")
    probs = [float(part.split("=")[1]) for part in lines[0].split("\t")[1].split()]
    assert abs(sum(probs) - 1) < 1e-3

    texts = tmp_path / "texts.txt"
    texts.write_text("good\n\nbad\n")
    predict.main(["--model", str(path), "--json", "--file", str(texts)])
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [r["text"] for r in rows] == ["good", "bad"] and set(rows[0]["probabilities"]) == {"neg", "pos"}

    # Typographic and plain apostrophes: the same tokens, so the same prediction.
    predict.main(["--model", str(path), "--json", "the film\u2019s good, isn\u2019t it", "the film's good, isn't it"])
    curly, straight = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert curly["probabilities"] == straight["probabilities"]

    monkeypatch.setattr("sys.stdin", io.StringIO("bad\n"))
    predict.main(["--model", str(path)])
    assert capsys.readouterr().out.strip().endswith("\tbad")

    with pytest.raises(PipelineError, match="no trained model"):
        predict.main(["--model", str(tmp_path / "missing.pt"), "x"])
    with pytest.raises(PipelineError, match="text argument 1 is empty"):
        predict.main(["--model", str(path), ""])
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    with pytest.raises(PipelineError, match="no text to classify"):
        predict.main(["--model", str(path)])


def test_the_checkpoint_carries_the_truncation(tmp_path):
    from pipeline.inference import encode_texts, load_checkpoint, save_checkpoint
    from pipeline.train import build_model

    model = build_model(_train_params(embeddings="finetune"), np.ones((4, 8), dtype=np.float32), 2)
    save_checkpoint(tmp_path / "m.pt", model, model.state_dict(), ["<pad>", "<unk>", "a", "b"], ["x", "y"],
                    TextConfig(), 1, {}, max_tokens=4, truncation="head+tail")
    ckpt = load_checkpoint(tmp_path / "m.pt")
    (ids,) = encode_texts(ckpt, [["a"] * 10 + ["b"] * 10])
    assert ids.tolist() == [2, 3, 3, 3]  # one head token, three tail tokens
    torch.save(model.state_dict(), tmp_path / "weights.pt")  # a weights-only file is not a checkpoint
    with pytest.raises(PipelineError, match=r"weights\.pt: not a checkpoint of this pipeline"):
        load_checkpoint(tmp_path / "weights.pt")


def test_polarity_fixture_is_real_labelled_text():
    rows = polarity_rows()
    assert len(rows) == 200 and {label for _, label in rows} == {"pos", "neg"}


def test_gensim_data_model_through_a_loopback_mirror(tmp_path, monkeypatch, glove_small):
    """gensim's downloader, pointed at a server on 127.0.0.1 that serves its catalogue layout."""
    from gensim.models import KeyedVectors

    from pipeline import embeddings as E

    name = "tiny-glove-50"
    kv = KeyedVectors.load_word2vec_format(glove_small, binary=False, no_header=True)
    site = tmp_path / "site"
    (site / name).mkdir(parents=True)
    kv.save_word2vec_format(str(site / name / f"{name}.gz"), binary=False)  # the catalogue's layout
    (site / name / "__init__.py").write_text("")
    md5 = hashlib.md5((site / name / f"{name}.gz").read_bytes()).hexdigest()
    (site / "list.json").write_text(json.dumps({"corpora": {}, "models": {
        name: {"file_name": f"{name}.gz", "parts": 1, "checksum": md5}}}))

    with serve_directory(site) as base:
        monkeypatch.setenv("GENSIM_DATA_URL", base)
        monkeypatch.setenv("GENSIM_DATA_DIR", str(tmp_path / "gensim-cache"))
        out = tmp_path / "raw"
        written = D.download(_src(f"gensim-data:{name}"), out)
        assert [p.name for p in written] == [f"{name}.gz"]
        source = E.detect(out)
        assert source.format == "word2vec"
        result = E.align(source, ["the", "of", "zzz"])
        np.testing.assert_allclose(result.matrix[:2], kv[["the", "of"]], rtol=1e-6)
        with pytest.raises(PipelineError, match="gensim-data:no-such-model"):
            D.download(_src("gensim-data:no-such-model"), tmp_path / "raw2")


def test_threads_auto_shares_the_cores_among_queue_workers():
    from pipeline.common import resolve_threads

    assert resolve_threads("auto", cores=2, workers=0, in_queue=False) == 2   # `dvc repro` alone
    assert resolve_threads("auto", cores=2, workers=1, in_queue=True) == 2    # `dvc queue start -j 1`
    assert resolve_threads("auto", cores=2, workers=2, in_queue=True) == 1    # `-j 2`: one core each
    assert resolve_threads("auto", cores=16, workers=3, in_queue=True) == 5
    assert resolve_threads("auto", cores=2, workers=1, in_queue=False) == 1   # a repro beside a queue run
    assert resolve_threads("auto", cores=1, workers=4, in_queue=True) == 1
    assert resolve_threads(3, cores=2, workers=2, in_queue=True) == 3


def test_queue_workers_are_counted_from_their_command_lines(tmp_path):
    from pipeline.common import queue_workers

    for pid, argv in {"11": [b"/v/bin/python", b"/v/bin/dvc", b"exp", b"queue-worker", b"dvc-exp-1@localhost"],
                      "12": [b"dvc", b"exp", b"queue-worker", b"dvc-exp-2@localhost", b"--clean"],
                      "13": [b"sh", b"-c", b"dvc exp queue-worker x"],  # one string: a shell, not a worker
                      "14": [b"python", b"-m", b"pipeline.train"]}.items():
        (tmp_path / pid).mkdir()
        (tmp_path / pid / "cmdline").write_bytes(b"\0".join(argv) + b"\0")
    (tmp_path / "self").mkdir()
    assert queue_workers(tmp_path) == 2


def test_an_interrupted_training_resumes_and_ends_as_an_uninterrupted_one(tmp_path):
    """The state saved after epoch 3, through the resume file, into a fresh model with other random
    draws behind it: the rest of the run is the uninterrupted run's, to the bit."""
    from pipeline.train import build_model, fit, load_resume_state, save_resume_state, set_determinism

    tp = _train_params(epochs=6, patience=6, word_dropout=0.1, lr_schedule="cosine", dropout=0.3,
                       embeddings="freeze_then_finetune", freeze_epochs=2)
    matrix = np.random.default_rng(0).normal(size=(20, 8)).astype(np.float32)
    xs, ys = _toy_problem()

    def run(resume_from=None, on_checkpoint=None, seed=tp.seed):
        set_determinism(seed)
        return fit(build_model(tp, matrix, 2), tp, xs[:180], ys[:180], xs[180:], ys[180:], torch.device("cpu"),
                   resume_from=resume_from, on_checkpoint=on_checkpoint)

    full = run()

    class Interrupted(Exception):
        pass

    def save_then_stop(state):
        save_resume_state(tmp_path / "resume.pt", "key-1", state)
        if state["epoch"] == 3:
            raise Interrupted

    with pytest.raises(Interrupted):
        run(on_checkpoint=save_then_stop)
    assert load_resume_state(tmp_path / "resume.pt", "another-run") is None  # other params or data
    state = load_resume_state(tmp_path / "resume.pt", "key-1")
    resumed = run(resume_from=state, seed=tp.seed + 1)
    assert [h["val_loss"] for h in resumed.history] == [h["val_loss"] for h in full.history]
    assert resumed.step_losses == full.step_losses
    assert resumed.best_epoch == full.best_epoch
    for key in full.best_state:
        assert torch.equal(resumed.best_state[key], full.best_state[key]), key


def test_a_damaged_resume_file_means_training_from_the_start(tmp_path, capsys):
    from pipeline.train import load_resume_state

    (tmp_path / "resume.pt").write_bytes(b"PK\x03\x04 not a whole archive")
    assert load_resume_state(tmp_path / "resume.pt", "key") is None
    assert "training from the start" in capsys.readouterr().err


def test_hashed_tfidf_weighs_like_tfidfvectorizer(tmp_path):
    """Streamed in chunks of 3 rows, the hashed TF-IDF gives each document the weights sklearn's
    TfidfVectorizer(sublinear_tf=True, min_df) gives it (the columns differ: hashed, not a vocabulary)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    from pipeline.baseline import HashedTfidf, _identity, read_chunks

    docs = [t.split() for t in ["a good good film", "a bad film", "good acting , bad plot", "bad bad bad",
                                "a film", "an odd one", "good"]]
    path = tmp_path / "train.parquet"
    pd.DataFrame({"tokens": docs, "label": ["x"] * len(docs)}).to_parquet(path)
    hashed = HashedTfidf(ngram_max=2, bits=20, min_df=2).fit(read_chunks(path, 3))
    exact = TfidfVectorizer(analyzer="word", tokenizer=_identity, preprocessor=_identity, token_pattern=None,
                            lowercase=False, ngram_range=(1, 2), sublinear_tf=True, min_df=2)
    want = exact.fit_transform(docs)
    got = hashed.transform(pd.Series(docs))
    for i in range(len(docs)):
        assert np.allclose(sorted(got[i].data[got[i].data > 0]), sorted(want[i].data)), docs[i]


def test_the_out_of_core_baseline_learns_from_chunks(tmp_path):
    from pipeline.baseline import fit_streaming, read_chunks

    rng = np.random.default_rng(0)
    filler = ["the", "film", "plot", "actors", "scene", "story"]

    def split(n):
        labels = rng.choice(["neg", "pos"], n)
        tokens = [list(rng.choice(filler, 6)) + [("great" if lab == "pos" else "awful")] for lab in labels]
        return pd.DataFrame({"tokens": tokens, "label": labels})

    for name, n in (("train", 300), ("val", 60), ("test", 60)):
        split(n).to_parquet(tmp_path / f"{name}.parquet")
    features, clf, c, val_acc = fit_streaming(lambda s: tmp_path / f"{s}.parquet", ngram_max=2, grid=[0.1, 10.0],
                                              min_df=2, bits=16, chunk_rows=40, epochs=3)
    assert val_acc == 1.0 and c in (0.1, 10.0)
    test = next(read_chunks(tmp_path / "test.parquet", 1000))
    assert (clf.predict(features.transform(test["tokens"])) == test["label"].to_numpy()).all()


def test_data_parallel_training_under_torchrun_learns_like_one_process(tmp_path):
    """Two gloo processes launched by torchrun: each takes half of every epoch's batches, the gradients
    are averaged (DistributedDataParallel, rebuilt when the embeddings unfreeze), and both end with the
    same weights and a validation accuracy as good as one process's."""
    import json
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           "-m", "tests.ddp_toy"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "DDP_TOY_OUT": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted((json.loads(f.read_text()) for f in tmp_path.glob("rank*.json")), key=lambda r: r["rank"])
    assert [r["rank"] for r in runs] == [0, 1] and all(r["world"] == 2 for r in runs)
    assert runs[0]["checksum"] == runs[1]["checksum"]  # one model, not two
    assert runs[0]["steps"] == 8 * (180 // 8 // 2)    # half the batches each
    single = _fit_once(_train_params(epochs=8, patience=8, word_dropout=0.1, embeddings="freeze_then_finetune",
                                     freeze_epochs=2, batch_size=8))
    assert runs[0]["val"] >= single.best_val_accuracy - 0.05 and runs[0]["val"] >= 0.9


@pytest.mark.parametrize("max_tokens, truncation", [(None, "head"), (3, "head"), (3, "tail"), (5, "head+tail")])
def test_compact_token_ids_give_what_encode_gives(tmp_path, max_tokens, truncation):
    """The vocab stage's int32 ids + offsets, read through TokenIds, are the sequences `encode` makes
    from the token lists: unknown words, truncation and empty texts alike; read in chunks of 2 rows."""
    from pipeline.data import TokenIds, encode, sequence_lengths
    from pipeline.vocab import write_token_ids

    token_lists = [["a", "good", "film"], [], ["zzz"], list("abcdefghij"), ["good"] * 7 + ["end"]]
    pd.DataFrame({"tokens": token_lists, "label": ["x"] * 5}).to_parquet(tmp_path / "train.parquet")
    itos = ["<pad>", "<unk>", "a", "good", "film", "b", "c", "end", "j"]
    assert write_token_ids(tmp_path / "train.parquet", itos, 1, tmp_path, "train", chunk_rows=2) == 5
    ids = np.load(tmp_path / "train.ids.npy", mmap_mode="r")
    assert ids.dtype == np.int32 and len(ids) == sum(map(len, token_lists))
    compact = TokenIds(tmp_path, "train", 1, max_tokens, truncation)
    expected = encode(token_lists, {w: i for i, w in enumerate(itos)}, 1, max_tokens, truncation)
    assert len(compact) == len(expected)
    for i, want in enumerate(expected):
        assert compact[i].tolist() == want.tolist(), i
    assert sequence_lengths(compact).tolist() == [len(e) for e in expected]


def test_split_tokens_are_counted_in_chunks_like_all_at_once(tmp_path):
    from pipeline.vocab import count_split_tokens, count_tokens

    token_lists = [["a", "b", "a"], [], ["c"], ["a", "c", "d", "d"], ["b"]]
    pd.DataFrame({"tokens": token_lists}).to_parquet(tmp_path / "s.parquet")
    assert count_split_tokens(tmp_path / "s.parquet", chunk_rows=2) == count_tokens(token_lists)
