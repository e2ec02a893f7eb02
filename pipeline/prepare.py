"""Stage prepare: read the corpus, clean and tokenize it, and split it.

Reads `corpus.source`, a file or a folder:

- one table: CSV, TSV (also Orange's .tab), JSON lines or Parquet, optionally compressed; or
  fastText lines (`__label__pos text ...`);
- a folder of per-split files: `train.csv` + `test.csv`, `train-00000-of-00002.parquet`, ...,
  `train/0000.parquet` (the layouts dataset hubs export); the split is named by the file or its folder;
- a folder tree `train/<label>/*.txt` and `test/<label>/*.txt` (the large movie-review corpus's layout).

A corpus's own split (its files, its folders, or `corpus.split_column`) is kept: test rows stay test.
Rows without one are assigned by a hash of their text and `prepare.seed`, so the same text always lands
in the same split and adding rows never moves old ones. Every token is kept: truncation belongs to the
model's input (`train.max_tokens`), and the baseline reads whole documents.

Writes data/prepared/{train,val,test}.parquet (text, tokens, label) and metrics/prepare.json: rows
read, dropped (and why), kept per split and class, and token-length statistics.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import params as P
from pipeline.common import READ_ERRORS, PipelineError, atomic_path, json_object_line, run_main, write_json
from pipeline.text import TextConfig, tokenize

OUT_DIR = Path("data/prepared")
REPORT = Path("metrics/prepare.json")
SPLITS = ("train", "val", "test")
ROW_GROUP = 20_000
SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "dev": "val", "test": "test", "testing": "test"}
_COMPRESSION = (".gz", ".bz2", ".xz", ".zst", ".zip")
_TABLE_SUFFIXES = {
    "csv": (".csv",),
    "tsv": (".tsv", ".tab"),
    "jsonl": (".jsonl", ".ndjson", ".json"),
    "parquet": (".parquet", ".pq"),
    "fasttext": (".txt", ".ft", ".fasttext"),
}
# Orange's .tab files carry two more header rows after the column names: types, then flags.
_ORANGE_TYPES = {"d", "discrete", "c", "continuous", "s", "string", "t", "time", "text", ""}
_FASTTEXT_LABEL = re.compile(r"__label__(\S+)\s?")


def _strip_compression(name: str) -> str:
    name = name.lower()
    for suffix in _COMPRESSION:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def corpus_kind(path: Path, fmt: str = "auto") -> str:
    """csv, tsv, jsonl, parquet or fasttext: `fmt`, or from the file name (compression looked through)."""
    if fmt not in ("auto", "folder"):
        return fmt
    name = _strip_compression(path.name)
    for kind, suffixes in _TABLE_SUFFIXES.items():
        if name.endswith(suffixes):
            return kind
    raise PipelineError(
        f"{path}: unknown corpus format (expected .csv, .tsv, .tab, .jsonl, .json, .parquet, or fastText .txt); "
        "name it with corpus.format"
    )


def _decode_error(path: Path, err: UnicodeDecodeError, encoding: str) -> PipelineError:
    line = _first_undecodable_line(path, encoding) if path.is_file() else None
    where = f"line {line}: " if line else ""
    return PipelineError(f"{path}: {where}not valid {encoding} text ({err.reason}); "
                         "set corpus.encoding (e.g. latin-1 or cp1252)")


def _opener(path: Path):
    """open, or the decompressing open its suffix asks for (.gz, .bz2, .xz)."""
    import bz2
    import gzip
    import lzma

    return {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}.get(path.suffix.lower(), open)


def open_text(path: Path, encoding: str = "utf-8"):
    """A text file, decompressed by its suffix, with universal newlines."""
    return _opener(path)(path, "rt", encoding=encoding, newline=None)


def _read_lines(path: Path, encoding: str, parse) -> tuple[list, list]:
    """Run parse(line, lineno) -> (text, label) over the non-blank lines; decoding and
    decompression failures become errors naming the file and line."""
    texts, labels = [], []
    lineno = 0
    try:
        with open_text(path, encoding) as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    text, label = parse(line, lineno)
                    texts.append(text)
                    labels.append(label)
    except UnicodeDecodeError as err:
        raise _decode_error(path, err, encoding) from None
    except READ_ERRORS as err:
        raise PipelineError(f"{path}: cannot read past line {lineno} ({err}): a truncated or corrupt file?") from None
    return texts, labels


def read_fasttext(path: Path, encoding: str = "utf-8") -> pd.DataFrame:
    """fastText's supervised format: `__label__a [__label__b ...] text` per line (the first label is kept)."""

    def parse(line: str, lineno: int) -> tuple[str, str]:
        m = _FASTTEXT_LABEL.match(line.lstrip())
        if not m:
            raise PipelineError(f"{path}: line {lineno}: expected '__label__<label> <text>', got {line[:60]!r}")
        rest = line.lstrip()[m.end():]
        while (more := _FASTTEXT_LABEL.match(rest)):  # further labels of multi-label lines
            rest = rest[more.end():]
        return rest.strip(), m.group(1)

    texts, labels = _read_lines(path, encoding, parse)
    return pd.DataFrame({"text": texts, "label": labels})


def read_jsonl(path: Path, text_column: str, label_column: str, split_column: str | None,
               encoding: str = "utf-8") -> pd.DataFrame:
    """JSON lines, one object per line; a malformed line is an error naming its number."""

    columns = [c for c in (text_column, label_column, split_column) if c]

    def parse(line: str, lineno: int):
        row = json_object_line(line, path, lineno)
        for role, column in zip(("text", "label", "split"), columns):
            if column not in row:
                raise PipelineError(f"{path}: line {lineno}: no {role} field '{column}' (params corpus.{role}_column); "
                                    f"fields are: {', '.join(row)}")
        text = row[text_column]
        if text is not None and not isinstance(text, str):
            raise PipelineError(f"{path}: line {lineno}: text field '{text_column}' holds "
                                f"{type(text).__name__} {text!r}, not text")
        return text, tuple(row[c] for c in columns[1:])

    texts, rest = _read_lines(path, encoding, parse)
    out = {text_column: texts, label_column: [r[0] for r in rest]}
    if split_column:
        out[split_column] = [r[1] for r in rest]
    return pd.DataFrame(out)


def _first_undecodable_line(path: Path, encoding: str) -> int | None:
    """The number of the first line that does not decode (text readers decode whole blocks, so the
    error they raise knows no line)."""
    with _opener(path)(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                raw.decode(encoding)
            except UnicodeDecodeError:
                return lineno
    return None


def _swallowed_rows(df: pd.DataFrame, sep: str) -> int | None:
    """The first data row (1-based) holding a field that spans lines and separators: an unbalanced
    quote that made the parser read many rows as one field. (A TSV field cannot hold a tab otherwise.)"""
    for column in df.columns:
        values = df[column].astype(str)
        bad = values.str.contains("\n", regex=False) & values.str.contains(sep, regex=False)
        if bad.any():
            return int(np.flatnonzero(bad.to_numpy())[0]) + 1
    return None


def _orange_extra_header(path: Path, df: pd.DataFrame) -> int:
    """Rows to skip after the column names of an Orange .tab file (its type and flag rows), else 0."""
    if not path.name.lower().split(".")[-1] == "tab" or len(df) < 2:
        return 0
    types = {str(v).strip().lower() for v in df.iloc[0].tolist()}
    return 2 if types <= _ORANGE_TYPES else 0


def read_table(path: Path, kind: str, text_column: str, label_column: str, split_column: str | None = None,
               encoding: str = "utf-8", header: bool = True) -> pd.DataFrame:
    """The text, label (and split) columns of one table; only truly empty fields count as missing."""
    if kind == "fasttext":
        return read_fasttext(path, encoding)
    try:
        if kind == "parquet":
            df = pd.read_parquet(path)
        elif kind == "jsonl":
            df = read_jsonl(path, text_column, label_column, split_column, encoding)
        else:
            # Only empty fields are missing: 'NA', 'null' or 'nan' are text like any other.
            df = pd.read_csv(path, sep="," if kind == "csv" else "\t", dtype=str, keep_default_na=False,
                             na_values=[""], encoding=encoding, header=0 if header else None)
            if not header:
                df.columns = [str(c) for c in df.columns]
            if kind == "tsv" and header:
                df = df.iloc[_orange_extra_header(path, df):]
            if kind == "tsv" and (row := _swallowed_rows(df, "\t")) is not None:
                raise PipelineError(
                    f"{path}: data row {row}: a field runs over several lines and tabs, so a quote opened "
                    "there (a stray '\"'?) swallowed the rows after it; quote or remove it")
    except UnicodeDecodeError as err:
        raise _decode_error(path, err, encoding) from None
    except (ValueError, pd.errors.ParserError, *READ_ERRORS) as err:
        raise PipelineError(f"{path}: cannot read as {kind}: {err}") from None
    wanted = [("text", text_column), ("label", label_column)] + ([("split", split_column)] if split_column else [])
    for role, column in wanted:
        if column not in df.columns:
            raise PipelineError(
                f"{path}: no {role} column '{column}' (params corpus.{role}_column); "
                f"columns are: {', '.join(map(str, df.columns))}"
            )
    text = df[text_column]
    if kind in ("parquet", "jsonl") and not (text.dtype == object or pd.api.types.is_string_dtype(text)):
        raise PipelineError(f"{path}: text column '{text_column}' holds {text.dtype} values, not text")
    out = pd.DataFrame({role: df[column].to_numpy() for role, column in wanted})
    return out


def _split_of_name(name: str) -> str | None:
    """The split a file or folder name announces: train.csv, test-00000-of-00001.parquet, validation/."""
    stem = _strip_compression(name).split(".")[0]
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


def read_folder_tree(root: Path, encoding: str = "utf-8") -> pd.DataFrame:
    """`<split>/<label>/*.txt`: one document per file. Files directly in a split folder are ignored."""
    texts, labels, splits = [], [], []
    for split_dir in sorted(d for d in root.iterdir() if d.is_dir() and _split_of_name(d.name)):
        for label_dir in sorted(d for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith(".")):
            for path in sorted(p for p in label_dir.rglob("*") if p.is_file() and not p.name.startswith(".")):
                try:
                    texts.append(path.read_text(encoding=encoding))
                except UnicodeDecodeError as err:
                    raise _decode_error(path, err, encoding) from None
                labels.append(label_dir.name)
                splits.append(_split_of_name(split_dir.name))
    if not texts:
        raise PipelineError(f"{root}: no documents under <split>/<label>/")
    return pd.DataFrame({"text": texts, "label": labels, "split": splits})


def read_corpus(source: Path, c: P.CorpusParams) -> tuple[pd.DataFrame, str]:
    """Rows of text, label and split (None where the corpus gives none), and the layout read."""
    if not source.exists():
        raise PipelineError(f"{source}: no such file or folder (params corpus.source)")
    if source.is_file():
        df = read_table(source, corpus_kind(source, c.format), c.text_column, c.label_column, c.split_column,
                        c.encoding, c.header)
        return _with_split_column(df, source, c.split_column), "table"
    tree = _folder_tree_root(source) if c.format in ("auto", "folder") else None
    if tree is not None:
        return read_folder_tree(tree, c.encoding), "folder tree"
    if c.format == "folder":
        raise PipelineError(f"{source}: expected folders <split>/<label>/ with one text file per document")
    files = _visible_files(source)
    if not files:
        raise PipelineError(f"{source}: the folder is empty (did the download stage fetch anything? "
                            "corpus.download is null: point corpus.source at your corpus)")
    if len(files) == 1:
        return read_corpus(files[0], c)
    named = {f: _split_of_name(f.name) or _split_of_name(f.parent.name) for f in files}
    unnamed = [str(f.relative_to(source)) for f, s in named.items() if s is None]
    if unnamed:
        raise PipelineError(f"{source}: {len(files)} files, and {', '.join(unnamed[:5])} names no split "
                            "(train, val/validation/dev, test); keep one table, or one file per split")
    parts = []
    for f, split_name in named.items():
        part = read_table(f, corpus_kind(f, c.format), c.text_column, c.label_column, None, c.encoding, c.header)
        parts.append(part.assign(split=split_name))
    return pd.concat(parts, ignore_index=True), "one file per split"


def _with_split_column(df: pd.DataFrame, path: Path, split_column: str | None) -> pd.DataFrame:
    if not split_column:
        return df.assign(split=None)
    raw = df["split"].map(lambda v: None if pd.isna(v) or str(v).strip() == "" else str(v).strip().lower())
    unknown = sorted({v for v in raw.dropna() if v not in SPLIT_NAMES})
    if unknown:
        row = int(np.flatnonzero(raw.isin(unknown).to_numpy())[0])
        raise PipelineError(
            f"{path}: data row {row + 1}: split column '{split_column}' holds {unknown[0]!r}; "
            "expected train, val (validation, valid, dev) or test, or an empty value"
        )
    return df.assign(split=raw.map(lambda v: None if pd.isna(v) else SPLIT_NAMES[v]))


def normalize_labels(labels: pd.Series, variants: str, source: str) -> pd.Series:
    """Labels as strings, stripped. Spellings that differ only by case or blanks are an error, or merged."""
    raw = labels.map(lambda v: None if pd.isna(v) else str(v))
    present = raw.dropna()
    key = present.map(lambda v: v.strip().casefold())
    spellings = present.groupby(key).agg(lambda s: s.value_counts().to_dict())
    clashes = {k: v for k, v in spellings.items() if len(v) > 1}
    if clashes and variants == "error":
        k, counts = sorted(clashes.items())[0]
        shown = ", ".join(f"{s!r} ({n})" for s, n in counts.items())
        raise PipelineError(
            f"{source}: labels {shown} differ only by case or surrounding blanks"
            f"{f' ({len(clashes)} such groups)' if len(clashes) > 1 else ''}; fix the data, or set "
            "corpus.label_variants: merge to merge each group into its most frequent spelling"
        )
    # Each group becomes its most frequent spelling (ties: the first in sorted order), stripped.
    canonical = {k: sorted(v.items(), key=lambda kv: (-kv[1], kv[0]))[0][0].strip() for k, v in spellings.items()}
    return raw.map(lambda v: None if pd.isna(v) else canonical[v.strip().casefold()])


def clean_corpus(df: pd.DataFrame, cfg: TextConfig, drop_labels: list[str], drop_duplicates: bool,
                 source: str = "corpus", label_variants: str = "error") -> tuple[pd.DataFrame, dict]:
    """Tokenize, drop unusable rows, and count each reason for dropping.

    Duplicated texts keep one row, the one of the corpus's own test split first, then val, then train,
    so a duplicate never carries a test text into training; the corpus's own test split is kept whole
    (results stay comparable with published ones)."""
    report = {"rows_read": len(df)}
    if len(df) == 0:
        raise PipelineError(f"{source}: the corpus is empty")
    if "split" not in df:
        df = df.assign(split=None)
    label = normalize_labels(df["label"], label_variants, source)
    text = df["text"].map(lambda v: "" if pd.isna(v) else str(v))
    keep = label.notna() & (label != "")
    report["dropped_missing_label"] = int((~keep).sum())
    excluded = keep & label.isin([str(d).strip() for d in drop_labels])
    report["dropped_excluded_label"] = int(excluded.sum())
    keep &= ~excluded
    tokens = text.map(lambda t: tokenize(t, cfg))
    empty = keep & (tokens.map(len) == 0)
    report["dropped_empty_text"] = int(empty.sum())
    keep &= ~empty
    out = pd.DataFrame({"text": text[keep], "tokens": tokens[keep], "label": label[keep], "split": df["split"][keep]})
    if drop_duplicates:
        priority = out["split"].map({"test": 0, "val": 1, "train": 2}).fillna(3)
        order = np.argsort(priority.to_numpy(), kind="stable")
        dup = pd.Series(out["text"].iloc[order].duplicated(keep="first").to_numpy(), index=out.index[order])
        dup = dup.reindex(out.index) & (out["split"] != "test")  # a given test split stays whole
        report["dropped_duplicate_text"] = int(dup.sum())
        out = out[~dup.to_numpy()]
    out = out.reset_index(drop=True)
    report["rows_kept"] = len(out)
    if len(out) == 0:
        raise PipelineError(f"{source}: no usable rows left after dropping {report}")
    classes = out["label"].value_counts()
    if len(classes) < 2:
        raise PipelineError(f"{source}: only one class ({classes.index[0]!r}) left; a classifier needs two or more")
    report["class_counts"] = {str(k): int(v) for k, v in classes.sort_index().items()}
    return out, report


def text_hash_unit(texts: pd.Series, seed: int) -> np.ndarray:
    """A number in [0, 1) per text, from a keyed hash of the text alone: stable across runs,
    machines and appended rows, independent of the label (so classes are split alike)."""
    key = seed.to_bytes(8, "little", signed=True)
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(t.encode("utf-8"), digest_size=8, key=key).digest(), "little") / 2.0**64
         for t in texts), dtype=np.float64, count=len(texts))


def assign_splits(df: pd.DataFrame, val_size: float, test_size: float, seed: int) -> tuple[pd.Series, dict]:
    """Each row's split: the corpus's own where it has one, else by the text's hash.

    Unassigned rows: test below test_size, val below test_size + val_size, else train. When the corpus
    names its test rows but no val rows, val is carved from its train rows (val_size of them)."""
    if val_size + test_size >= 1:
        raise PipelineError("params.yaml: 'prepare.val_size' + 'prepare.test_size' must be below 1")
    given = df["split"]
    u = text_hash_unit(df["text"], seed)
    hashed = np.where(u < test_size, "test", np.where(u < test_size + val_size, "val", "train"))
    split = given.where(given.notna(), pd.Series(hashed, index=df.index))
    info = {"split_from_corpus": int(given.notna().sum()), "split_by_hash": int(given.isna().sum())}
    has_val = (given == "val").any()
    if (given == "test").any() and not has_val:
        carve = (given == "train") & (u < val_size)
        split = split.where(~carve, "val")
        info["val_carved_from_train"] = int(carve.sum())
    return split, info


def check_classes(labels: pd.Series, split: pd.Series, test_from_corpus: bool, source: str) -> list[str]:
    """Errors for classes the splits cannot serve; warnings (returned) where only the corpus can say."""
    warnings = []
    counts = pd.crosstab(labels, split).reindex(columns=list(SPLITS), fill_value=0)
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


def length_stats(tokens: pd.Series) -> dict:
    lengths = tokens.map(len).to_numpy()
    return {"mean": round(float(lengths.mean()), 2), "median": int(np.median(lengths)),
            "p95": int(np.ceil(np.percentile(lengths, 95))), "max": int(lengths.max())}


def main() -> None:
    corpus, prep = P.load("corpus"), P.load("prepare")
    P.check_local_source("corpus", corpus)
    source = Path(corpus.source)
    raw, layout = read_corpus(source, corpus)
    df, report = clean_corpus(raw, TextConfig.from_params(prep), corpus.drop_labels, prep.drop_duplicates,
                              source=str(source), label_variants=corpus.label_variants)
    split, split_info = assign_splits(df, prep.val_size, prep.test_size, prep.seed)
    warnings = check_classes(df["label"], split, bool((df["split"] == "test").any()), str(source))
    parts = {name: df.loc[split == name, ["text", "tokens", "label"]].reset_index(drop=True) for name in SPLITS}
    for name in ("train", "test"):
        if parts[name].empty:
            raise PipelineError(f"{source}: the {name} split is empty")
    if parts["val"].empty:
        raise PipelineError(f"{source}: the val split is empty (raise prepare.val_size)")
    with atomic_path(OUT_DIR) as tmp:
        tmp.mkdir()
        for name, part in parts.items():
            # Row groups of ROW_GROUP rows: the stages after this one read the splits a group at a time.
            part.to_parquet(tmp / f"{name}.parquet", index=False, row_group_size=ROW_GROUP)
    report["layout"] = layout
    report.update(split_info)
    report.update({f"{name}_rows": len(part) for name, part in parts.items()})
    report["class_counts_by_split"] = {name: {str(k): int(v) for k, v in part["label"].value_counts().sort_index().items()}
                                       for name, part in parts.items()}
    report["train_tokens"] = length_stats(parts["train"]["tokens"])
    if warnings:
        report["warnings"] = warnings
    write_json(REPORT, report)
    print(", ".join(f"{k}={v}" for k, v in report.items() if not isinstance(v, (dict, list))))
    for w in warnings:
        print(f"warning: {w}")


if __name__ == "__main__":
    run_main(main)
