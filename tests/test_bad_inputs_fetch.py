"""Bad inputs at download (issue 16, items 5-7), each from a real HTTP server on 127.0.0.1: a body sent
with Content-Encoding gzip/deflate, an HTML page (a login or error page) where data was asked for, a
body without Content-Length, and a transfer that stalls or drips."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.server
import threading
import time
import zlib
from pathlib import Path

import pytest
import yaml

from pipeline import fetch, params
from pipeline.errors import PipelineError
from pipeline.stages import download as stage

REPO = Path(__file__).resolve().parents[1]
CSV = "".join(f"{i},review number {i} was {'good' if i % 3 else 'bad'} {i * 7919 % 1000},"
              f"{'fresh' if i % 2 else 'rotten'}\n" for i in range(60_000)).encode()
LOGIN_PAGE = (b"<!DOCTYPE html>\n<html><head><title>Sign in - Data Portal</title></head>"
              b"<body><form action='/login'>user <input name=u></form></body></html>\n")


def _src(download, members=(), sha256=None):
    return params.SourceParams(download=download, members=list(members), sha256=sha256, source="unused")


@contextlib.contextmanager
def loopback_server(handler):
    """An HTTP server on 127.0.0.1 in a thread; yields its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class Handler(http.server.BaseHTTPRequestHandler):
    """Answers every GET from `routes`: path -> (headers, body); HTTP/1.0, so a body without a
    Content-Length ends when the connection closes."""

    routes: dict = {}
    requests: list = []

    def do_GET(self):
        type(self).requests.append(self.path)
        if self.path not in self.routes:
            self.send_error(404)
            return
        headers, body = self.routes[self.path]
        self.send_response(int(headers.get("status", 200)))
        for key, value in headers.items():
            if key != "status":
                self.send_header(key, value)
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:  # the client gave up
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    """Yields (routes, requests, base URL): fill routes with path -> (headers, body)."""
    class H(Handler):
        routes, requests = {}, []

    with loopback_server(H) as base:
        yield H.routes, H.requests, base


@pytest.fixture
def no_backoff(monkeypatch):
    monkeypatch.setattr(fetch.time, "sleep", lambda s: None)


def _stage_project(tmp_path: Path, monkeypatch, download: str, sha256: str | None = None) -> Path:
    """A folder holding this repository's params.yaml with corpus.download set, as the working directory;
    the stage then writes data/raw/corpus there."""
    data = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    data["corpus"].update(download=download, members=[], sha256=sha256)
    project = tmp_path / "project"
    project.mkdir(exist_ok=True)
    (project / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    monkeypatch.chdir(project)
    return project


def _tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


# --- item 5: Content-Encoding ---------------------------------------------------------------------

def _raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


@pytest.mark.parametrize("coding, encode", [
    ("gzip", gzip.compress),
    ("x-gzip", gzip.compress),
    ("gzip", lambda d: gzip.compress(d[:1000]) + gzip.compress(d[1000:])),  # two gzip members
    ("deflate", zlib.compress),        # what the HTTP standard means by deflate: zlib-wrapped
    ("deflate", _raw_deflate),         # what some servers send instead
], ids=["gzip", "x-gzip", "gzip-two-members", "deflate-zlib", "deflate-raw"])
def test_a_compressed_transfer_encoding_is_decoded_before_saving(tmp_path, server, coding, encode):
    routes, _, base = server
    body = encode(CSV)
    routes["/corpus.csv"] = ({"Content-Type": "text/csv", "Content-Encoding": coding,
                              "Content-Length": str(len(body))}, body)
    out = tmp_path / "raw" / "corpus"
    written = fetch.download(_src(f"{base}/corpus.csv", sha256=hashlib.sha256(CSV).hexdigest()), out)
    assert written == [out / "corpus.csv"]
    assert written[0].read_bytes() == CSV  # what the server meant, not its compressed transfer


def test_a_gz_file_labelled_gzip_encoded_is_kept_as_the_gz_file(tmp_path, server):
    """Apache's AddEncoding labels a .gz file's own compression as a transfer encoding: the file named by
    the URL is the .gz (as curl and browsers save it); a .gz compressed again on the way is decoded once."""
    routes, _, base = server
    gz = gzip.compress(CSV)
    routes["/corpus.csv.gz"] = ({"Content-Encoding": "gzip", "Content-Length": str(len(gz))}, gz)
    twice = gzip.compress(gz)
    routes["/twice.csv.gz"] = ({"Content-Encoding": "gzip", "Content-Length": str(len(twice))}, twice)

    written = fetch.download(_src(f"{base}/corpus.csv.gz"), tmp_path / "a")
    assert written[0].read_bytes() == gz
    written = fetch.download(_src(f"{base}/corpus.csv.gz", ["corpus.csv"]), tmp_path / "b")
    assert written[0].read_bytes() == CSV
    written = fetch.download(_src(f"{base}/twice.csv.gz"), tmp_path / "c")
    assert written[0].read_bytes() == gz


def test_an_undecodable_or_cut_transfer_encoding_is_an_error(tmp_path, server, no_backoff):
    routes, requests, base = server
    routes["/br.csv"] = ({"Content-Encoding": "br", "Content-Length": "4"}, b"\x0b\x01\x80\x00")
    with pytest.raises(PipelineError, match=rf"^{base}/br\.csv: the server sent the body with Content-Encoding "
                                            r"'br', which cannot be decoded here"):
        fetch.download(_src(f"{base}/br.csv"), tmp_path / "raw" / "corpus")
    cut = gzip.compress(CSV)[:5000]  # close-delimited, so only the gzip stream can tell it ended early
    routes["/cut.csv"] = ({"Content-Encoding": "gzip"}, cut)
    with pytest.raises(PipelineError, match=rf"^{base}/cut\.csv: the gzip-encoded body ended before its "
                                            r"compressed stream did \(the transfer was cut short 3 times\)$"):
        fetch.download(_src(f"{base}/cut.csv"), tmp_path / "raw" / "corpus")
    assert requests.count("/cut.csv") == 3
    assert not list((tmp_path / "raw").iterdir())  # no output, no temporary file


# --- item 6: an HTML page instead of data ---------------------------------------------------------

@pytest.mark.parametrize("headers, body, said", [
    ({"Content-Type": "text/html; charset=utf-8"}, LOGIN_PAGE, r"text/html, titled 'Sign in - Data Portal'"),
    ({"Content-Type": "text/csv"}, LOGIN_PAGE, r"text/csv, but starting '<!DOCTYPE html>\\n<htm'"),
    ({}, b"\xef\xbb\xbf\r\n  <html><body>Internal error</body></html>", r"no Content-Type, but starting '<html>"),
    ({"Content-Type": "text/html", "Content-Encoding": "gzip"}, gzip.compress(LOGIN_PAGE), r"text/html"),
], ids=["text/html", "labelled-csv", "no-type-bom", "gzip-encoded"])
def test_an_html_page_is_refused_and_the_previous_download_is_kept(tmp_path, server, headers, body, said):
    routes, _, base = server
    routes["/corpus.csv"] = ({"Content-Type": "text/csv", "Content-Length": str(len(CSV))}, CSV)
    out = tmp_path / "raw" / "corpus"
    fetch.download(_src(f"{base}/corpus.csv"), out)
    before = _tree(out)
    routes["/corpus.csv"] = ({**headers, "Content-Length": str(len(body))}, body)
    with pytest.raises(PipelineError, match=rf"^{base}/corpus\.csv: got an HTML page \({said}.*\), not data: "
                                            r"a login or error page\?") as err:
        fetch.download(_src(f"{base}/corpus.csv"), out)
    assert "\n" not in str(err.value)
    assert _tree(out) == before  # the good download, untouched
    assert [p.name for p in (tmp_path / "raw").iterdir()] == ["corpus"]  # no temporary left


def test_a_login_page_behind_a_redirect_is_named_and_the_stage_keeps_the_corpus(tmp_path, server, monkeypatch):
    routes, _, base = server
    routes["/data/corpus.zip"] = ({"Content-Type": "text/csv", "Content-Length": str(len(CSV))}, CSV)
    _stage_project(tmp_path, monkeypatch, f"{base}/data/corpus.zip")
    stage.main(["corpus"])
    before = _tree(Path("data/raw/corpus"))
    assert before["corpus.zip"][0] == CSV
    routes["/data/corpus.zip"] = ({"status": 302, "Location": f"{base}/login?next=/data/corpus.zip"}, b"")
    routes["/login?next=/data/corpus.zip"] = ({"Content-Type": "text/html", "Content-Length": str(len(LOGIN_PAGE))},
                                              LOGIN_PAGE)
    with pytest.raises(PipelineError, match=rf"^{base}/data/corpus\.zip: got an HTML page \(text/html, titled "
                                            rf"'Sign in - Data Portal'\) \(redirected to {base}/login\?next="):
        stage.main(["corpus"])
    assert _tree(Path("data/raw/corpus")) == before
    assert [p.name for p in Path("data/raw").iterdir()] == ["corpus"]


def test_data_is_not_taken_for_html(tmp_path, server):
    """A CSV mislabelled text/html, a CSV whose text holds tags, and an .html file asked for by name."""
    routes, _, base = server
    tagged = b"text,label\n<b>bold</b> <html> review,fresh\n" + CSV
    routes["/mislabelled.csv"] = ({"Content-Type": "text/html", "Content-Length": str(len(CSV))}, CSV)
    routes["/tagged.csv"] = ({"Content-Type": "text/csv", "Content-Length": str(len(tagged))}, tagged)
    routes["/page.html"] = ({"Content-Type": "text/html", "Content-Length": str(len(LOGIN_PAGE))}, LOGIN_PAGE)
    for name, body in [("mislabelled.csv", CSV), ("tagged.csv", tagged), ("page.html", LOGIN_PAGE)]:
        written = fetch.download(_src(f"{base}/{name}"), tmp_path / name)
        assert written[0].read_bytes() == body


# --- item 7: no Content-Length; a transfer that stalls ----------------------------------------------

def test_a_body_without_content_length_is_kept_with_a_warning(tmp_path, server, capsys):
    routes, _, base = server
    routes["/corpus.csv"] = ({"Content-Type": "text/csv"}, CSV)  # HTTP/1.0, ended by closing
    routes["/sized.csv"] = ({"Content-Type": "text/csv", "Content-Length": str(len(CSV))}, CSV)
    written = fetch.download(_src(f"{base}/corpus.csv"), tmp_path / "a", key="corpus.download")
    assert written[0].read_bytes() == CSV
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"warning: {base}/corpus.csv: the server sent no Content-Length, so nothing could "
                          f"check that the whole file arrived; kept the {len(CSV):,} bytes received")
    assert hashlib.sha256(CSV).hexdigest() in err and "set corpus.sha256" in err
    # With a sha256 to check, a Content-Length, or a gzip stream (its end, CRC and length must arrive),
    # there is nothing to warn about.
    fetch.download(_src(f"{base}/corpus.csv", sha256=hashlib.sha256(CSV).hexdigest()), tmp_path / "b")
    fetch.download(_src(f"{base}/sized.csv"), tmp_path / "c")
    routes["/gzipped.csv"] = ({"Content-Encoding": "gzip"}, gzip.compress(CSV))
    assert fetch.download(_src(f"{base}/gzipped.csv"), tmp_path / "d")[0].read_bytes() == CSV
    assert capsys.readouterr().err == ""


def test_the_stage_warns_about_a_body_without_content_length(tmp_path, server, monkeypatch, capsys):
    routes, _, base = server
    routes["/rt.csv"] = ({"Content-Type": "text/csv"}, CSV[:120])
    _stage_project(tmp_path, monkeypatch, f"{base}/rt.csv")
    stage.main(["corpus"])
    assert Path("data/raw/corpus/rt.csv").read_bytes() == CSV[:120]
    captured = capsys.readouterr()
    assert f"warning: {base}/rt.csv: the server sent no Content-Length" in captured.err
    assert "set corpus.sha256 to it" in captured.err
    assert "data/raw/corpus/rt.csv: 120 bytes" in captured.out


@pytest.fixture
def dripping_server():
    """A server whose /corpus.csv sends headers (with or without a Content-Length) and `first` bytes, then
    either goes silent or drips a byte every `gap` seconds; everything it does ends within 10 s."""
    release = threading.Event()
    plan = {}

    class H(Handler):
        requests = []

        def do_GET(self):
            type(self).requests.append(self.path)
            self.send_response(200)
            if plan["length"]:
                self.send_header("Content-Length", str(len(CSV)))
            self.end_headers()
            try:
                self.wfile.write(CSV[: plan["first"]])
                deadline = time.monotonic() + 10
                for i in range(plan["first"], len(CSV)):
                    if release.wait(plan["gap"]) or time.monotonic() > deadline:
                        return
                    self.wfile.write(CSV[i: i + 1])
            except OSError:  # the client gave up
                pass

    with loopback_server(H) as base:
        try:
            yield plan, H.requests, base
        finally:
            release.set()


@pytest.mark.parametrize("length", [True, False], ids=["content-length", "close-delimited"])
def test_a_stalled_transfer_is_stopped_retried_and_nothing_kept(tmp_path, dripping_server, monkeypatch,
                                                                no_backoff, length):
    plan, requests, base = dripping_server
    plan.update(length=length, first=120, gap=60)  # 120 bytes, then silence
    monkeypatch.setattr(fetch, "STALL_SECONDS", 0.4)
    out = tmp_path / "raw" / "corpus"
    out.mkdir(parents=True)
    (out / "corpus.csv").write_bytes(b"text,label\ngood,fresh\n")  # the previous good download
    before = _tree(out)
    start = time.monotonic()
    with pytest.raises(PipelineError, match=rf"^{base}/corpus\.csv: download failed after 3 tries: the transfer "
                                            r"stalled: nothing arrived for 0\.4 s, after 120 bytes$"):
        fetch.download(_src(f"{base}/corpus.csv"), out)
    assert time.monotonic() - start < 5
    assert len(requests) == 3  # retried like any network error
    assert _tree(out) == before
    assert [p.name for p in (tmp_path / "raw").iterdir()] == ["corpus"]  # nothing half-received kept


def test_a_drip_is_a_stall(tmp_path, dripping_server, monkeypatch, no_backoff):
    """Bytes that keep coming, but fewer than STALL_BYTES in STALL_SECONDS, never end a read's timeout."""
    plan, requests, base = dripping_server
    plan.update(length=False, first=10, gap=0.02)
    monkeypatch.setattr(fetch, "STALL_SECONDS", 0.4)
    start = time.monotonic()
    with pytest.raises(PipelineError, match=rf"^{base}/corpus\.csv: download failed after 3 tries: the transfer "
                                            r"stalled: \d+ bytes in 0\.4\d* s \(a drip\), after \d+ bytes$"):
        fetch.download(_src(f"{base}/corpus.csv"), tmp_path / "raw" / "corpus")
    assert time.monotonic() - start < 5 and len(requests) == 3
    assert not list((tmp_path / "raw").iterdir())
