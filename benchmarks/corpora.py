"""The pipeline on real corpora, through params.yaml only: the README's results table.

Each file in benchmarks/corpora/*.yaml holds `section.key: value` settings (where the corpus comes
from and how its columns are named; nothing about the model). One `dvc exp run --queue` per corpus
(and seed) applies them with -S on top of the committed params.yaml; the queue runs them one at a time,
then this script reads `dvc exp show --json` and writes benchmarks/results/corpora.{json,md}.

    python -m benchmarks.corpora                         # every corpus, seed 42
    python -m benchmarks.corpora reuters_r8 --seeds 42 43 44   # replaces only reuters_r8's rows
    python -m benchmarks.corpora newsgroups_20 --seeds 43 44 --collect-only --checkout ../ng20 42
                                                         # plus a run made by `dvc repro` in another checkout

The builtin row is the committed params.yaml itself. Queued experiments see only what git tracks:
commit first. The experiments stay in `dvc exp show` (named corpus-<name>-s<seed>).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import yaml

from benchmarks.ablation import (RESULTS, check_all_found, dvc, metrics_of, named_experiments, report_of,
                                 wait_for_queue)
from pipeline.shipped import CODES

CORPORA = Path("benchmarks/corpora")
SHIPPED_NAMES = {code: name for name, code in CODES.items()}


def settings(name: str) -> dict:
    return {} if name == "builtin" else yaml.safe_load((CORPORA / f"{name}.yaml").read_text())


def experiment_name(corpus: str, seed: int) -> str:
    return f"corpus-{corpus.replace('_', '-')}-s{seed}"


def queue(corpora: list[str], seeds: list[int]) -> list[str]:
    names = []
    for corpus in corpora:
        for seed in seeds:
            name = experiment_name(corpus, seed)
            dvc("exp", "remove", name, check=False)  # a rerun replaces the last one
            sets = [f"{key}={json.dumps(value)}" for key, value in settings(corpus).items()]
            sets += [f"train.seed={seed}"]
            dvc("exp", "run", "--queue", "-n", name, *[arg for s in sets for arg in ("-S", s)])
            names.append(name)
    return names


METRICS = ("metrics/eval.json", "metrics/baseline.json", "metrics/train/best.json", "metrics/ship.json")


def collect(names: dict[str, tuple[str, int]]) -> list[dict]:
    runs = []
    for name, data in named_experiments(names):
        metrics = metrics_of(name, data, METRICS)
        corpus, seed = names[name]
        runs.append(run_row(corpus, seed, name,
                            lambda path: metrics[path] if path in METRICS else report_of(name, data, path)))
    check_all_found(names, runs)
    return runs


def checkout_row(folder: Path, corpus: str, seed: int) -> dict:
    """A row from a checkout where `dvc repro` ran with this corpus's settings (and train.seed), outside the
    queue: a corpus too slow to rerun with the rest. Its name says where it came from."""
    def read(path: str) -> dict:
        if not (folder / path).is_file():
            raise SystemExit(f"{folder}: no {path} (has `dvc repro` run there?)")
        return json.loads((folder / path).read_text())
    return run_row(corpus, seed, f"checkout {folder}", read)


def run_row(corpus: str, seed: int, name: str, read) -> dict:
    """One run's figures; `read(path)` gives the JSON of a metrics file or report as that run wrote it."""
    evaluation, ship, prep = read("metrics/eval.json"), read("metrics/ship.json"), read("metrics/prepare.json")
    train = {**read("metrics/train/metrics.json"), **read("metrics/train/best.json")}
    return {
        "corpus": corpus, "seed": seed, "name": name,
        "classes": len(prep["class_counts"]), "train_rows": prep["train_rows"], "val_rows": prep["val_rows"],
        "test_rows": prep["test_rows"], "split": "given" if prep.get("split_from_corpus") else "hash",
        "mean_tokens": prep["train_tokens"]["mean"], "max_tokens": train.get("max_tokens"),
        "lstm_accuracy": evaluation["lstm_test_acc"], "lstm_macro_f1": evaluation["lstm_test_f1"],
        "baseline_accuracy": read("metrics/baseline.json")["baseline_test_acc"],
        "baseline_macro_f1": read("metrics/baseline.json")["baseline_test_f1"],
        "val_accuracy": train["lstm_val_acc"], "train_seconds": train["train_seconds"],
        # What `dvc repro` ships (ship.model, default best): the LSTM, TF-IDF or their fusion, chosen on validation
        "shipped": SHIPPED_NAMES[ship["ship_model"]], "fusion_weight": ship["ship_fusion_weight"],
        "fusion_accuracy": ship["fusion_test_acc"],
        "shipped_accuracy": evaluation["shipped_test_acc"], "shipped_macro_f1": evaluation["shipped_test_f1"],
    }


def table(runs: list[dict], corpora: list[str]) -> str:
    lines = ["The shipped columns are what each run's ship stage chose by the rule of its day. The present rule "
             "(validation NLL, a temperature for each weight) applied to the same models: reship.md "
             "(`python -m benchmarks.reship`).", "",
             "| corpus | classes | train / val / test | split | mean tokens (model reads) | **shipped accuracy** | "
             "shipped macro-F1 | shipped (seeds) | LSTM accuracy | LSTM macro-F1 | baseline accuracy | "
             "baseline macro-F1 | train s |",
             "|---|---:|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    for corpus in corpora:
        group = [r for r in runs if r["corpus"] == corpus]
        if not group:
            continue
        first = group[0]

        def mean(key: str, digits: int = 3) -> str:
            values = [r[key] for r in group]
            text = f"{statistics.mean(values):.{digits}f}"
            return text + (f" ({min(values):.{digits}f}–{max(values):.{digits}f})" if len(values) > 1 else "")

        lines.append(f"| {corpus} | {first['classes']} | {first['train_rows']:,} / {first['val_rows']:,} / "
                     f"{first['test_rows']:,} | {first['split']} | {first['mean_tokens']:.0f} ({first['max_tokens']}) | "
                     f"{shipped_cells(group, mean)}"
                     f"{mean('lstm_accuracy')} | {mean('lstm_macro_f1')} | {mean('baseline_accuracy')} | "
                     f"{mean('baseline_macro_f1')} | {mean('train_seconds', 0)} |")
    return "\n".join(lines) + "\n"


def shipped_cells(group: list[dict], mean) -> str:
    """The shipped model's columns; rows measured before the ship stage existed show a dash."""
    if not all("shipped" in r for r in group):
        return "- | - | - | "
    chosen = ", ".join(f"{r['shipped']}" + (f" w={r['fusion_weight']:g}" if r["shipped"] == "fusion" else "")
                       for r in group)
    return f"**{mean('shipped_accuracy')}** | {mean('shipped_macro_f1')} | {chosen} | "


def main() -> None:
    available = ["builtin"] + sorted(p.stem for p in CORPORA.glob("*.yaml"))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpora", nargs="*", default=available, help=f"default: all of {', '.join(available)}")
    ap.add_argument("--seeds", type=int, nargs="+", default=[42])
    ap.add_argument("--collect-only", action="store_true", help="only read the finished experiments")
    ap.add_argument("--checkout", nargs=2, action="append", default=[], metavar=("PATH", "SEED"),
                    help="also a run made outside the queue: a checkout where `dvc repro` ran with the (one) "
                    "corpus's settings and train.seed SEED; repeatable")
    args = ap.parse_args()
    unknown = sorted(set(args.corpora) - set(available))
    if unknown:
        raise SystemExit(f"unknown corpus {unknown[0]!r}; known: {', '.join(available)}")
    if args.checkout and len(args.corpora) != 1:
        raise SystemExit("--checkout: name the one corpus its runs belong to")
    names = {experiment_name(c, s): (c, s) for c in args.corpora for s in args.seeds}
    if not args.collect_only:
        queued = queue(args.corpora, args.seeds)
        wait_for_queue(queued, jobs=1)
    runs = collect(names) + [checkout_row(Path(folder), args.corpora[0], int(seed)) for folder, seed in args.checkout]
    # Corpora not run this time keep their earlier rows (a slow corpus need not rerun with the rest).
    path = RESULTS / "corpora.json"
    earlier = json.loads(path.read_text())["runs"] if path.exists() else []
    runs = [r for r in earlier if r["corpus"] not in args.corpora] + runs
    shown = [c for c in available if any(r["corpus"] == c for r in runs)]
    markdown = table(runs, shown)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"settings": {c: settings(c) for c in shown}, "runs": runs}, indent=1) + "\n")
    (RESULTS / "corpora.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
