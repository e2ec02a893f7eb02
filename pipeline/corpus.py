"""The corpus made into splits: cleaned, tokenized, de-duplicated and split, a chunk at a time.

The corpus streams through in chunks (readers.corpus_chunks): `workers` processes clean and tokenize
them, each chunk into its own shard file; the main process keeps a few bytes per row (a 128-bit hash of
the text, its label, length and split), decides which rows stay (duplicates found across chunks by that
hash), and copies each kept row from the shards to its split. Memory follows the chunk size, not the
corpus, and the output is the same for any number of workers.

A corpus's own split (its files, its folders, or `corpus.split_column`) is kept: test rows stay test.
Rows without one are assigned by a hash of their text and `prepare.seed`, so the same text always lands
in the same split and adding rows never moves old ones. Every token is kept: truncation belongs to the
model's input (`train.max_tokens`), and the baseline reads whole documents.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import hashlib
import itertools
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from pipeline import params
from pipeline.errors import PipelineError
from pipeline.label_sets import finish_label_sets, one_label, raw_label, resolve_task, select_label_sets
from pipeline.labels import canonical_labels, label_text, merged_labels, task_metadata  # noqa: F401 (tests import)
from pipeline.layouts import corpus_chunks
from pipeline.readers import CHUNK_ROWS
from pipeline.text import TextConfig, text_config_metadata, tokenize_all
from pipeline.words import WordFacts, resolve_and_check

SPLITS = ("train", "val", "test")
ROW_GROUP = 20_000    # rows per Parquet row group of the prepared splits
SPLIT_CODE = {"test": 0, "val": 1, "train": 2}  # in this order, the priority among copies of a text
NO_SPLIT = 3
OUTPUT_SCHEMA = pa.schema([("text", pa.string()), ("tokens", pa.list_(pa.string())), ("label", pa.string())])
LABEL_TYPE = {"single_label": pa.string(), "multi_label": pa.list_(pa.string())}  # a split's label column, by task


# --- tokenizing, a chunk at a time (in worker processes) ------------------------------------------


@dataclass
class ChunkFacts:
    """What deciding which rows to keep, and where they go, needs of each row of a chunk: a few bytes
    a row. The text and tokens themselves stay in the chunk's shard file."""
    labels: list            # the chunk's distinct raw labels: strings, and tuples of them (label sets)
    label_code: np.ndarray  # int32 index into labels per row; -1: no label
    n_tokens: np.ndarray    # int32
    key: np.ndarray         # (rows, 2) uint64: a 128-bit hash of the text, which duplicates share
    given: np.ndarray       # int8 split code given by the corpus (NO_SPLIT: none)
    hashed: np.ndarray      # int8 split code from the seeded hash of the text
    carve: np.ndarray       # bool: the hash falls below val_size (val carved from given train rows)
    label_fixes: dict       # rows whose label a policy changed: {policy: count} (see label_text)
    words: WordFacts = None  # what the tokens look like per script, the rows segmented (pipeline.words)


def hash_form(text: str) -> str:
    """What the split and the duplicate check hash: the text with its line breaks made one kind, so a
    text written with CRLF is the same text (and lands in the same split) as with LF."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def text_hash_unit(texts, seed: int) -> np.ndarray:
    """A number in [0, 1) per text, from a keyed hash of the text alone: stable across runs,
    machines and appended rows, independent of the label (so classes are split alike)."""
    key = seed.to_bytes(8, "little", signed=True)
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(t.encode("utf-8"), digest_size=8, key=key).digest(), "little") / 2.0**64
         for t in map(hash_form, texts)), dtype=np.float64, count=len(texts))


def given_split_codes(split: pd.Series) -> np.ndarray:
    """The corpus's own split names ('train', 'val', 'test' or None) as int8 codes; NO_SPLIT for none."""
    return split.map(SPLIT_CODE).fillna(NO_SPLIT).to_numpy(dtype=np.int8)


def hashed_split_codes(u: np.ndarray, val_size: float, test_size: float) -> np.ndarray:
    """test below test_size, val below test_size + val_size, else train."""
    return np.where(u < test_size, SPLIT_CODE["test"],
                    np.where(u < test_size + val_size, SPLIT_CODE["val"], SPLIT_CODE["train"])).astype(np.int8)


def tokenize_chunk(df: pd.DataFrame, cfg: TextConfig, seed: int, val_size: float, test_size: float,
                   separator: str | None = None, single: bool = False) -> tuple[pa.Table, ChunkFacts]:
    """Clean and tokenize a chunk of rows: the text and tokens as an Arrow table, and each row's facts.
    Labels as label_sets.raw_label reads them (`single`: corpus.task single_label, a set of one is a label)."""
    text = ["" if pd.isna(v) else str(v) for v in df["text"]]
    raw_labels, fixes = [], collections.Counter()
    for value in df["label"]:
        label, fix = raw_label(value, separator)
        raw_labels.append(one_label(label) if single else label)
        fixes.update(fix)
    label_code, labels = pd.factorize(pd.Series(raw_labels, dtype=object))
    tokens, segmented = tokenize_all(text, cfg)
    # Two hashes: the seeded 64-bit one places the text in a split (as it always has, so splits do
    # not move); the 128-bit one finds duplicates, where a 64-bit collision would be a real risk.
    u = text_hash_unit(text, seed)
    digests = b"".join(hashlib.blake2b(hash_form(t).encode("utf-8"), digest_size=16).digest() for t in text)
    facts = ChunkFacts(
        labels=list(labels), label_code=label_code.astype(np.int32),
        n_tokens=np.fromiter(map(len, tokens), dtype=np.int32, count=len(tokens)),
        key=np.frombuffer(digests, dtype=np.uint64).reshape(-1, 2),
        given=given_split_codes(df["split"]),
        hashed=hashed_split_codes(u, val_size, test_size), carve=u < val_size,
        label_fixes=dict(fixes))
    table = pa.table({"text": pa.array(text, pa.string()), "tokens": pa.array(tokens, pa.list_(pa.string()))})
    facts.words = WordFacts.of_chunk(table.column("tokens").combine_chunks(), segmented)
    return table, facts


def _tokenize_to_shard(df: pd.DataFrame, shard: Path, cfg: TextConfig, seed: int, val_size: float,
                       test_size: float, separator: str | None, single: bool) -> ChunkFacts:
    table, facts = tokenize_chunk(df, cfg, seed, val_size, test_size, separator, single)
    # Read back once, soon: Arrow's own uncompressed format costs nothing to write or to map back.
    with pa.OSFile(str(shard), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return facts


def tokenize_corpus(chunks: Iterable[pd.DataFrame], shard_dir: Path, cfg: TextConfig, prep: params.PrepareParams,
                    workers: int, corpus: params.CorpusParams) -> tuple[list[Path], list[ChunkFacts]]:
    """Tokenize every chunk into its own shard file under `shard_dir`, on `workers` processes; the
    shards and their facts, in the corpus's order. At most two chunks per worker are in flight, so
    memory follows the chunk size, not the corpus."""
    task = functools.partial(_tokenize_to_shard, cfg=cfg, seed=prep.seed, val_size=prep.val_size,
                             test_size=prep.test_size, separator=corpus.label_separator,
                             single=corpus.task == "single_label")
    chunks = iter(chunks)
    head = list(itertools.islice(chunks, 2))
    numbered = enumerate(itertools.chain(head, chunks))
    shards, facts = [], []
    progress = tqdm(unit=" rows", desc="prepare", disable=None, mininterval=2)

    def done(f: ChunkFacts) -> None:
        facts.append(f)
        progress.update(len(f.n_tokens))

    with progress:
        if workers == 1 or len(head) < 2:  # one chunk: not worth starting processes
            for i, df in numbered:
                shards.append(shard_dir / f"{i:06d}.arrow")
                done(task(df, shards[-1]))
            return shards, facts
        # spawn, not fork: the parent may already run Arrow's threads, which a fork would copy mid-work.
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            try:
                pending = collections.deque()
                for i, df in numbered:
                    shards.append(shard_dir / f"{i:06d}.arrow")
                    pending.append(pool.submit(task, df, shards[-1]))
                    while len(pending) >= 2 * workers:
                        done(pending.popleft().result())
                while pending:
                    done(pending.popleft().result())
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    return shards, facts


# --- deciding which rows to keep and where they go (in the main process) --------------------------


@dataclass
class CorpusFacts:
    """Every row's facts, the chunks' joined; raw labels numbered across the whole corpus."""
    spellings: list         # each distinct raw label (a string, or a tuple: a set), in order of first appearance
    label: np.ndarray       # int32 index into spellings; -1: no label
    n_tokens: np.ndarray
    key: np.ndarray
    given: np.ndarray
    hashed: np.ndarray
    carve: np.ndarray
    chunk_rows: list[int]
    label_fixes: dict
    words: WordFacts

    @classmethod
    def join(cls, facts: list[ChunkFacts]) -> "CorpusFacts":
        ids: dict[str, int] = {}
        labels = []
        for f in facts:
            lookup = np.array([ids.setdefault(s, len(ids)) for s in f.labels] + [-1], dtype=np.int32)
            labels.append(lookup[f.label_code])  # code -1 reads the trailing -1

        def joined(name: str, dtype, shape=(0,)) -> np.ndarray:
            # One field at a time, each chunk's copy dropped once joined: memory peaks at the joined
            # arrays plus one field, not twice all of them.
            parts = [getattr(f, name) for f in facts]
            for f in facts:
                setattr(f, name, None)
            return np.concatenate(parts) if parts else np.zeros(shape, dtype)

        label = np.concatenate(labels) if labels else np.zeros(0, np.int32)
        del labels
        chunk_rows = [len(f.n_tokens) for f in facts]
        fixes = sum((collections.Counter(f.label_fixes) for f in facts), collections.Counter())
        words = WordFacts.join([f.words for f in facts])
        return cls(list(ids), label, joined("n_tokens", np.int32), joined("key", np.uint64, (0, 2)),
                   joined("given", np.int8), joined("hashed", np.int8), joined("carve", bool), chunk_rows,
                   dict(sorted(fixes.items())), words)


def select_rows(rows: CorpusFacts, canonical: list[str], drop_labels: list[str], drop_duplicates: bool,
                source: str) -> tuple[np.ndarray, np.ndarray, list[str], dict]:
    """Which rows to keep, each row's class (an index into the sorted class names; -1: none), the class
    names, and the count of each reason for dropping.

    Duplicated texts keep one row, the one of the corpus's own test split first, then val, then train,
    so a duplicate never carries a test text into training; the corpus's own test split is kept whole
    (results stay comparable with published ones)."""
    n = len(rows.label)
    report = {"rows_read": n}
    if n == 0:
        raise PipelineError(f"{source}: the corpus is empty")
    names = sorted({c for c in canonical if c != ""})
    index = {name: i for i, name in enumerate(names)}
    spelling_class = np.array([index.get(c, -1) for c in canonical] + [-1], dtype=np.int32)
    row_class = spelling_class[rows.label]  # label -1 reads the trailing -1
    keep = row_class >= 0
    report["dropped_missing_label"] = int((~keep).sum())
    dropped = {str(d).strip() for d in drop_labels}
    excluded_class = np.array([name in dropped for name in names] + [False])
    excluded = keep & excluded_class[row_class]
    report["dropped_excluded_label"] = int(excluded.sum())
    keep = drop_empty_and_duplicates(rows, keep & ~excluded, drop_duplicates, report, source)
    counts = np.bincount(row_class[keep], minlength=len(names))
    present = [i for i in range(len(names)) if counts[i]]
    if len(present) < 2:
        raise PipelineError(f"{source}: only one class ({names[present[0]]!r}) left; a classifier needs two or more")
    report["class_counts"] = {names[i]: int(counts[i]) for i in present}
    return keep, row_class, names, report


def drop_empty_and_duplicates(rows: CorpusFacts, keep: np.ndarray, drop_duplicates: bool, report: dict,
                              source: str) -> np.ndarray:
    """`keep` less the rows without tokens and the duplicated texts (select_rows), each counted in `report`."""
    n = len(rows.label)
    empty = keep & (rows.n_tokens == 0)
    report["dropped_empty_text"] = int(empty.sum())
    keep &= ~empty
    if drop_duplicates:
        candidates = np.flatnonzero(keep).astype(np.int32 if n < 2**31 else np.int64)
        # Sorted by text hash, then split priority (stable: then position); the first of each run is kept.
        order = candidates[np.lexsort((rows.given[candidates], rows.key[candidates, 1], rows.key[candidates, 0]))]
        del candidates
        # A row repeats the one before it when both halves of the hash match (a half at a time: fewer
        # temporary bytes per row).
        repeat = np.zeros(len(order), dtype=bool)
        half = rows.key[order, 0]
        repeat[1:] = half[1:] == half[:-1]
        half = rows.key[order, 1]
        repeat[1:] &= half[1:] == half[:-1]
        del half
        dup = order[repeat & (rows.given[order] != SPLIT_CODE["test"])]  # a given test split stays whole
        report["dropped_duplicate_text"] = int(len(dup))
        keep[dup] = False
    report["rows_kept"] = int(keep.sum())
    if report["rows_kept"] == 0:
        raise PipelineError(f"{source}: no usable rows left after dropping {report}")
    return keep


def final_splits(given: np.ndarray, hashed: np.ndarray, carve: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, dict]:
    """Each row's split code: the corpus's own where it has one, else the hashed one. When the corpus
    names test rows but no val rows, val is carved from its train rows (those whose hash falls below
    val_size)."""
    kept_given = given[keep]
    split = np.where(given != NO_SPLIT, given, hashed).astype(np.int8)
    info = {"split_from_corpus": int((kept_given != NO_SPLIT).sum()), "split_by_hash": int((kept_given == NO_SPLIT).sum())}
    if (kept_given == SPLIT_CODE["test"]).any() and not (kept_given == SPLIT_CODE["val"]).any():
        moved = (given == SPLIT_CODE["train"]) & carve
        split[moved] = SPLIT_CODE["val"]
        info["val_carved_from_train"] = int((moved & keep).sum())
    return split, info


def check_val_test_sizes(val_size: float, test_size: float) -> None:
    if val_size + test_size >= 1:
        raise PipelineError("params.yaml: 'prepare.val_size' + 'prepare.test_size' must be below 1")


def check_classes(counts: pd.DataFrame, test_from_corpus: bool, source: str) -> list[str]:
    """Errors for classes the splits cannot serve; warnings (returned) where only the corpus can say.
    `counts`: rows per class (index) and split (columns train, val, test)."""
    warnings = []
    for label, row in counts.iterrows():
        if row["train"] == 0:
            raise PipelineError(f"{source}: class {label!r} has {row['val']} val and {row['test']} test row(s) "
                                "but none for training; the model could never predict it")
        if row["test"] == 0 and not test_from_corpus:
            raise PipelineError(
                f"{source}: class {label!r} has {int(row.sum())} row(s) and none fell in the test split "
                "(rows are assigned by a hash of their text, so the split stays put as data is added); "
                "a class needs enough rows to be tested: add rows, drop it (corpus.drop_labels), "
                "or give the corpus its own split (corpus.split_column)"
            )
        warnings += [f"class {label!r} has no {name} rows" for name in ("val", "test") if row[name] == 0]
    return warnings


def split_counts(row_class: np.ndarray, split: np.ndarray, keep: np.ndarray, names: list[str]) -> pd.DataFrame:
    """Kept rows per class and split, for the classes that have any."""
    counts = np.zeros((len(names), len(SPLIT_CODE)), dtype=np.int64)
    np.add.at(counts, (row_class[keep], split[keep]), 1)
    table = pd.DataFrame(counts, index=names, columns=list(SPLIT_CODE))[list(SPLITS)]
    return table[table.sum(axis=1) > 0]


def length_stats(lengths: np.ndarray) -> dict:
    return {"mean": round(float(lengths.mean()), 2), "median": int(np.median(lengths)),
            "p95": int(np.ceil(np.percentile(lengths, 95))), "max": int(lengths.max())}


# --- writing ----------------------------------------------------------------------------------------


def write_splits(shards: list[Path], rows: CorpusFacts, keep: np.ndarray, split: np.ndarray,
                 row_class: np.ndarray, names: list, out_dir: Path, text_config: TextConfig,
                 task: str = "single_label") -> None:
    """Copy each kept row from the shards to its split's file, in the corpus's order, with its class
    name (multi_label: its set, `names` tuples); row groups of ROW_GROUP rows (the later stages read a
    group at a time). A thread per split encodes and writes while the next shard is read (Arrow releases
    the GIL in both)."""
    label_names = pa.array([list(n) for n in names] if task == "multi_label" else names, LABEL_TYPE[task])
    schema = pa.schema([*OUTPUT_SCHEMA][:2] + [("label", LABEL_TYPE[task])]).with_metadata(
        {**text_config_metadata(text_config), **task_metadata(task)})
    buffered: dict[str, list[pa.Table]] = {name: [] for name in SPLITS}
    writes: collections.deque = collections.deque()
    with contextlib.ExitStack() as stack:
        # No min/max statistics of texts and tokens: nothing filters on them, and they cost a sixth of the writing.
        writers = {name: stack.enter_context(pq.ParquetWriter(out_dir / f"{name}.parquet", schema,
                                                              write_statistics=["label"]))
                   for name in SPLITS}
        threads = {name: stack.enter_context(ThreadPoolExecutor(1)) for name in SPLITS}  # one each: in order

        def flush(name: str, everything: bool = False) -> None:
            table = pa.concat_tables(buffered[name])
            whole = len(table) if everything else len(table) // ROW_GROUP * ROW_GROUP
            if whole:
                writes.append(threads[name].submit(writers[name].write_table, table.slice(0, whole),
                                                   row_group_size=ROW_GROUP))
                while len(writes) > 1:  # bounded: memory stays a few row groups
                    writes.popleft().result()
            buffered[name] = [table.slice(whole)] if whole < len(table) else []

        start = 0
        for shard, n in zip(shards, rows.chunk_rows):
            with pa.memory_map(str(shard)) as source:
                table = pa.ipc.open_file(source).read_all()
            part_keep, part_split, part_class = keep[start:start + n], split[start:start + n], row_class[start:start + n]
            start += n
            for name in SPLITS:
                idx = np.flatnonzero(part_keep & (part_split == SPLIT_CODE[name]))
                if len(idx):
                    buffered[name].append(table.take(idx).append_column("label", label_names.take(part_class[idx])))
                    if sum(len(t) for t in buffered[name]) >= ROW_GROUP:
                        flush(name)
            shard.unlink()  # disk holds the corpus about twice at most, not three times
            pa.default_memory_pool().release_unused()
        for name in SPLITS:
            if buffered[name]:
                flush(name, everything=True)
        while writes:
            writes.popleft().result()


def prepare(source: Path, corpus: params.CorpusParams, prep: params.PrepareParams, out_dir: Path, workers: int,
            chunk_rows: int = CHUNK_ROWS) -> dict:
    """Read, clean, tokenize, deduplicate and split the corpus into out_dir/{train,val,test}.parquet,
    a chunk at a time; the report."""
    check_val_test_sizes(prep.val_size, prep.test_size)
    chunks, layout = corpus_chunks(source, corpus, chunk_rows)
    shard_dir = out_dir / ".shards"
    shard_dir.mkdir(parents=True)
    started = time.perf_counter()
    shards, facts = tokenize_corpus(chunks, shard_dir, TextConfig.from_params(prep), prep, workers, corpus)
    tokenized = time.perf_counter()
    rows = CorpusFacts.join(facts)
    del facts
    task = resolve_task(corpus.task, rows.spellings)
    if task == "multi_label":  # a set of labels per row: pipeline.label_sets
        row_class, names, report = select_label_sets(rows, corpus.label_variants, corpus.drop_labels, str(source))
        keep = drop_empty_and_duplicates(rows, row_class >= 0, prep.drop_duplicates, report, str(source))
    else:
        canonical = canonical_labels(rows, corpus.label_variants, str(source))
        keep, row_class, names, report = select_rows(rows, canonical, corpus.drop_labels, prep.drop_duplicates,
                                                     str(source))
        if merged := merged_labels(rows, canonical):  # label_variants: merge, counted
            report["labels_merged"] = merged
    split, split_info = final_splits(rows.given, rows.hashed, rows.carve, keep)
    split_rows = {name: int((split[keep] == SPLIT_CODE[name]).sum()) for name in SPLITS}
    for name in ("train", "test", "val"):
        if split_rows[name] == 0:
            raise PipelineError(f"{source}: the {name} split is empty{' (raise prepare.val_size)' * (name == 'val')}")
    if task == "multi_label":
        row_class, names, by_split, warnings, sets_report = finish_label_sets(row_class, names, split, keep,
                                                                              SPLIT_CODE, str(source))
        report.update(sets_report)
    else:
        by_split = split_counts(row_class, split, keep, names)
        test_from_corpus = bool((rows.given[keep] == SPLIT_CODE["test"]).any())
        warnings = check_classes(by_split, test_from_corpus, str(source))
    decided = time.perf_counter()
    text_config, words_report = resolve_and_check(rows.words, keep & (split == SPLIT_CODE["train"]),
                                                  TextConfig.from_params(prep), str(source))
    write_splits(shards, rows, keep, split, row_class, names, out_dir, text_config, task)
    shard_dir.rmdir()
    print(f"read and tokenized in {tokenized - started:.1f}s ({workers} worker{'s' if workers > 1 else ''}), "
          f"decided in {decided - tokenized:.1f}s, wrote the splits in {time.perf_counter() - decided:.1f}s")
    report["task"], report["layout"] = task, layout
    report.update(words_report)  # the tokenizer, per script the tokens that are no words (docs/text.md)
    if rows.label_fixes:  # policies of label_text, each counted in rows
        report["labels_changed"] = rows.label_fixes
    report.update(split_info)
    report.update({f"{name}_rows": split_rows[name] for name in SPLITS})
    report["class_counts_by_split"] = {name: {str(k): int(v) for k, v in by_split[name].items() if v}
                                       for name in SPLITS}
    report["train_tokens"] = length_stats(rows.n_tokens[keep & (split == SPLIT_CODE["train"])])
    if warnings:
        report["warnings"] = warnings
    return report
