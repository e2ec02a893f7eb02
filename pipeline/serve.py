"""The model over HTTP: a FastAPI app around one loaded checkpoint, served by uvicorn (`textclf-serve`).

    POST /predict   {"text": "..."} or {"texts": [...]}, optional "explain": true, "min_confidence": P
                    -> {"labels": [...], "predictions": [{"label", "probabilities", "explanation"?}, ...]}
                    (probabilities calibrated; below P, or the server's --min-confidence, label null and
                    reason "uncertain: ..."); a multi-label model answers {"labels": [...], "probabilities",
                    "explanations"?: one per label given} per text (pipeline.tasks.MultiLabel)
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
import socket
import sys
from pathlib import Path
from typing import Callable

from fastapi import Request  # at module level: FastAPI resolves the endpoint's annotations here

from pipeline.checkpoint import load_checkpoint, require_model_file
from pipeline.errors import PipelineError
from pipeline.files import DuplicateKey, unique_keys
from pipeline.explain import explain_label_sets, explain_texts, part_note
from pipeline.inference import predict_texts
from pipeline.serve_http import BoundedH11Protocol, ConnectionBounds, raise_open_files_limit
from pipeline.serve_identity import ModelWatch, dvc_lock_record, file_key, model_identity  # noqa: F401
from pipeline.serve_queue import Batcher, Limits, RequestError  # noqa: F401 (Batcher: the tests' too)
from pipeline.text import tokenize

# A multi-label model: the labels explained per text at most (each costs an integrated-gradients pass).
EXPLAINED_LABELS = 3

TOKEN_ENV = "TEXTCLF_SERVE_TOKEN"
PROTECTED = ("/predict", "/ready", "/version")  # what a token guards; the page and /health stay open
MIN_TOKEN_CHARS = 16


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


def parse_request(body: bytes, limits: Limits) -> tuple[list[str], bool, float | None]:
    """The texts, the explain flag and the minimum confidence (None: not given) of a /predict body; a
    RequestError naming the field otherwise."""
    from pydantic import ValidationError

    from pipeline.serve_page import PredictRequest

    try:
        data = json.loads(body.decode("utf-8"), object_pairs_hook=unique_keys)
    except DuplicateKey as err:  # json.loads would keep the last one: which texts was meant?
        raise RequestError(422, str(err.args[0])[:80], "given twice in one JSON object") from None
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
    return texts, request.explain, request.min_confidence


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


def create_app(model_path: Path, limits: Limits = Limits(), token: str | None = None, loopback_only: bool = True,
               min_confidence: float | None = None):
    """The ASGI app over the checkpoint at model_path; `min_confidence`: a request's default."""
    from fastapi import FastAPI
    from fastapi.responses import HTMLResponse, JSONResponse
    from starlette.exceptions import HTTPException

    from pipeline.serve_page import PredictRequest, PredictResponse, render_page

    if token is not None:
        check_exposure("127.0.0.1", token)  # a token no client can send is refused here too
    model_path = require_model_file(Path(model_path))
    for _ in range(3):  # what is hashed is what is loaded; the file's stat says whether it changed meanwhile
        key = file_key(model_path)
        data = model_path.read_bytes()
        if file_key(model_path) == key:
            break
    ckpt = load_checkpoint(model_path, data=data)
    watch = ModelWatch(model_path, ckpt, hashlib.md5(data).hexdigest(), key)
    del data
    identity = watch.static
    labels = ckpt.labels
    cap = ckpt.max_tokens or 10**9
    multi_label = ckpt.task.name == "multi_label"
    batcher = Batcher(lambda texts: predict_texts(ckpt, texts, limits.batch_texts), limits,
                      explain=lambda texts: explained(texts), words=lambda text: max(1, min(len(text.split()), cap)),
                      explained_per_text=min(EXPLAINED_LABELS, len(labels)) if multi_label else 1)
    page, page_headers = render_page(labels, limits, token is not None, ckpt.model.cfg.pooling == "attention",
                                     (ckpt.thresholds if ckpt.shipped == "lstm" else ckpt.shipped_thresholds)
                                     if multi_label else None, min_confidence, part_note(ckpt))

    def explained(texts: list[str]):
        predictions = predict_texts(ckpt, texts, limits.batch_texts)  # a text with no tokens: no label, no explanation
        labelled = [i for i, reason in enumerate(predictions.reasons) if reason is None]
        explanations = [None] * len(texts)
        if predictions.multi_label:  # one explanation per label given
            index = {label: j for j, label in enumerate(labels)}
            # The EXPLAINED_LABELS most probable labels given: what the Batcher's cost counted.
            sets = [sorted((index[label] for label in predictions.label(i, labels)),
                           key=lambda j, i=i: -predictions.probs[i, j])[:EXPLAINED_LABELS] for i in labelled]
            tokens = [tokenize(texts[i], ckpt.text_config) for i in labelled]
            found = explain_label_sets(ckpt, tokens, sets, steps=limits.steps)
        else:
            found = explain_texts(ckpt, [texts[i] for i in labelled],  # toward the shipped model's label
                                  [int(predictions.probs[i].argmax()) for i in labelled], steps=limits.steps)
        for i, explanation in zip(labelled, found):
            explanations[i] = explanation
        return predictions, explanations

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
        texts, explain, least = parse_request(await read_body(request.receive, limits.max_body_bytes), limits)
        answers, explanations = await batcher.submit(texts, explain)
        answers = answers.abstaining(min_confidence if least is None else least)
        predictions = []
        for i in range(len(answers)):  # pipeline.inference: a text with no tokens has a null label and a reason
            row = answers.answer(i, labels)
            if explanations is not None and answers.multi_label:
                row["explanations"] = None if explanations[i] is None else [x.to_dict(labels) for x in explanations[i]]
            elif explanations is not None:
                row["explanation"] = None if explanations[i] is None else explanations[i].to_dict(labels)
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
