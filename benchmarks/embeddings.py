"""Benchmark: from a vectors file to a matrix aligned to the default corpus's vocabulary.

    python -m benchmarks.embeddings [--quick]

Compares, on the real GloVe 6B 50d (written out as the standard 400k-line text file) and the
default corpus's training vocabulary:
  - this project's streaming alignment of the text file, and of the npy layout the default pipeline uses;
  - gensim's KeyedVectors.load_word2vec_format of the whole file, then one lookup per vocabulary word;
  - pandas read_csv of the whole file into a dict;
  - the naive recipe: a Python dict of every line's vector.
Then the memory growth of the streaming alignment on a synthetic 2M x 300 text file.

Each method runs alone in a forked child (the parent stays idle), so timings do not compete for the
two cores and peak memory (max RSS above the child's starting RSS) is its own. Run it on a quiet
machine; it needs data/raw/embeddings and data/vocab from `make repro`, and about 6 GB of free disk.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

CACHE = Path(os.environ.get("BENCH_CACHE", "benchmarks/.cache"))
RAW = Path("data/raw/embeddings")
VOCAB = Path("data/vocab/vocab.json")


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def in_child(fn, *args):
    """Run fn(*args) in a forked child; return (result, seconds, peak MB above the child's start)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read)
        try:
            start_rss = rss_mb()
            t0 = time.perf_counter()
            result = fn(*args)
            seconds = time.perf_counter() - t0
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            payload = json.dumps({"result": result, "seconds": seconds, "peak_mb": peak - start_rss})
        except BaseException as err:  # report, never fall through into the parent's code
            payload = json.dumps({"error": repr(err)})
        with os.fdopen(write, "w") as f:
            f.write(payload)
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        data = json.loads(f.read() or '{"error": "child died"}')
    os.waitpid(pid, 0)
    if "error" in data:
        raise RuntimeError(data["error"])
    return data["result"], data["seconds"], data["peak_mb"]


def write_glove_text(path: Path) -> None:
    """The kumo npy + parquet pair written back out as the standard glove.6B.50d.txt layout."""
    from pipeline.vectors import read_word_list

    words = read_word_list(next(RAW.glob("*.parquet")))
    vectors = np.load(next(RAW.glob("*.npy")), mmap_mode="r")
    tmp = path.with_suffix(".partial")
    with open(tmp, "w", encoding="utf-8") as f:
        for start in range(0, len(words), 20000):
            block = np.asarray(vectors[start:start + 20000])
            for word, vec in zip(words[start:start + 20000], block):
                f.write(word + " " + " ".join(f"{v:.5g}" for v in vec) + "\n")
    tmp.rename(path)


def write_synthetic(path: Path, n_words: int, dim: int) -> None:
    """n_words lines of dim values; values repeat (only the file's size and shape matter here)."""
    rng = np.random.default_rng(0)
    bodies = [" ".join(f"{v:.4f}" for v in rng.normal(size=dim)) for _ in range(997)]
    tmp = path.with_suffix(".partial")
    with open(tmp, "w", encoding="utf-8") as f:
        for i in range(n_words):
            f.write(f"w{i} {bodies[i % 997]}\n")
    tmp.rename(path)


# --- the methods: each returns how many vocabulary words got a vector ---------------------------

def ours_text(path: str, words: list[str]) -> int:
    from pipeline.vectors import align_text

    return int(align_text(Path(path), words, bad_lines="skip").found.sum())


def ours_npy(path: str, words: list[str]) -> int:
    from pipeline.vectors import align_npy

    return int(align_npy(next(RAW.glob("*.npy")), next(RAW.glob("*.parquet")), words).found.sum())


def gensim_full(path: str, words: list[str]) -> int:
    from gensim.models import KeyedVectors

    kv = KeyedVectors.load_word2vec_format(path, binary=False, no_header=True)
    matrix = np.zeros((len(words), kv.vector_size), dtype=np.float32)
    hits = 0
    for i, w in enumerate(words):
        if w in kv.key_to_index:
            matrix[i] = kv[w]
            hits += 1
    return hits


def pandas_full(path: str, words: list[str]) -> int:
    import pandas as pd

    df = pd.read_csv(path, sep=" ", header=None, index_col=0, quoting=csv.QUOTE_NONE, encoding="utf-8",
                     keep_default_na=False, na_values=[])
    table = {w: row for w, row in zip(df.index, df.to_numpy(dtype=np.float32))}
    return sum(1 for w in words if w in table)


def naive_dict(path: str, words: list[str]) -> int:
    table = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip().split(" ")
            table[parts[0]] = np.asarray(parts[1:], dtype=np.float32)
    return sum(1 for w in words if w in table)


METHODS = [
    ("this project, text file (streaming)", ours_text),
    ("this project, npy + word list (memory map)", ours_npy),
    ("gensim load_word2vec_format + lookups", gensim_full),
    ("pandas read_csv into a dict", pandas_full),
    ("naive: dict of every line", naive_dict),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the 2M x 300 file")
    parser.add_argument("--out", default="benchmarks/results/embeddings.json")
    args = parser.parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)
    words = json.loads(VOCAB.read_text())["itos"]
    glove = CACHE / "glove.6B.50d.txt"
    if not glove.exists():
        print("writing", glove, flush=True)
        write_glove_text(glove)
    aligned_mb = len(words) * 50 * 4 / 2**20
    print(f"vocabulary {len(words)} words; aligned matrix {aligned_mb:.1f} MB; "
          f"file {glove.stat().st_size / 2**20:.0f} MB, 400k lines", flush=True)
    rows = []
    for name, fn in METHODS:
        hits, seconds, peak = in_child(fn, str(glove), words)
        rows.append({"method": name, "seconds": round(seconds, 3), "peak_mb": round(peak, 1), "found": hits})
        print(f"  {name:45s} {seconds:8.2f} s  {peak:8.1f} MB  found {hits}", flush=True)
    gensim_s = next(r["seconds"] for r in rows if r["method"].startswith("gensim"))
    for r in rows:
        r["speedup_vs_gensim"] = round(gensim_s / r["seconds"], 1)

    growth = []
    if not args.quick:
        sizes = [(400_000, 300), (2_000_000, 300)]
        for n, dim in sizes:
            path = CACHE / f"synthetic_{n}x{dim}.txt"
            if not path.exists():
                print("writing", path, flush=True)
                write_synthetic(path, n, dim)
            # Vocabulary words that occur in the file, plus the real vocabulary (absent there).
            vocab = [f"w{i}" for i in range(0, n, n // 20000)][:20000] + words
            hits, seconds, peak = in_child(ours_text, str(path), vocab)
            matrix_mb = len(vocab) * dim * 4 / 2**20
            growth.append({"file": f"{n:,} x {dim}", "file_mb": round(path.stat().st_size / 2**20),
                           "vocab": len(vocab), "seconds": round(seconds, 2), "peak_mb": round(peak, 1),
                           "matrix_mb": round(matrix_mb, 1), "above_matrix_mb": round(peak - matrix_mb, 1)})
            print(f"  streaming {n:,} x {dim}: {seconds:.1f} s, peak {peak:.0f} MB (matrix {matrix_mb:.0f} MB)", flush=True)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"vocab_words": len(words), "aligned_matrix_mb": round(aligned_mb, 1),
                               "methods": rows, "memory_growth": growth}, indent=2) + "\n")
    print("\n| method | seconds | peak MB | vs gensim |\n|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['method']} | {r['seconds']:.2f} | {r['peak_mb']:.0f} | {r['speedup_vs_gensim']}x |")
    if growth:
        print("\n| streaming alignment of | file MB | vocab | seconds | peak MB | matrix MB |\n|---|---:|---:|---:|---:|---:|")
        for g in growth:
            print(f"| {g['file']} | {g['file_mb']} | {g['vocab']} | {g['seconds']} | {g['peak_mb']} | {g['matrix_mb']} |")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
