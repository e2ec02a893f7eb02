"""Parallel hyper-parameter sweep over the train section, on the pipeline's own prepared data.

`dvc exp run --queue` is the way to record experiments; this script is for scanning many settings
fast on a machine with many cores: each run is one process with one thread, so N workers give N runs
at a time. Every setting is trained with each seed; rows report validation and test accuracy of each
run and of the seeds' averaged probabilities (an ensemble). Choose by validation, read test last.

    python -m benchmarks.sweep benchmarks/sweeps/quality.yaml --workers 14 --out sweep.json

The sweep file maps a name to `train.*` overrides of params.yaml, plus an optional `seeds` list:
    seeds: [42, 43, 44]
    settings:
      default: {}
      cosine: {lr_schedule: cosine, epochs: 15}
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time
from pathlib import Path

import numpy as np
import yaml

from pipeline import params
from pipeline.errors import run_main


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def load_data():
    from benchmarks.data import VOCAB_DIR, class_labels, load_split
    from pipeline.files import read_json

    vocab = read_json(VOCAB_DIR / "vocab.json")
    stoi = {w: i for i, w in enumerate(vocab["itos"])}
    labels = class_labels()
    splits = {name: load_split(name, stoi, vocab["unk_id"], labels) for name in ("train", "val", "test")}
    return np.load(VOCAB_DIR / "embeddings.npy"), vocab["unk_id"], labels, splits


def run_one(job: tuple[str, dict, int, str]) -> dict:
    from pipeline.inference import predict_proba
    from pipeline.plan import make_plan
    from pipeline.training import build_model, fit, set_determinism

    name, overrides, seed, device_name = job
    tp = params.parse_section("train", {**params.load_yaml()["train"], **overrides, "seed": seed,
                                        "device": device_name}, where=f"sweep setting {name!r}")
    matrix, unk_id, labels, splits = load_data()
    set_determinism(tp.seed)
    plan = make_plan(tp, [len(s) for s in splits["train"][0]], unk_id)
    device = plan.device
    model = build_model(tp, matrix, len(labels))
    result = fit(model, plan, (splits["train"], splits["val"]))
    model.load_state_dict(result.best_state)
    probs = {split: predict_proba(model, splits[split][0], 256, device) for split in ("val", "test")}
    return {
        "name": name, "seed": seed, "overrides": overrides, "best_epoch": result.best_epoch,
        "epochs_run": len(result.history), "train_seconds": round(result.seconds, 1),
        "val_accuracy": float((probs["val"].argmax(1) == splits["val"][1]).mean()),
        "test_accuracy": float((probs["test"].argmax(1) == splits["test"][1]).mean()),
        "val_probs": probs["val"].tolist(), "test_probs": probs["test"].tolist(),
    }


def summarise(runs: list[dict], splits: dict) -> list[dict]:
    """One row per setting: mean and spread over seeds, and the seed ensemble's accuracy."""
    from sklearn.metrics import f1_score

    rows = []
    for name in dict.fromkeys(r["name"] for r in runs):
        group = [r for r in runs if r["name"] == name]
        row = {"name": name, "overrides": group[0]["overrides"], "seeds": len(group)}
        for split in ("val", "test"):
            accs = [r[f"{split}_accuracy"] for r in group]
            row[f"{split}_mean"], row[f"{split}_min"], row[f"{split}_max"] = np.mean(accs), min(accs), max(accs)
            mean_probs = np.mean([np.asarray(r[f"{split}_probs"]) for r in group], axis=0)
            truth = splits[split][1]
            row[f"{split}_ensemble"] = float((mean_probs.argmax(1) == truth).mean())
            row[f"{split}_ensemble_macro_f1"] = float(f1_score(truth, mean_probs.argmax(1), average="macro"))
        row["train_seconds_mean"] = float(np.mean([r["train_seconds"] for r in group]))
        row["best_epochs"] = [r["best_epoch"] for r in group]
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep", type=Path)
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=Path("sweep.json"))
    args = ap.parse_args()
    spec = yaml.safe_load(args.sweep.read_text())
    seeds = spec.get("seeds", [42])
    for name, over in spec["settings"].items():  # fail before any training, naming the setting
        if "seed" in (over or {}):
            raise SystemExit(f"{args.sweep}: setting {name!r}: give seeds in the top-level 'seeds' list")
        params.parse_section("train", {**params.load_yaml()["train"], **(over or {})},
                             where=f"{args.sweep}: setting {name!r}")
    jobs = [(name, over or {}, seed, args.device) for name, over in spec["settings"].items() for seed in seeds]
    start = time.perf_counter()
    runs = []
    with mp.get_context("fork").Pool(args.workers, initializer=_init_worker) as pool:
        for run in pool.imap_unordered(run_one, jobs):
            runs.append(run)
            print(f"[{time.perf_counter() - start:6.0f}s] {run['name']:<28} seed {run['seed']}: val "
                  f"{run['val_accuracy']:.4f} test {run['test_accuracy']:.4f} epoch {run['best_epoch']}/"
                  f"{run['epochs_run']} {run['train_seconds']}s", flush=True)
    _, _, _, splits = load_data()
    rows = summarise(runs, splits)
    args.out.write_text(json.dumps({"rows": rows, "runs": [{k: v for k, v in r.items() if not k.endswith("_probs")}
                                                            for r in runs]}, indent=1))
    print(f"\n{'setting':<28} {'val mean':>8} {'val ens':>8} {'test mean':>9} {'test min-max':>13} {'test ens':>8} {'s':>6}")
    for r in sorted(rows, key=lambda r: -r["val_mean"]):
        print(f"{r['name']:<28} {r['val_mean']:8.4f} {r['val_ensemble']:8.4f} {r['test_mean']:9.4f} "
              f"{r['test_min']:.3f}-{r['test_max']:.3f} {r['test_ensemble']:8.4f} {r['train_seconds_mean']:6.1f}")


if __name__ == "__main__":
    run_main(main)
