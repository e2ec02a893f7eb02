"""Ablation through DVC's experiment queue: what the pretrained vectors and each pooling are worth.

Queues one `dvc exp run` per (variant, seed) on top of the current commit, runs the queue, then reads
`dvc exp show --json` and writes benchmarks/results/ablation.{json,md}. Variants change one key of
params.yaml's train section at a time; the rest stays at the committed defaults:

- train.embeddings: random, frozen, finetune, freeze_then_finetune, multichannel
- train.pooling: last, max, mean, attention

    python -m benchmarks.ablation                     # 3 seeds, one experiment at a time
    python -m benchmarks.ablation --seeds 42 --jobs 2

Queued experiments see only what git tracks: commit params.yaml and the code first. The stages
before train come from DVC's run cache, so only train and evaluate run in each experiment. One job
at a time by default: two CPU-heavy experiments on two cores slow each other more than twice, and
train time is one of the reported columns.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from pipeline import params

RESULTS = Path("benchmarks/results")
PREFIX = "abl"
VARIANTS = [("embeddings", v) for v in ("random", "frozen", "finetune", "freeze_then_finetune", "multichannel")] + \
           [("pooling", v) for v in ("last", "max", "mean", "attention")]


def dvc(*args: str, check: bool = True, capture: bool = True) -> subprocess.CompletedProcess:
    # The queue's worker calls `dvc` from PATH: make it this environment's.
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    # Without capture for `queue start`: the worker it leaves running would hold a pipe open.
    out = subprocess.PIPE if capture else subprocess.DEVNULL
    proc = subprocess.run(["dvc", *args], env=env, text=True, stdout=out, stderr=subprocess.STDOUT)
    if check and proc.returncode:
        raise SystemExit(f"dvc {' '.join(args)} failed:\n{proc.stdout or ''}")
    return proc


def experiment_name(key: str, value: str, seed: int) -> str:
    return f"{PREFIX}-{key}-{value.replace('_', '-')}-s{seed}"


def queue(seeds: list[int], defaults: params.TrainParams) -> list[str]:
    names = []
    for key, value in VARIANTS:
        if key == "pooling" and value == defaults.pooling:
            continue  # the same run as the embeddings row that matches the defaults
        for seed in seeds:
            name = experiment_name(key, value, seed)
            dvc("exp", "remove", name, check=False)  # a rerun replaces the last one
            dvc("exp", "run", "--queue", "-n", name, "-S", f"train.{key}={value}", "-S", f"train.seed={seed}")
            names.append(name)
    return names


def wait_for_queue(names: list[str], jobs: int) -> None:
    dvc("queue", "start", "--jobs", str(jobs), capture=False)
    start = time.perf_counter()
    while True:
        # Rows: task, name, created, status; compare the name column exactly (…-s4 is not …-s42).
        rows = [line.split() for line in dvc("queue", "status").stdout.splitlines()]
        ours = [r for r in rows if len(r) >= 4 and r[1] in names]
        pending = [" ".join(r) for r in ours if r[-1] in ("Queued", "Running")]
        failed = [" ".join(r) for r in ours if r[-1] == "Failed"]
        if failed:
            raise SystemExit("experiments failed (see `dvc queue logs NAME`):\n" + "\n".join(failed))
        print(f"[{time.perf_counter() - start:5.0f}s] {len(names) - len(pending)}/{len(names)} done", flush=True)
        if not pending:
            return
        time.sleep(15)


def named_experiments(names) -> list[tuple[str, dict]]:
    """(name, data) of the experiments in `dvc exp show` with one of these names."""
    # -A: also experiments based on earlier commits (after the results themselves were committed).
    shown = json.loads(dvc("exp", "show", "-A", "--json").stdout)
    return [(exp["name"], exp["revs"][0]["data"]) for commit in shown for exp in commit.get("experiments") or []
            if exp.get("name") in names]


def metrics_of(name: str, data: dict, needed: tuple[str, ...]) -> dict[str, dict]:
    """An experiment's metrics by file; an error naming the experiment if one of `needed` is missing."""
    metrics = {path: m.get("data", {}) for path, m in (data.get("metrics") or {}).items()}
    if not all(path in metrics for path in needed):
        raise SystemExit(f"{name}: no metrics (failed? see `dvc queue logs {name}`)")
    return metrics


def report_of(name: str, data: dict, path: str) -> dict:
    """A plain report (not a DVC metric) as the experiment left it, e.g. metrics/train/metrics.json: from its git
    commit, or from DVC's cache where DVC tracks the report (metrics/prepare.json, an output of prepare)."""
    proc = subprocess.run(["git", "show", f"{data['rev']}:{path}"], text=True, capture_output=True)
    if proc.returncode == 0:
        return json.loads(proc.stdout)
    import dvc.api

    try:
        return json.loads(dvc.api.read(path, rev=data["rev"]))
    except Exception as error:  # noqa: BLE001 - any failure to read it is this one message
        raise SystemExit(f"{name}: no {path} in its commit {data['rev'][:8]} (git: {proc.stderr.strip()}; "
                         f"DVC: {error})") from None


def check_all_found(names, runs: list[dict]) -> None:
    missing = sorted(set(names) - {r["name"] for r in runs})
    if missing:
        raise SystemExit(f"no results in `dvc exp show` for: {', '.join(missing)}")


def collect(names: list[str]) -> list[dict]:
    runs = []
    for name, data in named_experiments(names):
        train = data["params"]["params.yaml"]["data"]["train"]
        metrics = metrics_of(name, data, ("metrics/eval.json", "metrics/train/best.json"))
        lstm, best = metrics["metrics/eval.json"], metrics["metrics/train/best.json"]
        runs.append({"name": name, "embeddings": train["embeddings"], "pooling": train["pooling"],
                     "seed": train["seed"], "accuracy": lstm["lstm_test_acc"],
                     "macro_f1": lstm["lstm_test_f1"], "val_accuracy": best["lstm_val_acc"],
                     "best_epoch": best["lstm_best_epoch"],
                     "train_seconds": report_of(name, data, "metrics/train/metrics.json")["train_seconds"]})
    check_all_found(names, runs)
    return runs


def table(runs: list[dict], defaults: params.TrainParams) -> tuple[list[dict], str]:
    rows = []
    for key, value in VARIANTS:
        if key == "pooling" and value == defaults.pooling:
            continue  # the defaults' row is already in the embeddings group
        other = "pooling" if key == "embeddings" else "embeddings"  # held at its default in this row
        group = [r for r in runs if r[key] == value and r[other] == getattr(defaults, other)]
        if not group:
            continue

        def stat(field: str) -> tuple[float, float, float]:
            values = [r[field] for r in group]
            return statistics.mean(values), min(values), max(values)

        rows.append({"key": key, "value": value, "seeds": sorted(r["seed"] for r in group),
                     **{f: stat(f) for f in ("accuracy", "macro_f1", "val_accuracy", "train_seconds")}})
    lines = ["| train.embeddings | train.pooling | test accuracy | test macro-F1 | val accuracy | train time (s) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        emb = row["value"] if row["key"] == "embeddings" else defaults.embeddings
        pool = row["value"] if row["key"] == "pooling" else defaults.pooling

        def fmt(stat: tuple[float, float, float], digits: int = 3) -> str:
            mean, lo, hi = stat
            return f"{mean:.{digits}f} ({lo:.{digits}f}–{hi:.{digits}f})" if lo != hi else f"{mean:.{digits}f}"

        if (emb, pool) == (defaults.embeddings, defaults.pooling):
            emb, pool = f"**{emb}**", f"**{pool}** (defaults)"
        lines.append(f"| {emb} | {pool} | {fmt(row['accuracy'])} | {fmt(row['macro_f1'])} | "
                     f"{fmt(row['val_accuracy'])} | {fmt(row['train_seconds'], 0)} |")
    return rows, "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--collect-only", action="store_true", help="only read the finished experiments")
    args = ap.parse_args()
    defaults = params.load("train")
    names = [experiment_name(k, v, s) for k, v in VARIANTS for s in args.seeds
             if not (k == "pooling" and v == defaults.pooling)]
    if not args.collect_only:
        names = queue(args.seeds, defaults)
        wait_for_queue(names, args.jobs)
    runs = collect(names)
    rows, markdown = table(runs, defaults)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ablation.json").write_text(json.dumps({"defaults": defaults.__dict__, "rows": rows, "runs": runs},
                                                      indent=1) + "\n")
    (RESULTS / "ablation.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
