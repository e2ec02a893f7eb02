"""What textclf-search finds against the committed defaults, on the README's corpora.

    python -m benchmarks.search builtin --trials 12 --seed 0
    python -m benchmarks.search reuters_r8 --trials 12 --seed 0 [--space search.yaml] [--minutes 120]
    python -m benchmarks.search builtin --trials 12 --seed 0 --objective shipped   # search-builtin-shipped.*

For one corpus (builtin: params.yaml as committed; else benchmarks/corpora/NAME.yaml's settings written
into params.yaml for the duration, and put back after), this runs the committed params once as an
experiment (`bench-search-NAME-defaults`), then a search of the stated budget (`textclf-search --name
bench-NAME`: experiments search-bench-NAME-tNNN). Then it reads each one's validation and test figures
and writes benchmarks/results/search-NAME.{json,md}. The search chooses by validation only. The test
columns are read last, and they are the honest comparison: the best of N trials on validation is an
optimistic validation figure. Commit first: the experiments run from the commit (with the params.yaml
change). A rerun replaces that corpus's experiments and search.

--repeat then runs the same search again (same seed and budget, `--name bench-NAME-repeat`) and records
whether it proposed the same params in the same order, and how long it took (DVC's run cache gives back
each trial). --skip-search rewrites the results from the experiments and the study already there (with
--repeat: adds the repeat to them).
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
from pipeline.search import SEARCH_DIR, experiment_ref, git, objective_of, override, read_at

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
    # This commit's experiment of that name first, else the latest of any commit.
    ref = experiment_ref(experiment, git("rev-parse", "HEAD").strip()) or experiment_ref(experiment)
    if ref is None:
        raise SystemExit(f"experiment {experiment} not found (see `dvc exp show`)")
    best, test = json.loads(read_at(ref, "metrics/train/best.json")), json.loads(read_at(ref, "metrics/eval.json"))
    single = "lstm_val_acc" in best
    return {"experiment": experiment, "objective": "lstm_val_acc" if single else "lstm_val_micro_f1",
            "val": best["lstm_val_acc" if single else "lstm_val_micro_f1"],
            "test": test["lstm_test_acc" if single else "lstm_test_micro_f1"],
            "test_macro_f1": test.get("lstm_test_f1", test.get("lstm_test_macro_f1")),
            # What `dvc repro` ships from that run (ship.model: the LSTM, or the best of LSTM, TF-IDF, fusion).
            "shipped_val": objective_of(lambda path: read_at(ref, path), "shipped", experiment)[1],
            "shipped_test": test.get("shipped_test_acc" if single else "shipped_test_micro_f1"),
            "pruned": bool(best.get("pruned"))}


def remove_experiments(prefix: str) -> None:
    names = dvc("exp", "ls", "--name-only", check=False).stdout.split()
    doomed = [n for n in names if n.startswith(prefix)]
    if doomed:
        dvc("exp", "remove", *doomed, check=False)


WHOSE = {"lstm": "the LSTM's", "shipped": "the shipped model's"}


def shipped(run: dict) -> str:
    test = "n/a" if run.get("shipped_test") is None else f"{run['shipped_test']:.4f}"
    return f"{run['shipped_val']:.4f} | {test}"


def markdown(result: dict) -> str:
    d, b = result["defaults"], result["best"]
    metric = "accuracy" if d["objective"] == "lstm_val_acc" else "micro-F1"
    lines = [f"# textclf-search on {result['corpus']}", "",
             f"{result['trials']} trials (seed {result['seed']}, space {result['space']}; "
             f"{result['complete']} complete, {result['pruned']} pruned, {result['failed']} failed) in "
             f"{result['search_minutes']:.0f} minutes; chosen by {WHOSE[result['objective']]} validation {metric}, "
             "test read last.", "",
             f"| run | LSTM validation {metric} | LSTM test {metric} | LSTM test macro-F1 | shipped validation "
             f"{metric} | shipped test {metric} | params |", "|---|---:|---:|---:|---:|---:|---|",
             f"| committed defaults | {d['val']:.4f} | {d['test']:.4f} | {d['test_macro_f1']:.4f} | {shipped(d)} | |",
             f"| best trial ({b['experiment']}) | {b['val']:.4f} | {b['test']:.4f} | {b['test_macro_f1']:.4f} | "
             f"{shipped(b)} | "
             + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in b["params"].items()) + " |",
             "", "What mattered (fANOVA): " + (", ".join(f"{k} {v:.2f}" for k, v in (result["importance"] or {}).items())
                                               or "not measurable"), "",
             f"LSTM test {metric} of every complete trial: "
             + ", ".join(f"{t['test']:.4f}" for t in result["all_trials"] if not t["pruned"]), "",
             f"Shipped test {metric} of every complete trial: "
             + ", ".join(shipped(t).split(" | ")[1] for t in result["all_trials"] if not t["pruned"]), ""]
    if "seeds" in result:
        seeds = result["seeds"]
        lines += [f"The defaults and the best trial's params with other seeds (test {metric}, LSTM / shipped):", "",
                  "| train.seed | defaults | best trial's params |", "|---:|---:|---:|"]
        lines += [f"| {r['seed']} | {r['defaults']['test']:.4f} / {r['defaults']['shipped_test']:.4f} | "
                  f"{r['best']['test']:.4f} / {r['best']['shipped_test']:.4f} |" for r in seeds["rows"]]
        m = seeds["mean"]
        lines += [f"| mean | {m['defaults']['test']:.4f} / {m['defaults']['shipped_test']:.4f} | "
                  f"{m['best']['test']:.4f} / {m['best']['shipped_test']:.4f} |", ""]
    if "repeat" in result:
        r = result["repeat"]
        lines += [f"The same search again (seed {result['seed']}, `--name {r['name']}`): "
                  + ("the same params in the same order" if r["same_proposals"] else "**different proposals**")
                  + f", in {r['minutes']:.1f} minutes (DVC's run cache gives back each trial).", ""]
    return "\n".join(lines)


def search(corpus: str, name: str, budget: list[str], seed: int, space: str, objective: str, *,
           defaults: str | None) -> float:
    """Run textclf-search (and first the committed params as experiment `defaults`, if given) with the
    corpus's settings in params.yaml, put back after; its minutes."""
    original = PARAMS.read_bytes()
    try:
        apply_settings(settings(corpus))
        # The defaults run once for each corpus and commit, whatever the objective.
        if defaults and experiment_ref(defaults, git("rev-parse", "HEAD").strip()) is None:
            remove_experiments(defaults)
            print(f"{defaults}: the committed params", flush=True)
            dvc("exp", "run", "--temp", "-n", defaults)
        remove_experiments(f"search-{name}-t")
        shutil.rmtree(SEARCH_DIR / name, ignore_errors=True)
        start = time.monotonic()
        subprocess.run([sys.executable, "-m", "pipeline.cli.search", *budget, "--seed", str(seed),
                        "--space", space, "--name", name, "--objective", objective], check=True)
        return (time.monotonic() - start) / 60
    finally:
        PARAMS.write_bytes(original)


def check_seeds(corpus: str, defaults: str, best: dict, seeds: list[int]) -> dict:
    """The defaults and the best trial's params, each trained again with every seed of `seeds` (experiments
    DEFAULTS-sSEED and BEST-sSEED): is the best's lead more than one seed's luck? Rows: seed, then the two
    runs' figures; the search's own seed (params.yaml's train.seed) first, from the runs already made."""
    from ruamel.yaml import YAML

    own = YAML().load(PARAMS.read_text(encoding="utf-8"))["train"]["seed"]
    rows = [{"seed": own, "defaults": figures(defaults), "best": {k: v for k, v in best.items() if k != "params"}}]
    original = PARAMS.read_bytes()
    try:
        apply_settings(settings(corpus))
        for seed in seeds:
            row = {"seed": seed}
            for which, values in (("defaults", {}), ("best", best["params"])):
                name = f"{defaults if which == 'defaults' else best['experiment']}-s{seed}"
                remove_experiments(name)
                dvc("exp", "run", "--temp", "-n", name, f"-Strain.seed={seed}",
                    *(f"-S{override(key, value)}" for key, value in values.items()))
                row[which] = figures(name)
            rows.append(row)
    finally:
        PARAMS.write_bytes(original)
    mean = {which: {key: round(sum(r[which][key] for r in rows) / len(rows), 4) for key in ("test", "shipped_test")}
            for which in ("defaults", "best")}
    return {"rows": rows, "mean": mean}


def proposals(name: str) -> list[dict]:
    return [t["params"] for t in json.loads((SEARCH_DIR / name / "summary.json").read_text())["trials"]]


def main() -> None:
    available = ["builtin"] + sorted(p.stem for p in CORPORA.glob("*.yaml"))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpus", choices=available)
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--minutes", type=float)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--space", default="search.yaml")
    ap.add_argument("--objective", choices=("lstm", "shipped"), default="lstm",
                    help="lstm: results in search-CORPUS.*; shipped (textclf-search's own default): search-CORPUS-shipped.*")
    ap.add_argument("--repeat", action="store_true", help="run the same search again and compare its proposals")
    ap.add_argument("--skip-search", action="store_true", help="only rewrite the results (and --repeat)")
    ap.add_argument("--check-seeds", type=int, nargs="*", default=[], metavar="SEED",
                    help="also train the defaults and the best trial's params with these train.seed values")
    args = ap.parse_args()
    name = f"bench-{args.corpus.replace('_', '-')}" + ("-shipped" if args.objective == "shipped" else "")
    stem = f"search-{args.corpus}" + ("-shipped" if args.objective == "shipped" else "")
    defaults = f"bench-search-{args.corpus.replace('_', '-')}-defaults"
    budget = ["--trials", str(args.trials)] + (["--minutes", str(args.minutes)] if args.minutes else [])
    out = RESULTS / f"{stem}.json"
    earlier = json.loads(out.read_text()) if out.exists() else {}  # what --skip-search keeps
    if args.skip_search:
        minutes = earlier["search_minutes"]
    else:
        minutes = search(args.corpus, name, budget, args.seed, args.space, args.objective, defaults=defaults)
    summary = json.loads((SEARCH_DIR / name / "summary.json").read_text())
    trials = [t for t in summary["trials"] if t["state"] in ("complete", "pruned")]
    result = {"corpus": args.corpus, "seed": args.seed, "space": args.space, "objective": args.objective,
              "trials": len(summary["trials"]),
              "complete": sum(t["state"] == "complete" for t in trials), "pruned": sum(t["state"] == "pruned" for t in trials),
              "failed": sum(t["state"] == "fail" for t in summary["trials"]), "search_minutes": round(minutes, 1),
              "settings": settings(args.corpus), "defaults": figures(defaults),
              "best": {**figures(summary["best"]["experiment"]), "params": summary["best"]["params"]},
              "importance": summary["importance"],
              "all_trials": [{**figures(t["experiment"]), "params": t["params"]} for t in trials]}
    if args.check_seeds:
        result["seeds"] = check_seeds(args.corpus, defaults, result["best"], args.check_seeds)
    elif "seeds" in earlier:
        result["seeds"] = earlier["seeds"]
    if args.repeat:
        repeat_minutes = search(args.corpus, f"{name}-repeat", budget, args.seed, args.space, args.objective,
                                defaults=None)
        result["repeat"] = {"name": f"{name}-repeat", "minutes": round(repeat_minutes, 1),
                            "same_proposals": proposals(f"{name}-repeat") == proposals(name)}
    elif "repeat" in earlier:
        result["repeat"] = earlier["repeat"]
    RESULTS.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / f"{stem}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
