"""Readers of one file, for prepare (through pipeline.layouts) and for batch prediction (TableReader):
CSV, TSV (also Orange's .tab), JSON lines or Parquet, the text formats optionally compressed (known by
the file's first bytes: gzip, bz2, xz, zstd, a one-file zip); and fastText lines (`__label__pos text`).

One rule for delimited text, in the corpus and in batch prediction alike: CSV and TSV are read with the
usual quoting (a quoted field may hold the separator, a doubled quote or a line break, as pandas and
spreadsheets write them), every value as text, and only an empty field counts as missing ('NA', 'null'
and 'nan' are text). A TSV field that spans lines and tabs can only come from a stray quote that
swallowed the rows after it: that is an error naming the row, never a silent merge.

Each reader yields chunks of at most `chunk_rows` rows, so memory follows the chunk size, not the file,
whatever the data: the line-based readers (CSV, TSV, JSON lines, fastText) read through a stream that
stops at a line of more than MAX_FIELD_BYTES (a 200 MiB run of NUL bytes in a 200 KB zip is not a
document), with an error naming the file and the line, or the data row.
"""

from __future__ import annotations

import csv
import io
import itertools
import re
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from pipeline.columns import joined_text, text_columns
from pipeline.errors import PipelineError, short
from pipeline.files import READ_ERRORS, json_object_line, open_binary, open_text
from pipeline.formats import format_of, suffixes_shown

CHUNK_ROWS = 10_000   # rows read at a time
MAX_FIELD_BYTES = 10 << 20  # the longest text (a line, a field, a document file) a reader accepts
# Orange's .tab files carry two more header rows after the column names: types, then flags.
_ORANGE_TYPES = {"d", "discrete", "c", "continuous", "s", "string", "t", "time", "text", ""}
_FASTTEXT_LABEL = re.compile(r"__label__(\S+)\s?")


def corpus_kind(path: Path, fmt: str = "auto") -> str:
    """A format of pipeline.formats (csv, tsv, jsonl, parquet or fasttext): `fmt`, or from the file name (a
    compression suffix looked through; the compression itself is known by the file's first bytes)."""
    if fmt not in ("auto", "folder"):
        return fmt
    if (kind := format_of(path, "corpus")) is not None:
        return kind
    raise PipelineError(f"{path}: unknown corpus format (expected {suffixes_shown('corpus')}); name it with "
                        "corpus.format")


def input_kind(path: Path) -> str:
    """Batch prediction's input: a format of pipeline.formats it reads (csv, tsv, jsonl or parquet), from the
    file name (as corpus_kind; a compressed Parquet file is no input)."""
    kind = format_of(path, "batch_input")
    if kind is None:
        raise PipelineError(f"{path}: unknown input format: expected {suffixes_shown('batch_input')} (the text "
                            "formats may be compressed: gzip, bz2, xz, zstd)")
    return kind


def decode_error(path: Path, err: UnicodeDecodeError, encoding: str) -> PipelineError:
    line = _first_undecodable_line(path, encoding) if path.is_file() else None
    where = f"line {line}: " if line else ""
    return PipelineError(f"{path}: {where}not valid {encoding} text ({err.reason}); "
                         "set corpus.encoding (e.g. latin-1 or cp1252)")


def too_long(what: str, limit: int = MAX_FIELD_BYTES) -> str:
    """The end of the message for a field, line or document longer than `limit`."""
    return (f"{what} of more than {limit / (1 << 20):g} MiB: not text? (a longer document: split it, "
            "or raise pipeline.readers.MAX_FIELD_BYTES)")


class LineTooLong(PipelineError):
    """A line longer than the limit of a bounded_lines stream; `line` is its number (1-based)."""

    def __init__(self, path: Path, line: int, limit: int):
        self.path, self.line, self.limit = path, line, limit
        super().__init__(f"{path}: line {line}: {too_long('a line', limit)}")


class _BoundedLines(io.RawIOBase):
    """A byte stream that raises LineTooLong as soon as more than `limit` bytes come without a line
    break: what reads it (pandas' parser, a text wrapper) never holds a longer line."""

    def __init__(self, raw, path: Path, limit: int):
        self._raw, self._path, self._limit = raw, path, limit
        self._since = 0  # bytes since the last line break
        self._lines = 0  # line breaks seen

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._raw.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        first = data.find(b"\n")
        if first < 0:
            self._since += n
            if self._since > self._limit:
                raise LineTooLong(self._path, self._lines + 1, self._limit)
            return n
        if self._since + first > self._limit:
            raise LineTooLong(self._path, self._lines + 1, self._limit)
        if n > self._limit:  # a read larger than the limit may hold a whole long line
            start = first + 1
            for lineno, segment in enumerate(data[start:].split(b"\n")[:-1], self._lines + 2):
                if len(segment) > self._limit:
                    raise LineTooLong(self._path, lineno, self._limit)
        self._lines += data.count(b"\n")
        self._since = n - data.rfind(b"\n") - 1
        return n

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


def bounded_lines(path: Path, limit: int = MAX_FIELD_BYTES, prefer: tuple[str, ...] = ()) -> io.BufferedReader:
    """open_binary(path, prefer), stopping with LineTooLong at a line of more than `limit` bytes."""
    return io.BufferedReader(_BoundedLines(open_binary(path, prefer), path, limit), buffer_size=1 << 20)


def open_lines(path: Path, encoding: str, limit: int = MAX_FIELD_BYTES):
    """open_text(path), with lines bounded like bounded_lines; a UTF-8 byte-order mark at the start (Windows
    editors write one) is dropped, as pandas drops it from a CSV, not taken for part of the first line."""
    import codecs

    if codecs.lookup(encoding).name == "utf-8":
        encoding = "utf-8-sig"
    return io.TextIOWrapper(bounded_lines(path, limit), encoding=encoding, newline=None)


def _data_row_at(path: Path, line: int, sep: str, encoding: str, header: bool) -> int | None:
    """The data row (1-based) that physical line `line` of a CSV/TSV file belongs to (a quoted field can
    span lines); 0 for the header; None when the lines before it cannot be read again."""
    old = csv.field_size_limit(max(csv.field_size_limit(), MAX_FIELD_BYTES))
    try:
        with open_text(path, encoding) as f:
            lines = itertools.chain(itertools.islice(f, line - 1), ["x"])  # "x": where line `line` begins
            records = sum(1 for record in csv.reader(lines, delimiter=sep) if record)
    except (csv.Error, UnicodeDecodeError, *READ_ERRORS):
        return None
    finally:
        csv.field_size_limit(old)
    return records - (1 if header else 0)


def _iter_lines(path: Path, encoding: str, parse, chunk_rows: int) -> Iterator[tuple[list, list]]:
    """parse(line, lineno) -> (text, rest) over the non-blank lines (of fastText files), `chunk_rows` at a
    time; decoding and decompression failures become errors naming the file and line."""
    texts, rests = [], []
    lineno = 0
    try:
        with open_lines(path, encoding) as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    text, rest = parse(line, lineno)
                    texts.append(text)
                    rests.append(rest)
                    if len(texts) == chunk_rows:
                        yield texts, rests
                        texts, rests = [], []
    except UnicodeDecodeError as err:
        raise decode_error(path, err, encoding) from None
    except READ_ERRORS as err:
        raise PipelineError(f"{path}: cannot read past line {lineno} ({err}): a truncated or corrupt file?") from None
    if texts:
        yield texts, rests


def iter_fasttext(path: Path, encoding: str = "utf-8", chunk_rows: int = CHUNK_ROWS) -> Iterator[pd.DataFrame]:
    """fastText's supervised format: `__label__a [__label__b ...] text` per line; a line of several labels
    has the list of them (a multi-label corpus: pipeline.label_sets)."""

    def parse(line: str, lineno: int) -> tuple[str, str | list[str]]:
        m = _FASTTEXT_LABEL.match(line.lstrip())
        if not m:
            raise PipelineError(f"{path}: line {lineno}: expected '__label__<label> <text>', got {line[:60]!r}")
        rest, labels = line.lstrip()[m.end():], [m.group(1)]
        while (more := _FASTTEXT_LABEL.match(rest)):  # further labels of multi-label lines
            rest = rest[more.end():]
            labels.append(more.group(1))
        return rest.strip(), labels[0] if len(labels) == 1 else labels

    for texts, labels in _iter_lines(path, encoding, parse, chunk_rows):
        yield pd.DataFrame({"text": texts, "label": labels})


def jsonl_rows(path: Path, encoding: str, keep_blank: bool = False) -> Iterator[tuple[int, dict]]:
    """The one reader of JSON lines (the corpus's, iter_jsonl; batch prediction's, pipeline.tables): (line
    number, object) for each non-blank line, and {} for a blank one when `keep_blank`. A line that is not
    a JSON object, or a truncated or corrupt file, is an error naming the line; a UnicodeDecodeError is
    left to the caller, who knows the setting to name."""
    lineno = 0
    try:
        with open_lines(path, encoding) as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    if keep_blank:
                        yield lineno, {}
                    continue
                yield lineno, json_object_line(line, path, lineno)
    except READ_ERRORS as err:
        raise PipelineError(f"{path}: cannot read past line {lineno} ({err}): a truncated or corrupt file?") from None


def iter_jsonl(path: Path, text_column: str | list[str], label_column: str, split_column: str | None,
               encoding: str = "utf-8", chunk_rows: int = CHUNK_ROWS) -> Iterator[pd.DataFrame]:
    """JSON lines (jsonl_rows), one object per line, as frames of text, label (and split). A label is a
    string or a number, or an array of them (a multi-label corpus: pipeline.label_sets). A field a line
    lacks is a missing value, as JSON writers leave nulls out (a row without a label is dropped, counted);
    a field no line of the first chunk has is an error naming it (a typo in params.yaml)."""
    texts = text_columns(text_column)
    columns = [c for c in (*texts, label_column, split_column) if c]
    role_of = {**{c: "text" for c in texts}, label_column: "label", **({split_column: "split"} if split_column else {})}
    seen: set[str] = set()

    def parse(row: dict, lineno: int):
        seen.update(c for c in columns if c in row)
        for column in texts:
            text = row.get(column)
            if text is not None and not isinstance(text, str):
                raise PipelineError(f"{path}: line {lineno}: text field '{column}' holds "
                                    f"{type(text).__name__} {short(text)}, not text")
        label = row.get(label_column)
        if isinstance(label, list) and any(isinstance(item, (list, dict)) for item in label):
            raise PipelineError(f"{path}: line {lineno}: label field '{label_column}' holds a JSON array holding "
                                f"an array or object {short(label)}; a label is a string or number")
        for role, column in (("label", label_column), ("split", split_column)):
            value = row.get(column) if column else None
            if isinstance(value, dict) or (role == "split" and isinstance(value, list)):
                raise PipelineError(f"{path}: line {lineno}: {role} field '{column}' holds a JSON "
                                    f"{'array' if isinstance(value, list) else 'object'} {short(value)}; "
                                    f"a {role} is one string or number{' (or an array of them)' * (role == 'label')}")
        text = row.get(texts[0]) if len(texts) == 1 else joined_text(row.get(c) for c in texts)
        return [text, label] + ([row.get(split_column)] if split_column else [])

    def check_fields(first: dict) -> None:
        missing = [c for c in columns if c not in seen]
        if missing:
            raise PipelineError(f"{path}: none of the first {chunk_rows:,} lines has a {role_of[missing[0]]} field "
                                f"'{missing[0]}' (params "
                                f"corpus.{role_of[missing[0]]}_column); fields are: {', '.join(first)}")

    def frame(values: list[list]) -> pd.DataFrame:
        roles = ("text", "label", "split")[:2 + bool(split_column)]
        return pd.DataFrame({role: [v[i] for v in values] for i, role in enumerate(roles)})

    values, first, checked = [], None, False
    try:
        for lineno, row in jsonl_rows(path, encoding):
            first = row if first is None else first
            values.append(parse(row, lineno))
            if len(values) == chunk_rows:
                if not checked:
                    check_fields(first)
                    checked = True
                yield frame(values)
                values = []
    except UnicodeDecodeError as err:
        raise decode_error(path, err, encoding) from None
    if values and not checked:
        check_fields(first)
    if values:
        yield frame(values)


def _first_undecodable_line(path: Path, encoding: str) -> int | None:
    """The number of the first line that does not decode (text readers decode whole blocks, so the
    error they raise knows no line)."""
    with bounded_lines(path) as f:
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


def _check_columns(path: Path, columns, wanted: list[tuple[str, str]]) -> None:
    for role, column in wanted:
        if column not in columns:
            raise PipelineError(
                f"{path}: no {role} column '{column}' (params corpus.{role}_column); "
                f"columns are: {', '.join(map(str, columns))}"
            )


def _leading_blank_lines(path: Path, encoding: str) -> int:
    lines = 0
    with open_lines(path, encoding) as f:
        for line in f:
            if line.strip():
                break
            lines += 1
    return lines


def _check_unique_header(path: Path, sep: str, encoding: str) -> None:
    """Two columns of one name: pandas renames the second `NAME.1` without a word, so the text or the
    label read could be either column. An error naming the name and both positions."""
    with open_lines(path, encoding) as f:
        names = next((row for row in csv.reader(f, delimiter=sep) if row), [])
    if names:
        names[0] = names[0].removeprefix("\ufeff")
    seen: dict[str, int] = {}
    for position, name in enumerate(names, 1):
        if not name.strip():  # unnamed columns (a spreadsheet's trailing commas): pandas names them apart
            continue
        if name in seen:
            raise PipelineError(f"{path}: line 1 (the header): the column name {name!r} is given twice (columns "
                                f"{seen[name]} and {position}); rename one, so that it is clear which is read")
        seen[name] = position


def delimited_chunks(path: Path, kind: str, encoding: str = "utf-8", header: bool = True,
                     chunk_rows: int = CHUNK_ROWS, check=None, keep_blank_lines: bool = False) -> Iterator[pd.DataFrame]:
    """A CSV or TSV file (kind csv or tsv) as frames of text values, under the one rule of this module's
    docstring; `check(columns)` sees the column names before any row is yielded. Without a header the
    columns are named 0, 1, 2, ... `keep_blank_lines`: each blank line after the header (or after the
    blank lines that open the file) is a row of missing values, so that row i is data line i (batch
    prediction); otherwise blank lines are no rows (the corpus)."""
    # Only empty fields are missing: 'NA', 'null' or 'nan' are text like any other.
    sep = "," if kind == "csv" else "\t"
    skip = _leading_blank_lines(path, encoding) if keep_blank_lines else 0
    try:
        if header:
            _check_unique_header(path, sep, encoding)
        with bounded_lines(path) as raw, pd.read_csv(
                raw, sep=sep, dtype=str, keep_default_na=False, na_values=[""], skip_blank_lines=not keep_blank_lines,
                skiprows=skip or None,
                encoding=encoding, header=0 if header else None, chunksize=chunk_rows, compression=None) as reader:
            rows = 0
            for df in reader:
                if not header:
                    df.columns = [str(c) for c in df.columns]
                if rows == 0:
                    if check is not None:
                        check(df.columns)
                    if kind == "tsv" and header:
                        df = df.iloc[_orange_extra_header(path, df):]
                if kind == "tsv" and (row := _swallowed_rows(df, "\t")) is not None:
                    raise PipelineError(
                        f"{path}: data row {rows + row}: a field runs over several lines and tabs, so a quote opened "
                        "there (a stray '\"'?) swallowed the rows after it; quote or remove it")
                rows += len(df)
                yield df
    except LineTooLong as err:
        row = _data_row_at(path, err.line, sep, encoding, header)
        where = (f"line {err.line}" if row is None else "line 1 (the header)" if row < 1
                 else f"data row {row} (line {err.line})")
        raise PipelineError(f"{path}: {where}: {too_long('a line', err.limit)}") from None


def _parquet_chunks(path: Path, wanted, chunk_rows: int) -> Iterator[pd.DataFrame]:
    with pq.ParquetFile(path) as f:
        _check_columns(path, f.schema_arrow.names, wanted)
        for batch in f.iter_batches(batch_size=chunk_rows, columns=list(dict.fromkeys(c for _, c in wanted))):
            yield batch.to_pandas()


def iter_table(path: Path, kind: str, text_column: str, label_column: str, split_column: str | None = None,
               encoding: str = "utf-8", header: bool = True, chunk_rows: int = CHUNK_ROWS) -> Iterator[pd.DataFrame]:
    """The text, label (and split) columns of one table, as frames of at most `chunk_rows` rows named
    text, label (and split); only truly empty fields count as missing."""
    if kind == "fasttext":
        yield from iter_fasttext(path, encoding, chunk_rows)
        return
    if kind == "jsonl":
        yield from iter_jsonl(path, text_column, label_column, split_column, encoding, chunk_rows)
        return
    texts = text_columns(text_column)
    wanted = [("text", c) for c in texts] + [("label", label_column)] + ([("split", split_column)] if split_column else [])
    chunks = (_parquet_chunks(path, wanted, chunk_rows) if kind == "parquet"
              else delimited_chunks(path, kind, encoding, header, chunk_rows,
                                    check=lambda columns: _check_columns(path, columns, wanted)))
    try:
        for df in chunks:
            for column in texts:
                text = df[column]
                if kind == "parquet" and not (text.dtype == object or pd.api.types.is_string_dtype(text)):
                    raise PipelineError(f"{path}: text column '{column}' holds {text.dtype} values, not text")
            frame = {role: df[column].to_numpy() for role, column in wanted[len(texts) - 1:]}
            if len(texts) > 1:  # several columns: one text, their values joined (pipeline.columns)
                frame["text"] = np.array([joined_text(parts) for parts in zip(*(df[c] for c in texts))], dtype=object)
            yield pd.DataFrame(frame)
    except UnicodeDecodeError as err:
        raise decode_error(path, err, encoding) from None
    except (ValueError, pd.errors.ParserError, *READ_ERRORS) as err:
        raise PipelineError(f"{path}: cannot read as {kind}: {err}") from None
