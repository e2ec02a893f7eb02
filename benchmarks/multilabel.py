"""Several labels per text: the LSTM, the TF-IDF one-vs-rest baseline and fastText's one-vs-all mode
(`-loss ova`) on the same prepared splits, with the same figures (pipeline/multilabel_metrics.py).

    python -m benchmarks.multilabel --workdir PATH --corpus NAME

PATH is a checkout where `dvc repro` ran with a multi-label corpus's params (benchmarks/corpora/NAME.yaml):
its data/prepared splits, its metrics/eval.json (the LSTM) and metrics/baseline.json (TF-IDF) are read;
fastText is trained here, in the peers' environment (benchmarks/.peers-venv, `make peers`), on the same
splits and the same vectors (.vec written from the vocab stage's matrix: the words of the splits), lr,
epochs and word n-grams chosen on validation micro-F1. fastText is scored twice: as its users call it
(`predict(k=-1, threshold=0.5)`), and with each label's threshold chosen on validation by the pipeline's
own rule, so the two models differ only in the model. Writes benchmarks/results/multilabel-NAME.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PEERS_PYTHON = ROOT / "benchmarks" / ".peers-venv" / "bin" / "python"
GRID = {"lr": [0.1, 0.5, 1.0], "epoch": [10, 25], "wordNgrams": [1, 2]}
SEED = 42


def write_fasttext_inputs(workdir: Path, cache: Path) -> dict:
    """The splits as fastText lines (each label as its index: `__label__3 __label__7 words ...`) and the
    vectors of the splits' words as a .vec file (the vocab stage's aligned matrix, pretrained rows only)."""
    import pandas as pd

    splits = {s: pd.read_parquet(workdir / "data/prepared" / f"{s}.parquet", columns=["tokens", "label"])
              for s in ("train", "val", "test")}
    labels = sorted({name for names in splits["train"]["label"] for name in names})
    index = {label: i for i, label in enumerate(labels)}
    cache.mkdir(parents=True, exist_ok=True)
    for name, frame in splits.items():
        with open(cache / f"{name}.txt", "w", encoding="utf-8") as out:
            for tokens, names in zip(frame["tokens"], frame["label"]):
                prefix = " ".join(f"__label__{index[n]}" for n in names if n in index)
                out.write((prefix + " " if prefix else "") + " ".join(" ".join(t.split()) for t in tokens) + "\n")
    vocab = json.loads((workdir / "data/vocab/vocab.json").read_text())
    matrix = np.load(workdir / "data/vocab/embeddings.npy")
    words = [(w, row) for w, row in zip(vocab["itos"], matrix) if w and w.split() == [w] and not w.startswith("<")]
    with open(cache / "vectors.vec", "w", encoding="utf-8") as out:
        out.write(f"{len(words)} {matrix.shape[1]}\n")
        for word, row in words:
            out.write(word + " " + " ".join(f"{x:.6f}" for x in row) + "\n")
    (cache / "labels.json").write_text(json.dumps(labels))
    return {"labels": len(labels), "rows": {s: len(f) for s, f in splits.items()}, "dim": int(matrix.shape[1])}


def score(truth_sets, probs: np.ndarray, labels: list[str], thresholds) -> dict:
    sys.path.insert(0, str(ROOT))
    from pipeline.multilabel_metrics import label_matrix, multilabel_metrics

    known = [[n for n in names if n in set(labels)] for names in truth_sets]
    figures = multilabel_metrics(label_matrix(known, labels), probs >= thresholds, labels)
    return {k: figures[k] for k in ("accuracy", "micro_f1", "macro_f1", "samples_f1", "hamming_loss")}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "job":
        cache, dim, lr, epoch, ngrams = Path(argv[1]), int(argv[2]), float(argv[3]), int(argv[4]), int(argv[5])
        return run_fasttext(cache, dim, lr, epoch, ngrams)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--corpus", required=True)
    args = parser.parse_args(argv)
    import pandas as pd

    sys.path.insert(0, str(ROOT))
    from pipeline.multilabel_metrics import choose_thresholds, label_matrix

    cache = ROOT / "benchmarks" / ".cache" / "multilabel" / args.corpus
    facts = write_fasttext_inputs(args.workdir, cache)
    labels = json.loads((cache / "labels.json").read_text())
    truth = {s: pd.read_parquet(args.workdir / "data/prepared" / f"{s}.parquet", columns=["label"])["label"]
             for s in ("val", "test")}
    val_truth = label_matrix([[n for n in names if n in set(labels)] for names in truth["val"]], labels)
    trials = []
    for lr in GRID["lr"]:
        for epoch in GRID["epoch"]:
            for ngrams in GRID["wordNgrams"]:
                start = time.perf_counter()
                subprocess.run([str(PEERS_PYTHON), "-m", "benchmarks.multilabel", "job", str(cache), str(facts["dim"]),
                                str(lr), str(epoch), str(ngrams)], cwd=ROOT, check=True)
                seconds = time.perf_counter() - start
                val = np.load(cache / "val.npy")
                tuned = choose_thresholds(val, val_truth)
                trials.append({"lr": lr, "epoch": epoch, "wordNgrams": ngrams, "seconds": round(seconds, 1),
                               "val": score(truth["val"], val, labels, 0.5),
                               "val_tuned": score(truth["val"], val, labels, tuned),
                               "test": score(truth["test"], np.load(cache / "test.npy"), labels, 0.5),
                               "test_tuned": score(truth["test"], np.load(cache / "test.npy"), labels, tuned)})
                print(json.dumps({k: trials[-1][k] for k in ("lr", "epoch", "wordNgrams", "val_tuned")}), flush=True)
    # The choice on validation only: micro-F1 with tuned thresholds (the pipeline's rule).
    best = max(trials, key=lambda t: t["val_tuned"]["micro_f1"])
    lstm = json.loads((args.workdir / "metrics/eval.json").read_text())
    baseline = json.loads((args.workdir / "metrics/baseline.json").read_text())
    result = {"corpus": args.corpus, "facts": facts, "fasttext_best": best, "fasttext_trials": trials,
              "lstm": lstm, "tfidf": baseline, "when": time.strftime("%Y-%m-%d")}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"multilabel-{args.corpus}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"multilabel-{args.corpus}.md").write_text(render(result))
    print(render(result))


def run_fasttext(cache: Path, dim: int, lr: float, epoch: int, ngrams: int) -> None:
    """In the peers' environment: one fastText ova model, its probabilities on val and test as .npy."""
    import fasttext

    labels = json.loads((cache / "labels.json").read_text())
    model = fasttext.train_supervised(input=str(cache / "train.txt"), loss="ova", lr=lr, epoch=epoch,
                                      wordNgrams=ngrams, dim=dim, pretrainedVectors=str(cache / "vectors.vec"),
                                      minCount=1, thread=2, seed=SEED, verbose=0)
    for split in ("val", "test"):
        lines = (cache / f"{split}.txt").read_text(encoding="utf-8").split("\n")[:-1]
        probs = np.zeros((len(lines), len(labels)), dtype=np.float32)
        for row, line in enumerate(lines):
            text = " ".join(w for w in line.split() if not w.startswith("__label__"))
            # The binding's predict: fasttext-wheel's own predict() fails under numpy 2.
            for prob, label in model.f.predict(text, -1, 0.0, "strict"):
                probs[row, int(label[len("__label__"):])] = prob
        np.save(cache / f"{split}.npy", probs)


def render(result: dict) -> str:
    lstm, tfidf, best = result["lstm"], result["tfidf"], result["fasttext_best"]
    rows = [("LSTM (pipeline, thresholds per label on validation)", lstm["lstm_test_acc"], lstm["lstm_test_micro_f1"],
             lstm["lstm_test_f1"], lstm["lstm_test_samples_f1"], lstm["lstm_test_hamming"]),
            ("TF-IDF one-vs-rest (pipeline baseline, same threshold rule)", tfidf["baseline_test_acc"],
             tfidf["baseline_test_micro_f1"], tfidf["baseline_test_f1"], tfidf["baseline_test_samples_f1"],
             tfidf["baseline_test_hamming"])]
    for key, what in (("test", "threshold 0.5, as fastText's predict(k=-1, threshold=0.5)"),
                      ("test_tuned", "thresholds per label on validation, the pipeline's rule")):
        t = best[key]
        rows.append((f"fastText -loss ova (lr {best['lr']}, {best['epoch']} epochs, wordNgrams {best['wordNgrams']}; {what})",
                     t["accuracy"], t["micro_f1"], t["macro_f1"], t["samples_f1"], t["hamming_loss"]))
    lines = [f"{result['corpus']}: {result['facts']['labels']} labels, {result['facts']['rows']} rows; {result['when']}", "",
             "| model | subset accuracy | micro-F1 | macro-F1 | samples-F1 | Hamming loss |", "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {name} | {a:.4f} | {mi:.4f} | {ma:.4f} | {sa:.4f} | {h:.4f} |" for name, a, mi, ma, sa, h in rows]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
