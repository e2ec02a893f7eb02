"""Files: atomic writes, reading JSON, opening compressed text, and the errors reading can raise."""

from __future__ import annotations

import base64
import contextlib
import errno
import json
import math
import os
import re
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Iterator

from pipeline.errors import PipelineError


# What reading a truncated or corrupt file (compressed, archived or plain) raises, in any reader.
READ_ERRORS = (EOFError, OSError, zlib.error, zipfile.BadZipFile, tarfile.TarError)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `target`; move it onto `target` only if the block succeeds.

    Works for files and directories alike. The temporary name starts with a dot, carries the writer's
    process id and ends in `.partial` (`.NAME.pid123-x1y2.partial`), so a crash never leaves something
    that DVC or a rerun could take for the real output, and the next writer removes only the leftovers
    of writers that are gone: two writers of one output at once never delete each other's files. Both
    succeed; the output is whole, and the last to finish wins.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(target.parent, f".{target.name}.*.partial")
    tmp = writer_temp(target.parent, f".{target.name}.")
    try:
        yield tmp
        _replace(tmp, target)
    except OSError as err:
        reason = _write_failure(err)
        if reason is None:
            raise
        raise PipelineError(f"{target}: cannot write the output ({reason}); free space or raise the limit, "
                            "then run again: the last good output is untouched") from None
    finally:
        _remove(tmp)


def writer_temp(directory: Path, prefix: str, suffix: str = ".partial") -> Path:
    """A fresh path in `directory` (nothing there yet) named `PREFIXpid<this process>-<random>SUFFIX`:
    remove_stale then knows whose it is."""
    tmp = Path(tempfile.mkdtemp(prefix=f"{prefix}pid{os.getpid()}-", suffix=suffix, dir=directory))
    tmp.rmdir()  # callers writing a single file get a path with nothing at it yet
    return tmp


def _remove(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    except IsADirectoryError:  # made a folder meanwhile
        shutil.rmtree(path, ignore_errors=True)


def _replace(tmp: Path, target: Path) -> None:
    """Rename `tmp` onto `target`. A folder at `target` is first renamed aside (atomically), then
    removed: another writer of the same output may put its own folder there in between, so try again
    until the rename lands (last writer wins; the output is always one writer's, whole)."""
    aside = None
    try:
        for _ in range(1000):
            if target.is_dir() and not target.is_symlink():
                aside = aside or writer_temp(target.parent, f".{target.name}.")
                with contextlib.suppress(FileNotFoundError):  # another writer moved it first
                    os.rename(target, aside)
            try:
                os.replace(tmp, target)
                return
            except OSError as err:  # a folder landed at target meanwhile (another writer's)
                if err.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.EISDIR):
                    raise
            finally:
                if aside is not None:
                    _remove(aside)
        raise PipelineError(f"{target}: other processes keep writing this output; run one at a time")
    finally:
        if aside is not None:
            _remove(aside)


_WRITE_FAILURES = {errno.ENOSPC: "no space left on the device", errno.EFBIG: "file too large for the size limit",
                   errno.EDQUOT: "disk quota exceeded", errno.EROFS: "read-only file system"}


def _write_failure(err: OSError) -> str | None:
    """What a full disk, a file-size limit, a quota or a read-only mount looks like, from the errno, or
    from the message for errors that carry none (Arrow's, a worker process's); None for anything else."""
    if err.errno in _WRITE_FAILURES:
        return _WRITE_FAILURES[err.errno]
    text = str(err)
    return next((reason for code, reason in _WRITE_FAILURES.items() if os.strerror(code) in text), None)


def check_output_file(path: str | os.PathLike, *protected: str | os.PathLike) -> Path:
    """`path` as a Path, if a command may write a file there; else a PipelineError naming it and why.

    atomic_path replaces a directory at its target (what stages want for their output folders), so a
    command writing one file must refuse a directory there before it starts, and a target that is (or
    resolves to, through links or `..`) one of its own inputs, `protected`."""
    path = Path(path)
    if path.is_dir():
        raise PipelineError(f"{path}: is a directory, and writing the output there would delete it; "
                            "name a file to write")
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise PipelineError(f"{path}: cannot write there: {parent} is a file, not a folder")
    target = path.resolve()
    for source in protected:
        if source is None:
            continue
        same = Path(source).resolve() == target
        with contextlib.suppress(OSError):
            same = same or os.path.samefile(source, path)  # a hard link of it
        if same:
            raise PipelineError(f"{path}: the output would replace the input {source}; name another file")
    return path


def remove_stale(directory: Path, pattern: str) -> None:
    """Delete what a killed run left behind (its temporary files or folders matching `pattern`).

    A name carrying `pid<N>-` (writer_temp) belongs to a writer that may still be at work: it is kept
    while that process lives (and started before the file was last changed, so a reused process id is
    not taken for the writer). Names without one are from older code, or from a writer that is gone."""
    for leftover in directory.glob(pattern):
        if not _writer_alive(leftover):
            _remove(leftover)


def _writer_alive(path: Path) -> bool:
    import psutil

    pids = re.findall(r"pid(\d+)-", path.name)
    if not pids:
        return False
    try:
        changed = path.lstat().st_mtime
        process = psutil.Process(int(pids[-1]))
        return process.status() != psutil.STATUS_ZOMBIE and process.create_time() <= changed + 1
    except FileNotFoundError:  # gone already: nothing to remove (a writer_temp is a name with nothing at it at times)
        return True
    except (psutil.NoSuchProcess, ValueError, OverflowError):
        return False
    except psutil.AccessDenied:  # another user's process: it may be the writer
        return True


_SPECIAL = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
            (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def special_kind(path: str | os.PathLike) -> str | None:
    """'a FIFO (named pipe)', 'a character device', ... for what is neither a regular file nor a folder
    (through symbolic links); None for those, and for what does not exist."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    return next((name for test, name in _SPECIAL if test(mode)), None)


def check_data_path(path: str | os.PathLike, key: str) -> None:
    """A params key's data (`key`: corpus.source, embeddings.source, ...) is regular files and folders
    only: else an error naming the FIFO or device (reading one would wait forever, and so does DVC,
    which hashes every file of a dependency). A folder is checked file by file."""
    def refuse(found, kind):
        fix = "point the key at a regular file or folder" if found == path else "move it out of the folder"
        raise PipelineError(f"{found}: is {kind}, not a regular file or folder ({key}); reading it could wait "
                            f"forever, DVC's hashing too: {fix}")

    kind = special_kind(path)
    if kind:
        refuse(path, kind)
    if os.path.isdir(path):
        for root, dirs, names in os.walk(path):
            for name in dirs:  # a link to a folder: os.walk, the stages and DVC's hashing all pass it over
                if os.path.islink(full := os.path.join(root, name)):
                    raise PipelineError(f"{full}: a symbolic link to a folder, inside {path} ({key}): the files "
                                        "under it would be read by neither the stage nor DVC; copy them in instead")
            for name in names:
                full = os.path.join(root, name)
                if (kind := special_kind(full)):
                    refuse(Path(full), kind)
                elif not os.path.exists(full):  # os.walk lists a broken link or a loop of links as a file
                    raise PipelineError(f"{full}: a symbolic link that leads nowhere (its target is missing, or "
                                        f"it is a loop of links), inside {path} ({key}): the stage would pass it over "
                                        "and DVC cannot hash it; remove it or fix its target")


def write_json(path: str | os.PathLike, data) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def pyplot():
    """matplotlib's pyplot on the headless Agg backend (stages run without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: str | os.PathLike) -> None:
    """Write a matplotlib figure as PNG, atomically, and free it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    pyplot().close(fig)


class DuplicateKey(Exception):
    """A JSON object naming one key twice (json.loads would keep the last silently); args[0]: the key."""
    pass


def unique_keys(pairs: list) -> dict:
    """object_pairs_hook for json.loads: a dict, or DuplicateKey."""
    row = dict(pairs)
    if len(row) != len(pairs):
        seen = set()
        raise DuplicateKey(next(k for k, _ in pairs if k in seen or seen.add(k)))
    return row


def json_object_line(line: str, path: str | os.PathLike, lineno: int) -> dict:
    """One line of a JSON-lines file as an object; an error naming the file, line and column otherwise."""
    try:
        row = json.loads(line, object_pairs_hook=unique_keys)
    except json.JSONDecodeError as err:
        raise PipelineError(f"{path}: line {lineno}, column {err.colno}: invalid JSON: {err.msg}") from None
    except DuplicateKey as err:  # json.loads keeps the last silently: the text or label read could be either
        raise PipelineError(f"{path}: line {lineno}: the field {err.args[0]!r} is given twice in one object; "
                            "keep one") from None
    if not isinstance(row, dict):
        raise PipelineError(f"{path}: line {lineno}: expected a JSON object, got {type(row).__name__}")
    return row


def json_safe(value):
    """`value` as JSON can hold it: NaN and infinities as None, bytes as base64 text, in nested values too."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, dict):
        return {key: json_safe(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def json_dumps(value) -> str:
    """Valid JSON (never NaN); values JSON has no type for (dates, decimals) as their text."""
    return json.dumps(json_safe(value), ensure_ascii=False, allow_nan=False, default=str)


def json_text(value):
    return None if value is None else json_dumps(value)


def read_json(path: str | os.PathLike):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PipelineError(f"{path}: file not found (did the stage that writes it run?)") from None
    except json.JSONDecodeError as err:
        raise PipelineError(f"{path}: line {err.lineno}, column {err.colno}: invalid JSON: {err.msg}") from None



# Compressed data is known by its first bytes, whatever the file is called: a gzip file named .csv is
# read as gzip, and a .zst or .zip name is opened by what it holds, not refused or misread.
_MAGIC = ((b"\x1f\x8b", "gzip"), (b"BZh", "bz2"), (b"\xfd7zXZ\x00", "xz"), (b"\x28\xb5\x2f\xfd", "zstd"),
          (b"PK\x03\x04", "zip"))


def compression_of(path: str | os.PathLike) -> str | None:
    """gzip, bz2, xz, zstd or zip, from the file's first bytes; None for anything else."""
    with open(path, "rb") as f:
        head = f.read(6)
    return next((name for magic, name in _MAGIC if head.startswith(magic)), None)


def open_binary(path: str | os.PathLike, prefer: tuple[str, ...] = ()):
    """A file for reading bytes, decompressed by what its first bytes say it is (compression_of).

    A zip must hold one file (folders aside), or exactly one whose name ends in one of `prefer`."""
    import bz2
    import gzip
    import lzma

    path = Path(path)
    kind = compression_of(path)
    if kind is None:
        return open(path, "rb", buffering=1 << 20)
    if kind == "zstd":
        import pyarrow as pa  # its zstd codec: no extra dependency

        return pa.input_stream(str(path), compression="zstd")
    if kind == "zip":
        archive = zipfile.ZipFile(path)
        members = [m for m in archive.namelist() if not m.endswith("/")]
        chosen = [m for m in members if m.lower().endswith(prefer)] if prefer else []
        if len(chosen) != 1:
            chosen = members
        if len(chosen) != 1:
            archive.close()
            raise PipelineError(f"{path}: a zip of {len(members)} files ({', '.join(members[:5])}); expected one "
                                "(take the one to read out with `members` in params.yaml)")
        return archive.open(chosen[0])
    return {"gzip": gzip.open, "bz2": bz2.open, "xz": lzma.open}[kind](path, "rb")


def open_text(path: str | os.PathLike, encoding: str = "utf-8"):
    """A text file, decompressed by its first bytes (open_binary), with universal newlines."""
    import io

    return io.TextIOWrapper(open_binary(path), encoding=encoding, newline=None)


def check_encoding(encoding: str, where: str) -> str:
    """`encoding` if Python knows it; else an error naming `where` it was given (an option or a key)."""
    import codecs

    try:
        codecs.lookup(encoding)
    except LookupError:
        raise PipelineError(f"{where}: {encoding!r} is not a text encoding Python knows "
                            "(e.g. utf-8, latin-1, cp1252)") from None
    return encoding


def check_writable(*folders: str | os.PathLike) -> None:
    """Each folder (made if missing) takes a new file; else an error naming it, before any work is spent."""
    for folder in map(Path, folders):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check.", suffix=".partial"):
                pass
        except OSError as err:
            raise PipelineError(f"{folder}: cannot write there ({err.strerror or err}); "
                                "the outputs go there") from None

