"""The model over HTTP: a FastAPI app around one loaded checkpoint, served by uvicorn (`textclf-serve`).

    POST /predict   {"text": "..."} or {"texts": [...]}, optional "explain": true
                    -> {"labels": [...], "predictions": [{"label", "probabilities", "explanation"?}, ...]}
    GET  /health    the process answers
    GET  /ready     the model's identity: its md5, the file's md5 now (status "stale" when the file was
                    replaced since it was loaded: restart), the dvc.lock record, labels, vocabulary size
                    (also at /version)
    GET  /          a page to type or paste texts and see labels, probabilities and shaded words
    GET  /openapi.json

Requests are bounded (Limits): the body's bytes, texts per request (fewer when explaining: each
explained text costs `steps` forward and backward passes), characters per text, the texts and the work
(words x passes) waiting for the model, and a deadline per request. Anything malformed (not JSON, not
UTF-8, wrong types, an unknown field, an empty batch, a blank text, a lone surrogate) gets a 4xx whose
"error" names the field; never a traceback. Connections are bounded in time and number
(pipeline/serve_http.py): slow or idle clients never take the place of complete requests.

All model work runs on one thread. Texts of requests that arrive while the model is busy wait together
and go through the next forward pass as one batch (Batcher); how much that pays is measured by
benchmarks/serve_load.py (docs/serving.md). Explanations run on the same thread, a part at a time, when
no classification waits.

Safe by default: the command listens on 127.0.0.1 and, there, answers only requests whose Host header is a
loopback name (a web page cannot reach it by rebinding its own name to 127.0.0.1). Listening wider needs a
token, checked as `Authorization: Bearer <token>` on /predict and /ready (pipeline.cli.serve refuses to
start otherwise). The page carries its own script and style, allowed by hash in a Content-Security-Policy
that allows nothing else: it loads nothing from anywhere and works offline.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import ipaddress
import json
import os
import socket
import sys
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from fastapi import Request  # at module level: FastAPI resolves the endpoint's annotations here

from pipeline.checkpoint import Checkpoint, load_checkpoint, require_model_file
from pipeline.errors import PipelineError
from pipeline.explain import IG_STEPS, explain_texts
from pipeline.inference import classify_texts
from pipeline.serve_http import BoundedH11Protocol, ConnectionBounds, raise_open_files_limit

TOKEN_ENV = "TEXTCLF_SERVE_TOKEN"
PROTECTED = ("/predict", "/ready", "/version")  # what a token guards; the page and /health stay open
MIN_TOKEN_CHARS = 16


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 1 << 20      # a request body past this is refused unread (413)
    max_batch: int = 64                # texts per request
    max_explain_batch: int = 16        # texts per request that asks for explanations
    max_text_chars: int = 20_000       # characters per text
    max_pending_texts: int = 4096      # texts waiting for the model before requests get 503
    max_pending_work: int = 1_000_000  # their cost (Batcher): words x passes; explanations at most half
    request_timeout: float = 30.0      # a request not answered by then gets a 503 (not started) or a 504
    batch_texts: int = 256             # at most this many texts in one forward pass
    batching: bool = True              # concurrent requests' texts share forward passes
    steps: int = IG_STEPS              # integrated-gradients steps


class RequestError(Exception):
    def __init__(self, status: int, field: str, message: str, headers: dict | None = None):
        super().__init__(f"{field}: {message}")
        self.status, self.field, self.message, self.headers = status, field, message, headers


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost: reachable from this machine only."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


TOKEN_ADVICE = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/")


def token_problem(token: str) -> str | None:
    """What keeps a client from sending `token` as `Authorization: Bearer <token>`, or None.

    RFC 6750's b64token: letters, digits, - . _ ~ + / and then only '=' (padding). A header carries visible
    ASCII; a blank at either end is stripped by every client and server, so a token read from a `.env` line
    with a trailing blank could never match what a client sends; a non-ASCII character has no agreed
    encoding in a header at all."""
    body = token.rstrip("=")
    for i, char in enumerate(token):
        where = f"at character {i + 1} of {len(token)}"
        if char in " \t\r\n" and (i == 0 or i == len(token) - 1 or not token.strip()):
            end = "start" if i == 0 else "end"
            return f"a blank (space, tab or line break) at its {end} (a `.env` line or a pasted value?)"
        if char in " \t":
            return f"a blank {where}"
        if ord(char) > 126:
            return f"a non-ASCII character {where}"
        if ord(char) < 32 or ord(char) == 127:
            return f"a control character {where}"
        if char == "=" and i < len(body):
            return f"an '=' {where}, before the end (RFC 6750 allows '=' only as padding at the end)"
        if char not in _TOKEN_CHARS and char != "=":
            return f"the character {char!r} {where}, outside RFC 6750's token characters"
    return None


def check_exposure(host: str, token: str | None, source: str = "the token") -> None:
    """A host other than loopback needs a token of at least MIN_TOKEN_CHARS; a token must be one clients can
    send (token_problem); say why, loudly, naming where the token came from (`source`)."""
    if token is not None:
        problem = token_problem(token)
        if problem is not None:
            raise PipelineError(f"{source}: the token has {problem}: no client could send it as "
                                "'Authorization: Bearer <token>'; use letters, digits and - . _ ~ + / "
                                f"(then '=' at the end only), e.g. {TOKEN_ADVICE}")
        if len(token) < MIN_TOKEN_CHARS:
            raise PipelineError(f"{source}: the token is {len(token)} characters: use at least {MIN_TOKEN_CHARS} "
                                f"({TOKEN_ADVICE})")
    if not is_loopback(host) and token is None:
        raise PipelineError(f"--host {host} would let other machines classify with this model and read what it "
                            f"says: set a token (the {TOKEN_ENV} environment variable, or --token) that clients "
                            "send as 'Authorization: Bearer <token>', or listen on 127.0.0.1 (the default)")


def _file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def dvc_lock_record(model: Path) -> dict | None:
    """What the nearest dvc.lock above the model says of it: {dvc_lock, stage, md5}, or None."""
    from ruamel.yaml import YAML

    model = Path(os.path.abspath(model))  # not resolve(): a model DVC links from its cache stays in the checkout
    for folder in model.parents:
        lock = folder / "dvc.lock"
        if not lock.is_file():
            continue
        try:
            stages = (YAML(typ="safe").load(lock.read_text(encoding="utf-8")) or {}).get("stages", {})
        except Exception:  # a damaged lock file says nothing about the model; the server still serves
            return None
        relative = model.relative_to(folder).as_posix()
        for name, stage in stages.items():
            for out in (stage or {}).get("outs", []) or []:
                if isinstance(out, dict) and out.get("path") == relative and "md5" in out:
                    return {"dvc_lock": str(lock), "stage": name, "md5": out["md5"]}
        return None
    return None


def model_identity(path: Path, ckpt: Checkpoint, md5: str | None = None) -> dict:
    md5 = md5 or _file_md5(path)
    record = dvc_lock_record(path)
    if record is not None:
        record["matches_file"] = record["md5"] == md5
    cfg = ckpt.model.cfg
    return {"path": os.path.abspath(path), "md5": md5, "dvc": record, "labels": ckpt.labels,
            "vocabulary_size": len(ckpt.itos), "encoder": cfg.encoder, "pooling": cfg.pooling,
            "max_tokens": ckpt.max_tokens, "truncation": ckpt.truncation}


def _file_key(path: Path) -> tuple | None:
    """What changes when the file is replaced or rewritten (ctime cannot be set back), or None if absent."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


class ModelWatch:
    """The loaded model against the file on disk now, for /ready: a `dvc repro` that replaced the file since
    the server loaded it shows as status "stale", the two md5s, and what to do (restart). The file is
    hashed again only when its stat (device, inode, size, mtime, ctime) changed."""

    def __init__(self, path: Path, ckpt: Checkpoint, md5: str, key: tuple | None):
        self.path, self.loaded_md5 = Path(path), md5
        self.seen: tuple[tuple | None, str | None] = (key, md5)
        self.static = model_identity(path, ckpt, md5)
        self.lock = asyncio.Lock()

    def _look(self) -> tuple[str | None, dict | None]:
        key = _file_key(self.path)
        if key is None:
            md5 = None
        elif key == self.seen[0]:
            md5 = self.seen[1]
        else:
            try:
                md5 = _file_md5(self.path)
            except OSError:
                md5 = None
            if _file_key(self.path) == key:  # not changed while hashed
                self.seen = (key, md5)
        return md5, dvc_lock_record(self.path)

    async def identity(self) -> dict:
        async with self.lock:
            md5, record = await asyncio.to_thread(self._look)
        if record is not None:
            record["matches_file"] = record["md5"] == md5
            record["matches_loaded"] = record["md5"] == self.loaded_md5
        answer = {**self.static, "dvc": record,
                  "file": {"exists": md5 is not None, "md5": md5, "matches_loaded": md5 == self.loaded_md5}}
        if md5 == self.loaded_md5:
            return {"status": "ready", "model": answer}
        now = f"md5 {md5} on disk" if md5 else "no file there now"
        return {"status": "stale", "model": answer,
                "action": f"{self.path} changed since the server loaded it (loaded md5 {self.loaded_md5}, {now}): "
                          "the server still answers with the loaded model; restart textclf-serve to serve the file"}


@dataclass(eq=False)
class _Work:
    """One request's texts on their way through the model thread."""
    texts: list[str]
    explain: bool
    remaining: int               # its cost not yet run (work units)
    future: asyncio.Future
    done_texts: int = 0
    parts: list = dataclasses.field(default_factory=list)
    started: bool = False        # some of its work has run (a timeout is then a 504, else a 503)
    released: bool = False
    timer: asyncio.TimerHandle | None = None


class Batcher:
    """One model thread; requests' texts queue up while it is busy and go through together.

    Pending work is weighed by its cost, not by its count of texts: a text costs its words (at most the
    model's max_tokens) times its passes, 1 to classify and 4 x steps to explain (integrated gradients runs
    `steps` forward and backward passes; measured 84 to 170 times a classification of the same text).
    Classification goes first: explanations run a few texts at a time when no classification waits, so a
    plain request waits at most for one such part; explanations may hold at most half of
    max_pending_work. Every request has a deadline (request_timeout): past it, a 503 when none of its work
    had started (and its work is dropped), a 504 when some had."""

    def __init__(self, work: Callable, limits: Limits, explain: Callable | None = None,
                 words: Callable[[str], int] | None = None):
        self.work, self.explain_work, self.limits = work, explain, limits
        self.words = words or (lambda text: max(1, len(text.split())))
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="model")
        self.plain: deque = deque()
        self.explaining: deque = deque()
        self.pending = 0                # texts queued or running
        self.pending_work = 0           # their cost
        self.pending_explain_work = 0   # the part of it that explains
        self.closing = False
        self.draining = False
        self.drain_task: asyncio.Task | None = None  # held, so the loop cannot collect it mid-run

    def cost(self, texts: list[str], explain: bool) -> int:
        return sum(self.words(t) for t in texts) * (4 * self.limits.steps if explain else 1)

    def check_room(self, count: int, cost: int = 0, explain: bool = False) -> None:
        limits = self.limits
        if self.closing:
            raise RequestError(503, "server", "shutting down")
        if self.pending + count > limits.max_pending_texts:
            raise RequestError(503, "texts", f"the server is busy ({self.pending} texts waiting, at most "
                               f"{limits.max_pending_texts}); retry later", {"Retry-After": "1"})
        if explain:
            share = limits.max_pending_work // 2
            if cost > share:
                raise RequestError(413, "texts", f"explaining these texts is {cost:,} units of work (words x "
                                   f"{4 * limits.steps} passes), more than one request may ask ({share:,}, half "
                                   "of --max-pending-work): send fewer or shorter texts")
            if self.pending_explain_work + cost > share:
                raise RequestError(503, "texts", f"the server is busy explaining ({self.pending_explain_work:,} "
                                   f"units of work waiting, at most {share:,}); retry later", {"Retry-After": "2"})
        elif self.pending_work and self.pending_work + cost > limits.max_pending_work:
            raise RequestError(503, "texts", f"the server is busy ({self.pending_work:,} units of work waiting, "
                               f"at most {limits.max_pending_work:,}); retry later", {"Retry-After": "1"})

    async def run(self, fn: Callable, *args):
        """Run anything on the model thread."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def classify(self, texts: list[str]):
        """The probabilities of texts, in turn with other requests' texts."""
        return (await self.submit(texts, False))[0]

    async def submit(self, texts: list[str], explain: bool):
        """(probabilities, explanations or None) of one request's texts, within its deadline."""
        cost = self.cost(texts, explain)
        self.check_room(len(texts), cost, explain)
        loop = asyncio.get_running_loop()
        work = _Work(list(texts), explain, cost, loop.create_future())
        self.pending += len(texts)
        self.pending_work += cost
        if explain:
            self.pending_explain_work += cost
        work.timer = loop.call_later(self.limits.request_timeout, self._expire, work)
        (self.explaining if explain else self.plain).append(work)
        if not self.draining:
            self.draining = True
            self.drain_task = loop.create_task(self._drain())
        try:
            return await work.future
        finally:
            self._release(work)  # a client gone away: its work is dropped

    def _release(self, work: _Work, done: int | None = None) -> None:
        """Take work's texts (or `done` texts' worth) out of the pending counts."""
        if work.released:
            return
        cost = work.remaining if done is None else self.cost(work.texts[work.done_texts:work.done_texts + done],
                                                             work.explain)
        self.pending_work -= cost
        if work.explain:
            self.pending_explain_work -= cost
        work.remaining -= cost
        if done is None:
            self.pending -= len(work.texts) - work.done_texts
            work.released = True
            if work.timer is not None:
                work.timer.cancel()
            if not work.future.done():
                work.future.cancel()
        else:
            self.pending -= done
            work.done_texts += done

    def _expire(self, work: _Work) -> None:
        if work.future.done():
            return
        timeout = self.limits.request_timeout
        if work.started:
            error = RequestError(504, "request", f"not answered within {timeout:g} s (the request timeout, "
                                 "--request-timeout): the model is too busy; retry later or send less")
        else:
            error = RequestError(503, "request", f"not started within {timeout:g} s (the request timeout, "
                                 "--request-timeout): the model is too busy; its work was dropped; retry later",
                                 {"Retry-After": "2"})
        work.future.set_exception(error)
        self._release(work)

    def close(self) -> None:
        """Shutting down: every request still waiting gets a 503 now; new ones too."""
        self.closing = True
        for work in [*self.plain, *self.explaining]:
            if not work.future.done():
                work.future.set_exception(RequestError(503, "server", "shutting down"))
            self._release(work)

    def _take_plain(self) -> list[_Work]:
        batch, size = [], 0
        while self.plain and (not batch or (self.limits.batching and
                                            size + len(self.plain[0].texts) <= self.limits.batch_texts)):
            work = self.plain.popleft()
            if not work.future.done():
                batch.append(work)
                size += len(work.texts)
        return batch

    async def _drain(self) -> None:
        try:
            while self.plain or self.explaining:
                if self.plain:
                    batch = self._take_plain()
                    if not batch:
                        continue
                    for work in batch:
                        work.started = True
                    try:
                        probs = await self.run(self.work, [t for work in batch for t in work.texts])
                    except Exception as err:  # every waiting request hears of it; the drain goes on
                        for work in batch:
                            if not work.future.done():
                                work.future.set_exception(err)
                        continue
                    start = 0
                    for work in batch:
                        if not work.future.done():
                            work.future.set_result((probs[start:start + len(work.texts)], None))
                        start += len(work.texts)
                    continue
                work = self.explaining[0]
                if work.future.done():
                    self.explaining.popleft()
                    continue
                # A part of a few texts (about 256 words, at least one text): classification waits for no more.
                count, words = 0, 0
                for text in work.texts[work.done_texts:]:
                    if count and words + self.words(text) > 256:
                        break
                    count, words = count + 1, words + self.words(text)
                part = work.texts[work.done_texts:work.done_texts + count]
                work.started = True
                try:
                    work.parts.append(await self.run(self.explain_work, part))
                except Exception as err:
                    self.explaining.popleft()
                    if not work.future.done():
                        work.future.set_exception(err)
                    continue
                if work.future.done():
                    continue
                self._release(work, done=count)
                if work.done_texts == len(work.texts):
                    self.explaining.popleft()
                    probs = np.concatenate([p for p, _ in work.parts])
                    work.future.set_result((probs, [x for _, xs in work.parts for x in xs]))
        finally:
            self.draining = False


def parse_request(body: bytes, limits: Limits) -> tuple[list[str], bool]:
    """The texts and the explain flag of a /predict body; a RequestError naming the field otherwise."""
    from pydantic import ValidationError

    from pipeline.serve_page import PredictRequest

    try:
        data = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise RequestError(400, "body", f"not valid UTF-8 ({err.reason} at byte {err.start})") from None
    except RecursionError:
        raise RequestError(400, "body", "JSON nested too deeply") from None
    except ValueError as err:  # json.JSONDecodeError, or an integer of too many digits
        raise RequestError(400, "body", f"not valid JSON ({str(err)[:120]})") from None
    if not isinstance(data, dict):
        raise RequestError(422, "body", f"expected a JSON object with \"text\" or \"texts\", got {type(data).__name__}")
    try:
        request = PredictRequest.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"]).lstrip(".") or "body"
        raise RequestError(422, field, first["msg"]) from None
    if (request.text is None) == (request.texts is None):
        raise RequestError(422, "text" if request.text is not None else "texts",
                           "give exactly one of \"text\" (one string) or \"texts\" (a list of strings)")
    field = "text" if request.texts is None else "texts"
    texts = [request.text] if request.texts is None else request.texts
    if not texts:
        raise RequestError(422, "texts", "empty: give at least one text")
    most = limits.max_explain_batch if request.explain else limits.max_batch
    if len(texts) > most:
        raise RequestError(413, "texts", f"{len(texts)} texts: at most {most} per request"
                           + (" with explain" if request.explain else ""))
    for i, text in enumerate(texts):
        where = field if request.texts is None else f"texts[{i}]"
        if len(text) > limits.max_text_chars:
            raise RequestError(413, where, f"{len(text)} characters: at most {limits.max_text_chars}")
        if not text.strip():
            raise RequestError(422, where, "empty: nothing to classify")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise RequestError(422, where, "not valid Unicode (a lone surrogate escape such as \\ud800)") from None
    return texts, request.explain


async def read_body(receive, limit: int) -> bytes:
    """The request body, at most `limit` bytes; a 413 as soon as it is longer."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise RequestError(400, "body", "the client went away before sending the whole body")
        size += len(message.get("body", b""))
        if size > limit:
            raise RequestError(413, "body", f"more than {limit} bytes")
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def create_app(model_path: Path, limits: Limits = Limits(), token: str | None = None, loopback_only: bool = True):
    """The ASGI app over the checkpoint at model_path."""
    from fastapi import FastAPI
    from fastapi.responses import HTMLResponse, JSONResponse
    from starlette.exceptions import HTTPException

    from pipeline.serve_page import PredictRequest, PredictResponse, render_page

    if token is not None:
        check_exposure("127.0.0.1", token)  # a token no client can send is refused here too
    model_path = require_model_file(Path(model_path))
    for _ in range(3):  # what is hashed is what is loaded; the file's stat says whether it changed meanwhile
        key = _file_key(model_path)
        data = model_path.read_bytes()
        if _file_key(model_path) == key:
            break
    ckpt = load_checkpoint(model_path, data=data)
    watch = ModelWatch(model_path, ckpt, hashlib.md5(data).hexdigest(), key)
    del data
    identity = watch.static
    labels = ckpt.labels
    cap = ckpt.max_tokens or 10**9
    batcher = Batcher(lambda texts: classify_texts(ckpt, texts, limits.batch_texts), limits,
                      explain=lambda texts: explained(texts), words=lambda text: max(1, min(len(text.split()), cap)))
    page, page_headers = render_page(labels, limits, token is not None, ckpt.model.cfg.pooling == "attention")

    def explained(texts: list[str]):
        return classify_texts(ckpt, texts, limits.batch_texts), explain_texts(ckpt, texts, steps=limits.steps)

    app = FastAPI(title="textclf-serve", version="1", docs_url=None, redoc_url=None,  # their pages load CDN scripts
                  description="Text classification with a trained checkpoint of this pipeline, with per-token "
                              "explanations (integrated gradients; attention weights when pooling is attention).")
    app.state.identity, app.state.batcher = identity, batcher

    def error(status: int, field: str, message: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"error": f"{field}: {message}", "field": field}, status, headers=headers)

    @app.exception_handler(RequestError)
    async def request_error(request, err: RequestError):
        return error(err.status, err.field, err.message, err.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request, err: HTTPException):
        return error(err.status_code, "path", str(err.detail))

    @app.exception_handler(Exception)
    async def internal_error(request, err: Exception):
        print(f"textclf-serve: {type(err).__name__}: {str(err)[:300]}", file=sys.stderr)
        return error(500, "server", f"internal error ({type(err).__name__}); the server goes on")

    schema = {"requestBody": {"required": True,
                              "content": {"application/json": {"schema": PredictRequest.model_json_schema()}}}}

    @app.post("/predict", openapi_extra=schema, responses={200: {"model": PredictResponse}},
              summary="Labels and probabilities of one text or a batch; explanations on request")
    async def predict(request: Request):
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            raise RequestError(415, "content-type", "send the body as application/json")
        texts, explain = parse_request(await read_body(request.receive, limits.max_body_bytes), limits)
        probs, explanations = await batcher.submit(texts, explain)
        predictions = []
        for i, p in enumerate(probs):
            row = {"label": labels[int(p.argmax())], "probabilities": {lab: float(v) for lab, v in zip(labels, p)}}
            if explanations is not None:
                row["explanation"] = explanations[i].to_dict(labels)
            predictions.append(row)
        return JSONResponse({"labels": labels, "predictions": predictions})

    @app.get("/health", summary="The process answers")
    async def health():
        return {"status": "ok", "auth": "bearer" if token else "none"}

    @app.get("/ready", summary="The model's identity: md5, the dvc.lock record, labels, vocabulary size")
    async def ready():
        return await watch.identity()

    app.add_api_route("/version", ready, methods=["GET"], include_in_schema=False)

    @app.get("/", include_in_schema=False)
    async def index():
        return HTMLResponse(page, headers=page_headers)

    return Guard(app, token, loopback_only, error)


class Guard:
    """ASGI middleware: the Host check on loopback, the bearer token, and the headers every answer carries."""

    def __init__(self, app, token: str | None, loopback_only: bool, error: Callable):
        self.app, self.token, self.loopback_only, self.error = app, token, loopback_only, error
        self.state = app.state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        refusal = None
        host = headers.get("host", "")
        name = host.rsplit("]", 1)[0].lstrip("[") if host.startswith("[") else host.split(":")[0]
        if self.loopback_only and name and not is_loopback(name):  # browsers always send Host
            refusal = self.error(421, "host", f"{host!r} is not a loopback name: this server listens on loopback "
                                 "only (use 127.0.0.1 or localhost)")
        elif self.token and scope["path"] in PROTECTED:
            given = headers.get("authorization", "").strip()
            scheme, _, value = given.partition(" ")
            if not given:
                problem = "missing: send 'Authorization: Bearer <token>'"
            elif scheme.lower() != "bearer":
                problem = f"the scheme is {scheme[:20]!r}, not Bearer: send 'Authorization: Bearer <token>'"
            elif not hmac.compare_digest(value.strip().encode("latin-1"), self.token.encode("ascii")):
                problem = "the token is not the server's (sent as 'Authorization: Bearer <token>')"
            else:
                problem = None
            if problem is not None:
                refusal = self.error(401, "authorization", problem, {"WWW-Authenticate": "Bearer"})
        length = headers.get("content-length", "")
        if refusal is None and length.isdigit() and int(length) > 0 and scope["path"] == "/predict" and \
                int(length) > self.state.batcher.limits.max_body_bytes:
            refusal = self.error(413, "body", f"{length} bytes: at most {self.state.batcher.limits.max_body_bytes}")

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                extra = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
                         (b"cache-control", b"no-store")]
                message = {**message, "headers": list(message.get("headers", [])) + extra}
            await send(message)

        if refusal is not None:
            return await refusal(scope, receive, send_with_headers)
        return await self.app(scope, receive, send_with_headers)


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free one), or an error naming the address."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named: asyncio turns Nagle's algorithm off only on sockets that say so, and with it on, a
    # keep-alive client waits 40 ms (its delayed ACK) for the body uvicorn writes after the headers.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as err:
        sock.close()
        raise PipelineError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    sock.listen(1024)
    return sock


def address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if sock.family == socket.AF_INET6 else f"http://{host}:{port}"


def uvicorn_server(app, log_level: str = "warning", bounds: ConnectionBounds = ConnectionBounds()):
    """uvicorn, quiet (no access log, no server header), its connections bounded in time and number
    (pipeline/serve_http.py): slow or idle clients never take the place of complete requests."""
    import uvicorn

    class Server(uvicorn.Server):
        async def shutdown(self, sockets=None):
            """Requests waiting for the model get until a second before uvicorn's own deadline, then a 503."""
            batcher = getattr(getattr(self.config.app, "state", None), "batcher", None)
            if batcher is not None:
                asyncio.get_running_loop().call_later(max(0.0, bounds.graceful_shutdown - 1), batcher.close)
            await super().shutdown(sockets)

    protocol = type("TextclfH11Protocol", (BoundedH11Protocol,), {"bounds": bounds})
    return Server(uvicorn.Config(app, log_level=log_level, access_log=False, server_header=False,
                                         http=protocol, timeout_keep_alive=max(1, round(bounds.keep_alive)),
                                         timeout_graceful_shutdown=max(1, round(bounds.graceful_shutdown)),
                                         lifespan="off"))


def serve(app, host: str, port: int, announce: Callable[[str], None], log_level: str = "warning",
          bounds: ConnectionBounds = ConnectionBounds()) -> None:
    """Run uvicorn on a socket bound here, so that port 0 works and the real address is announced. The
    open-files limit is raised to hold max_connections sockets (fewer connections when it cannot be)."""
    spare = 64  # the listening socket, the model file, the event loop's own, stdio
    limit = raise_open_files_limit(bounds.max_connections + spare)
    if limit < bounds.max_connections + spare:
        fit = max(16, limit - spare)
        print(f"textclf-serve: the open files limit (ulimit -n) is {limit}: at most {fit} connections "
              f"rather than {bounds.max_connections}", file=sys.stderr, flush=True)
        bounds = dataclasses.replace(bounds, max_connections=fit)
    sock = listen(host, port)
    server = uvicorn_server(app, log_level, bounds)
    announce(address(sock))
    server.run(sockets=[sock])
