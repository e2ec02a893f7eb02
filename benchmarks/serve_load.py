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


# --- slow and idle clients, and explanations of long texts (`--only slow`) -----------------------------


def shaped_model() -> Path:
    """A checkpoint shaped like the built-in model (BiLSTM 128 with attention pooling, 50-d embeddings,
    20,000 words, max_tokens 800), with random weights: a forward or backward pass costs what the built-in
    model's does, whatever its weights say. Used for the slow-client run when models/model.pt is absent."""
    path = ROOT / "benchmarks/.cache/serve_shaped_model.pt"
    if path.is_file():
        return path
    import torch

    from pipeline.checkpoint import save_checkpoint
    from pipeline.model import ModelConfig, TextClassifier
    from pipeline.text import TextConfig

    torch.manual_seed(0)
    itos = ["<pad>", "<unk>"] + [f"w{i}" for i in range(19_998)]
    cfg = ModelConfig(vocab_size=len(itos), embedding_dim=50, num_classes=2, hidden_size=128, pooling="attention")
    model = TextClassifier(cfg).eval()
    save_checkpoint(path, model, model.state_dict(), itos, ["fresh", "rotten"], TextConfig(), 1, {}, 800, "head")
    return path


async def _timed_request(port: int, body: bytes, timeout: float = 30.0) -> tuple[float, str]:
    """One request on a fresh connection: (seconds to the whole answer, status line or the error)."""
    began = time.perf_counter()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), timeout)
        try:
            writer.write(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
            length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
            await asyncio.wait_for(reader.readexactly(length), timeout)
            status = head.split(b"\r\n")[0].decode()
        finally:
            writer.close()
    except Exception as err:  # noqa: BLE001 - what the client saw is the measurement
        status = type(err).__name__
    return time.perf_counter() - began, status


async def _hold(port: int, kind: str, stop_at: float, seen: dict) -> None:
    """Keep one connection of `kind` open until stop_at, opening a new one whenever the server closes it:
    idle (sends nothing), slowloris (a header line a second, never the blank line) or slow body (a byte a
    second of a body of 100)."""
    head = b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    while time.perf_counter() < stop_at:
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
        except OSError:
            seen["connect errors"] = seen.get("connect errors", 0) + 1
            await asyncio.sleep(1)
            continue
        if kind == "slowloris":
            writer.write(head)
        elif kind == "slow body":
            writer.write(head + b"Content-Length: 100\r\n\r\n{")
        try:
            while time.perf_counter() < stop_at:
                try:
                    data = await asyncio.wait_for(reader.read(4096), 1.0)
                except asyncio.TimeoutError:
                    writer.write(b"X-Slow: 1\r\n" if kind == "slowloris" else b" " if kind == "slow body" else b"")
                    continue
                answer = data.split(b"\r\n")[0].decode(errors="replace")[:40] or "closed"
                key = f"{kind}: {answer}"
                seen[key] = seen.get(key, 0) + 1
                break
        except OSError as err:
            key = f"{kind}: {type(err).__name__}"
            seen[key] = seen.get(key, 0) + 1
        finally:
            writer.close()


async def _normal_client(port: int, body: bytes, stop_at: float, every: float = 0.2) -> list[tuple[float, str]]:
    results = []
    while time.perf_counter() < stop_at:
        results.append(await _timed_request(port, body))
        await asyncio.sleep(every)
    return results


def _summary(results: list[tuple[float, str]]) -> dict:
    ms = np.array([r[0] for r in results]) * 1000
    statuses: dict[str, int] = {}
    for _, status in results:
        statuses[status] = statuses.get(status, 0) + 1
    return {"requests": len(results), "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1), "max_ms": round(float(ms.max()), 1),
            "answers": statuses}


async def _slow_scenario(port: int, text: str, each: int, seconds: float) -> dict:
    body = json.dumps({"text": text}).encode()
    alone = _summary(await _normal_client(port, body, time.perf_counter() + 3))
    seen: dict[str, int] = {}
    stop_at = time.perf_counter() + seconds
    holders = [asyncio.ensure_future(_hold(port, kind, stop_at, seen))
               for kind in ("idle", "slowloris", "slow body") for _ in range(each)]
    await asyncio.sleep(2)  # all of them open
    loaded = _summary(await _normal_client(port, body, stop_at))
    await asyncio.gather(*holders)
    return {"alone": alone, "with_slow_clients": loaded, "slow_clients_saw": seen}


async def _explain_scenario(port: int, long_text: str, clients: int, seconds: float) -> dict:
    explain = json.dumps({"texts": [long_text, long_text], "explain": True}).encode()
    plain = json.dumps({"text": "a gripping , beautifully acted film"}).encode()
    stop_at = time.perf_counter() + seconds
    outcomes: list[tuple[float, str]] = []

    async def explainer():
        while time.perf_counter() < stop_at:
            outcomes.append(await _timed_request(port, explain, 120))
            if not outcomes[-1][1].startswith("HTTP/1.1 200"):
                await asyncio.sleep(0.5)  # a refused client retries after a while

    tasks = [asyncio.ensure_future(explainer()) for _ in range(clients)]
    await asyncio.sleep(1)
    plain_results = await _normal_client(port, plain, stop_at)
    await asyncio.gather(*tasks)
    return {"plain": _summary(plain_results), "explain": _summary(outcomes)}


def slow_clients(seconds: float, each: int) -> dict:
    """A normal client's latency alone, then beside `each` idle, `each` slowloris and `each` slow-body
    connections (each reopened when the server closes it); then beside 4 clients asking, back to back,
    for explanations of two 800-word texts."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 3 * each + 256 <= hard:  # the clients' own sockets
        resource.setrlimit(resource.RLIMIT_NOFILE, (3 * each + 256, hard))
    built_in = ROOT / "models/model.pt"
    model = built_in if built_in.is_file() else shaped_model()
    words = " ".join(f"w{i * 7 % 19_998}" for i in range(800)) if model != built_in else \
        " ".join((" ".join(sample_texts(400))).split()[:800])
    server = Server(model)
    try:
        slow = asyncio.run(_slow_scenario(server.port, "a gripping , beautifully acted film", each, seconds))
        explain = asyncio.run(_explain_scenario(server.port, words, 4, seconds))
    finally:
        server.stop()
    return {"model": str(model.relative_to(ROOT)), "each": each, "seconds": seconds, **slow,
            "explanations": explain}


def slow_table(result: dict) -> str:
    rows = [("alone", result["alone"]), (f"beside {result['each']} idle + {result['each']} slowloris + "
                                         f"{result['each']} slow-body connections", result["with_slow_clients"]),
            ("beside 4 clients explaining two 800-word texts each, back to back", result["explanations"]["plain"]),
            ("(the explaining clients)", result["explanations"]["explain"])]
    lines = ["| a new connection, one text | requests | p50 ms | p99 ms | max ms | answers |",
             "|---|---:|---:|---:|---:|---|"]
    for what, r in rows:
        answers = ", ".join(f"{k.replace('HTTP/1.1 ', '')}: {v}" for k, v in sorted(r["answers"].items()))
        lines.append(f"| {what} | {r['requests']} | {r['p50_ms']:,.1f} | {r['p99_ms']:,.1f} | {r['max_ms']:,.1f} "
                     f"| {answers} |")
    seen = ", ".join(f"{k}: {v}" for k, v in sorted(result["slow_clients_saw"].items()))
    return "\n".join(lines) + f"\n\nWhat the slow connections saw (each reopened at once): {seen}\n"


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
    parser.add_argument("--only", choices=["batching", "no-batching", "slow"],
                        help="run one server setting only; slow: the slow-client and explanation run alone "
                             "(writes serve_slow.{json,md})")
    parser.add_argument("--slow-each", type=int, default=200,
                        help="idle, slowloris and slow-body connections each, with --only slow (default: %(default)s)")
    parser.add_argument("--name", default="serve_load", help="results file names (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.only == "slow":
        info = {**machine(), "seconds": args.seconds}
        print(json.dumps(info), flush=True)
        result = slow_clients(args.seconds, args.slow_each)
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "serve_slow.json").write_text(json.dumps({"machine": info, **result}, indent=2) + "\n")
        (RESULTS / "serve_slow.md").write_text(slow_table(result))
        print(slow_table(result))
        return
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
