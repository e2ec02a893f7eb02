"""Fetching a corpus or vectors (pipeline.fetch): http(s) from a loopback server, archives and their
members, checksums, retries, truncated bodies and archives, leftovers of a killed run, gensim-data."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.server
import io
import json
import tarfile
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from pipeline import fetch, http_download, params, vectors
from pipeline.errors import PipelineError

def _src(download, members=(), sha256=None):
    return params.SourceParams(download=download, members=list(members), sha256=sha256, source="unused")


@contextlib.contextmanager
def loopback_server(handler):
    """An HTTP server on 127.0.0.1 in a thread; yields its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
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
    written = fetch.download(_src(f"{url}/test_glove.txt"), out)
    assert written == [out / "test_glove.txt"] and written[0].read_bytes() == glove_small.read_bytes()

    with zipfile.ZipFile(site / "glove.zip", "w") as zf:
        zf.write(glove_small, "glove/test_glove.txt")
    digest = hashlib.sha256((site / "glove.zip").read_bytes()).hexdigest()
    written = fetch.download(_src(f"{url}/glove.zip", ["glove/test_glove.txt"], digest), out)
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
    written = fetch.download(_src(f"{url}/corpus.tar.gz", ["aclImdb/train/", "aclImdb/test/"]), out)
    assert sorted(str(p.relative_to(out)) for p in written) == ["test/neg/2.txt", "train/pos/1.txt"]
    assert (out / "train/pos/1.txt").read_text() == "good"


def test_download_refuses_local_paths_escaping_members_and_bad_checksums(tmp_path, glove_small, file_server):
    with pytest.raises(PipelineError, match=r"'corpus\.download' is .*test_glove\.txt.*read in place: name it in 'source'"):
        fetch.download(_src(str(glove_small)), tmp_path / "out", key="corpus.download")
    site, url = file_server
    with tarfile.open(site / "evil.tar.gz", "w:gz") as tf:
        tf.add(glove_small, "../../etc/passwd")
    with pytest.raises(PipelineError, match="escapes the output folder"):
        fetch.download(_src(f"{url}/evil.tar.gz", ["../../etc/passwd"]), tmp_path / "out")
    (site / "g.txt").write_bytes(glove_small.read_bytes())
    with pytest.raises(PipelineError, match="sha256 mismatch"):
        fetch.download(_src(f"{url}/g.txt", sha256="0" * 64), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.*"))  # no partial directory left behind


def test_a_truncated_http_body_fails_and_keeps_nothing(tmp_path, glove_small, monkeypatch):
    """The server announces the whole file in Content-Length, then closes after half of it."""
    payload = glove_small.read_bytes()
    monkeypatch.setattr(http_download.time, "sleep", lambda s: None)

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
            fetch.download(_src(f"{base}/glove.txt"), tmp_path / "raw" / "embeddings")
    assert not (tmp_path / "raw" / "embeddings").exists()
    assert not [p.name for p in (tmp_path / "raw").iterdir()]  # no partial output, no temporary file


@pytest.mark.parametrize("name, members", [("v.txt.gz", ["v.txt"]), ("v.tar.gz", ["v.txt"])])
def test_a_truncated_archive_names_the_file(tmp_path, glove_small, file_server, name, members):
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
        fetch.download(_src(f"{url}/{name}", members), tmp_path / "raw" / "emb")
    assert not (tmp_path / "raw" / "emb").exists()


def test_leftovers_of_a_killed_run_are_removed_by_the_next(tmp_path, file_server):
    site, url = file_server
    (site / "v.txt").write_text("the 0.1 0.2\n")
    raw = tmp_path / "raw"
    (raw / ".embeddings.abc123.partial").mkdir(parents=True)  # what kill -9 leaves mid-download
    (raw / ".embeddings.abc123.partial" / "big.bin").write_bytes(b"x" * 1000)
    (raw / ".download-embeddings-xyz").mkdir()
    fetch.download(_src(f"{url}/v.txt"), raw / "embeddings")
    assert sorted(p.name for p in raw.iterdir()) == ["embeddings"]


def test_no_download_writes_a_folder_holding_only_a_note(tmp_path):
    """`download: null`: nothing fetched; a dot file (which no reader takes for data) says so, and keeps
    DVC from warning that the output folder is empty."""
    assert fetch.download(_src(None), tmp_path / "out") == []
    assert [p.name for p in (tmp_path / "out").iterdir()] == [fetch.NOTHING_DOWNLOADED]
    assert "nothing was fetched" in (tmp_path / "out" / fetch.NOTHING_DOWNLOADED).read_text()


def test_download_over_http_from_loopback_retries_server_errors(tmp_path, glove_small, monkeypatch):
    payload = glove_small.read_bytes()
    requests = []
    monkeypatch.setattr(http_download.time, "sleep", lambda s: None)  # no real back-off wait in tests

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
        written = fetch.download(_src(url, sha256=hashlib.sha256(payload).hexdigest()), tmp_path / "out")
        assert written[0].name == "glove.txt" and written[0].read_bytes() == payload
        assert len(requests) == 2
        with pytest.raises(PipelineError, match=r"missing\.txt: HTTP 404"):
            fetch.download(_src(url.replace("glove.txt", "missing.txt")), tmp_path / "out2")


def test_gensim_data_model_through_a_loopback_mirror(tmp_path, monkeypatch, glove_small):
    """A gensim-data mirror (GENSIM_DATA_URL) on 127.0.0.1 serving the catalogue's layout."""
    from gensim.models import KeyedVectors

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
        out = tmp_path / "raw"
        written = fetch.download(_src(f"gensim-data:{name}"), out)
        assert [p.name for p in written] == [f"{name}.gz"]
        source = vectors.detect(out)
        assert source.format == "word2vec"
        result = vectors.align(source, ["the", "of", "zzz"])
        np.testing.assert_allclose(result.matrix[:2], kv[["the", "of"]], rtol=1e-6)
        with pytest.raises(PipelineError, match="gensim-data:no-such-model"):
            fetch.download(_src("gensim-data:no-such-model"), tmp_path / "raw2")
