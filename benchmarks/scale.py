"""How each stage scales with the corpus: wall time and peak memory at 10k, 100k and 1M documents.

Synthetic corpora from the built-in data: each document joins three Rotten Tomatoes snippets of one
label (about 70 tokens), so the text is real and the labels stay learnable. Every stage runs as its
own process (`python -m pipeline.stages.<stage>`, as `dvc repro` runs it) in a scratch project under
benchmarks/.cache/scale/<docs>/, alone on the machine. Peak memory is the largest sum of the resident
sets of the stage's process and all its children (prepare's workers), sampled every 20 ms, or the
kernel's peak for the stage's own process (wait4) where that is larger. The real GloVe 6B 50d vectors
from data/raw/embeddings (run `make repro` first). prepare runs once per --prepare-workers count (1 and
2: the speed-up of a second worker); the later stages read the last one's output, which is the same.

    python -m benchmarks.scale                                  # 10k, 100k, 1M documents
    python -m benchmarks.scale --docs 10000 100000 --stages prepare vocab

train runs one epoch (its cost grows linearly with epochs); it is skipped above --train-max-docs.
Writes benchmarks/results/scale.{json,md}: the table, the growth from the middle size to the largest,
and a linear extrapolation to 10M documents.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "benchmarks/.cache/scale"
RESULTS = ROOT / "benchmarks/results"
SNIPPETS = ROOT / "data/raw/corpus/rotten_tomatoes_corpus_full.csv.bz2"
EMBEDDINGS = ROOT / "data/raw/embeddings"
STAGES = ("prepare", "vocab", "train", "baseline")


def make_corpus(path: Path, docs: int, seed: int = 0, chunk: int = 100_000) -> None:
    """`docs` documents of three same-label snippets each, written in chunks (memory stays small)."""
    snippets = pd.read_csv(SNIPPETS)
    snippets = snippets[snippets["category"].isin(["fresh", "rotten"])]
    by_label = {label: group["text"].astype(str).to_numpy() for label, group in snippets.groupby("category")}
    labels = np.array(sorted(by_label))
    rng = np.random.default_rng(seed)
    tmp = path.with_suffix(".partial")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        for start in range(0, docs, chunk):
            n = min(chunk, docs - start)
            label = labels[rng.integers(0, len(labels), n)]
            text = [" ".join(rng.choice(by_label[lab], 3)) for lab in label]
            pd.DataFrame({"text": text, "category": label}).to_csv(f, index=False, header=start == 0)
    tmp.replace(path)


def project(docs: int, prepare_workers: int = 1) -> Path:
    """A scratch project for one corpus size: params.yaml pointed at the corpus and the real vectors."""
    where = CACHE / str(docs)
    where.mkdir(parents=True, exist_ok=True)
    corpus = where / "corpus.csv"
    if not corpus.exists():
        make_corpus(corpus, docs)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["corpus"].update(download=None, source=str(corpus), members=[], drop_labels=[])
    params["embeddings"].update(download=None, source=str(EMBEDDINGS), members=[])
    params["train"].update(epochs=1, patience=1, min_steps=0)
    params["prepare"]["workers"] = prepare_workers
    (where / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return where


def tree_rss_peak(pid: int, stop: threading.Event, peak: list[int]) -> None:
    """Sample the summed RSS of `pid` and its descendants until `stop`; the largest sum into peak[0]."""
    import psutil

    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    while not stop.wait(0.02):
        total = 0
        for proc in [root, *root.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
            except psutil.Error:  # ended between listing and reading
                pass
        peak[0] = max(peak[0], total)


def run_stage(stage: str, cwd: Path) -> dict:
    """Run one stage as its own process; its wall time and peak memory (see the module's doc)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), CI="true")
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", f"pipeline.stages.{stage}"], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    stop, peak = threading.Event(), [0]
    sampler = threading.Thread(target=tree_rss_peak, args=(proc.pid, stop, peak), daemon=True)
    sampler.start()
    output = proc.stdout.read().decode(errors="replace")
    stop.set()
    sampler.join()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    proc.returncode = code
    row = {"stage": stage, "seconds": round(seconds, 2),
           "peak_rss_mb": round(max(usage.ru_maxrss * 1024, peak[0]) / 2**20, 1), "exit": code}
    if code != 0:
        row["error"] = output[-2000:]
    return row


def measure(docs: int, stages: list[str], train_max_docs: int, prepare_workers: list[int]) -> list[dict]:
    rows = []
    runs = [(stage, w) for stage in stages for w in (prepare_workers if stage == "prepare" else [None])]
    for stage, workers in runs:
        if stage == "train" and docs > train_max_docs:
            continue
        where = project(docs, workers or prepare_workers[-1])
        row = {"docs": docs, **run_stage(stage, where)}
        if workers:
            row["workers"] = workers
        if stage == "prepare" and row["exit"] == 0:
            report = json.loads((where / "metrics/prepare.json").read_text())
            row["rows_kept"] = report["rows_kept"]
            row["tokens"] = int(round(report["train_tokens"]["mean"] * report["rows_kept"]))
            row["corpus_mb"] = round((where / "corpus.csv").stat().st_size / 2**20, 1)
            row["prepared_mb"] = round(sum(p.stat().st_size for p in (where / "data/prepared").glob("*")) / 2**20, 1)
        print(json.dumps(row), flush=True)
        rows.append(row)
        if row["exit"] != 0:
            break  # the later stages need this one's outputs
    return rows


def label(row: dict) -> str:
    """The stage, and for prepare its workers."""
    w = row.get("workers")
    return f"{row['stage']} ({w} worker{'s' if w > 1 else ''})" if w else row["stage"]


def table(rows: list[dict]) -> str:
    tokens = {r["docs"]: r["tokens"] for r in rows if r.get("tokens")}
    lines = ["| docs | stage | wall (s) | peak RSS (MB) | docs/s | tokens/s |", "|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        if r["exit"] != 0:
            lines.append(f"| {r['docs']:,} | {label(r)} | failed | {r['peak_rss_mb']:,.0f} | | |")
            continue
        per_doc = r["docs"] / r["seconds"]
        tok = tokens.get(r["docs"])
        lines.append(f"| {r['docs']:,} | {label(r)} | {r['seconds']:,.1f} | {r['peak_rss_mb']:,.0f} | "
                     f"{per_doc:,.0f} | {tok / r['seconds']:,.0f} |" if tok else
                     f"| {r['docs']:,} | {label(r)} | {r['seconds']:,.1f} | {r['peak_rss_mb']:,.0f} | {per_doc:,.0f} | |")
    return "\n".join(lines)


def growth(rows: list[dict], to_docs: int = 10_000_000) -> str:
    """From the two largest sizes each stage ran at: the growth ratio, and a straight line to `to_docs`."""
    lines = ["| stage | from | to | time x | memory x | at 10M: time (s) | at 10M: peak RSS (GB) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for stage in dict.fromkeys(label(r) for r in rows):
        ok = sorted((r for r in rows if label(r) == stage and r["exit"] == 0), key=lambda r: r["docs"])
        if len(ok) < 2:
            continue
        a, b = ok[-2], ok[-1]
        slope_t = (b["seconds"] - a["seconds"]) / (b["docs"] - a["docs"])
        slope_m = (b["peak_rss_mb"] - a["peak_rss_mb"]) / (b["docs"] - a["docs"])
        at_t = b["seconds"] + slope_t * (to_docs - b["docs"])
        # Memory does not shrink with the corpus: a falling line (allocator noise) stays at the last peak.
        at_m = max(b["peak_rss_mb"], b["peak_rss_mb"] + slope_m * (to_docs - b["docs"])) / 1024
        lines.append(f"| {stage} | {a['docs']:,} | {b['docs']:,} | {b['seconds'] / a['seconds']:.1f} | "
                     f"{b['peak_rss_mb'] / a['peak_rss_mb']:.1f} | {at_t:,.0f} | {at_m:,.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--train-max-docs", type=int, default=100_000)
    parser.add_argument("--prepare-workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--report-only", action="store_true", help="rewrite scale.md from scale.json")
    args = parser.parse_args()
    if args.report_only:
        return write_report(json.loads((RESULTS / "scale.json").read_text()))
    if not SNIPPETS.exists() or not EMBEDDINGS.exists():
        raise SystemExit("run `make repro` first: the benchmark builds its corpora from data/raw/")
    rows = [row for docs in args.docs for row in measure(docs, args.stages, args.train_max_docs, args.prepare_workers)]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "scale.json").write_text(json.dumps(rows, indent=2) + "\n")
    write_report(rows)


def worker_speedups(rows: list[dict]) -> str:
    """prepare's documents per second on each worker count, against one worker, per corpus size."""
    lines = []
    for docs in sorted({r["docs"] for r in rows}):
        runs = {r["workers"]: r for r in rows if r["docs"] == docs and r.get("workers") and r["exit"] == 0}
        if 1 in runs and len(runs) > 1:
            lines += [f"- {docs:,} documents, {w} workers: {runs[1]['seconds'] / r['seconds']:.2f}x the documents "
                      f"per second of one worker" for w, r in sorted(runs.items()) if w != 1]
    return "\n".join(lines)


def write_report(rows: list[dict]) -> None:
    report = f"{table(rows)}\n\nGrowth between the two largest sizes, and a straight line to 10M documents:\n\n{growth(rows)}\n"
    if speedups := worker_speedups(rows):
        report += f"\nprepare on more than one worker:\n\n{speedups}\n"
    (RESULTS / "scale.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
