"""Multi-label corpora for the prepare stage: a set of labels per text (maybe empty: a text with none of
the labels, a non-toxic comment, is a real example).

A row's labels come as a list (a JSON-lines array, a Parquet list column), as one string split by
`corpus.label_separator` ('news | sport': blanks around each part stripped, empty parts ignored), or as
several `__label__` prefixes of a fastText line. Each label is read as a single label is (labels.label_text)
and its spellings are told apart the same way (labels.canonical_spellings, corpus.label_variants);
`corpus.drop_labels` takes a label out of the sets and keeps the rows.

A row's raw labels travel from the worker processes as one value: a string (one label, exactly what a
single-label corpus has, so its prepared bytes never change) or a tuple of strings (a set), factorized
per chunk like single labels: the main process keeps an int32 per row, and the distinct sets.

`corpus.task: auto` is multi_label when any row is a set (a list, even of one label or of none; several
labels; a string of separators only), else single_label. A label that has no training rows is taken out
of the val and test rows' sets with a warning (Reuters-style corpora have such labels); fewer than two
labels with training rows is an error.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

import numpy as np
import pandas as pd

from pipeline.errors import PipelineError, short
from pipeline.labels import canonical_spellings, label_text, merged_spellings
from pipeline.readers import open_lines

if TYPE_CHECKING:
    from pipeline.corpus import CorpusFacts

LIST_TYPES = (list, tuple, np.ndarray)


def raw_label(value, separator: str | None = None) -> tuple[str | tuple | None, list[str]]:
    """A row's raw label: None (missing), one label (a string, as label_text gives it) or a set of labels
    (a sorted tuple: a list value, or a string with a separator), and the label_text policies that changed
    it. A blank string is a missing label, as ever; a list's missing or blank items are no labels."""
    if isinstance(value, LIST_TYPES):
        parts, fixes = set(), []
        for item in value:
            if isinstance(item, (*LIST_TYPES, dict)):
                raise PipelineError(f"a label list holds a list or a mapping ({short(value)}); a label is a "
                                    "string or a number")
            text, fix = label_text(item)
            fixes += [fix] if fix else []
            if text is not None and text.strip():
                parts.add(text)
        return tuple(sorted(parts)), fixes
    text, fix = label_text(value)
    fixes = [fix] if fix else []
    if text is None or separator is None or separator not in text:
        return text, fixes
    parts = {p.strip() for p in text.split(separator)} - {""}
    return (next(iter(parts)) if len(parts) == 1 else tuple(sorted(parts))), fixes


def one_label(label: str | tuple | None) -> str | None:
    """A single_label corpus's label: a set of one is that label (a JSON list of one); other sets are refused
    where the rows are read (one_label_per_row), this is the last guard."""
    if not isinstance(label, tuple):
        return label
    if len(label) != 1:
        raise PipelineError(f"a row holds {len(label)} labels {short(list(label))}, and corpus.task is single_label")
    return label[0]


def _where(path: Path, kind: str, encoding: str, row: int) -> str:
    """Where data row `row` (1-based) of a file is, as its messages say it: a line of a line-based file."""
    if kind in ("jsonl", "fasttext"):
        seen = 0
        with open_lines(path, encoding) as f:
            for lineno, line in enumerate(f, 1):
                seen += bool(line.strip())
                if seen == row:
                    return f"line {lineno}"
    return {"parquet": f"row {row}", "folder": f"document {row} (in name order)"}.get(kind, f"data row {row}")


def one_label_per_row(chunks: Iterable[pd.DataFrame], path: Path, kind: str, encoding: str,
                      separator: str | None) -> Iterator[pd.DataFrame]:
    """The chunks of one file of a corpus.task: single_label corpus, each row checked to hold one label (or
    none): a row of several labels, or of a list of none, is an error naming the file and the row."""
    rows = 0
    for df in chunks:
        for i, value in enumerate(df["label"]):
            label, _ = raw_label(value, separator)
            if isinstance(label, tuple) and len(label) != 1:
                raise PipelineError(
                    f"{path}: {_where(path, kind, encoding, rows + i + 1)}: the label holds {len(label)} labels "
                    f"{short(list(label))}, and corpus.task is single_label (one label per text); set "
                    "corpus.task: multi_label (or auto) for a set of labels per text")
        rows += len(df)
        yield df


def resolve_task(task: str, spellings: list) -> str:
    """corpus.task, auto resolved by the labels read: multi_label when any row held a set."""
    if task != "auto":
        return task
    return "multi_label" if any(isinstance(s, tuple) for s in spellings) else "single_label"


def select_label_sets(rows: CorpusFacts, variants: str, drop_labels: list[str],
                      source: str) -> tuple[np.ndarray, list[tuple], dict]:
    """Each row's set (an index into the sets, sorted tuples of class names; -1: no label, the row dropped),
    the sets, and the report so far: rows read, dropped for a missing label, whose set lost a label of
    drop_labels, and the spellings merged (label_variants: merge)."""
    n = len(rows.label)
    report = {"rows_read": n}
    if n == 0:
        raise PipelineError(f"{source}: the corpus is empty")
    ids: dict[str, int] = {}  # each single label's spelling, in order of first appearance
    members = [[ids.setdefault(p, len(ids)) for p in (s if isinstance(s, tuple) else (s,))] for s in rows.spellings]
    counts = np.bincount(rows.label[rows.label >= 0], minlength=len(rows.spellings))
    single_counts = np.zeros(len(ids), dtype=np.int64)
    for m, c in zip(members, counts):
        single_counts[m] += c

    def first_row(i: int) -> int:  # only for an error message
        return min(int(np.argmax(rows.label == s)) + 1 for s, m in enumerate(members) if i in m and counts[s])

    spellings = list(ids)
    canonical = canonical_spellings(spellings, single_counts, first_row, variants, source)
    dropped = {str(d).strip() for d in drop_labels}
    set_ids: dict[tuple, int] = {}
    spelling_set, excluded = [], 0
    for s, m, c in zip(rows.spellings, members, counts):
        if not isinstance(s, tuple) and not s.strip():  # a blank label: no label, as in a single-label corpus
            spelling_set.append(-1)
            continue
        names = {canonical[i] for i in m} - {""}
        excluded += int(c) if names & dropped else 0
        spelling_set.append(set_ids.setdefault(tuple(sorted(names - dropped)), len(set_ids)))
    row_set = np.array(spelling_set + [-1], dtype=np.int32)[rows.label]  # label -1 reads the trailing -1
    report["dropped_missing_label"] = int((row_set < 0).sum())
    report["rows_with_excluded_labels"] = excluded  # kept: drop_labels takes the label out of their sets
    if merged := merged_spellings(spellings, canonical, single_counts):
        report["labels_merged"] = merged
    return row_set, list(set_ids), report


def finish_label_sets(row_set: np.ndarray, sets: list[tuple], split: np.ndarray, keep: np.ndarray,
                      split_codes: dict, source: str) -> tuple[np.ndarray, list[tuple], pd.DataFrame, list[str], dict]:
    """The split rows' sets made servable: a label without training rows taken out of the val and test sets
    (warned); the kept rows per label and split (`split_codes`: split name -> code); warnings; and the
    report's multi-label figures (class counts, label cardinality, rows without labels per split)."""
    def per_split(sets: list[tuple], row_set: np.ndarray) -> tuple[np.ndarray, pd.DataFrame]:
        by_set = np.zeros((len(sets), len(split_codes)), dtype=np.int64)
        np.add.at(by_set, (row_set[keep], split[keep]), 1)
        labels = sorted({label for s in sets for label in s})
        index = {label: i for i, label in enumerate(labels)}
        counts = np.zeros((len(labels), len(split_codes)), dtype=np.int64)
        for s, c in zip(sets, by_set):
            for label in s:
                counts[index[label]] += c
        table = pd.DataFrame(counts, index=labels, columns=list(split_codes))[["train", "val", "test"]]
        return by_set, table[table.sum(axis=1) > 0]

    by_set, table = per_split(sets, row_set)
    untrained = set(table.index[table["train"] == 0])
    warnings = [f"label {label!r} has no training rows ({row['val']} val, {row['test']} test): taken out of their "
                "label sets (the model cannot learn it)" for label, row in table.iterrows() if label in untrained]
    if untrained:
        ids: dict[tuple, int] = {}
        lookup = [ids.setdefault(tuple(x for x in s if x not in untrained), len(ids)) for s in sets]
        row_set = np.array(lookup + [-1], dtype=np.int32)[row_set]
        sets = list(ids)
        by_set, table = per_split(sets, row_set)
    if len(table) < 2:
        raise PipelineError(f"{source}: {len(table)} label(s) with training rows ({', '.join(map(repr, table.index))}); "
                            "a multi-label classifier needs two or more")
    warnings += [f"label {label!r} has no {name} rows" for label, row in table.iterrows()
                 for name in ("val", "test") if row[name] == 0]
    sizes = np.array([len(s) for s in sets], dtype=np.int64)
    report = {"class_counts": {str(k): int(v) for k, v in table.sum(axis=1).items()},
              "label_cardinality": round(float((sizes @ by_set).sum() / max(int(by_set.sum()), 1)), 4),
              "rows_without_labels": {name: int(by_set[sizes == 0, split_codes[name]].sum())
                                      for name in ("train", "val", "test")}}
    return row_set, sets, table, warnings, report
