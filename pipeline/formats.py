"""The one registry of the file formats the pipeline reads and writes: each format's name (what
`corpus.format` names, and what the readers dispatch on), the suffixes that name it, and who reads or
writes it: the prepare stage (pipeline.readers, through pipeline.layouts), batch prediction's input
(pipeline.tables) and its output (pipeline.batch_predict). The text formats may be compressed (known by
the file's first bytes; a compression suffix in the name is looked through); Parquet is compressed inside.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".zip")


@dataclass(frozen=True)
class Format:
    suffixes: tuple[str, ...]               # names read as this format
    corpus: bool = True                     # the prepare stage reads it (pipeline.readers.iter_table)
    batch_input: bool = True                # batch prediction reads it (pipeline.tables.TableReader)
    output_suffixes: tuple[str, ...] = ()   # batch prediction writes it under these names
    compressible: bool = True               # may be compressed as a whole (gzip, bz2, xz, zstd, a one-file zip)


FORMATS = {
    "csv": Format((".csv",), output_suffixes=(".csv",)),
    "tsv": Format((".tsv", ".tab"), output_suffixes=(".tsv",)),  # .tab: Orange's
    "jsonl": Format((".jsonl", ".ndjson", ".json"), output_suffixes=(".jsonl", ".ndjson")),
    "parquet": Format((".parquet", ".pq"), output_suffixes=(".parquet", ".pq"), compressible=False),
    "fasttext": Format((".txt", ".ft", ".fasttext"), batch_input=False),  # `__label__x text` lines
}


def strip_compression(name: str) -> str:
    """The name, lowercased, without a compression suffix."""
    name = name.lower()
    for suffix in COMPRESSION_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def format_of(path: Path, use: str) -> str | None:
    """The format a file's name announces among those read for `use` (corpus, batch_input); None if none.
    A compression suffix is looked through for the formats that may be compressed."""
    lower, name = path.name.lower(), strip_compression(path.name)
    for kind, f in FORMATS.items():
        if getattr(f, use) and name.endswith(f.suffixes) and (f.compressible or name == lower or use == "corpus"):
            return kind
    return None


def output_format(path: Path) -> str | None:
    """The format batch prediction writes to a path of this name; None if none."""
    suffix = path.suffix.lower()
    return next((kind for kind, f in FORMATS.items() if suffix in f.output_suffixes), None)


def suffixes_shown(use: str) -> str:
    """The suffixes of `use` (corpus, batch_input: read; output_suffixes: written), for an error message."""
    if use == "output_suffixes":
        return ", ".join(s for f in FORMATS.values() for s in f.output_suffixes)
    return ", ".join(s for f in FORMATS.values() if getattr(f, use) for s in f.suffixes)
