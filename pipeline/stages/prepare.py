"""Stage prepare: read the corpus, clean and tokenize it, and split it (pipeline.corpus).

Reads `corpus.source` (a file or a folder, any layout pipeline.readers knows) and writes
data/prepared/{train,val,test}.parquet (text, tokens, label) and metrics/prepare.json: rows read,
dropped (and why), kept per split and class, and token-length statistics.
"""

from __future__ import annotations

from pathlib import Path

from pipeline import params
from pipeline.corpus import prepare
from pipeline.errors import run_main
from pipeline.files import atomic_path, check_writable, write_json
from pipeline.resources import cpu_share
from pipeline.workspace import start_stage

OUT_DIR = Path("data/prepared")
REPORT = Path("metrics/prepare.json")


def main() -> None:
    start_stage("prepare")
    corpus, prep = params.load("corpus"), params.load("prepare")
    params.check_local_source("corpus", corpus)
    workers = cpu_share(prep.workers)
    check_writable(OUT_DIR.parent, REPORT.parent)
    with atomic_path(OUT_DIR) as tmp:
        report = prepare(Path(corpus.source), corpus, prep, tmp, workers)
    write_json(REPORT, report)
    print(", ".join(f"{k}={v}" for k, v in report.items() if not isinstance(v, (dict, list))), f"workers={workers}")
    for warning in report.get("warnings", []):
        print(f"warning: {warning}")


if __name__ == "__main__":
    run_main(main)
