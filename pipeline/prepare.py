"""Stage prepare: read the raw corpus, clean and tokenize it, and split it (stratified, seeded).

Reads the one corpus file in data/raw/corpus/ (CSV, TSV, JSON lines or Parquet, optionally
compressed), writes data/prepared/{train,val,test}.parquet with columns text, tokens, label, and
metrics/prepare.json with how many rows were read, dropped (and why) and kept per split.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from sklearn.model_selection import train_test_split

from pipeline import params as P
from pipeline.common import PipelineError, atomic_path, run_main, write_json
from pipeline.text import TextConfig, tokenize

RAW_DIR = Path("data/raw/corpus")
OUT_DIR = Path("data/prepared")
REPORT = Path("metrics/prepare.json")
SPLITS = ("train", "val", "test")
_COMPRESSION = (".gz", ".bz2", ".xz", ".zst", ".zip")


def corpus_kind(path: Path) -> str:
    """csv, tsv, jsonl or parquet, from the file name (a compression suffix is looked through)."""
    name = path.name.lower()
    for suffix in _COMPRESSION:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    for kind, suffixes in {
        "csv": (".csv",),
        "tsv": (".tsv", ".tab"),
        "jsonl": (".jsonl", ".ndjson", ".json"),
        "parquet": (".parquet", ".pq"),
    }.items():
        if name.endswith(suffixes):
            return kind
    raise PipelineError(f"{path}: unknown corpus format (expected .csv, .tsv, .jsonl, .json or .parquet)")


def read_corpus(path: Path, text_column: str, label_column: str) -> pd.DataFrame:
    """Read the two named columns; only truly empty fields count as missing. Errors name the file."""
    kind = corpus_kind(path)
    try:
        if kind == "parquet":
            df = pd.read_parquet(path)
        elif kind == "jsonl":
            df = pd.read_json(path, lines=True, dtype=False)
        else:
            # Only empty fields are missing: 'NA', 'null' or 'nan' are text like any other.
            df = pd.read_csv(path, sep="," if kind == "csv" else "\t", dtype=str,
                             keep_default_na=False, na_values=[""])
    except (ValueError, pd.errors.ParserError, OSError, UnicodeDecodeError) as err:
        raise PipelineError(f"{path}: cannot read as {kind}: {err}") from None
    for role, column in (("text", text_column), ("label", label_column)):
        if column not in df.columns:
            raise PipelineError(
                f"{path}: no {role} column '{column}' (params corpus.{role}_column); "
                f"columns are: {', '.join(map(str, df.columns))}"
            )
    out = df[[text_column, label_column]].copy()
    out.columns = ["text", "label"]
    return out


def clean_corpus(df: pd.DataFrame, cfg: TextConfig, drop_labels: list[str], drop_duplicates: bool,
                 source: str = "corpus") -> tuple[pd.DataFrame, dict]:
    """Tokenize, drop unusable rows, and count each reason for dropping."""
    report = {"rows_read": len(df)}
    if len(df) == 0:
        raise PipelineError(f"{source}: the corpus is empty")
    label = df["label"].map(lambda v: None if pd.isna(v) else str(v).strip())
    text = df["text"].map(lambda v: "" if pd.isna(v) else str(v))
    keep = label.notna() & (label != "")
    report["dropped_missing_label"] = int((~keep).sum())
    excluded = keep & label.isin(drop_labels)
    report["dropped_excluded_label"] = int(excluded.sum())
    keep &= ~excluded
    tokens = text.map(lambda t: tokenize(t, cfg))
    empty = keep & (tokens.map(len) == 0)
    report["dropped_empty_text"] = int(empty.sum())
    keep &= ~empty
    out = pd.DataFrame({"text": text[keep], "tokens": tokens[keep], "label": label[keep]})
    if drop_duplicates:
        dup = out["text"].duplicated(keep="first")
        report["dropped_duplicate_text"] = int(dup.sum())
        out = out[~dup]
    out = out.reset_index(drop=True)
    report["rows_kept"] = len(out)
    if len(out) == 0:
        raise PipelineError(f"{source}: no usable rows left after dropping {report}")
    classes = out["label"].value_counts()
    if len(classes) < 2:
        raise PipelineError(f"{source}: only one class ({classes.index[0]!r}) left; a classifier needs two or more")
    report["class_counts"] = {str(k): int(v) for k, v in classes.sort_index().items()}
    return out, report


def split(df: pd.DataFrame, val_size: float, test_size: float, seed: int,
          source: str = "corpus") -> dict[str, pd.DataFrame]:
    """Stratified train/val/test split; every class must have enough rows to appear in each split."""
    if val_size + test_size >= 1:
        raise PipelineError("params.yaml: 'prepare.val_size' + 'prepare.test_size' must be below 1")
    counts = df["label"].value_counts()
    too_small = counts[counts < 3]
    if len(too_small):
        raise PipelineError(
            f"{source}: class {too_small.index[0]!r} has {too_small.iloc[0]} row(s); "
            "a stratified train/val/test split needs at least 3 per class"
        )
    try:
        rest, test = train_test_split(df, test_size=test_size, stratify=df["label"], random_state=seed)
        train, val = train_test_split(rest, test_size=val_size / (1 - test_size), stratify=rest["label"],
                                      random_state=seed)
    except ValueError as err:
        raise PipelineError(f"{source}: cannot split {len(df)} rows into train/val/test: {err}") from None
    return {"train": train.reset_index(drop=True), "val": val.reset_index(drop=True),
            "test": test.reset_index(drop=True)}


def find_single_file(directory: Path) -> Path:
    files = sorted(p for p in directory.iterdir() if p.is_file()) if directory.is_dir() else []
    if len(files) != 1:
        raise PipelineError(f"{directory}: expected exactly one corpus file, found {[p.name for p in files]}")
    return files[0]


def main() -> None:
    corpus, prep = P.load("corpus"), P.load("prepare")
    path = find_single_file(RAW_DIR)
    raw = read_corpus(path, corpus.text_column, corpus.label_column)
    df, report = clean_corpus(raw, TextConfig.from_params(prep), corpus.drop_labels, prep.drop_duplicates,
                              source=str(path))
    splits = split(df, prep.val_size, prep.test_size, prep.seed, source=str(path))
    with atomic_path(OUT_DIR) as tmp:
        tmp.mkdir()
        for name, part in splits.items():
            part.to_parquet(tmp / f"{name}.parquet", index=False)
    report.update({f"{name}_rows": len(part) for name, part in splits.items()})
    report["mean_tokens"] = round(float(df["tokens"].map(len).mean()), 2)
    write_json(REPORT, report)
    print(", ".join(f"{k}={v}" for k, v in report.items() if not isinstance(v, dict)))


if __name__ == "__main__":
    run_main(main)
