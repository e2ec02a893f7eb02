"""The vocabulary of the training split, the embedding matrix aligned to it (OOV rows filled by a policy),
coverage, and the splits written as compact token ids for training."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError
from pipeline.vectors import Alignment

PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1


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


def fill_missing(alignment: Alignment, itos: list[str], policy: str, seed: int,
                 source: str = "the embeddings file", keep_anyway: np.ndarray | None = None) -> tuple[list[str], np.ndarray]:
    """Give every vocabulary row a vector according to the out-of-vocabulary policy.

    Returns the (possibly shortened, for policy 'unk') vocabulary and its matrix. <pad> is all zeros.
    `keep_anyway` (a mask over itos): words policy 'unk' keeps though they have no pretrained vector
    (they have a domain vector); their pretrained half is the mean found vector, like <unk>'s.
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
        keep = found | keep_anyway if keep_anyway is not None else found.copy()
        keep[[PAD_ID, UNK_ID]] = True
        missing = ~found[keep]
        missing[PAD_ID] = False
        itos = [w for w, k in zip(itos, keep) if k]
        matrix = matrix[keep]
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
