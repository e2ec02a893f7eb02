"""Stage vocab: the vocabulary of the training split and the embedding matrix aligned to it.

Writes data/vocab/vocab.json (index to word; <pad> is 0, <unk> is 1), data/vocab/embeddings.npy
(float32, one row per vocabulary entry), data/vocab/coverage.json (the most frequent training words
without a vector, and what the alignment pass counted), and metrics/vocab.json (sizes and coverage).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Iterable

import numpy as np

from pipeline import embeddings as E
from pipeline import params as P
from pipeline.common import PipelineError, atomic_path, run_main, write_json

PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1
PREPARED = Path("data/prepared")
OUT_DIR = Path("data/vocab")
METRICS = Path("metrics/vocab.json")
TOP_MISSING = 50


def count_tokens(token_lists: Iterable[Iterable[str]]) -> Counter:
    counts: Counter = Counter()
    for tokens in token_lists:
        counts.update(tokens)
    return counts


def write_token_ids(split: Path, itos: list[str], unk_id: int, out: Path, name: str, chunk_rows: int = 100_000) -> int:
    """A prepared split as vocabulary ids, written once for training: `<name>.ids.npy` (int32, every
    text end to end) and `<name>.offsets.npy` (int64, one more than the texts: text i is
    ids[offsets[i]:offsets[i+1]]). Read in chunks, looked up in C (pyarrow), so neither the token
    strings nor Python lists of them are held for the whole split. Returns the number of texts."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    vocab = pa.array(itos, type=pa.string())
    with pq.ParquetFile(split) as f:
        rows = f.metadata.num_rows
        total = sum(int(pc.sum(pc.list_value_length(b.column(0))).as_py() or 0)
                    for b in f.iter_batches(batch_size=chunk_rows, columns=["tokens"]))
        ids = np.lib.format.open_memmap(out / f"{name}.ids.npy", mode="w+", dtype=np.int32, shape=(total,))
        offsets = np.zeros(rows + 1, dtype=np.int64)
        row = at = 0
        for batch in f.iter_batches(batch_size=chunk_rows, columns=["tokens"]):
            tokens = batch.column(0)
            found = pc.index_in(tokens.flatten(), value_set=vocab).fill_null(unk_id)
            chunk = found.to_numpy(zero_copy_only=False).astype(np.int32)
            ids[at: at + len(chunk)] = chunk
            lengths = pc.list_value_length(tokens).fill_null(0).to_numpy(zero_copy_only=False)
            offsets[row + 1: row + 1 + len(lengths)] = at + np.cumsum(lengths)
            row, at = row + len(lengths), at + len(chunk)
    ids.flush()
    del ids
    np.save(out / f"{name}.offsets.npy", offsets)
    return rows


def count_split_tokens(split: Path, chunk_rows: int = 20_000) -> Counter:
    """Token counts of a prepared split, read in chunks: memory follows the vocabulary, not the split."""
    import pyarrow.parquet as pq

    counts: Counter = Counter()
    with pq.ParquetFile(split) as f:
        for batch in f.iter_batches(batch_size=chunk_rows, columns=["tokens"]):
            counts.update(batch.column(0).flatten().to_pylist())
    return counts


def build_vocab(counts: Counter, min_freq: int, max_size: int | None) -> list[str]:
    """Specials first, then words by descending frequency (ties alphabetical, for determinism)."""
    words = sorted((w for w, c in counts.items() if c >= min_freq and w not in (PAD, UNK)),
                   key=lambda w: (-counts[w], w))
    if max_size is not None:
        words = words[: max_size - 2]
    return [PAD, UNK] + words


def fill_missing(alignment: E.Alignment, itos: list[str], policy: str, seed: int,
                 source: str = "the embeddings file") -> tuple[list[str], np.ndarray]:
    """Give every vocabulary row a vector according to the out-of-vocabulary policy.

    Returns the (possibly shortened, for policy 'unk') vocabulary and its matrix. <pad> is all zeros.
    """
    found = alignment.found.copy()
    found[[PAD_ID, UNK_ID]] = False
    if not found.any():
        raise PipelineError(
            f"{source}: none of the {len(itos) - 2} vocabulary words has a vector in it: wrong embeddings file, "
            "or a case mismatch (try prepare.lowercase: true or vocab.case_fallback: true)"
        )
    pretrained = alignment.matrix[found]
    mean = pretrained.mean(axis=0)
    # With very few vectors found, a dimension's std can be 0 (one vector: all of them), and every
    # random row would be the same vector: fall back to the spread of all found values, or 0.1.
    overall = float(pretrained.std()) if pretrained.size > 1 else 0.0
    std = np.where(pretrained.std(axis=0) > 0, pretrained.std(axis=0), overall if overall > 0 else 0.1)
    matrix = alignment.matrix.copy()
    if policy == "unk":
        keep = found.copy()
        keep[[PAD_ID, UNK_ID]] = True
        itos = [w for w, k in zip(itos, keep) if k]
        matrix = matrix[keep]
        missing = np.zeros(len(itos), dtype=bool)
        missing[UNK_ID] = True
        fill = "mean"
    else:
        missing = ~found
        missing[PAD_ID] = False
        fill = policy
    rng = np.random.default_rng(seed)
    if fill == "random":
        # AllenNLP's choice: unknown words look like typical words of the same space.
        matrix[missing] = rng.normal(mean, std, size=(int(missing.sum()), matrix.shape[1]))
    elif fill == "mean":
        matrix[missing] = mean
    else:  # zeros
        matrix[missing] = 0.0
    matrix[PAD_ID] = 0.0
    return itos, matrix.astype(np.float32)


def coverage(counts: Counter, has_vector: dict[str, bool]) -> dict[str, float]:
    """Share of word types and of running tokens that reach a pretrained vector."""
    if not counts:
        return {"type_coverage": 0.0, "token_coverage": 0.0}
    hit_types = sum(1 for w in counts if has_vector.get(w, False))
    hit_tokens = sum(c for w, c in counts.items() if has_vector.get(w, False))
    return {"type_coverage": round(hit_types / len(counts), 4),
            "token_coverage": round(hit_tokens / sum(counts.values()), 4)}


def main() -> None:
    vp, ep = P.load("vocab"), P.load("embeddings")
    P.check_local_source("embeddings", ep)
    train_counts, test_counts = (count_split_tokens(PREPARED / f"{name}.parquet") for name in ("train", "test"))
    itos = build_vocab(train_counts, vp.min_freq, vp.max_size)

    if len(itos) == 2:
        raise PipelineError(f"params.yaml: the vocabulary is empty: no training word occurs vocab.min_freq="
                            f"{vp.min_freq} times (the most frequent occurs {max(train_counts.values(), default=0)})")
    source = E.detect(Path(ep.source), ep.format)
    alignment = E.align(source, itos, vp.case_fallback, ep.bad_lines)
    has_vector = {w: bool(f) for w, f in zip(itos, alignment.found)}
    coverage_train = coverage(train_counts, has_vector)
    if coverage_train["token_coverage"] < vp.min_token_coverage:
        raise PipelineError(
            f"{source.path}: only {coverage_train['token_coverage']:.1%} of the training tokens "
            f"({coverage_train['type_coverage']:.1%} of the word types) have a vector in this file, below "
            f"vocab.min_token_coverage={vp.min_token_coverage}: wrong vectors for this corpus or language, or "
            "a case or tokenization mismatch? Lower vocab.min_token_coverage to go on anyway"
        )
    itos, matrix = fill_missing(alignment, itos, vp.oov, vp.seed, str(source.path))

    missing = sorted((w for w in train_counts if not has_vector.get(w, False)), key=lambda w: (-train_counts[w], w))
    metrics = {
        "vocab_size": len(itos),
        "embedding_dim": int(matrix.shape[1]),
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
        "oov_policy": vp.oov,
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
    print(f"vocab {len(itos)} x {matrix.shape[1]}; pretrained rows {metrics['pretrained_rows']}; "
          f"train token coverage {metrics['train']['token_coverage']:.2%}, test {metrics['test']['token_coverage']:.2%}")


if __name__ == "__main__":
    run_main(main)
