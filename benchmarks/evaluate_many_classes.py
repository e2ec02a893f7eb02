"""The evaluate stage at many classes: time, peak memory and output sizes (docs/scale.md).

    python benchmarks/evaluate_many_classes.py --classes 10000 --rows 10000

Builds, in a temporary folder, a small untrained checkpoint of `classes` classes and a test split of `rows`
rows (a label each, round robin; a few words each), runs `python -m pipeline.stages.evaluate` there under
/usr/bin/time, and prints its wall time, peak RSS and the size of each output.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.checkpoint import save_checkpoint  # noqa: E402
from pipeline.model import ModelConfig, TextClassifier  # noqa: E402
from pipeline.text import TextConfig  # noqa: E402

WORDS = ["good", "bad", "film", "plot", "cast", "slow", "funny", "dull", "smart", "warm"]


def build(folder: Path, classes: int, rows: int) -> None:
    torch.manual_seed(0)
    itos = ["<pad>", "<unk>", *WORDS]
    labels = sorted(f"c{i:05d}" for i in range(classes))
    cfg = ModelConfig(vocab_size=len(itos), embedding_dim=8, num_classes=classes, hidden_size=8, num_layers=1,
                      bidirectional=False, dropout=0.0, embedding_dropout=0.0, pooling="mean")
    model = TextClassifier(cfg, None)
    (folder / "models").mkdir()
    save_checkpoint(folder / "models/model.pt", model, model.state_dict(), itos, labels, TextConfig(), 1, {}, 50)
    rng = np.random.default_rng(0)
    tokens = [list(rng.choice(WORDS, size=int(rng.integers(2, 8)))) for _ in range(rows)]
    test = pd.DataFrame({"text": [" ".join(t) for t in tokens], "tokens": tokens,
                         "label": [labels[i % classes] for i in range(rows)]})
    (folder / "data/prepared").mkdir(parents=True)
    test.to_parquet(folder / "data/prepared/test.parquet", index=False)
    shipped = yaml.safe_load((ROOT / "params.yaml").read_text())
    (folder / "params.yaml").write_text(yaml.safe_dump(shipped))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--classes", type=int, default=10_000)
    parser.add_argument("--rows", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        build(folder, args.classes, args.rows)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "CI": "true"}
        proc = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-m", "pipeline.stages.evaluate"], cwd=folder,
                              env=env, capture_output=True, text=True)
        if proc.returncode:
            sys.exit(proc.stderr[-3000:])
        wall = re.search(r"Elapsed \(wall clock\) time.*: (\S+)", proc.stderr).group(1)
        rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1)) / 1024
        print(f"{args.classes} classes, {args.rows} rows: wall {wall}, peak RSS {rss:,.0f} MB")
        for path in sorted((folder / "metrics").rglob("*")):
            if path.is_file():
                print(f"  {path.relative_to(folder)}: {path.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
