"""Benchmark: training the LSTM classifier three ways, on the default data and on long documents.

    python -m benchmarks.training [--quick] [--threads N] [--out benchmarks/results/training.json]

Same architecture everywhere: the 50-d GloVe matrix of data/vocab (fine-tuned), a bidirectional
one-layer LSTM of 128 units, Adam (lr 0.002), batches of 32, and the same regularisation taken from
params.yaml (embedding dropout, output dropout, gradient clipping). The recipes differ in batching
and in where the classifier reads the LSTM:

  - naive:  shuffled batches padded to the batch's longest sequence, one `nn.LSTM(bidirectional=True)`,
            classifier on `output[:, -1, :]`: the last *padded* step. The forward direction has run
            on through the padding and the backward one has seen only padding there, so short
            sequences in a long batch are read wrongly, and every padded step is wasted work;
  - packed: the usual tutorial fix: shuffled batches, `pack_padded_sequence(enforce_sorted=False)`,
            classifier on the final hidden states h_n of both directions (correct, no padded steps);
  - ours:   `pipeline.training.Trainer.train_epoch` on `pipeline.model.TextClassifier` with the lstm
            encoder (length-bucketed padded batches, each direction read at the true ends), with
            pooling "last" (the readout of packed) and "attention" (the project default).

Workloads: A, the prepared data (train for a few epochs, keep the best epoch on validation accuracy,
report test accuracy); B, synthetic long documents (300..500 tokens, random labels: speed only).

Throughput counts non-padding tokens. FLOPs: an LSTM step costs 2 * 4H(E+H) per direction forward,
about three times that with the backward pass. The headline GFLOP/s counts *useful* (non-padding)
steps only; the padded steps a recipe also processes are in the JSON (`processed_gflops`). It is set
against torch.mm on the LSTM's own shapes: the per-step (batch, E+H) x (E+H, 4H) product, which bounds
a recurrence that cannot batch over time, and the whole-sequence input projection (batch*T, E) x (E, 4H).

Each recipe runs alone in a forked child (the parent stays idle, and runs no torch op before forking),
so timings do not compete for the cores and peak memory (max RSS above the child's start) is its own.
Every child seeds identically and flushes denormals (`pipeline.training.set_determinism`). Run it on a
quiet machine (on a busy one, `--threads 1`: two torch threads fighting other work for two cores
slow training down many times over); it needs data/prepared and data/vocab from `make repro`.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from benchmarks.embeddings import in_child

VOCAB = Path("data/vocab/vocab.json")
MATRIX = Path("data/vocab/embeddings.npy")
EPOCHS = 4
LONG_DOCS, LONG_LENGTHS = 512, (300, 500)  # inclusive bounds
THREADS: int | None = None  # --threads; set by main() before any child is forked


def child_setup(seed: int) -> None:
    """What every child does first: the same seeds, flushed denormals, the same thread count."""
    import torch

    from pipeline.training import set_determinism

    set_determinism(seed)  # seeds python, numpy and torch; torch.set_flush_denormal(True)
    if THREADS:
        torch.set_num_threads(THREADS)


@dataclass
class Workload:
    name: str
    train: tuple[list[np.ndarray], np.ndarray]
    val: tuple[list[np.ndarray], np.ndarray] | None  # None: speed only (no accuracy reported)
    test: tuple[list[np.ndarray], np.ndarray] | None
    num_classes: int
    epochs: int
    warmup_epochs: int = 0  # trained but left out of the timings (allocator and cache warm-up)


# --- workloads (built in the parent with numpy only) --------------------------------------------

def subsample(split, n: int, rng: np.random.Generator):
    xs, ys = split
    keep = np.sort(rng.choice(len(xs), size=min(n, len(xs)), replace=False))
    return [xs[i] for i in keep], ys[keep]


def default_workload(quick: bool, seed: int) -> Workload:
    from benchmarks.data import class_labels, load_split

    vocab = json.loads(VOCAB.read_text())
    stoi = {w: i for i, w in enumerate(vocab["itos"])}
    labels = class_labels()
    splits = [load_split(name, stoi, vocab["unk_id"], labels) for name in ("train", "val", "test")]
    if quick:
        rng = np.random.default_rng(seed)
        splits = [subsample(s, n, rng) for s, n in zip(splits, (512, 256, 256))]
    return Workload("default", splits[0], splits[1], splits[2], len(labels), 1 if quick else EPOCHS)


def long_workload(quick: bool, vocab_size: int, seed: int) -> Workload:
    rng = np.random.default_rng(seed)
    n = 64 if quick else LONG_DOCS
    lengths = rng.integers(LONG_LENGTHS[0], LONG_LENGTHS[1] + 1, size=n)
    # Ids from 2 up: never <pad> (0) or <unk> (1).
    docs = [rng.integers(2, vocab_size, size=int(k)).astype(np.int64) for k in lengths]
    # Two epochs, the first a warm-up: a single short epoch let warm-up effects swing the rows by 20%.
    return Workload("long documents", (docs, rng.integers(0, 2, size=n)), None, None, 2,
                    epochs=1 if quick else 2, warmup_epochs=0 if quick else 1)


# --- the baseline recipes --------------------------------------------------------------------------

def make_tutorial_model(recipe: str, matrix: np.ndarray, num_classes: int, tp):
    import torch
    from torch import nn
    from torch.nn.utils.rnn import pack_padded_sequence

    class TutorialLSTM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding.from_pretrained(torch.from_numpy(matrix), freeze=False)
            self.embedding_dropout = nn.Dropout(tp.embedding_dropout)
            self.lstm = nn.LSTM(matrix.shape[1], tp.hidden_size, bidirectional=True, batch_first=True)
            self.output_dropout = nn.Dropout(tp.dropout)
            self.classifier = nn.Linear(2 * tp.hidden_size, num_classes)

        def forward(self, ids, lengths):
            x = self.embedding_dropout(self.embedding(ids))
            if recipe == "naive":
                output, _ = self.lstm(x)
                features = output[:, -1, :]  # the last padded step, whatever each sequence's length
            else:
                packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
                _, (h_n, _) = self.lstm(packed)  # h_n comes back in the batch's original order
                features = torch.cat([h_n[-2], h_n[-1]], dim=-1)
            return self.classifier(self.output_dropout(features))

    return TutorialLSTM()


def shuffled_batches(n: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    perm = rng.permutation(n)
    return [perm[i:i + batch_size] for i in range(0, n, batch_size)]


def tutorial_epoch(model, split, batch_size: int, optimizer, rng, grad_clip) -> dict:
    """One training pass over shuffled batches; returns useful tokens, processed steps, seconds."""
    import torch
    from torch import nn

    from pipeline.batching import pad_batch

    xs, ys = split
    model.train()
    loss_fn = nn.CrossEntropyLoss()
    tokens = steps = 0
    start = time.perf_counter()
    for index in shuffled_batches(len(xs), batch_size, rng):
        ids, lens = pad_batch(xs, index)
        loss = loss_fn(model(ids, lens), torch.from_numpy(ys[index]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        tokens += int(lens.sum())
        steps += ids.numel()
    return {"tokens": tokens, "steps": steps, "seconds": time.perf_counter() - start}


def tutorial_accuracy(model, split, batch_size: int) -> float:
    """Accuracy over batches in the data's own order, as a DataLoader(shuffle=False) would give.

    For the naive recipe the prediction depends on the batch's padding, so this is part of the recipe.
    """
    import torch

    from pipeline.batching import pad_batch

    xs, ys = split
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(xs), batch_size):
            index = np.arange(start, min(start + batch_size, len(xs)))
            ids, lens = pad_batch(xs, index)
            correct += int((model(ids, lens).argmax(-1).numpy() == ys[index]).sum())
    return correct / len(xs)


def train_tutorial(recipe: str, wl: Workload, matrix: np.ndarray, tp) -> dict:
    """Child: train the naive or packed recipe for wl.epochs; keep the best epoch on validation."""
    import torch

    child_setup(tp.seed)
    model = make_tutorial_model(recipe, matrix, wl.num_classes, tp)
    optimizer = torch.optim.Adam(model.parameters(), lr=tp.lr, weight_decay=tp.weight_decay)
    rng = np.random.default_rng(tp.seed)

    def accuracy(split) -> float:
        return tutorial_accuracy(model, split, tp.batch_size)

    return train_keep_best(model, wl, lambda: tutorial_epoch(model, wl.train, tp.batch_size, optimizer, rng,
                                                             tp.grad_clip), accuracy, accuracy)


def train_keep_best(model, wl: Workload, train_epoch: Callable[[], dict], val_accuracy: Callable[[tuple], float],
                    test_accuracy: Callable[[tuple], float]) -> dict:
    """wl.epochs of train_epoch(); the test accuracy is the best validation epoch's."""
    epochs, best = [], (-1.0, None)
    for _ in range(wl.epochs):
        row = train_epoch()
        if wl.val is not None:
            row["val_accuracy"] = val_accuracy(wl.val)
            if row["val_accuracy"] > best[0]:
                best = (row["val_accuracy"], copy.deepcopy(model.state_dict()))
        epochs.append(row)
    test = None
    if wl.test is not None:
        model.load_state_dict(best[1])
        test = test_accuracy(wl.test)
    return summarize_epochs(epochs, test, wl.warmup_epochs)


# --- the project's recipe --------------------------------------------------------------------------

def bucketed_steps(sequences: list[np.ndarray], batch_size: int, rng: np.random.Generator) -> int:
    """Padded steps Trainer.train_epoch will process, from a copy of the rng it is about to draw its
    batches with."""
    from pipeline.batching import bucket_batches, sequence_lengths

    lengths = sequence_lengths(sequences)
    batches = bucket_batches(lengths, batch_size, copy.deepcopy(rng))
    return int(sum(len(b) * lengths[b].max() for b in batches))


def train_ours(pooling: str, wl: Workload, matrix: np.ndarray, tp) -> dict:
    """Child: pipeline.training's Trainer on build_model's TextClassifier, best epoch on validation."""
    from pipeline.inference import predict_proba
    from pipeline.plan import make_plan
    from pipeline.training import Trainer, build_model, evaluate

    child_setup(tp.seed)
    tp = dataclasses.replace(tp, pooling=pooling)
    model = build_model(tp, matrix, wl.num_classes)
    plan = make_plan(dataclasses.replace(tp, device="cpu"), [len(s) for s in wl.train[0]])
    device = plan.device
    # Adam on the model's parameters and the batch-order rng seeded with tp.seed, as fit makes them.
    trainer = Trainer(model, plan, wl.train)
    trainer.set_lr()  # as fit does before its first epoch: tp.lr (benchmark_params pins a constant rate)
    epoch = 0

    def train_epoch() -> dict:
        nonlocal epoch
        epoch += 1
        steps = bucketed_steps(wl.train[0], tp.batch_size, trainer.rng)
        trainer.start_epoch(epoch)
        tr = trainer.train_epoch(epoch)
        return {"tokens": tr.tokens, "steps": steps, "seconds": tr.seconds}

    return train_keep_best(
        model, wl, train_epoch,
        # Validation as pipeline.training.fit does it; test as the evaluate stage does.
        lambda split: evaluate(model, split, max(256, tp.batch_size), device).accuracy,
        lambda split: float((predict_proba(model, split[0]).argmax(-1) == split[1]).mean()))


def summarize_epochs(epochs: list[dict], test_accuracy: float | None, warmup_epochs: int = 0) -> dict:
    vals = [e.get("val_accuracy", -1.0) for e in epochs]
    timed = epochs[warmup_epochs:]
    return {
        "epochs": epochs,
        "timed_epochs": len(timed),
        "best_epoch": int(np.argmax(vals)) + 1 if epochs and "val_accuracy" in epochs[0] else None,
        "test_accuracy": test_accuracy,
        "tokens": sum(e["tokens"] for e in timed),
        "steps": sum(e["steps"] for e in timed),
        "train_seconds": sum(e["seconds"] for e in timed),
    }


# --- FLOPs and the matrix-multiply reference -------------------------------------------------------

def lstm_train_flops_per_step(embedding_dim: int, hidden: int, directions: int = 2) -> int:
    """Forward 2 * 4H(E+H) per direction and step; backward about twice the forward."""
    return 3 * 2 * 4 * hidden * (embedding_dim + hidden) * directions


def mm_gflops(m: int, k: int, n: int, seconds: float) -> float:
    """GFLOP/s of torch.mm of (m, k) x (k, n), timed in a loop for about `seconds`."""
    import torch

    a, b = torch.randn(m, k), torch.randn(k, n)
    for _ in range(3):  # warm up
        torch.mm(a, b)
    iters, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.mm(a, b)
        iters += 1
    return 2 * m * k * n * iters / (time.perf_counter() - start) / 1e9


def matmul_reference(batch: int, seq_len: int, embedding_dim: int, hidden: int, seconds: float) -> dict:
    """Child: the LSTM's two matmul shapes; seq_len is the workload's mean sequence length."""
    child_setup(0)
    return {
        "step_gflops": mm_gflops(batch, embedding_dim + hidden, 4 * hidden, seconds),
        "projection_gflops": mm_gflops(batch * seq_len, embedding_dim, 4 * hidden, seconds),
        "seq_len": seq_len,
    }


# --- driver ----------------------------------------------------------------------------------------

def benchmark_params():
    """params.yaml's train section with the architecture, optimiser and regularisation of this
    comparison pinned: every recipe does the same work (no word dropout, which only ours implements;
    a constant learning rate and unweighted loss, which is all the tutorial recipes have; fp32, since
    the tutorial recipes have no bf16 autocast and this compares batching, not precision)."""
    from pipeline import params

    return dataclasses.replace(params.load("train"), embeddings="finetune", encoder="lstm", hidden_size=128,
                               num_layers=1, bidirectional=True, lr=0.002, lr_schedule="constant", warmup_steps=0,
                               class_weights="none", batch_size=32, device="cpu", word_dropout=0.0,
                               precision="fp32")


# (row name, child function, its first argument: the recipe or the pooling)
RECIPES = [
    ("naive", train_tutorial, "naive"),
    ("packed", train_tutorial, "packed"),
    ("ours (last)", train_ours, "last"),
    ("ours (attention)", train_ours, "attention"),
]


def run_workload(wl: Workload, matrix: np.ndarray, tp, mm_seconds: float) -> list[dict]:
    mean_len = int(round(np.mean([len(s) for s in wl.train[0]])))
    mm, _, _ = in_child(matmul_reference, tp.batch_size, mean_len, matrix.shape[1], tp.hidden_size, mm_seconds)
    print(f"{wl.name}: {len(wl.train[0])} training documents, mean length {mean_len}, {wl.epochs} epoch(s); "
          f"torch.mm {mm['step_gflops']:.1f} GFLOP/s per step shape, "
          f"{mm['projection_gflops']:.1f} GFLOP/s input projection", flush=True)
    flops = lstm_train_flops_per_step(matrix.shape[1], tp.hidden_size)
    rows = []
    for name, fn, arg in RECIPES:
        res, _, peak = in_child(fn, arg, wl, matrix, tp)
        row = make_row(wl, name, res, peak, flops, mm)
        rows.append(row)
        acc = "" if row["test_accuracy"] is None else f", test acc {row['test_accuracy']:.4f}"
        print(f"  {name:12s} {row['tokens_per_second']:9,.0f} tokens/s  {row['epoch_seconds']:7.2f} s/epoch  "
              f"{peak:6.0f} MB{acc}", flush=True)
    packed = next(r for r in rows if r["recipe"] == "packed")
    for r in rows:
        r["speedup_vs_packed"] = r["tokens_per_second"] / packed["tokens_per_second"]
    return rows


def make_row(wl: Workload, name: str, res: dict, peak: float, flops_per_step: int, mm: dict) -> dict:
    seconds = res["train_seconds"]
    useful = res["tokens"] * flops_per_step / seconds / 1e9
    return {
        "workload": wl.name, "recipe": name,
        "tokens_per_second": res["tokens"] / seconds,
        "epoch_seconds": seconds / res["timed_epochs"],
        "peak_mb": peak,
        "test_accuracy": res["test_accuracy"],
        "best_epoch": res["best_epoch"],
        "gflops": useful,  # useful (non-padding) steps only: the headline
        "processed_gflops": res["steps"] * flops_per_step / seconds / 1e9,  # padded steps included
        "padding_fraction": 1 - res["tokens"] / res["steps"],
        "pct_of_step_matmul": 100 * useful / mm["step_gflops"],
        "pct_of_projection_matmul": 100 * useful / mm["projection_gflops"],
        "matmul": mm,
        "epochs": res["epochs"],
    }


def print_table(rows: list[dict]) -> None:
    print("\n| workload | recipe | tokens/s | epoch s | peak MB | test acc | GFLOP/s | % of matmul "
          "| speedup vs packed |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        acc = "–" if r["test_accuracy"] is None else f"{r['test_accuracy']:.4f}"
        print(f"| {r['workload']} | {r['recipe']} | {r['tokens_per_second']:,.0f} | {r['epoch_seconds']:.2f} | "
              f"{r['peak_mb']:.0f} | {acc} | {r['gflops']:.1f} | {r['pct_of_step_matmul']:.0f}% | "
              f"{r['speedup_vs_packed']:.2f}x |")
    print("\nGFLOP/s counts non-padding steps only (processed_gflops in the JSON adds the padded steps the "
          "naive and ours recipes also run); % of matmul is against torch.mm of (batch, E+H) x (E+H, 4H).")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a subsample, one epoch, a few long documents")
    parser.add_argument("--out", default="benchmarks/results/training.json")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per recipe (default: torch's own, one per core)")
    args = parser.parse_args()
    global THREADS
    THREADS = args.threads
    tp = benchmark_params()
    matrix = np.load(MATRIX)
    workloads = [default_workload(args.quick, tp.seed), long_workload(args.quick, matrix.shape[0], tp.seed)]
    rows = []
    for wl in workloads:
        rows.extend(run_workload(wl, matrix, tp, mm_seconds=0.2 if args.quick else 2.0))
    print_table(rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    setup = {"quick": args.quick, "threads": args.threads, "embedding_dim": int(matrix.shape[1]),
             "vocab_size": int(matrix.shape[0]), "params": dataclasses.asdict(tp),
             "train_flops_per_token": lstm_train_flops_per_step(matrix.shape[1], tp.hidden_size)}
    out.write_text(json.dumps({"setup": setup, "rows": rows}, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
