"""Downloading one http(s) URL to a file, checked as it arrives: a Content-Encoding (gzip, deflate) is
undone, an HTML page (a login or error page) is refused, a transfer that stalls is stopped, and a body cut
short of its Content-Length is retried; a body without one is kept as received, and download() warns about
it. A redirect goes only to http(s) (never from https to http), at most MAX_REDIRECTS times. What is
written is bounded by `max_bytes`; a failed local write (a full disk, a quota) is never retried, and names
the local path. pipeline.fetch builds on it for every kind of `download`."""

from __future__ import annotations

import hashlib
import http.client
import itertools
import re
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from pathlib import Path, PurePosixPath
from typing import Iterator

from tqdm import tqdm

from pipeline.errors import PipelineError, short
from pipeline.files import _write_failure
from pipeline.params import MAX_DOWNLOAD_BYTES

CHUNK = 1 << 20


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def copy_with_progress(src, dst, total: int | None, desc: str) -> int:
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


class WriteFailed(Exception):
    """Writing the local file failed (a full disk, a quota, a file-size limit): never retried."""

    def __init__(self, path: Path, err: OSError):
        super().__init__(path, err)
        self.path, self.err = path, err

    def __str__(self) -> str:
        reason = _write_failure(self.err) or self.err.strerror or str(self.err)
        return f"cannot write {self.path} ({reason})"


class TooBig(Exception):
    """More than max_bytes was announced or arrived."""


class Sink:
    """A local file being written, at most `limit` bytes of it (None: no bound, `budget` shared by several
    sinks); an OSError of the local file is a WriteFailed, never taken for a network error."""

    def __init__(self, path: Path, budget: list[int] | None = None):
        self.path, self.budget = path, budget
        try:
            self.f = open(path, "wb")
        except OSError as err:
            raise WriteFailed(path, err) from None

    def write(self, data: bytes) -> None:
        if self.budget is not None:
            if len(data) > self.budget[0]:
                raise TooBig()
            self.budget[0] -= len(data)
        try:
            self.f.write(data)
        except OSError as err:
            raise WriteFailed(self.path, err) from None

    def close(self) -> None:
        try:
            self.f.close()  # a buffered write that fails shows here
        except OSError as err:
            raise WriteFailed(self.path, err) from None

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


def check_free_space(folder: Path, needed: int, what: str) -> None:
    """An error when the file system holding `folder` has fewer than `needed` bytes free."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if needed > free:
        raise PipelineError(f"{what}: needs {needed:,} bytes, but only {free:,} are free on the file system "
                            f"of {folder}: free some space, then run again; nothing was written")


def shown(url: str) -> str:
    """A URL as a message shows it: as is, unless it is long or holds unprintable characters."""
    return url if len(url) <= 200 and url.isprintable() else short(url, 200)


class Refused(Exception):
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
                raise Refused(f"redirected ({code}) to {shown(target)}, {problem}")
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None:
            new.redirects = getattr(req, "redirects", 0) + 1
        return new


def open_url(url: str, timeout: float, headers: dict | None = None, context=None):
    """urlopen, with the redirect policy of _Redirects (and an SSL context, when given)."""
    handlers = [_Redirects()]
    if context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    return urllib.request.build_opener(*handlers).open(urllib.request.Request(url, headers=headers or {}),
                                                       timeout=timeout)


class ShortBody(Exception):
    """The server closed the connection before sending the Content-Length it announced."""


class Stalled(Exception):
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


def receive(resp, stall: float, received: list[int]) -> Iterator[bytes]:
    """The body as it arrives (one read at a time, so a drip is seen); counts into received[0].

    The socket's timeout is `stall`: a read that waits that long for a single byte raises TimeoutError."""
    window_start, window_bytes = time.monotonic(), 0
    while True:
        try:
            block = resp.read1(CHUNK)
        except TimeoutError:
            raise Stalled(f"the transfer stalled: nothing arrived for {stall:g} s, "
                           f"after {received[0]:,} bytes") from None
        if not block:
            return
        received[0] += len(block)
        window_bytes += len(block)
        yield block
        now = time.monotonic()
        if now - window_start >= stall:
            if window_bytes < STALL_BYTES:
                raise Stalled(f"the transfer stalled: {window_bytes:,} bytes in {now - window_start:.3g} s "
                               f"(a drip), after {received[0]:,} bytes")
            window_start, window_bytes = now, 0


def content_coding(resp, url: str) -> str | None:
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


def decode_body(blocks: Iterator[bytes], coding: str, url: str) -> Iterator[bytes]:
    """The body with its Content-Encoding undone, in pieces of at most CHUNK bytes (memory stays bounded
    whatever the ratio); a body that ends inside the compressed stream is a ShortBody."""
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
        raise ShortBody(f"the {coding}-encoded body ended before its compressed stream did")


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
    coding = content_coding(resp, url)
    raw = receive(resp, stall, received)
    held: list[bytes] = []  # the raw blocks read while looking at the start of the body
    looking = True

    def holding(blocks):
        for block in blocks:
            if looking:
                held.append(block)
            yield block

    decoded = decode_body(holding(raw), coding, url) if coding else holding(raw)
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
    return fetch_url_checked(url, dest_dir, retries, timeout, stall, max_bytes=max_bytes)[0]


def local_name(url: str) -> str:
    """The name a URL's file is saved under: the last part of its path, or 'download' when that is no
    file name ('', '..', or too long for a file system)."""
    name = PurePosixPath(urllib.parse.urlparse(url).path).name
    return name if name not in ("", ".", "..") and len(name.encode("utf-8", "replace")) <= 200 else "download"


def too_big(url: str, max_bytes: int, limit_key: str, what: str) -> PipelineError:
    return PipelineError(f"{url}: {what}, more than {limit_key} ({max_bytes:,} bytes): raise {limit_key} in "
                         "params.yaml if the file is meant to be that large (null: no bound); nothing was kept")


def write_failed(url: str, err: WriteFailed) -> PipelineError:
    return PipelineError(f"{url}: {err}: free some space (or raise the quota), then run again; the partial "
                         "file was removed and the last good download is untouched")


def fetch_url_checked(url: str, dest_dir: Path, retries: int = 3, timeout: float = 60.0,
               stall: float | None = None, *, name: str | None = None, max_bytes: int | None = MAX_BYTES,
               limit_key: str = "max_bytes", context=None) -> tuple[Path, bool]:
    """fetch_url, and whether the body could be checked to be whole: False for a close-delimited body
    (no Content-Length, not chunked, not compressed for the transfer), which is kept as received.
    `name`: the local file name (default: the URL's); at most `max_bytes` are written (None: no bound)."""
    stall = STALL_SECONDS if stall is None else stall
    name = name or local_name(url)
    dest = dest_dir / name
    for attempt in range(1, retries + 1):
        received, dest_ok = [0], False
        try:
            with open_url(url, min(timeout, stall), context=context) as resp:
                length = resp.headers.get("Content-Length")
                expected = int(length) if length and length.isdigit() else None
                if expected is not None:
                    if max_bytes is not None and expected > max_bytes:
                        raise too_big(url, max_bytes, limit_key, f"its Content-Length is {expected:,} bytes")
                    check_free_space(dest_dir, expected, url)
                checked = expected is not None or bool(getattr(resp, "chunked", False))
                with Sink(dest, None if max_bytes is None else [max_bytes]) as out:
                    checked = _save_body(resp, out, url, name, stall, received) or checked
            # http.client does not complain when a body ends early: compare with what was announced.
            if expected is not None and received[0] != expected:
                raise ShortBody(f"received {received[0]:,} of the {expected:,} bytes its Content-Length announced")
            dest_ok = True
            return dest, checked
        except TooBig:
            raise too_big(url, max_bytes, limit_key, "the body went on past the bound") from None
        except WriteFailed as err:
            raise write_failed(url, err) from None
        except Refused as err:
            raise PipelineError(f"{url}: {err}") from None
        except urllib.error.HTTPError as err:
            if err.code < 500 or attempt == retries:
                where = f" (redirected to {err.url})" if err.url and err.url != url else ""
                raise PipelineError(f"{url}: HTTP {err.code} {err.reason}{where}") from None
        except ShortBody as err:
            if attempt == retries:
                raise PipelineError(f"{url}: {err} (the transfer was cut short {retries} times)") from None
        except (urllib.error.URLError, OSError, TimeoutError, http.client.HTTPException, Stalled) as err:
            if attempt == retries:
                raise PipelineError(f"{url}: download failed after {retries} tries: {err}") from None
        finally:
            if not dest_ok:
                dest.unlink(missing_ok=True)  # nothing half-received is kept, whatever stopped it
        time.sleep(2 ** (attempt - 1))
    raise AssertionError("unreachable")

