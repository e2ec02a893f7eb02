"""Serve a trained model over HTTP: an API with explanations, and a page to try it.

    textclf-serve                                   # models/model.pt on http://127.0.0.1:8000
    textclf-serve --model ~/textclf/models/model.pt --port 9000
    TEXTCLF_SERVE_TOKEN=... textclf-serve --host 0.0.0.0   # other machines: only with a token

    curl -s localhost:8000/predict -H 'Content-Type: application/json' -d '{"text": "a gripping film"}'

Listens on 127.0.0.1 unless --host says otherwise; any other host needs a token of at least 16 characters
(the TEXTCLF_SERVE_TOKEN environment variable, or --token, which other users can see in the process list),
sent by clients as 'Authorization: Bearer <token>' (so only RFC 6750's characters: a token with a blank
at an end, or a non-ASCII character, is refused at start). Prints the address it listens on once the model
is loaded. The API and its limits: pipeline/serve.py, pipeline/serve_http.py and docs/serving.md.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from pipeline.checkpoint import MODEL_PATH, require_model_file
from pipeline.errors import PipelineError, command_name, run_main
from pipeline.serve import TOKEN_ENV, Limits, check_exposure, create_app, is_loopback, serve
from pipeline.serve_http import ConnectionBounds

SCRIPT = "textclf-serve"


def build_parser() -> argparse.ArgumentParser:
    defaults = Limits()
    parser = argparse.ArgumentParser(
        prog=command_name("pipeline.cli.serve", SCRIPT),
        description="Serve a trained model: POST /predict, GET /health, GET /ready, and a page at /.")
    parser.add_argument("--model", default=str(MODEL_PATH),
                        help="checkpoint path (default: %(default)s, relative to the current directory)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: %(default)s; any other needs a token)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: %(default)s; 0: any free port)")
    parser.add_argument("--token", help=f"bearer token clients must send (better: the {TOKEN_ENV} environment "
                                        "variable, which the process list does not show)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for the model (default: %(default)s; on 2 cores, 1 served 2-5 times more "
                             "requests than 2: HTTP needs the other core; docs/serving.md)")
    parser.add_argument("--min-confidence", type=float, metavar="P",
                        help="below this top-class probability (0 to 1), answer label null, reason 'uncertain' "
                             "(a request's \"min_confidence\" overrides it; default: off)")
    limits = parser.add_argument_group("limits (a request past one gets a 4xx naming it)")
    limits.add_argument("--max-body-bytes", type=int, default=defaults.max_body_bytes,
                        help="request body size (default: %(default)s)")
    limits.add_argument("--max-batch", type=int, default=defaults.max_batch,
                        help="texts per request (default: %(default)s)")
    limits.add_argument("--max-explain-batch", type=int, default=defaults.max_explain_batch,
                        help="texts per request with explain (default: %(default)s)")
    limits.add_argument("--max-text-chars", type=int, default=defaults.max_text_chars,
                        help="characters per text (default: %(default)s)")
    limits.add_argument("--max-pending", type=int, default=defaults.max_pending_texts,
                        help="texts waiting for the model before requests get 503 (default: %(default)s)")
    limits.add_argument("--max-pending-work", type=int, default=defaults.max_pending_work,
                        help="the cost of the texts waiting for the model, in words x passes (1 to classify, "
                             "4 x steps to explain), before requests get 503; explanations may hold half "
                             "(default: %(default)s)")
    limits.add_argument("--request-timeout", type=float, default=defaults.request_timeout,
                        help="seconds a request may wait for the model: then 503 if its work had not started "
                             "(dropped), 504 if it had (default: %(default)s)")
    bounds = ConnectionBounds()
    limits.add_argument("--header-timeout", type=float, default=bounds.header_timeout,
                        help="seconds for a request's line and headers to arrive (then 408) (default: %(default)s)")
    limits.add_argument("--body-timeout", type=float, default=bounds.body_timeout,
                        help="seconds for a request's body to arrive after its headers (then 408) "
                             "(default: %(default)s)")
    limits.add_argument("--max-connections", type=int, default=bounds.max_connections,
                        help="connections open at once; past it the oldest without a complete request are "
                             "closed (default: %(default)s)")
    limits.add_argument("--steps", type=int, default=defaults.steps,
                        help="integrated-gradients steps per explanation (default: %(default)s)")
    limits.add_argument("--no-batching", action="store_true",
                        help="run each request's texts alone rather than with those of concurrent requests")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    for option in ("max_body_bytes", "max_batch", "max_explain_batch", "max_text_chars", "max_pending", "threads",
                   "max_pending_work", "max_connections"):
        value = getattr(args, option)
        if value is not None and value < 1:
            raise PipelineError(f"--{option.replace('_', '-')} must be at least 1")
    for option in ("request_timeout", "header_timeout", "body_timeout"):
        value = getattr(args, option)
        if not math.isfinite(value) or not 0.1 <= value <= 3600:
            raise PipelineError(f"--{option.replace('_', '-')} {value}: give seconds from 0.1 to 3600")
    if args.min_confidence is not None and not (math.isfinite(args.min_confidence) and 0 <= args.min_confidence <= 1):
        raise PipelineError(f"--min-confidence {args.min_confidence}: give a probability from 0 to 1")
    if args.steps < 2:
        raise PipelineError("--steps must be at least 2")
    if not 0 <= args.port <= 65535:
        raise PipelineError(f"--port {args.port}: not a port (0 to 65535)")
    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV) or None
    check_exposure(args.host, token, "--token" if args.token is not None else TOKEN_ENV)  # before loading anything
    model = require_model_file(Path(args.model))
    import torch

    torch.set_num_threads(args.threads)
    limits = Limits(max_body_bytes=args.max_body_bytes, max_batch=args.max_batch,
                    max_explain_batch=min(args.max_explain_batch, args.max_batch), max_text_chars=args.max_text_chars,
                    max_pending_texts=args.max_pending, max_pending_work=args.max_pending_work,
                    request_timeout=args.request_timeout, batching=not args.no_batching, steps=args.steps)
    bounds = ConnectionBounds(header_timeout=args.header_timeout, body_timeout=args.body_timeout,
                              max_connections=args.max_connections,
                              graceful_shutdown=min(args.request_timeout + 1, ConnectionBounds.graceful_shutdown))
    app = create_app(model, limits, token, loopback_only=is_loopback(args.host), min_confidence=args.min_confidence)

    def announce(url: str) -> None:
        print(f"{SCRIPT}: {model} on {url}  (page: {url}/, API: POST {url}/predict, schema: {url}/openapi.json)"
              + ("  [token required]" if token else ""), file=sys.stderr, flush=True)

    serve(app, args.host, args.port, announce, bounds=bounds)


def cli() -> None:
    """The console script textclf-serve: errors as one line on stderr, exit status 1."""
    run_main(main)


if __name__ == "__main__":
    cli()
