"""textclf-serve (pipeline.serve, pipeline.cli.serve): the real uvicorn server on 127.0.0.1, called over HTTP.

The server runs in a thread of the test process (the same code `textclf-serve` runs, on a socket bound to a
free loopback port), except where the console script itself is the subject (a subprocess). Only 127.0.0.1
is ever listened on or called."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.errors import PipelineError
from pipeline.explain import explain_texts
from pipeline.inference import classify_texts
from pipeline.serve_http import ConnectionBounds, raise_open_files_limit
from pipeline.serve import Batcher, Limits, RequestError, check_exposure, create_app, listen, model_identity, \
    uvicorn_server
from tests.helpers import ROOT
from tests.test_plots_offline import NO_NETWORK, require_chromium
from tests.tiny_model import TEXTS

LIMITS = Limits(max_body_bytes=64 * 1024, max_batch=8, max_explain_batch=4, max_text_chars=2000)
TOKEN = "s3cret-token-for-the-tests"
ENV = dict(os.environ, PYTHONPATH=str(ROOT))


class LiveServer:
    """uvicorn serving `app` from a thread, on a free port of 127.0.0.1."""

    def __init__(self, app, bounds: ConnectionBounds = ConnectionBounds()):
        self.sock = listen("127.0.0.1", 0)
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn_server(app, bounds=bounds)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                chunked: bool = False) -> tuple[int, dict, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            if chunked:
                conn.request(method, path, body=iter([body[i:i + 8192] for i in range(0, len(body), 8192)]),
                             headers=headers or {}, encode_chunked=True)
            else:
                conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()

    def post(self, payload, headers: dict | None = None) -> tuple[int, dict]:
        status, _, body = self.request("POST", "/predict", json.dumps(payload).encode(),
                                       {"Content-Type": "application/json", **(headers or {})})
        return status, json.loads(body)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def server(tiny_model_path):
    live = LiveServer(create_app(tiny_model_path, LIMITS))
    yield live
    live.stop()


@pytest.fixture(scope="module")
def guarded(tiny_model_path):
    live = LiveServer(create_app(tiny_model_path, LIMITS, token=TOKEN))
    yield live
    live.stop()


TEXTS_TO_SERVE = [t for t in TEXTS if t.strip()]


def test_predict_gives_textclf_predicts_probabilities(server, tiny_model_path, tmp_path):
    """The bar: /predict's probabilities are `textclf-predict --json`'s, to the 4 decimals it prints."""
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli.predict", "--model", str(tiny_model_path), "--json",
                           *TEXTS_TO_SERVE], cwd=tmp_path, capture_output=True, text=True, env=ENV)
    assert proc.returncode == 0, proc.stderr
    printed = [json.loads(line) for line in proc.stdout.splitlines()]
    status, batch = server.post({"texts": TEXTS_TO_SERVE})
    assert status == 200, batch
    singles = [server.post({"text": text})[1]["predictions"][0] for text in TEXTS_TO_SERVE]
    for row, served, single in zip(printed, batch["predictions"], singles):
        assert served["label"] == single["label"] == row["label"]
        for label, p in row["probabilities"].items():
            assert abs(served["probabilities"][label] - p) <= 5e-5 + 1e-9, (row, served)
            assert abs(single["probabilities"][label] - p) <= 5e-5 + 1e-9, (row, single)
    assert batch["labels"] == list(printed[0]["probabilities"])


def test_explanations_over_http_are_the_librarys(server, tiny_ckpt):
    texts = ["a gripping , beautifully acted film", "dull and far too long"]
    status, data = server.post({"texts": texts, "explain": True})
    assert status == 200, data
    for served, expected in zip(data["predictions"], explain_texts(tiny_ckpt, texts)):
        x = served["explanation"]
        assert x["tokens"] == expected.tokens and x["target"] == served["label"]
        np.testing.assert_allclose(x["attributions"], expected.attributions, atol=1e-5)
        np.testing.assert_allclose(x["attention"], expected.attention, atol=1e-5)
    assert "explanation" not in server.post({"texts": texts})[1]["predictions"][0]


def test_a_text_with_no_tokens_after_cleaning_gets_no_label_and_a_reason(server):
    """Markup only, a link only, invisible characters only: the prepare stage drops such texts, so the model
    never saw one. Before, each got a confident-looking label; now null, with the reason, per text."""
    from pipeline.inference import NO_TOKENS

    texts = ["<br/>", "a gripping , beautifully acted film", "https://example.com/x", "\u200b\u200b"]
    for explain in (False, True):
        status, data = server.post({"texts": texts, "explain": explain})
        assert status == 200, data
        empty = [data["predictions"][i] for i in (0, 2, 3)]
        expected = {"label": None, "probabilities": None, "reason": NO_TOKENS}
        assert all(p == ({**expected, "explanation": None} if explain else expected) for p in empty), empty
        good = data["predictions"][1]
        assert good["label"] in data["labels"] and "reason" not in good
        assert (good["explanation"] is not None) if explain else "explanation" not in good


def test_concurrent_requests_each_get_their_own_answer(server, tiny_ckpt):
    """Requests arriving together share forward passes; each still gets the probabilities of its own text."""
    texts = [f"{word} film , {n} times" for n, word in enumerate(["gripping", "dull", "moving", "flat"] * 6)]
    expected = {t: p for t, p in zip(texts, classify_texts(tiny_ckpt, texts))}
    answers: dict[str, dict] = {}
    barrier = threading.Barrier(len(texts))

    def ask(text: str) -> None:
        barrier.wait()
        answers[text] = server.post({"text": text})[1]

    threads = [threading.Thread(target=ask, args=(t,)) for t in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(answers) == len(texts)
    for text, answer in answers.items():
        probs = [answer["predictions"][0]["probabilities"][lab] for lab in tiny_ckpt.labels]
        np.testing.assert_allclose(probs, expected[text], atol=1e-5)


def _json(value) -> bytes:
    return json.dumps(value).encode()


J = {"Content-Type": "application/json"}
HUGE = b'{"text": "' + b"a" * 100_000 + b'"}'
# (what, method, path, body, headers, chunked, status, the field the error names)
MALFORMED = [
    ("truncated JSON", "POST", "/predict", b'{"text": ', J, False, 400, "body"),
    ("not JSON", "POST", "/predict", b"classify this", J, False, 400, "body"),
    ("an empty body", "POST", "/predict", b"", J, False, 400, "body"),
    ("a trailing comma", "POST", "/predict", b'{"texts": ["a",]}', J, False, 400, "body"),
    ("invalid UTF-8 in a string", "POST", "/predict", b'{"text": "\xff\xfe"}', J, False, 400, "body"),
    ("invalid UTF-8 alone", "POST", "/predict", b"\xc3\x28", J, False, 400, "body"),
    ("Latin-1", "POST", "/predict", '{"text": "café"}'.encode("latin-1"), J, False, 400, "body"),
    ("UTF-16", "POST", "/predict", '{"text": "a"}'.encode("utf-16"), J, False, 400, "body"),
    ("nested too deep", "POST", "/predict", b"[" * 30_000 + b"]" * 30_000, J, False, 400, "body"),
    ("an integer of 5000 digits", "POST", "/predict", b'{"text": ' + b"1" * 5000 + b"}", J, False, 400, "body"),
    ("NaN for text", "POST", "/predict", b'{"text": NaN}', J, False, 422, "text"),
    ("a number for text", "POST", "/predict", _json({"text": 5}), J, False, 422, "text"),
    ("a list for text", "POST", "/predict", _json({"text": ["a"]}), J, False, 422, "text"),
    ("a string for texts", "POST", "/predict", _json({"texts": "abc"}), J, False, 422, "texts"),
    ("a number among texts", "POST", "/predict", _json({"texts": ["a", 2]}), J, False, 422, "texts[1]"),
    ("null among texts", "POST", "/predict", _json({"texts": ["a", None]}), J, False, 422, "texts[1]"),
    ("an object among texts", "POST", "/predict", _json({"texts": [{"text": "a"}]}), J, False, 422, "texts[0]"),
    ("a string for explain", "POST", "/predict", _json({"text": "a", "explain": "yes"}), J, False, 422, "explain"),
    ("a number for explain", "POST", "/predict", _json({"text": "a", "explain": 1}), J, False, 422, "explain"),
    ("an unknown field", "POST", "/predict", _json({"txt": "a"}), J, False, 422, "txt"),
    ("text and texts", "POST", "/predict", _json({"text": "a", "texts": ["b"]}), J, False, 422, "text"),
    ("texts given twice (json.loads kept the last)", "POST", "/predict", b'{"texts": ["good"], "texts": ["bad"]}', J,
     False, 422, "texts"),
    ("neither", "POST", "/predict", _json({}), J, False, 422, "texts"),
    ("null text", "POST", "/predict", _json({"text": None}), J, False, 422, "texts"),
    ("a list at the top", "POST", "/predict", _json([1, 2]), J, False, 422, "body"),
    ("a string at the top", "POST", "/predict", _json("a text"), J, False, 422, "body"),
    ("null at the top", "POST", "/predict", _json(None), J, False, 422, "body"),
    ("an empty batch", "POST", "/predict", _json({"texts": []}), J, False, 422, "texts"),
    ("an empty text", "POST", "/predict", _json({"text": ""}), J, False, 422, "text"),
    ("a blank text", "POST", "/predict", _json({"text": " \n\t "}), J, False, 422, "text"),
    ("an empty text in a batch", "POST", "/predict", _json({"texts": ["fine", ""]}), J, False, 422, "texts[1]"),
    ("a lone surrogate", "POST", "/predict", b'{"text": "\\ud800 film"}', J, False, 422, "text"),
    ("too many texts", "POST", "/predict", _json({"texts": ["a"] * 9}), J, False, 413, "texts"),
    ("too many to explain", "POST", "/predict", _json({"texts": ["a"] * 5, "explain": True}), J, False, 413, "texts"),
    ("a text too long", "POST", "/predict", _json({"texts": ["ok", "a " * 1001]}), J, False, 413, "texts[1]"),
    ("a huge body", "POST", "/predict", HUGE, J, False, 413, "body"),
    ("a huge body, chunked", "POST", "/predict", HUGE, J, True, 413, "body"),
    ("text/plain", "POST", "/predict", _json({"text": "a"}), {"Content-Type": "text/plain"}, False, 415,
     "content-type"),
    ("a form", "POST", "/predict", b"text=a", {"Content-Type": "application/x-www-form-urlencoded"}, False, 415,
     "content-type"),
    ("no content type", "POST", "/predict", _json({"text": "a"}), {}, False, 415, "content-type"),
    ("GET /predict", "GET", "/predict", None, {}, False, 405, "path"),
    ("an unknown path", "POST", "/predictions", _json({"text": "a"}), J, False, 404, "path"),
]


def test_200_malformed_requests_get_4xx_naming_the_field_and_the_server_goes_on(server):
    for i in range(200):
        what, method, path, body, headers, chunked, status, field = MALFORMED[i % len(MALFORMED)]
        got, _, answer = server.request(method, path, body, headers, chunked)
        assert got == status, (what, got, answer[:300])
        data = json.loads(answer)
        assert data["field"] == field and data["error"].startswith(f"{field}: "), (what, data)
        assert b"Traceback" not in answer
    assert server.request("GET", "/health")[0] == 200
    status, data = server.post({"texts": ["a gripping film", "dull"], "explain": True})
    assert status == 200 and len(data["predictions"]) == 2


def test_health_ready_and_the_models_identity(server, tiny_model_path, tiny_ckpt):
    assert json.loads(server.request("GET", "/health")[2]) == {"status": "ok", "auth": "none"}
    for path in ("/ready", "/version"):
        status, _, body = server.request("GET", path)
        model = json.loads(body)["model"]
        assert status == 200 and model["md5"] == hashlib.md5(tiny_model_path.read_bytes()).hexdigest()
        assert model["labels"] == tiny_ckpt.labels and model["vocabulary_size"] == len(tiny_ckpt.itos)
        assert model["dvc"] is None and model["pooling"] == "attention"  # no dvc.lock above the tiny model


def test_the_identity_names_the_dvc_lock_record_of_the_model(tiny_model_path, tiny_ckpt, tmp_path):
    checkout = tmp_path / "checkout"
    (checkout / "models").mkdir(parents=True)
    model = shutil.copy(tiny_model_path, checkout / "models" / "model.pt")
    md5 = hashlib.md5(Path(model).read_bytes()).hexdigest()
    lock = {"schema": "2.0", "stages": {"train": {"cmd": "python -m pipeline.stages.train",
                                                  "outs": [{"path": "models/model.pt", "hash": "md5", "md5": md5}]}}}
    (checkout / "dvc.lock").write_text(yaml.safe_dump(lock))
    record = model_identity(Path(model), tiny_ckpt)["dvc"]
    assert record == {"dvc_lock": str(checkout / "dvc.lock"), "stage": "train", "md5": md5, "matches_file": True}
    lock["stages"]["train"]["outs"][0]["md5"] = "0" * 32  # the file changed since dvc.lock recorded it
    (checkout / "dvc.lock").write_text(yaml.safe_dump(lock))
    assert model_identity(Path(model), tiny_ckpt)["dvc"]["matches_file"] is False
    # DVC may link the workspace's file to its cache: the record is still the checkout's.
    cache = tmp_path / "cache" / "ab" / "cdef"
    cache.parent.mkdir(parents=True)
    Path(model).rename(cache)
    Path(model).symlink_to(cache)
    assert model_identity(Path(model), tiny_ckpt)["dvc"]["dvc_lock"] == str(checkout / "dvc.lock")


def test_ready_compares_the_loaded_model_with_the_file_on_disk_now(tiny_model_path, tmp_path):
    """`dvc repro` replaced the model file under a running server: /ready used to go on saying the old md5
    and matches_file true. Now it says "stale", both md5s, what dvc.lock records, and to restart."""
    from tests.tiny_model import train_tiny_checkpoint

    checkout = tmp_path / "checkout"
    (checkout / "models").mkdir(parents=True)
    model = checkout / "models" / "model.pt"
    shutil.copy(tiny_model_path, model)
    loaded = hashlib.md5(model.read_bytes()).hexdigest()

    def lock(md5: str) -> None:
        (checkout / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {"train": {
            "cmd": "python -m pipeline.stages.train", "outs": [{"path": "models/model.pt", "md5": md5}]}}}))

    lock(loaded)
    live = LiveServer(create_app(model, LIMITS))
    try:
        ready = json.loads(live.request("GET", "/ready")[2])
        assert ready["status"] == "ready" and ready["model"]["md5"] == loaded
        assert ready["model"]["file"] == {"exists": True, "md5": loaded, "matches_loaded": True}
        assert ready["model"]["dvc"]["matches_file"] is True and ready["model"]["dvc"]["matches_loaded"] is True
        # dvc repro: a new model written beside and renamed into place, and dvc.lock records it
        train_tiny_checkpoint(tmp_path / "new.pt", steps=5)
        os.replace(tmp_path / "new.pt", model)
        new = hashlib.md5(model.read_bytes()).hexdigest()
        lock(new)
        status, _, body = live.request("GET", "/ready")
        ready = json.loads(body)
        assert status == 200 and ready["status"] == "stale", ready  # it still serves the loaded model
        assert ready["model"]["md5"] == loaded and ready["model"]["file"] == {"exists": True, "md5": new,
                                                                              "matches_loaded": False}
        assert ready["model"]["dvc"]["matches_file"] is True and ready["model"]["dvc"]["matches_loaded"] is False
        assert f"loaded md5 {loaded}, md5 {new} on disk" in ready["action"]
        assert "restart textclf-serve" in ready["action"]
        # rewritten in place to the same size, its mtime set back: ctime still tells
        stat = model.stat()
        data = bytearray(model.read_bytes())
        data[-1] ^= 1
        model.write_bytes(bytes(data))
        os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        assert json.loads(live.request("GET", "/ready")[2])["model"]["file"]["md5"] == hashlib.md5(data).hexdigest()
        model.unlink()
        ready = json.loads(live.request("GET", "/ready")[2])
        assert ready["status"] == "stale" and ready["model"]["file"] == {"exists": False, "md5": None,
                                                                         "matches_loaded": False}
        assert "no file there now" in ready["action"]
        shutil.copy(tiny_model_path, model)  # the same bytes back: ready again
        assert json.loads(live.request("GET", "/ready")[2])["status"] == "ready"
        assert live.post({"text": "a gripping film"})[0] == 200
    finally:
        live.stop()


def test_the_openapi_schema_and_no_page_that_loads_cdn_scripts(server):
    schema = json.loads(server.request("GET", "/openapi.json")[2])
    body = schema["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert set(body["properties"]) == {"text", "texts", "explain", "min_confidence"} and body["additionalProperties"] is False
    assert "PredictResponse" in json.dumps(schema["paths"]["/predict"]["post"]["responses"]["200"])
    assert server.request("GET", "/docs")[0] == 404 and server.request("GET", "/redoc")[0] == 404


def test_the_page_carries_everything_and_a_strict_policy(server):
    status, headers, body = server.request("GET", "/")
    page = body.decode()
    assert status == 200 and headers["content-type"].startswith("text/html")
    policy = headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'sha256-" in policy and "connect-src 'self'" in policy
    assert "unsafe-inline" not in policy and "frame-ancestors 'none'" in policy
    assert not re.search(r"<script[^>]*\bsrc\s*=", page) and not re.search(r"<link[^>]*\bhref", page)
    assert "http://" not in page and "https://" not in page
    assert headers["x-content-type-options"] == "nosniff"


def test_a_token_guards_predict_and_ready(guarded):
    payload = {"text": "a gripping film"}
    assert guarded.post(payload)[0] == 401
    status, data = guarded.post(payload, {"Authorization": "Bearer wrong-token-of-some-length"})
    assert status == 401 and data["field"] == "authorization"
    assert guarded.post(payload, {"Authorization": f"Basic {TOKEN}"})[0] == 401
    assert guarded.post(payload, {"Authorization": f"Bearer {TOKEN}"})[0] == 200
    assert guarded.request("GET", "/ready")[0] == 401
    assert guarded.request("GET", "/ready", headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200
    assert json.loads(guarded.request("GET", "/health")[2])["auth"] == "bearer"  # the page asks for the token
    assert guarded.request("GET", "/")[0] == 200


def test_on_loopback_only_loopback_host_names_are_answered(server):
    """A web page cannot reach the server by pointing its own name at 127.0.0.1 (DNS rebinding)."""
    status, _, body = server.request("GET", "/health", headers={"Host": "attacker.example:8000"})
    assert status == 421 and json.loads(body)["field"] == "host"
    for host in ("localhost:1234", "127.0.0.1", "[::1]:8000"):
        assert server.request("GET", "/health", headers={"Host": host})[0] == 200


def test_listening_wider_needs_a_token(tiny_model_path, monkeypatch):
    from pipeline.cli import serve as serve_cli

    monkeypatch.delenv("TEXTCLF_SERVE_TOKEN", raising=False)
    for host in ("0.0.0.0", "::", "192.0.2.7", "my-host.example"):
        with pytest.raises(PipelineError, match="TEXTCLF_SERVE_TOKEN"):
            serve_cli.main(["--model", str(tiny_model_path), "--host", host])
    with pytest.raises(PipelineError, match="at least 16"):
        serve_cli.main(["--model", str(tiny_model_path), "--host", "0.0.0.0", "--token", "short"])
    check_exposure("0.0.0.0", TOKEN)  # with a token it would start (not started here: tests stay on loopback)
    for host in ("127.0.0.1", "localhost", "::1", "127.3.4.5"):
        check_exposure(host, None)


BAD_TOKENS = [  # (the token as it reached the server, what the error names)
    (TOKEN + " ", "a blank (space, tab or line break) at its end"),  # `TEXTCLF_SERVE_TOKEN=abc... ` in a .env
    (TOKEN + "\n", "a blank (space, tab or line break) at its end"),
    (" " + TOKEN, "a blank (space, tab or line break) at its start"),
    ("s3cret-tökén-for-the-tests", "a non-ASCII character at character 9 of 26"),
    ("s3cret token for the tests", "a blank at character 7 of 26"),
    ("s3cret-token\x01for-the-tests", "a control character at character 13 of 26"),
    ("s3cret-token!for-the-tests", "the character '!' at character 13 of 26, outside RFC 6750's token characters"),
    ("s3cret=token-for-the-tests", "an '=' at character 7 of 26, before the end"),
]


@pytest.mark.parametrize("token,problem", BAD_TOKENS)
def test_a_token_no_client_can_send_is_refused_at_start_naming_where_it_came_from(tiny_model_path, monkeypatch,
                                                                                 token, problem):
    """Such a token used to be accepted, and then every request got a 401 telling the client to send what it
    had sent: clients strip blanks and cannot send non-ASCII in a header."""
    from pipeline.cli import serve as serve_cli

    monkeypatch.setenv("TEXTCLF_SERVE_TOKEN", token)
    with pytest.raises(PipelineError) as err:
        serve_cli.main(["--model", str(tiny_model_path), "--host", "0.0.0.0"])
    assert str(err.value).startswith(f"TEXTCLF_SERVE_TOKEN: the token has {problem}"), str(err.value)
    assert "\n" not in str(err.value) and token.strip() not in str(err.value)  # the secret is never printed
    monkeypatch.delenv("TEXTCLF_SERVE_TOKEN")
    with pytest.raises(PipelineError, match=f"^--token: the token has {re.escape(problem)}"):
        serve_cli.main(["--model", str(tiny_model_path), "--port", "0", "--token", token])
    with pytest.raises(PipelineError, match=re.escape(problem)):
        create_app(tiny_model_path, LIMITS, token=token)


def test_every_token_a_client_can_send_works_and_the_401_says_what_was_wrong(tiny_model_path):
    token = "Az09-._~+/Az09-._~+/=="  # RFC 6750's b64token: every character class, padding at the end
    check_exposure("0.0.0.0", token)
    live = LiveServer(create_app(tiny_model_path, LIMITS, token=token))
    try:
        assert live.post({"text": "a film"}, {"Authorization": f"Bearer {token}"})[0] == 200
        assert live.post({"text": "a film"}, {"Authorization": f"bearer  {token} "})[0] == 200
        for header, says in ((None, "authorization: missing"), (f"Basic {token}", "not Bearer"),
                             (f"Bearer {token[:-1]}", "not the server's")):
            status, data = live.post({"text": "a film"}, {"Authorization": header} if header else {})
            assert status == 401 and data["error"].startswith("authorization: ") and says in data["error"], data
    finally:
        live.stop()


def _recv_all(sock, timeout: float) -> bytes:
    """What the server sends before it closes the connection (b"" for a quiet close or a reset)."""
    import socket

    sock.settimeout(timeout)
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    except socket.timeout:
        chunks.append(b"<still open>")
    return b"".join(chunks)


@pytest.mark.slow
def test_idle_and_slow_connections_never_keep_a_complete_request_waiting(tiny_model_path):
    """600 connections that send nothing, send their headers a line at a time (slowloris) or their body too
    slowly: a normal client is still answered at once (uvicorn's limit_concurrency counted them all, and
    answered everyone else a plain-text 503 for as long as they stayed), and each of them ends within its
    deadline: the silent ones closed quietly, the others with a 408 naming the deadline."""
    import socket

    if raise_open_files_limit(2000) < 1400:
        pytest.skip("the open files limit (ulimit -n) is below 1,400")
    bounds = ConnectionBounds(header_timeout=2.0, body_timeout=3.0)
    live = LiveServer(create_app(tiny_model_path, LIMITS), bounds)
    head = b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    idle, slowloris, slow_body = [], [], []
    try:
        for _ in range(200):
            idle.append(socket.create_connection(("127.0.0.1", live.port)))
            slowloris.append(socket.create_connection(("127.0.0.1", live.port)))
            slowloris[-1].sendall(head)
            slow_body.append(socket.create_connection(("127.0.0.1", live.port)))
            slow_body[-1].sendall(head + b'Content-Length: 100\r\n\r\n{"text": ')
        opened = time.monotonic()
        for _ in range(5):  # one request at a time, then several at once, while all 600 stay open
            began = time.monotonic()
            status, data = live.post({"text": "a gripping film"})
            assert status == 200 and time.monotonic() - began < 5, (status, data)
        answers = []
        threads = [threading.Thread(target=lambda: answers.append(live.post({"text": "dull"})[0])) for _ in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert answers == [200] * 20
        while time.monotonic() - opened < 1.5:  # a header every half second: no read ever waits long
            for sock in slowloris:
                sock.sendall(b"X-Slow: 1\r\n")
            time.sleep(0.5)
        for sock in idle[:20]:
            assert _recv_all(sock, 4) == b""  # closed without a word
        for sock in slowloris[:20]:
            answer = _recv_all(sock, 4)
            assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
            assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["field"] == "request"
        for sock in slow_body[:20]:
            answer = _recv_all(sock, 5)
            assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
            assert b"within 3 s of the headers" in answer and b'"field": "body"' in answer
        assert time.monotonic() - opened < 3.0 + 5  # the body deadline, and not much more
        deadline = time.monotonic() + 10
        while len(live.server.server_state.connections) > 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(live.server.server_state.connections) == 0  # every one of the 600 is gone
    finally:
        for sock in idle + slowloris + slow_body:
            sock.close()
        live.stop()


def test_past_the_connection_cap_the_oldest_connections_without_a_request_make_room(tiny_model_path):
    import socket

    live = LiveServer(create_app(tiny_model_path, LIMITS), ConnectionBounds(max_connections=20))
    try:
        idle = [socket.create_connection(("127.0.0.1", live.port)) for _ in range(30)]
        assert live.post({"text": "a gripping film"})[0] == 200  # a 31st connection, served
        assert _recv_all(idle[0], 2) == b""  # the oldest idle ones were closed to make room
        for sock in idle:
            sock.close()
    finally:
        live.stop()


def test_unfinished_headers_over_16_kib_and_garbage_get_json_naming_the_request(server):
    """h11's own refusals were uvicorn's plain text ("Invalid HTTP request received.")."""
    import socket

    for raw, status in ((b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 20_000, 431),
                        (b"NOT HTTP AT ALL\r\n\r\n", 400)):
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall(raw)  # headers still without their end past 16 KiB: h11's bound
        answer = _recv_all(sock, 5)
        sock.close()
        assert answer.startswith(b"HTTP/1.1 %d " % status), answer[:200]
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["field"] == "request"
    assert server.request("GET", "/health")[0] == 200


def test_a_client_that_never_reads_its_answers_is_dropped_after_the_send_timeout(tiny_model_path):
    """Pipelined requests for the page, no answer ever read: once the buffers are full, uvicorn used to wait
    for the client for ever, holding the connection and a request."""
    import socket

    live = LiveServer(create_app(tiny_model_path, LIMITS), ConnectionBounds(send_timeout=1.0))
    try:
        sock = socket.create_connection(("127.0.0.1", live.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" * 2000)
        deadline = time.monotonic() + 15
        state = live.server.server_state
        while (state.connections or state.tasks) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not state.connections and not state.tasks, (len(state.connections), len(state.tasks))
        assert live.post({"text": "a gripping film"})[0] == 200
        sock.close()
    finally:
        live.stop()


@pytest.mark.parametrize("size", [200_000, 4_000_000])
def test_a_client_that_sends_its_whole_body_first_reads_the_413(server, guarded, size):
    """urllib (and requests) send the whole body before they read: the server used to close the connection
    under a refused body, and such a client got 'connection reset by peer' (curl, which reads early, saw
    the 413). Now the rest of the body is read and dropped (lingering close) and the client reads the
    answer: 413 for a body over the limit, with or without Content-Length, and 401 without the token."""
    import urllib.error
    import urllib.request

    body = b'{"text": "' + b"a" * size + b'"}'
    for live, path, headers, data, status, field in (
            (server, "/predict", {}, body, 413, "body"),
            (server, "/predict", {"Transfer-Encoding": "chunked"},
             [body[i:i + 65536] for i in range(0, len(body), 65536)], 413, "body"),
            (guarded, "/predict", {}, body, 401, "authorization"),
            (server, "/predictions", {}, body, 404, "path")):  # any answer given before the body is read
        request = urllib.request.Request(f"http://127.0.0.1:{live.port}{path}", data=data,
                                         headers={"Content-Type": "application/json", **headers})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(request, timeout=30)
        assert err.value.code == status and json.loads(err.value.read())["field"] == field
    assert server.post({"text": "a gripping film"})[0] == 200


def test_the_listening_socket_turns_nagle_off():
    """Else each keep-alive request waited 40 ms (the client's delayed ACK) for the body after the headers."""
    import socket

    sock = listen("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP  # what asyncio looks for before it sets TCP_NODELAY itself
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        sock.close()


def test_the_batcher_runs_the_texts_of_waiting_requests_together():
    calls: list[list[str]] = []

    def work(texts):
        calls.append(list(texts))
        time.sleep(0.1)
        return np.array([[float(t[1:]), 0.0] for t in texts])

    async def scenario():
        batcher = Batcher(work, Limits(batch_texts=4, max_pending_texts=12))
        first = asyncio.ensure_future(batcher.classify(["t0"]))
        await asyncio.sleep(0.03)  # t0 is on the model thread: what comes now waits for it
        rest = [asyncio.ensure_future(batcher.classify([f"t{i}", f"t{i + 100}"])) for i in range(1, 6)]
        await asyncio.sleep(0)
        with pytest.raises(RequestError) as busy:  # 10 texts waiting; 3 more would pass max_pending_texts
            await batcher.classify(["x", "y", "z"])
        return busy.value, await first, await asyncio.gather(*rest)

    busy, first, rest = asyncio.run(scenario())
    assert busy.status == 503 and busy.field == "texts"
    assert first[:, 0].tolist() == [0.0]
    assert [r[:, 0].tolist() for r in rest] == [[i, i + 100] for i in range(1, 6)]  # each its own rows
    assert [len(c) for c in calls] == [1, 4, 4, 2]  # then batches of at most batch_texts, requests whole


def test_explanations_are_weighed_by_their_cost_and_never_hold_back_classification():
    """Each explained text costs words x 4 x steps, not one text: a few requests asking for explanations
    of long texts used to fill the queue's count of one text each and run, whole, ahead of every plain
    request that came after them."""
    calls: list[tuple[str, list[str]]] = []

    def classify(texts):
        calls.append(("classify", list(texts)))
        time.sleep(0.02)
        return np.array([[1.0, 0.0]] * len(texts))

    def explain(texts):
        calls.append(("explain", list(texts)))
        time.sleep(0.5)  # an explanation is slow
        return np.array([[0.0, 1.0]] * len(texts)), [f"why {t}" for t in texts]

    long = " ".join(["word"] * 200)  # 200 words: 200 x 4 x 2 steps = 1,600 units to explain

    async def scenario():
        limits = Limits(steps=2, max_pending_work=8_000, request_timeout=5.0)
        batcher = Batcher(classify, limits, explain=explain)
        explaining = [asyncio.ensure_future(batcher.submit([long, long], True))]  # 3,200 units
        await asyncio.sleep(0.05)  # its first text is on the model thread
        with pytest.raises(RequestError) as busy:  # 3,200 + 3,200 would pass half of 8,000
            await batcher.submit([long, long], True)
        with pytest.raises(RequestError) as too_much:  # one request over half the budget: never admitted
            await batcher.submit([long] * 6, True)
        began = time.monotonic()
        plain = await batcher.classify(["a plain text"])
        waited = time.monotonic() - began
        return busy.value, too_much.value, plain, waited, await asyncio.gather(*explaining)

    busy, too_much, plain, waited, explained = asyncio.run(scenario())
    assert busy.status == 503 and "busy explaining" in busy.message
    assert too_much.status == 413 and "9,600 units of work" in too_much.message
    assert "--max-pending-work" in too_much.message
    assert plain.tolist() == [[1.0, 0.0]] and waited < 0.8  # after the running part (0.5 s), not the request (1 s)
    assert calls == [("explain", [long]), ("classify", ["a plain text"]), ("explain", [long])]
    assert explained[0][1] == [f"why {long}"] * 2


def test_a_request_past_its_deadline_gets_503_and_its_work_is_dropped_or_504_if_started():
    ran: list[list[str]] = []

    def classify(texts):
        ran.append(list(texts))
        time.sleep(0.6)
        return np.array([[1.0, 0.0]] * len(texts))

    async def scenario():
        batcher = Batcher(classify, Limits(request_timeout=0.3, batching=False))
        first = asyncio.ensure_future(batcher.classify(["first"]))  # runs 0.6 s: past its own deadline
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(batcher.classify(["second"]))  # waits for it: past its deadline too
        results = await asyncio.gather(first, second, return_exceptions=True)
        await asyncio.sleep(0.8)  # time enough for the model thread to have run "second", had it not been dropped
        return results, batcher.pending, batcher.pending_work

    (first, second), pending, pending_work = asyncio.run(scenario())
    assert isinstance(first, RequestError) and first.status == 504 and first.field == "request"
    assert "0.3 s (the request timeout, --request-timeout)" in first.message
    assert isinstance(second, RequestError) and second.status == 503 and "its work was dropped" in second.message
    assert ran == [["first"]] and pending == 0 and pending_work == 0


@pytest.mark.slow
def test_the_console_script_announces_serves_and_stops_on_sigterm(tiny_model_path, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli.serve", "--model", str(tiny_model_path),
                             "--port", "0"], cwd=tmp_path, env=ENV, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        url = re.search(r"on (http://127\.0\.0\.1:\d+)", line)
        assert url, line
        port = int(url.group(1).rsplit(":", 1)[1])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("POST", "/predict", body=b'{"text": "a gripping film"}', headers=J)
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=30)[1]
    assert proc.returncode == 143 and "Traceback" not in rest, rest
    wide = subprocess.run([sys.executable, "-m", "pipeline.cli.serve", "--model", str(tiny_model_path),
                           "--host", "0.0.0.0", "--port", "0"], cwd=tmp_path, capture_output=True, text=True,
                          env={k: v for k, v in ENV.items() if k != "TEXTCLF_SERVE_TOKEN"})
    assert wide.returncode == 1 and wide.stderr.startswith("error: --host 0.0.0.0 would let other machines")
    assert "Traceback" not in wide.stderr


@pytest.mark.slow
def test_sigterm_waits_a_bounded_time_for_a_slow_body(tiny_model_path, tmp_path):
    """A client that sent its headers and part of its body, and then nothing: SIGTERM used to wait for it
    without bound. Now idle connections close at once, and a request whose body is still coming gets a 503."""
    import socket

    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli.serve", "--model", str(tiny_model_path),
                             "--port", "0"], cwd=tmp_path, env=ENV, stderr=subprocess.PIPE, text=True)
    try:
        port = int(re.search(r"on http://127\.0\.0\.1:(\d+)", proc.stderr.readline()).group(1))
        slow = socket.create_connection(("127.0.0.1", port))
        slow.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b'Content-Length: 100\r\n\r\n{"text": ')
        idle = socket.create_connection(("127.0.0.1", port))
        time.sleep(0.5)
        began = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert _recv_all(idle, 5) == b""  # an idle connection is closed at once
        rest = proc.communicate(timeout=30)[1]
        took = time.monotonic() - began
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143 and took < 5, (took, rest)
    answer = _recv_all(slow, 5)
    assert answer.startswith(b"HTTP/1.1 503 ") and b"shutting down" in answer, answer
    assert "Traceback" not in rest, rest
    slow.close()


@pytest.mark.slow
def test_a_low_open_files_limit_means_fewer_connections_said_at_start(tiny_model_path, tmp_path):
    """2,048 connections need about 2,112 open files; under a hard limit of 512 the server says how many it
    can hold, holds that many, and serves."""
    import resource

    def low_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 512))

    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli.serve", "--model", str(tiny_model_path),
                             "--port", "0"], cwd=tmp_path, env=ENV, stderr=subprocess.PIPE, text=True,
                            preexec_fn=low_limit)
    try:
        note = proc.stderr.readline()
        assert note.startswith("textclf-serve: the open files limit (ulimit -n) is 512: at most 448 connections "
                               "rather than 2048"), note
        port = int(re.search(r"on http://127\.0\.0\.1:(\d+)", proc.stderr.readline()).group(1))
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/health")
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)


@pytest.mark.slow
def test_the_page_draws_a_prediction_offline_in_chromium(server, tmp_path):
    """Headless Chromium, every host name unresolvable but the server's address: the page classifies the
    texts its link carries and draws labels, probabilities and shaded words, with no policy violation."""
    chromium = require_chromium()
    texts = ["a gripping , beautifully acted film", "dull and far too long"]
    expected = server.post({"texts": texts, "explain": True})[1]
    fragment = urllib.parse.urlencode([("text", t) for t in texts], quote_via=urllib.parse.quote)
    proc = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
         "--disable-background-networking", "--disable-component-update", "--disable-extensions",
         f"--user-data-dir={tmp_path / 'profile'}", f"{NO_NETWORK}, EXCLUDE 127.0.0.1",
         "--virtual-time-budget=15000", "--dump-dom", f"http://127.0.0.1:{server.port}/#{fragment}"],
        capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    dom = proc.stdout
    body = re.search(r"<body([^>]*)>", dom).group(1)
    assert 'data-state="done"' in body and "data-csp-violations" not in body, body
    assert re.findall(r'<span class="label">([^<]*)</span>', dom) == [p["label"] for p in expected["predictions"]]
    shown = [float(v) for v in re.findall(r'<span class="value">([0-9.]+)</span>', dom)]
    served = [p["probabilities"][lab] for p in expected["predictions"] for lab in expected["labels"]]
    assert shown == pytest.approx(served, abs=5e-5)
    words = re.findall(r'<span class="tok"[^>]*data-attribution="([^"]+)"[^>]*>([^<]*)</span>', dom)
    tokens = [t for p in expected["predictions"] for t in p["explanation"]["tokens"]]
    assert [w for _, w in words] == tokens
    styles = re.findall(r'<span class="tok"[^>]*style="([^"]*)"', dom)
    assert len(styles) == len(tokens) and all("rgba(" in style for style in styles), styles[:3]  # shaded


@pytest.fixture(scope="module")
def multilabel_server(tiny_multilabel_path):
    live = LiveServer(create_app(tiny_multilabel_path, LIMITS, min_confidence=0.2))
    yield live
    live.stop()


def test_a_multi_label_model_answers_label_sets_as_textclf_predict_does(multilabel_server, tiny_multilabel_path,
                                                                      tiny_multilabel_ckpt, tmp_path):
    from pipeline.inference import NO_TOKENS, uncertain
    from pipeline.serve_page import LabelSetPrediction, PredictResponse
    from tests.tiny_model import MULTI_TEXTS

    ckpt = tiny_multilabel_ckpt
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli.predict", "--model", str(tiny_multilabel_path),
                           "--json", "--min-confidence", "0.2", *MULTI_TEXTS],
                          cwd=tmp_path, capture_output=True, text=True, env=ENV)
    assert proc.returncode == 0, proc.stderr
    printed = [json.loads(line) for line in proc.stdout.splitlines()]
    status, data = multilabel_server.post({"texts": MULTI_TEXTS})
    assert status == 200, data
    assert data["labels"] == ckpt.labels
    response = PredictResponse.model_validate(data)  # the schema the server states allows it
    assert all(isinstance(p, LabelSetPrediction) for p in response.predictions)
    assert [] in [p["labels"] for p in data["predictions"]]  # a text given no label: an empty set, not null
    for row, served in zip(printed, data["predictions"]):
        assert "label" not in served and served["labels"] == row["labels"]
        if row["probabilities"] is None:
            assert served == {"labels": None, "probabilities": None, "reason": NO_TOKENS}
            continue
        for label, p in row["probabilities"].items():
            assert abs(served["probabilities"][label] - p) <= 5e-5 + 1e-9, (row, served)
    assert any(len(p["labels"] or []) > 1 for p in data["predictions"])

    # The request's min_confidence, over the server's default: a text is uncertain when any label's decision
    # (p given, 1 - p left out) is less sure than it.
    status, strict = multilabel_server.post({"texts": MULTI_TEXTS, "min_confidence": 0.9})
    printed = subprocess.run([sys.executable, "-m", "pipeline.cli.predict", "--model", str(tiny_multilabel_path),
                              "--json", "--min-confidence", "0.9", *MULTI_TEXTS],
                             cwd=tmp_path, capture_output=True, text=True, env=ENV).stdout.splitlines()
    assert status == 200 and [p["labels"] for p in strict["predictions"]] == [json.loads(r)["labels"] for r in printed]
    unsure = [p for p in strict["predictions"] if p.get("reason") == uncertain(0.9, ckpt.task)]
    assert unsure and all(p["labels"] is None and p["probabilities"] for p in unsure)


def test_a_multi_label_model_explains_each_label_it_gives_over_http(multilabel_server, tiny_multilabel_ckpt):
    from pipeline.explain import explain_label_sets
    from pipeline.text import tokenize

    ckpt = tiny_multilabel_ckpt
    texts = ["a gripping , beautifully acted film", "everything is off .", "<br/>"]
    status, data = multilabel_server.post({"texts": texts, "explain": True})
    assert status == 200, data
    given, nothing, empty = data["predictions"]
    assert len(given["labels"]) >= 2 and [x["target"] for x in given["explanations"]] == given["labels"]
    expected = explain_label_sets(ckpt, [tokenize(texts[0], ckpt.text_config)],
                                  [[ckpt.labels.index(label) for label in given["labels"]]])[0]
    for served, direct in zip(given["explanations"], expected):
        assert served["tokens"] == direct.tokens
        np.testing.assert_allclose(served["attributions"], direct.attributions, atol=1e-5)
    assert nothing["labels"] == [] and nothing["explanations"] == []
    assert empty["labels"] is None and empty["explanations"] is None and "explanation" not in given


def test_the_page_sends_the_min_confidence_typed_and_knows_label_sets(server, multilabel_server, tiny_multilabel_ckpt):
    from pipeline.serve_page import SCRIPT, PredictResponse

    for live, thresholds in ((server, None), (multilabel_server, tiny_multilabel_ckpt.thresholds)):
        page = live.request("GET", "/")[2].decode()
        assert re.search(r'<input type="number" id="minconf" min="0" max="1"', page)
        config = json.loads(re.search(r'<script type="application/json" id="config">(.*?)</script>', page).group(1))
        assert config["thresholds"] == thresholds
    assert 'placeholder="0.2"' in multilabel_server.request("GET", "/")[2].decode()  # the server's default
    # The script puts the field's value into the request body as min_confidence, and reads label sets.
    assert re.search(r'body\.min_confidence = value', SCRIPT) and '$("minconf").value' in SCRIPT
    assert re.search(r'"labels" in p', SCRIPT) and "(no label)" in SCRIPT
    single = server.post({"texts": ["a gripping film"], "min_confidence": 1})[1]
    assert single["predictions"][0]["label"] is None and PredictResponse.model_validate(single)


@pytest.mark.slow
def test_the_page_draws_a_label_set_and_sends_min_confidence_in_chromium(multilabel_server, tmp_path):
    """Headless Chromium: the page, opened with texts and min_confidence in its link, sends them and draws
    each text's label set (or "(no label)", or no label and the reason when uncertain)."""
    chromium = require_chromium()
    texts = ["a gripping , beautifully acted film", "everything is off .", "zxqv wvut"]
    expected = multilabel_server.post({"texts": texts, "explain": True, "min_confidence": 0.74})[1]
    fragment = urllib.parse.urlencode([("text", t) for t in texts] + [("min_confidence", "0.74")],
                                      quote_via=urllib.parse.quote)
    proc = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
         "--disable-background-networking", "--disable-component-update", "--disable-extensions",
         f"--user-data-dir={tmp_path / 'profile'}", f"{NO_NETWORK}, EXCLUDE 127.0.0.1",
         "--virtual-time-budget=15000", "--dump-dom", f"http://127.0.0.1:{multilabel_server.port}/#{fragment}"],
        capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    dom = proc.stdout
    body = re.search(r"<body([^>]*)>", dom).group(1)
    assert 'data-state="done"' in body and "data-csp-violations" not in body, body
    drawn = re.findall(r'<span class="label( nolabel)?">([^<]*)</span>', dom)
    wanted = []
    for p in expected["predictions"]:
        wanted += [("", "no label")] if p["labels"] is None else [(" nolabel", "(no label)")] if not p["labels"] \
            else [("", label) for label in p["labels"]]
    assert drawn == wanted
    assert any(p["labels"] is None for p in expected["predictions"])  # 0.74 made one uncertain: it was sent


def test_a_multi_label_model_s_explanations_are_counted_per_label_explained():
    """Each label explained is an integrated-gradients pass: the work bound counts them (at most
    serve.EXPLAINED_LABELS per text), so explaining for a model of many labels cannot overrun it."""
    from pipeline.serve import EXPLAINED_LABELS

    limits = Limits()
    one, three = (Batcher(lambda texts: None, limits, explained_per_text=n) for n in (1, EXPLAINED_LABELS))
    texts = ["a b c", "d e"]
    assert one.cost(texts, explain=False) == three.cost(texts, explain=False) == 5
    assert three.cost(texts, explain=True) == EXPLAINED_LABELS * one.cost(texts, explain=True) == 5 * 4 * limits.steps * 3
