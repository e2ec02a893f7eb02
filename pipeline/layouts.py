"""Corpus layouts: where a corpus's rows, labels and splits are, for the prepare stage.

- one table (any format pipeline.readers reads), its split in `corpus.split_column` if it has one;
- a folder of per-split files: `train.csv` + `test.csv`, `train-00000-of-00002.parquet`, ...,
  `train/0000.parquet` (the layouts dataset hubs export); the split is named by the file or its folder;
- a folder tree `train/<label>/*.txt` and `test/<label>/*.txt` (the large movie-review corpus's layout).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

import numpy as np
import pandas as pd

from pipeline.errors import PipelineError
from pipeline.files import check_data_path
from pipeline.label_sets import one_label_per_row
from pipeline.formats import strip_compression
from pipeline.readers import CHUNK_ROWS, MAX_FIELD_BYTES, corpus_kind, decode_error, iter_table, too_long

if TYPE_CHECKING:
    from pipeline.params import CorpusParams

SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "dev": "val", "test": "test", "testing": "test"}


def _split_of_name(name: str) -> str | None:
    """The split a file or folder name announces: train.csv, test-00000-of-00001.parquet, validation/."""
    stem = strip_compression(name).split(".")[0]
    first = re.split(r"[-_ ]", stem)[0] if stem else ""
    for candidate in (stem, first):
        if candidate in SPLIT_NAMES:
            return SPLIT_NAMES[candidate]
    m = re.search(r"(?:^|[-_.])(train|test|val|valid|validation|dev)(?:$|[-_.])", stem)
    return SPLIT_NAMES[m.group(1)] if m else None


def _visible_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def _folder_tree_root(root: Path) -> Path | None:
    """The folder holding train/<label>/ and test/<label>/ (root, or its only subfolder), if any."""
    candidates = [root] + [d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")]
    if len(candidates) > 2:
        candidates = [root]
    for cand in candidates:
        splits = [d for d in cand.iterdir() if d.is_dir() and _split_of_name(d.name)]
        if splits and all(any(c.is_dir() for c in d.iterdir()) for d in splits):
            return cand
    return None


def shown(path: Path) -> str:
    """A path as an error message can print it: bytes that are not UTF-8 as \\xff escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _label_of(label_dir: Path) -> str:
    """A label folder's name, which must be UTF-8 text (labels are written out as text)."""
    try:
        label_dir.name.encode("utf-8")
    except UnicodeEncodeError:
        raise PipelineError(f"{shown(label_dir)}: the label folder's name is not UTF-8 text "
                            "(labels are written out as UTF-8): rename the folder") from None
    return label_dir.name


def iter_folder_tree(root: Path, encoding: str = "utf-8", chunk_rows: int = CHUNK_ROWS) -> Iterator[pd.DataFrame]:
    """`<split>/<label>/*.txt`: one document per file (at most MAX_FIELD_BYTES long). Files directly in a
    split folder are ignored."""
    texts, labels, splits = [], [], []
    found = False
    for split_dir in sorted(d for d in root.iterdir() if d.is_dir() and _split_of_name(d.name)):
        for label_dir in sorted(d for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith(".")):
            label = _label_of(label_dir)
            for path in sorted(p for p in label_dir.rglob("*") if p.is_file() and not p.name.startswith(".")):
                if (size := path.stat().st_size) > MAX_FIELD_BYTES:
                    raise PipelineError(f"{shown(path)}: {size:,} bytes, {too_long('a document')}")
                try:
                    texts.append(path.read_text(encoding=encoding))
                except UnicodeDecodeError as err:
                    raise decode_error(path, err, encoding) from None
                labels.append(label)
                splits.append(_split_of_name(split_dir.name))
                if len(texts) == chunk_rows:
                    yield pd.DataFrame({"text": texts, "label": labels, "split": splits})
                    texts, labels, splits, found = [], [], [], True
    if texts:
        yield pd.DataFrame({"text": texts, "label": labels, "split": splits})
    elif not found:
        raise PipelineError(f"{root}: no documents under <split>/<label>/")


def corpus_chunks(source: Path, c: "CorpusParams", chunk_rows: int = CHUNK_ROWS) -> tuple[Iterator[pd.DataFrame], str]:
    """The corpus as frames of at most `chunk_rows` rows of text, label and split (None where the corpus
    gives none), read lazily; and the layout found. Layout errors are raised here, reading errors as
    the chunks are read."""
    if not source.exists():
        raise PipelineError(f"{source}: no such file or folder (params corpus.source)")
    check_data_path(source, "corpus.source")
    if source.is_file():
        chunks = _table(source, c, c.split_column, chunk_rows)
        return _with_split_column(chunks, source, c.split_column), "table"
    tree = _folder_tree_root(source) if c.format in ("auto", "folder") else None
    if tree is not None:
        return _one_label(iter_folder_tree(tree, c.encoding, chunk_rows), tree, "folder", c), "folder tree"
    if c.format == "folder":
        raise PipelineError(f"{source}: expected folders <split>/<label>/ with one text file per document")
    files = _visible_files(source)
    if not files:
        raise PipelineError(f"{source}: the folder is empty (did the download stage fetch anything? "
                            "corpus.download is null: point corpus.source at your corpus)")
    if len(files) == 1:
        return corpus_chunks(files[0], c, chunk_rows)
    named = {f: _split_of_name(f.name) or _split_of_name(f.parent.name) for f in files}
    unnamed = [str(f.relative_to(source)) for f, s in named.items() if s is None]
    if unnamed:
        raise PipelineError(f"{source}: {len(files)} files, and {', '.join(unnamed[:5])} names no split "
                            "(train, val/validation/dev, test); keep one table, or one file per split")
    chunks = (part.assign(split=split_name) for f, split_name in named.items()
              for part in _table(f, c, None, chunk_rows))
    return chunks, "one file per split"


def _table(path: Path, c: "CorpusParams", split_column: str | None, chunk_rows: int) -> Iterator[pd.DataFrame]:
    kind = corpus_kind(path, c.format)
    return _one_label(iter_table(path, kind, c.text_column, c.label_column, split_column, c.encoding, c.header,
                                 chunk_rows), path, kind, c)


def _one_label(chunks: Iterator[pd.DataFrame], path: Path, kind: str, c: "CorpusParams") -> Iterator[pd.DataFrame]:
    """corpus.task single_label: a row of several labels (or a list of none) is an error naming its row."""
    return one_label_per_row(chunks, path, kind, c.encoding, c.label_separator) if c.task == "single_label" else chunks


def _with_split_column(chunks: Iterable[pd.DataFrame], path: Path, split_column: str | None) -> Iterator[pd.DataFrame]:
    rows = 0
    for df in chunks:
        if not split_column:
            yield df.assign(split=None)
            continue
        raw = df["split"].map(lambda v: None if pd.isna(v) or str(v).strip() == "" else str(v).strip().lower())
        unknown = sorted({v for v in raw.dropna() if v not in SPLIT_NAMES})
        if unknown:
            row = rows + int(np.flatnonzero(raw.isin(unknown).to_numpy())[0])
            raise PipelineError(
                f"{path}: data row {row + 1}: split column '{split_column}' holds {unknown[0]!r}; "
                "expected train, val (validation, valid, dev) or test, or an empty value"
            )
        rows += len(df)
        yield df.assign(split=raw.map(lambda v: None if pd.isna(v) else SPLIT_NAMES[v]))
