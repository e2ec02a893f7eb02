"""Stage domain_vectors: word vectors trained with gensim on the training split and any unlabelled text
of the same domain (domain_vectors.unlabelled), for the vocab stage to stack beside the pretrained ones
(pipeline/domain_vectors.py says why).

Writes data/domain_vectors/: words.json (the words, a JSON list) and vectors.npy (float32, a row each), or,
when the method resolves to none, only a `.none` marker (the folder is a DVC output either way); and
metrics/domain_vectors.json (the method that ran, the tokens it read, the words, the seconds).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from pipeline import domain_vectors, params, unlabelled
from pipeline.errors import PipelineError, run_main
from pipeline.files import atomic_path, write_json
from pipeline.text import TextConfig, prepared_text_config
from pipeline.workspace import start_stage

TRAIN_SPLIT = Path("data/prepared/train.parquet")
OUT_DIR = Path("data/domain_vectors")
METRICS = Path("metrics/domain_vectors.json")


def main() -> None:
    start_stage("domain_vectors")
    dp = params.load("domain_vectors")
    files = unlabelled.text_files(Path(dp.unlabelled))
    # tokenized as prepare tokenized the training split (prepare.tokenizer: auto, resolved)
    text_config = prepared_text_config(TRAIN_SPLIT, TextConfig.from_params(params.load("prepare")))
    unlabelled_text = unlabelled.UnlabelledText(files, text_config, params.load("corpus").encoding)
    train_tokens = domain_vectors.count_tokens(TRAIN_SPLIT)
    # auto decides on the training split alone: on the long reviews (904k tokens), 411k tokens of
    # unlabelled movie text beside them still gave a worse model than none (docs/results.md)
    method = domain_vectors.resolve_method(dp.method, train_tokens, dp.auto_min_tokens)
    if method != "none" and train_tokens == 0:
        raise PipelineError(f"{TRAIN_SPLIT}: the training split has no tokens: no domain vectors to train "
                            f"(domain_vectors.method: {dp.method})")
    report = {"method": method, "method_param": dp.method, "train_tokens": train_tokens,
              "unlabelled_files": len(files), "unlabelled_tokens": None}  # not read when none are trained
    start = time.perf_counter()
    with atomic_path(OUT_DIR) as tmp:
        tmp.mkdir()
        if method == "none":
            (tmp / ".none").write_text("no domain vectors (domain_vectors.method resolved to none)\n", encoding="utf-8")
        else:
            sentences = domain_vectors.Sentences(domain_vectors.TokenStream(TRAIN_SPLIT), unlabelled_text)
            # with unlabelled text, only the training split's words are kept: the vocabulary's
            keep = domain_vectors.word_set(TRAIN_SPLIT) if files else None
            words, vectors = domain_vectors.train(sentences, method, dp.dim, dp.epochs, dp.window, dp.min_count,
                                                  dp.seed, dp.buckets, keep)
            write_json(tmp / domain_vectors.WORDS_FILE, words)
            np.save(tmp / domain_vectors.VECTORS_FILE, vectors)
            # counted on gensim's own passes, not on one of its own
            report.update(words=len(words), dim=int(vectors.shape[1]), unlabelled_tokens=unlabelled_text.tokens or 0)
    report["seconds"] = round(time.perf_counter() - start, 2)
    write_json(METRICS, report)
    read = f"{train_tokens:,} training tokens"
    if report["unlabelled_tokens"]:
        read += f" and {report['unlabelled_tokens']:,} unlabelled ({len(files)} file{'s' * (len(files) > 1)})"
    if method == "none":
        why = "" if dp.method == "none" else f" (auto: {read}, below {dp.auto_min_tokens:,})"
        print(f"domain vectors: none{why}")
    else:
        print(f"domain vectors: {method}, {report['words']:,} words x {report['dim']} from {read} "
              f"in {report['seconds']:.0f}s")


if __name__ == "__main__":
    run_main(main)
