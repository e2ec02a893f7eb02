"""Stage vocab: the vocabulary of the training split and the embedding matrix aligned to it.

Writes data/vocab/vocab.json (index to word; <pad> is 0, <unk> is 1), data/vocab/embeddings.npy
(float32, one row per vocabulary entry), data/vocab/coverage.json (the most frequent training words
without a vector, and what the alignment pass counted), data/vocab/{train,val}.{ids,offsets}.npy (the
texts as ids, what training reads) and metrics/vocab.json (sizes and coverage). When the domain_vectors
stage trained vectors (data/domain_vectors), each row is [pretrained | domain].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline import domain_vectors, params, vectors
from pipeline.errors import PipelineError, run_main
from pipeline.files import atomic_path, write_json
from pipeline.vocabulary import PAD_ID, UNK_ID, build_vocab, count_split_tokens, coverage, fill_missing, write_token_ids
from pipeline.workspace import start_stage

PREPARED = Path("data/prepared")
DOMAIN_DIR = Path("data/domain_vectors")
OUT_DIR = Path("data/vocab")
METRICS = Path("metrics/vocab.json")
TOP_MISSING = 50


def main() -> None:
    start_stage("vocab")
    vocab_params, vector_params = params.load("vocab"), params.load("embeddings")
    params.check_local_source("embeddings", vector_params)
    train_counts, test_counts = (count_split_tokens(PREPARED / f"{name}.parquet") for name in ("train", "test"))
    itos = build_vocab(train_counts, vocab_params.min_freq, vocab_params.max_size)

    if len(itos) == 2:
        raise PipelineError(f"params.yaml: the vocabulary is empty: no training word occurs vocab.min_freq="
                            f"{vocab_params.min_freq} times (the most frequent occurs {max(train_counts.values(), default=0)})")
    source = vectors.detect(Path(vector_params.source), vector_params.format)
    alignment = vectors.align(source, itos, vocab_params.case_fallback, vector_params.bad_lines)
    has_vector = {w: bool(f) for w, f in zip(itos, alignment.found)}
    coverage_train = coverage(train_counts, has_vector)
    if coverage_train["token_coverage"] < vocab_params.min_token_coverage:
        raise PipelineError(
            f"{source.path}: only {coverage_train['token_coverage']:.1%} of the training tokens "
            f"({coverage_train['type_coverage']:.1%} of the word types) have a vector in this file, below "
            f"vocab.min_token_coverage={vocab_params.min_token_coverage}: wrong vectors for this corpus or language, or "
            "a case or tokenization mismatch? Lower vocab.min_token_coverage to go on anyway"
        )
    domain = domain_vectors.read(DOMAIN_DIR)
    # With oov: unk, a word without a pretrained vector but with a domain vector is kept: it is what
    # the domain vectors are for.
    keep = domain_vectors.has_domain_vector(itos, domain[0]) if domain is not None else None
    itos, matrix = fill_missing(alignment, itos, vocab_params.oov, vocab_params.seed, str(source.path), keep)
    pretrained_dim, domain_rows = matrix.shape[1], 0
    if domain is not None:
        matrix, domain_rows = domain_vectors.stack(matrix, itos, *domain)

    missing = sorted((w for w in train_counts if not has_vector.get(w, False)), key=lambda w: (-train_counts[w], w))
    metrics = {
        "vocab_size": len(itos),
        "embedding_dim": int(matrix.shape[1]),
        "pretrained_dim": int(pretrained_dim),
        "domain_dim": int(matrix.shape[1] - pretrained_dim),
        "domain_rows": domain_rows,
        "pretrained_rows": int(sum(has_vector.values())),
        "found_by_lowercase": int(alignment.stats["found_lowercase"]),
        "train": coverage(train_counts, has_vector),
        "test": coverage(test_counts, has_vector),
    }
    stoi_kept = set(itos)
    test_tokens = sum(test_counts.values())
    metrics["test"]["unk_rate"] = round(sum(c for w, c in test_counts.items() if w not in stoi_kept) / max(test_tokens, 1), 4)
    report = {
        "embeddings": {"format": source.format, "file": source.path.name, **dict(alignment.stats)},
        "oov_policy": vocab_params.oov,
        "train_types_without_vector": len(missing),
        "most_frequent_train_words_without_vector": [[w, train_counts[w]] for w in missing[:TOP_MISSING]],
    }
    with atomic_path(OUT_DIR) as tmp:
        tmp.mkdir()
        write_json(tmp / "vocab.json", {"itos": itos, "pad_id": PAD_ID, "unk_id": UNK_ID})
        np.save(tmp / "embeddings.npy", matrix)
        write_json(tmp / "coverage.json", report)
        for name in ("train", "val"):  # what training reads
            write_token_ids(PREPARED / f"{name}.parquet", itos, UNK_ID, tmp, name)
    write_json(METRICS, metrics)
    stacked = f" ({pretrained_dim} pretrained + {matrix.shape[1] - pretrained_dim} domain)" if domain is not None else ""
    print(f"vocab {len(itos)} x {matrix.shape[1]}{stacked}; pretrained rows {metrics['pretrained_rows']}; "
          f"train token coverage {metrics['train']['token_coverage']:.2%}, test {metrics['test']['token_coverage']:.2%}")


if __name__ == "__main__":
    run_main(main)
