"""What the ship stage chooses today, on the models that finished runs trained: the README corpora's rule check.

    python -m benchmarks.reship builtin reuters_r8 pang_lee_long newsgroups_20 --seeds 42 43 44
    python -m benchmarks.reship newsgroups_20 --seeds 43 44 --checkout newsgroups_20 ../ng20 42
                                                    # plus a `dvc repro` checkout; other corpora's rows are kept

A change to how `ship` chooses (pipeline/fusion.py) reaches train's code too (train imports inference, which
fuses), so DVC would retrain every model to show it: hours on 20 Newsgroups. The choice itself needs only what
train and baseline wrote. For each `make corpora` experiment (corpus-NAME-sSEED, benchmarks/corpora.py) this
reads models/lstm.pt, models/tfidf.npz and the prepared validation and test splits from DVC's cache at the
experiment's commit (or from a checkout), runs the stage's own code on them (pipeline.shipped.choose, then
the shipped model's test accuracy), and writes benchmarks/results/reship.{json,md}: per run, the LSTM, the
TF-IDF model, what the run shipped when it ran (its metrics) and what ships now. Nothing is retrained.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

from benchmarks.ablation import RESULTS, metrics_of, named_experiments
from benchmarks.corpora import CORPORA, experiment_name

INPUTS = ("models/lstm.pt", "models/tfidf.npz", "data/prepared/val.parquet", "data/prepared/test.parquet")


def copy_inputs(folder: Path, rev: str | None, checkout: Path | None) -> None:
    """The run's trained models and prepared splits into `folder` (from DVC's cache at `rev`, or a checkout)."""
    import dvc.api

    for path in INPUTS:
        target = folder / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if checkout is not None:
            if not (checkout / path).is_file():
                raise SystemExit(f"{checkout}: no {path} (has `dvc repro` run there?)")
            target.write_bytes((checkout / path).read_bytes())
        else:
            target.write_bytes(dvc.api.read(path, rev=rev, mode="rb"))


def choose_now(folder: Path) -> dict:
    """pipeline.shipped's choice (ship.model: best) and the shipped model's test accuracy, run in `folder`."""
    from pipeline.checkpoint import load_checkpoint
    from pipeline.shipped import LSTM_PATH, TFIDF_PATH, choose, fused_test_figures
    from pipeline.tfidf_model import TfidfModel

    here = Path.cwd()
    os.chdir(folder)  # the stage's paths are relative to the checkout, as DVC runs it
    try:
        ckpt, tfidf = load_checkpoint(LSTM_PATH), TfidfModel.load(TFIDF_PATH)
        figures = choose(ckpt, tfidf, "best")
        test = fused_test_figures(ckpt, tfidf, figures)
    finally:
        os.chdir(here)
    return {"shipped": figures["shipped"], "weight": figures["weight"],
            "temperature": figures["fusion"].get("temperature"), "fusion_test_acc": test["fusion_test_acc"],
            "val": {name: figures[name] for name in ("lstm", "tfidf", "fusion")}}


def run_row(corpus: str, seed: int, name: str, metrics: dict, rev: str | None, checkout: Path | None) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        copy_inputs(Path(scratch), rev, checkout)
        now = choose_now(Path(scratch))
    evaluation, ship = metrics["metrics/eval.json"], metrics["metrics/ship.json"]
    alone = {"lstm": evaluation["lstm_test_acc"], "tfidf": metrics["metrics/baseline.json"]["baseline_test_acc"]}
    row = {"corpus": corpus, "seed": seed, "name": name, "lstm_accuracy": alone["lstm"],
           "tfidf_accuracy": alone["tfidf"], "then_shipped": {0: "lstm", 1: "fusion", 2: "tfidf"}[ship["ship_model"]],
           "then_weight": ship["ship_fusion_weight"], "then_accuracy": evaluation["shipped_test_acc"],
           "now_shipped": now["shipped"], "now_weight": now["weight"], "now_temperature": now["temperature"],
           "now_accuracy": alone.get(now["shipped"], now["fusion_test_acc"]), "now_validation": now["val"]}
    print(json.dumps({k: v for k, v in row.items() if k != "now_validation"}), flush=True)
    return row


def table(rows: list[dict]) -> str:
    lines = ["| corpus | seeds | LSTM | TF-IDF | shipped before (by validation accuracy) | **shipped now (by validation NLL, T fitted)** | what ships now |",
             "|---|---|---:|---:|---:|---:|---|"]
    for corpus in dict.fromkeys(r["corpus"] for r in rows):
        group = [r for r in rows if r["corpus"] == corpus]

        def mean(key: str) -> str:
            values = [r[key] for r in group]
            return f"{statistics.mean(values):.3f}" + (f" ({min(values):.3f}–{max(values):.3f})" if len(values) > 1 else "")
        what = ", ".join(r["now_shipped"] + (f" w={r['now_weight']:g}" if r["now_shipped"] == "fusion" else "")
                         for r in group)
        lines.append(f"| {corpus} | {', '.join(str(r['seed']) for r in group)} | {mean('lstm_accuracy')} | "
                     f"{mean('tfidf_accuracy')} | {mean('then_accuracy')} | **{mean('now_accuracy')}** | {what} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpora", nargs="+")
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    ap.add_argument("--checkout", nargs=3, action="append", default=[], metavar=("CORPUS", "PATH", "SEED"),
                    help="also a run made by `dvc repro` in another checkout with that corpus's settings")
    args = ap.parse_args()
    names = {experiment_name(c, s): (c, s) for c in args.corpora for s in args.seeds}
    found = named_experiments(names)
    missing = sorted(set(names) - {name for name, _ in found})
    if missing:
        raise SystemExit(f"not in `dvc exp show` (run `make corpora` first): {', '.join(missing)}")
    rows = []
    for name, data in sorted(found, key=lambda item: (args.corpora.index(names[item[0]][0]), names[item[0]][1])):
        metrics = metrics_of(name, data, ("metrics/eval.json", "metrics/ship.json", "metrics/baseline.json"))
        rows.append(run_row(*names[name], name, metrics, data["rev"], None))
    for corpus, folder, seed in args.checkout:
        folder = Path(folder)
        metrics = {path: json.loads((folder / path).read_text())
                   for path in ("metrics/eval.json", "metrics/ship.json", "metrics/baseline.json")}
        rows.append(run_row(corpus, int(seed), f"checkout {folder}", metrics, None, folder))
    # Runs not measured this time keep their earlier rows (a slow corpus's seeds can come in later).
    path = RESULTS / "reship.json"
    measured = {(r["corpus"], r["seed"]) for r in rows}
    rows += [r for r in (json.loads(path.read_text())["rows"] if path.exists() else [])
             if (r["corpus"], r["seed"]) not in measured]
    order = ["builtin", *sorted(p.stem for p in CORPORA.glob("*.yaml"))]
    rows.sort(key=lambda r: (order.index(r["corpus"]) if r["corpus"] in order else len(order), r["corpus"], r["seed"]))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "reship.json").write_text(json.dumps({"rows": rows}, indent=1) + "\n")
    (RESULTS / "reship.md").write_text(table(rows))
    print(table(rows))


if __name__ == "__main__":
    main()
