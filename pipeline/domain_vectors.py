"""Word vectors learned from the corpus itself (gensim), stacked beside the pretrained ones.

Pretrained vectors know general English; a newsgroup corpus is full of names, product codes and jargon
that they lack (the vocab stage fills those rows at random) or that mean something else there. Vectors
trained on the training split give every training word a vector of how this corpus uses it; fastText's
subwords also give rare and misspelt words one built from their pieces. The vocab stage concatenates
them to the pretrained rows: the model reads [pretrained | domain] for every word.

Unlabelled text from the same domain (`unlabelled`: posts, reviews or tickets that nobody labelled)
teaches them more: it is read beside the training split, tokenized as the prepare stage tokenizes.
Only the training split's words enter the vocabulary; the unlabelled text gives them better vectors.

Too little text learns noise: `method: auto` trains them only when the training split has at least
`auto_min_tokens` tokens, unlabelled text or not (docs/stages.md has the measurements behind the
default).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pyarrow.parquet as pq

from pipeline.errors import PipelineError
from pipeline.files import read_json

WORDS_FILE, VECTORS_FILE = "words.json", "vectors.npy"  # JSON: a word may hold any character


class TokenStream:
    """The `tokens` column of a prepared split, a batch of rows at a time: gensim iterates it once to
    count words and once per epoch, and memory holds one batch, not the corpus."""

    def __init__(self, path: Path, batch_rows: int = 10_000):
        self.path, self.batch_rows = path, batch_rows

    def __iter__(self) -> Iterator[list[str]]:
        for batch in pq.ParquetFile(self.path).iter_batches(batch_size=self.batch_rows, columns=["tokens"]):
            for tokens in batch.column(0).to_pylist():
                if tokens:
                    yield tokens


class Sentences:
    """The training split's tokens, then the unlabelled text's: what the vectors learn from. `path`
    names the training split in errors."""

    def __init__(self, train: TokenStream, unlabelled: Iterable[list[str]] | None = None):
        self.parts = [train] + ([unlabelled] if unlabelled is not None else [])
        self.path = train.path

    def __iter__(self) -> Iterator[list[str]]:
        for part in self.parts:
            yield from part


def word_set(path: Path) -> set[str]:
    """The distinct words of a prepared split (read a batch at a time)."""
    words: set[str] = set()
    for tokens in TokenStream(path):
        words.update(tokens)
    return words


def count_tokens(path: Path) -> int:
    """Running tokens of a prepared split (the list lengths, read a batch at a time)."""
    import pyarrow.compute as pc

    total = 0
    for batch in pq.ParquetFile(path).iter_batches(columns=["tokens"]):
        total += int(pc.sum(pc.list_value_length(batch.column(0))).as_py() or 0)
    return total


def resolve_method(method: str, tokens: int, auto_min_tokens: int) -> str:
    """The method that runs: `auto` is fasttext from auto_min_tokens training tokens up, else none."""
    if method != "auto":
        return method
    return "fasttext" if tokens >= auto_min_tokens else "none"


def train(sentences: TokenStream | Sentences, method: str, dim: int, epochs: int, window: int, min_count: int,
          seed: int, buckets: int = 2_000_000, keep: set[str] | None = None) -> tuple[list[str], np.ndarray]:
    """Train word2vec (CBOW) or fastText (CBOW with character 3-6-grams hashed into `buckets` rows) and
    return (words, vectors): every word's, or only those in `keep` (the training split's words, the only
    ones the vocab stage looks up: unlabelled text may hold millions more).

    One worker thread: gensim's multi-threaded training depends on thread timing, and the same params
    must give the same vectors (DVC caches them, and the model built on them repeats byte for byte).
    gensim draws the initial vectors from its own seeded generator, not Python's string hash, so
    PYTHONHASHSEED does not matter (a test runs it under two)."""
    from gensim.models import FastText, Word2Vec

    extra = {"bucket": buckets} if method == "fasttext" else {}
    model_class = FastText if method == "fasttext" else Word2Vec
    try:
        model = model_class(sentences=sentences, vector_size=dim, window=window, min_count=min_count, epochs=epochs,
                            workers=1, seed=seed, **extra)
    except RuntimeError as err:  # gensim: "you must first build vocabulary before training the model"
        raise PipelineError(f"{sentences.path}: no word occurs domain_vectors.min_count={min_count} times: "
                            f"nothing to train vectors on ({err})") from None
    words = list(model.wv.index_to_key)
    rows = [i for i, w in enumerate(words) if keep is None or w in keep]
    return [words[i] for i in rows], np.asarray(model.wv.vectors[rows], dtype=np.float32)


def stack(pretrained: np.ndarray, itos: list[str], words: list[str], vectors: np.ndarray,
          special_rows: int = 2) -> tuple[np.ndarray, int]:
    """[pretrained | domain] for every vocabulary word; returns the matrix and the rows that found a
    domain vector.

    The domain block is scaled so that the rows holding a domain vector have the pretrained rows'
    overall spread, and neither half starts out dominating the encoder's input. A vocabulary word the
    domain vectors lack (below their min_count) gets zeros there; <pad> and <unk> (the first
    `special_rows`) get zeros too, as <pad> must.
    """
    has = has_domain_vector(itos, words, special_rows)
    row = {w: i for i, w in enumerate(words)}
    domain = np.zeros((len(itos), vectors.shape[1]), dtype=np.float32)
    rows = np.flatnonzero(has)
    if rows.size:
        domain[rows] = vectors[[row[itos[i]] for i in rows]]
        spread = float(domain[rows].std())
        if spread > 0:
            domain *= float(pretrained[special_rows:].std()) / spread
    return np.concatenate([pretrained, domain], axis=1).astype(np.float32), int(rows.size)


def has_domain_vector(itos: list[str], words: list[str], special_rows: int = 2) -> np.ndarray:
    """Mask over itos: the words (not the specials) that have a domain vector."""
    known = set(words)
    return np.array([i >= special_rows and w in known for i, w in enumerate(itos)], dtype=bool)


def read(folder: Path) -> tuple[list[str], np.ndarray] | None:
    """The domain_vectors stage's output: (words, vectors), or None when it trained none."""
    vectors_path, words_path = folder / VECTORS_FILE, folder / WORDS_FILE
    if not vectors_path.exists():
        return None
    vectors = np.load(vectors_path)
    words = read_json(words_path)
    if not isinstance(words, list) or vectors.ndim != 2 or len(words) != vectors.shape[0]:
        count = len(words) if isinstance(words, list) else "(not a list)"
        raise PipelineError(f"{vectors_path}: shape {vectors.shape} does not match the {count} words of "
                            f"{words_path.name}: rerun `dvc repro domain_vectors`")
    return words, vectors
