"""Two trainings at once through DVC's queue: total throughput against one run alone.

Three rounds on the built-in data, each experiment `train.epochs=4` (other params as committed):
1. one experiment alone (`dvc queue start -j 1`): all cores (train.threads: auto);
2. two experiments at once (`-j 2`) with train.threads: auto (one core each on two cores);
3. two at once with train.threads set to every core each (what happened before `auto`).
Training tokens per second come from each experiment's metrics/train/metrics.json (the last epoch's).
Commit first: queued experiments see only what git tracks.

    python -m benchmarks.queue_threads           # writes benchmarks/results/queue_threads.{json,md}
"""

from __future__ import annotations

import json
import os

from benchmarks.ablation import RESULTS, dvc, named_experiments, report_of, wait_for_queue

SETTINGS = ["train.epochs=4", "train.patience=4", "train.min_steps=0"]


def round_of(tag: str, runs: int, jobs: int, threads: str) -> list[dict]:
    names = [f"qt-{tag}-{i}" for i in range(runs)]
    for i, name in enumerate(names):
        dvc("exp", "remove", name, check=False)
        sets = [*SETTINGS, f"train.threads={threads}", f"train.seed={42 + i}"]
        dvc("exp", "run", "--queue", "-n", name, *[a for s in sets for a in ("-S", s)])
    wait_for_queue(names, jobs)
    rows = []
    for name, data in named_experiments(names):
        summary = report_of(name, data, "metrics/train/metrics.json")
        rows.append({"round": tag, "name": name, "jobs": jobs, "threads": summary.get("threads"),
                     "tokens_per_second": round(summary["train_tokens_per_second"]),
                     "train_seconds": summary["train_seconds"]})
    return rows


def main() -> None:
    cores = len(os.sched_getaffinity(0))
    rows = round_of("alone", 1, 1, "auto") + round_of("auto", 2, 2, "auto") + round_of("all", 2, 2, str(cores))
    alone = rows[0]["tokens_per_second"]
    total = {tag: sum(r["tokens_per_second"] for r in rows if r["round"] == tag) for tag in ("auto", "all")}
    lines = ["| round | runs at once | threads each | tokens/s each | total tokens/s | total / one alone |",
             "|---|---:|---:|---|---:|---:|",
             f"| one alone | 1 | {rows[0]['threads']} | {alone:,} | {alone:,} | 1.00 |"]
    for tag, label in (("auto", "`threads: auto`"), ("all", f"`threads: {cores}`")):
        mine = [r for r in rows if r["round"] == tag]
        each = ", ".join(f"{r['tokens_per_second']:,}" for r in mine)
        lines.append(f"| {label} | 2 | {mine[0]['threads']} | {each} | {total[tag]:,} | {total[tag] / alone:.2f} |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "queue_threads.json").write_text(json.dumps(rows, indent=2) + "\n")
    (RESULTS / "queue_threads.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
