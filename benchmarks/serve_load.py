"""Load test of textclf-serve on 127.0.0.1: requests per second and p50/p99 latency.

    python -m benchmarks.serve_load                   # writes benchmarks/results/serve_load.{json,md}
    python -m benchmarks.serve_load --seconds 3 --max-requests 500     # quicker, rougher

The server is the real console script (`python -m pipeline.cli.serve --port 0`) in its own process, on the
built-in model models/model.pt when it exists (else the tests' tiny model, trained into
benchmarks/.cache/). The clients are asyncio coroutines in this process, one keep-alive HTTP/1.1
connection each, sending POST /predict back to back: 1, 8 and 32 at once, with one text per request and
with batches of 32, each cell once with the server batching concurrent requests together and once with
--no-batching; then one client asking for explanations of one text. Texts are the test split's
(data/prepared/test.parquet) when present. Every cell is bounded: at most --seconds seconds and at most
--max-requests requests (after a short warm-up), so a run ends by itself in a few minutes.

Only 127.0.0.1 is ever listened on or called. Run it alone on a quiet machine (`uptime`): the clients share
the machine's cores with the server, as they would on one host.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks/results"
HOST = "127.0.0.1"  # never anything else
CLIENTS = (1, 8, 32)
BATCH = 32


def model_path() -> Path:
    built_in = ROOT / "models/model.pt"
    if built_in.is_file():
        return built_in
    sys.path.insert(0, str(ROOT))
    from tests.tiny_model import train_tiny_checkpoint

    cached = ROOT / "benchmarks/.cache/serve_tiny_model.pt"
    return cached if cached.is_file() else train_tiny_checkpoint(cached)


def sample_texts(n: int = 2000) -> list[str]:
    test = ROOT / "data/prepared/test.parquet"
    if test.is_file():
        import pandas as pd

        texts = [t for t in pd.read_parquet(test, columns=["text"])["text"].tolist() if t.strip()]
        return texts[:n]
    from tests.tiny_model import TEXTS

    return [t for t in TEXTS if t.strip()] * 50


class Server:
    """textclf-serve in a subprocess on a free port of 127.0.0.1."""

    def __init__(self, model: Path, *options: str):
        self.proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli.serve", "--model", str(model), "--host",
                                      HOST, "--port", "0", "--max-batch", str(BATCH), *options],
                                     cwd=ROOT, stderr=subprocess.PIPE, text=True,
                                     env=dict(os.environ, PYTHONPATH=str(ROOT)))
        line = self.proc.stderr.readline()
        found = re.search(rf"on http://{re.escape(HOST)}:(\d+)", line)
        if not found:
            self.stop()
            raise SystemExit(f"the server did not start: {line}")
        self.port = int(found.group(1))

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def _client(port: int, bodies: list[bytes], start: int, stop_at: float, budget: list[int],
                  latencies: list[float], errors: list[str]) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    i = start
    try:
        while time.perf_counter() < stop_at and budget[0] > 0:
            budget[0] -= 1
            body = bodies[i % len(bodies)]
            i += 1
            began = time.perf_counter()
            writer.write(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - began)
            if not head.startswith(b"HTTP/1.1 200"):
                errors.append(head.split(b"\r\n")[0].decode())
    finally:
        writer.close()


async def _cell(port: int, bodies: list[bytes], clients: int, seconds: float, max_requests: int) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    warm: list[float] = []
    await asyncio.gather(*(_client(port, bodies, 1000 * c, time.perf_counter() + 1.0, [3], warm, errors)
                           for c in range(clients)))  # warm-up: connections made, model thread busy once
    began = time.perf_counter()
    budget = [max_requests]
    await asyncio.gather(*(_client(port, bodies, 7919 * c, began + seconds, budget, latencies, errors)
                           for c in range(clients)))
    elapsed = time.perf_counter() - began
    ms = np.array(latencies) * 1000
    return {"clients": clients, "requests": len(latencies), "seconds": round(elapsed, 2),
            "requests_per_s": round(len(latencies) / elapsed, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 1), "p99_ms": round(float(np.percentile(ms, 99)), 1),
            "errors": len(errors), "first_error": errors[0] if errors else None}


def run_cells(model: Path, texts: list[str], options: list[str], label: str, cells, seconds: float,
              max_requests: int) -> list[dict]:
    server = Server(model, *options)
    rows = []
    try:
        for kind, clients in cells:
            if kind == "explain":
                bodies = [json.dumps({"text": t, "explain": True}).encode() for t in texts[:200]]
                per_request = 1
            elif kind == "single":
                bodies = [json.dumps({"text": t}).encode() for t in texts]
                per_request = 1
            else:
                bodies = [json.dumps({"texts": texts[i:i + BATCH]}).encode()
                          for i in range(0, len(texts) - BATCH + 1, BATCH)]
                per_request = BATCH
            row = asyncio.run(_cell(server.port, bodies, clients, seconds, max_requests))
            row.update(server=label, payload=kind, texts_per_request=per_request,
                       texts_per_s=round(row["requests_per_s"] * per_request, 1))
            rows.append(row)
            print(f"{label:>12} {kind:>7} x{clients:<3} {row['requests_per_s']:8.1f} req/s "
                  f"{row['texts_per_s']:9.1f} texts/s  p50 {row['p50_ms']:7.1f} ms  p99 {row['p99_ms']:7.1f} ms"
                  + (f"  {row['errors']} errors ({row['first_error']})" if row["errors"] else ""), flush=True)
    finally:
        server.stop()
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| server | texts per request | clients | requests/s | texts/s | p50 ms | p99 ms | requests |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        what = "explain, 1 text" if r["payload"] == "explain" else str(r["texts_per_request"])
        lines.append(f"| {r['server']} | {what} | {r['clients']} | {r['requests_per_s']:,.1f} | {r['texts_per_s']:,.1f} "
                     f"| {r['p50_ms']:,.1f} | {r['p99_ms']:,.1f} | {r['requests']:,} |")
    return "\n".join(lines)


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"date": date.today().isoformat(), "cores": len(os.sched_getaffinity(0)), "cpu": cpu,
            "python": platform.python_version(), "load_before": os.getloadavg()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="the most each cell runs (default: %(default)s)")
    parser.add_argument("--max-requests", type=int, default=4000,
                        help="the most requests each cell sends (default: %(default)s)")
    parser.add_argument("--threads", type=int, help="the server's torch threads (default: textclf-serve's)")
    parser.add_argument("--only", choices=["batching", "no-batching"], help="run one server setting only")
    parser.add_argument("--name", default="serve_load", help="results file names (default: %(default)s)")
    args = parser.parse_args(argv)
    extra = [] if args.threads is None else ["--threads", str(args.threads)]
    model, texts = model_path(), sample_texts()
    info = {**machine(), "model": str(model.relative_to(ROOT)) if model.is_relative_to(ROOT) else str(model),
            "texts": len(texts), "seconds_per_cell": args.seconds, "max_requests_per_cell": args.max_requests,
            "server_threads": args.threads}
    print(json.dumps(info), flush=True)
    load = [(kind, c) for kind in ("single", "batch") for c in CLIENTS]
    rows = []
    if args.only != "no-batching":
        rows += run_cells(model, texts, extra, "batching", load + [("explain", 1)], args.seconds, args.max_requests)
    if args.only != "batching":
        rows += run_cells(model, texts, [*extra, "--no-batching"], "no batching", load, args.seconds,
                          args.max_requests)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps({"machine": info, "rows": rows}, indent=2) + "\n")
    (RESULTS / f"{args.name}.md").write_text(table(rows) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
