"""Benchmark: prepare's read-and-tokenize phase, a git revision's code against this checkout's, interleaved.

    python -m benchmarks.tokenize REV [--rounds 12] [--corpus data/raw/corpus]

Runs pipeline.corpus.prepare (one worker, the params.yaml of each side) on the corpus, alternating the
two sides round by round (old, new, then new, old...), each in a fresh process, so a busy machine slows
both alike. Prints each side's best and median tokens per second of the tokenize phase, wall clock and
CPU, and whether the two sides' prepared splits are identical (rows, texts, tokens and labels).
Needs data/raw/corpus (`make repro`, or `dvc repro download_corpus`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
RUN = r'''
import dataclasses, json, sys, time
from pathlib import Path
from pipeline import corpus, params
root, raw, out = map(Path, sys.argv[1:4])
c = dataclasses.replace(params.load("corpus", root / "params.yaml"), source=str(raw))
p = dataclasses.replace(params.load("prepare", root / "params.yaml"), workers=1)
inner, seen = corpus.tokenize_corpus, {}
def timed(*a, **k):
    wall, cpu = time.perf_counter(), time.process_time()
    shards, facts = inner(*a, **k)
    seen.update(wall=time.perf_counter() - wall, cpu=time.process_time() - cpu,
                tokens=int(sum(f.n_tokens.sum() for f in facts)))
    return shards, facts
corpus.tokenize_corpus = timed
corpus.prepare(raw, c, p, out, 1)
print("RESULT " + json.dumps(seen))
'''


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rev", help="the git revision to compare against (e.g. the commit before a change)")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--corpus", type=Path, default=ROOT / "data/raw/corpus")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "old"
        old.mkdir()
        archive = subprocess.run(["git", "archive", args.rev, "pipeline", "params.yaml"], cwd=ROOT,
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
        sides = {"old": old, "new": ROOT}
        results: dict[str, list[dict]] = {name: [] for name in sides}
        for i in range(args.rounds):
            for name in ("old", "new") if i % 2 == 0 else ("new", "old"):
                out = Path(tmp) / f"out-{name}"
                shutil.rmtree(out, ignore_errors=True)
                env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(sides[name]), *filter(None, [os.environ.get("PYTHONPATH")])]))
                proc = subprocess.run([sys.executable, "-c", RUN, str(sides[name]), str(args.corpus.resolve()), str(out)],
                                      cwd=sides[name], env=env, capture_output=True, text=True)
                if proc.returncode:
                    sys.exit(f"{name}: {proc.stderr.strip().splitlines()[-1]}")
                results[name].append(json.loads(proc.stdout.split("RESULT ", 1)[1]))
        for name, runs in results.items():
            tokens = runs[0]["tokens"]
            for clock in ("wall", "cpu"):
                s = sorted(r[clock] for r in runs)
                print(f"{name} {clock:4s}: {tokens / s[0]:>9,.0f} tokens/s best, {tokens / s[len(s) // 2]:>9,.0f} median "
                      f"({len(s)} runs, {tokens:,} tokens)")
        for split in ("train", "val", "test"):
            a, b = (pq.read_table(Path(tmp) / f"out-{n}" / f"{split}.parquet").replace_schema_metadata(None)
                    for n in ("old", "new"))
            print(f"{split}: {len(a):,} rows, identical: {a.equals(b)}")


if __name__ == "__main__":
    main()
