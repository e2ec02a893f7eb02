"""What textclf-search finds against the committed defaults, on the README's corpora.

    python -m benchmarks.search builtin --trials 12 --seed 0
    python -m benchmarks.search reuters_r8 --trials 12 --seed 0 [--space search.yaml] [--minutes 120]

For one corpus (builtin: params.yaml as committed; else benchmarks/corpora/NAME.yaml's settings written
into params.yaml for the duration, and put back after), this runs the committed params once as an
experiment (`bench-search-NAME-defaults`), then a search of the stated budget (`textclf-search --name
bench-NAME`: experiments search-bench-NAME-tNNN). Then it reads each one's validation and test figures
and writes benchmarks/results/search-NAME.{json,md}. The search chooses by validation only. The test
columns are read last, and they are the honest comparison: the best of N trials on validation is an
optimistic validation figure. Commit first: the experiments run from the commit (with the params.yaml
change). A rerun replaces that corpus's experiments and search.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.ablation import RESULTS, dvc
from benchmarks.corpora import CORPORA, settings
from pipeline.search import SEARCH_DIR, experiment_ref, read_at

PARAMS = Path("params.yaml")


def apply_settings(values: dict) -> None:
    """Write `section.key: value` settings into params.yaml, keeping its comments (ruamel round trip)."""
    from ruamel.yaml import YAML

    yaml = YAML()
    data = yaml.load(PARAMS.read_text(encoding="utf-8"))
    for name, value in values.items():
        section, _, key = name.partition(".")
        data[section][key] = value
    with PARAMS.open("w", encoding="utf-8") as out:
        yaml.dump(data, out)


def figures(experiment: str) -> dict:
    """The experiment's validation and test figures (metrics kept in its git commit)."""
    ref = experiment_ref(experiment)
    if ref is None:
        raise SystemExit(f"experiment {experiment} not found (see `dvc exp show`)")
    best, test = json.loads(read_at(ref, "metrics/train/best.json")), json.loads(read_at(ref, "metrics/eval.json"))
    single = "lstm_val_acc" in best
    return {"experiment": experiment, "objective": "lstm_val_acc" if single else "lstm_val_micro_f1",
            "val": best["lstm_val_acc" if single else "lstm_val_micro_f1"],
            "test": test["lstm_test_acc" if single else "lstm_test_micro_f1"],
            "test_macro_f1": test.get("lstm_test_f1", test.get("lstm_test_macro_f1")),
            # What `dvc repro` ships from that run (ship.model: the LSTM, or the best of LSTM, TF-IDF, fusion).
            "shipped_test": test.get("shipped_test_acc" if single else "shipped_test_micro_f1"),
            "pruned": bool(best.get("pruned"))}


def remove_experiments(prefix: str) -> None:
    names = dvc("exp", "ls", "--name-only", check=False).stdout.split()
    doomed = [n for n in names if n.startswith(prefix)]
    if doomed:
        dvc("exp", "remove", *doomed, check=False)


def shipped(run: dict) -> str:
    return "n/a" if run.get("shipped_test") is None else f"{run['shipped_test']:.4f}"


def markdown(result: dict) -> str:
    d, b = result["defaults"], result["best"]
    metric = "accuracy" if d["objective"] == "lstm_val_acc" else "micro-F1"
    lines = [f"# textclf-search on {result['corpus']}", "",
             f"{result['trials']} trials (seed {result['seed']}, space {result['space']}; "
             f"{result['complete']} complete, {result['pruned']} pruned, {result['failed']} failed) in "
             f"{result['search_minutes']:.0f} minutes; chosen by validation {metric}, test read last.", "",
             f"| run | LSTM validation {metric} | LSTM test {metric} | LSTM test macro-F1 | shipped test {metric} "
             "| params |", "|---|---:|---:|---:|---:|---|",
             f"| committed defaults | {d['val']:.4f} | {d['test']:.4f} | {d['test_macro_f1']:.4f} | {shipped(d)} | |",
             f"| best trial ({b['experiment']}) | {b['val']:.4f} | {b['test']:.4f} | {b['test_macro_f1']:.4f} | "
             f"{shipped(b)} | "
             + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in b["params"].items()) + " |",
             "", "What mattered (fANOVA): " + (", ".join(f"{k} {v:.2f}" for k, v in (result["importance"] or {}).items())
                                               or "not measurable"), "",
             f"Test {metric} of every complete trial: "
             + ", ".join(f"{t['test']:.4f}" for t in result["all_trials"] if not t["pruned"]), ""]
    return "\n".join(lines)


def main() -> None:
    available = ["builtin"] + sorted(p.stem for p in CORPORA.glob("*.yaml"))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpus", choices=available)
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--minutes", type=float)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--space", default="search.yaml")
    args = ap.parse_args()
    name = f"bench-{args.corpus.replace('_', '-')}"
    original = PARAMS.read_bytes()
    try:
        apply_settings(settings(args.corpus))
        defaults = f"bench-search-{args.corpus.replace('_', '-')}-defaults"
        remove_experiments(defaults)
        remove_experiments(f"search-{name}-")
        shutil.rmtree(SEARCH_DIR / name, ignore_errors=True)
        print(f"{defaults}: the committed params", flush=True)
        dvc("exp", "run", "--temp", "-n", defaults)
        start = time.monotonic()
        budget = ["--trials", str(args.trials)] + (["--minutes", str(args.minutes)] if args.minutes else [])
        subprocess.run([sys.executable, "-m", "pipeline.cli.search", *budget, "--seed", str(args.seed),
                        "--space", args.space, "--name", name], check=True)
        minutes = (time.monotonic() - start) / 60
    finally:
        PARAMS.write_bytes(original)
    summary = json.loads((SEARCH_DIR / name / "summary.json").read_text())
    trials = [t for t in summary["trials"] if t["state"] in ("complete", "pruned")]
    result = {"corpus": args.corpus, "seed": args.seed, "space": args.space, "trials": len(summary["trials"]),
              "complete": sum(t["state"] == "complete" for t in trials), "pruned": sum(t["state"] == "pruned" for t in trials),
              "failed": sum(t["state"] == "fail" for t in summary["trials"]), "search_minutes": round(minutes, 1),
              "settings": settings(args.corpus), "defaults": figures(defaults),
              "best": {**figures(summary["best"]["experiment"]), "params": summary["best"]["params"]},
              "importance": summary["importance"],
              "all_trials": [{**figures(t["experiment"]), "params": t["params"]} for t in trials]}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"search-{args.corpus}.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / f"search-{args.corpus}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
