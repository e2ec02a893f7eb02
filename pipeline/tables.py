"""Whole tables for batch prediction: every column of a CSV, TSV, JSON-lines or Parquet file, with its
schema known before any row is read, in chunks. Delimited text follows the one rule of pipeline.readers.

Row i of a table is data line i of its file: a blank line of a CSV or TSV file (after the header) or of
a JSON-lines file is a row whose values are all missing, never dropped (so predictions line up with the
input); blank lines before a CSV's header are not rows, and a file of blank lines only has no rows."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import PipelineError
from pipeline.files import READ_ERRORS, check_encoding, json_text
from pipeline.readers import bounded_lines, delimited_chunks, input_kind, jsonl_rows


def _no_rows(path: Path) -> PipelineError:
    return PipelineError(f"{path}: the file has no rows (it is empty, or holds only blank lines)")


class TableReader:
    """The schema of a table file (known before any row is read) and its rows as Arrow tables of at most
    `chunk_rows` rows. Use it as a context manager: a Parquet file is opened once and closed on exit."""

    def __init__(self, path: Path, chunk_rows: int, encoding: str = "utf-8"):
        self.path, self.chunk_rows = path, chunk_rows
        self.encoding = check_encoding(encoding, "encoding")
        self.kind = input_kind(path)
        self._parquet = None
        if path.is_dir():
            raise PipelineError(f"{path}: is a folder, not an input file: name one file (batch prediction reads one)")
        if not path.is_file():
            raise PipelineError(f"{path}: no such input file (looked for {path.resolve()})")
        with self._read_errors():
            self.schema = self._read_schema()

    def __enter__(self) -> "TableReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._parquet is not None:
            self._parquet.close()
            self._parquet = None

    @contextlib.contextmanager
    def _read_errors(self):
        """The readers' own errors (pandas, pyarrow, decoding, decompression) as one line naming the file."""
        try:
            yield
        except UnicodeDecodeError as err:
            raise PipelineError(f"{self.path}: not valid {self.encoding} text ({err.reason}); "
                                "pass the file's encoding (--encoding, or predict.encoding)") from None
        except (ValueError, pa.ArrowException, *READ_ERRORS) as err:
            raise PipelineError(f"{self.path}: cannot read as {self.kind}: {err}") from None

    def _read_schema(self) -> pa.Schema:
        if self.kind == "parquet":
            self._parquet = pq.ParquetFile(self.path)
            return self._parquet.schema_arrow
        if self.kind == "jsonl":
            return jsonl_schema(self.path, self.encoding)
        try:
            with bounded_lines(self.path) as raw:
                header = pd.read_csv(raw, nrows=0, sep="," if self.kind == "csv" else "\t", encoding=self.encoding,
                                     compression=None)
        except pd.errors.EmptyDataError:
            raise _no_rows(self.path) from None
        return pa.schema([(str(c), pa.string()) for c in header.columns])

    def chunks(self) -> Iterator[pa.Table]:
        read = {"parquet": self._parquet_chunks, "jsonl": self._jsonl_chunks}.get(self.kind, self._csv_chunks)
        with self._read_errors():
            yield from read()

    def _parquet_chunks(self) -> Iterator[pa.Table]:
        if self._parquet is None:
            raise PipelineError(f"{self.path}: the reader is closed")
        for batch in self._parquet.iter_batches(batch_size=self.chunk_rows):
            yield pa.Table.from_batches([batch])

    def _csv_chunks(self) -> Iterator[pa.Table]:
        # Every line after the header is a row, a blank one too: output row i is input row i.
        for df in delimited_chunks(self.path, self.kind, self.encoding, chunk_rows=self.chunk_rows,
                                   keep_blank_lines=True):
            yield pa.Table.from_pandas(df, self.schema, preserve_index=False)

    def _jsonl_chunks(self) -> Iterator[pa.Table]:
        names = self.schema.names
        as_json = {f.name for f in self.schema if f.metadata and f.metadata.get(b"json") == b"1"}
        rows: list[dict] = []
        for _, row in jsonl_rows(self.path, self.encoding, keep_blank=True):  # a blank line: a row of nulls
            rows.append({k: (json_text(row.get(k)) if k in as_json else row.get(k)) for k in names})
            if len(rows) == self.chunk_rows:
                yield pa.Table.from_pylist(rows, self.schema)
                rows = []
        if rows:
            yield pa.Table.from_pylist(rows, self.schema)


def _json_kind(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int" if -2**63 <= value < 2**63 else "json"
    if isinstance(value, float):
        return "float"
    return "str" if isinstance(value, str) else "json"


def jsonl_schema(path: Path, encoding: str = "utf-8") -> pa.Schema:
    """One pass over a JSON-lines file: each key, in order of first appearance, typed by all its values.

    Mixed kinds (or lists and objects) make a string column of JSON text, marked in the field metadata."""
    kinds: dict[str, set] = {}
    rows = 0
    for _, row in jsonl_rows(path, encoding):
        rows += 1
        for key, value in row.items():
            kind = _json_kind(value)
            kinds.setdefault(key, set()).update([kind] if kind else [])
    if not rows:
        raise _no_rows(path)
    fields = []
    for key, seen in kinds.items():
        if seen <= {"int", "float"} and "float" in seen:
            seen = {"float"}
        if len(seen) <= 1 and "json" not in seen:
            arrow_type = {"bool": pa.bool_(), "int": pa.int64(), "float": pa.float64()}.get(next(iter(seen), "str"),
                                                                                           pa.string())
            fields.append(pa.field(key, arrow_type))
        else:
            fields.append(pa.field(key, pa.string(), metadata={"json": "1"}))
    return pa.schema(fields)
