"""Batch prediction over a table of texts, with the probability of each class.

    python -m pipeline.predict --input reviews.csv --text-column text --output predictions.parquet
    python -m pipeline.predict_batch          # the DVC stage `predict`: the same, set by params.yaml `predict`

Reads a CSV, TSV, JSON-lines or Parquet file (CSV, TSV and JSON lines may be .gz, .bz2 or .xz) and
writes .parquet, .csv, .tsv or .jsonl: every column of the input, in its order, then `predicted_label`
and one `prob_<label>` column per class (the model's softmax; each row's probabilities sum to 1).
Rows whose text is missing, empty or only blanks keep their place, with an empty (null) label and
empty probabilities.

The file is read, classified and written `chunk_rows` rows at a time, so memory does not grow with its
size (a Parquet file is read one row group at a time, at most chunk_rows rows of it per chunk). The
output is written beside its target and renamed into place at the end (atomic_path): a failed
run never leaves a half-written predictions file.

Column types: a Parquet input keeps its own schema. CSV and TSV columns are carried as text, as the
prepare stage reads them (only an empty field is missing: 'NA' and 'null' are text). JSON-lines columns
get the type of their values over the whole file (a first pass reads it): all booleans, all integers,
numbers, or strings; a column whose values mix those kinds, or hold lists or objects, is carried as
each value's JSON text.

TSV is read without quoting (csv.QUOTE_NONE): each line is one row and a `"` is part of the text, as
in most TSV corpora (TSV has no quoting convention). So a stray quote cannot swallow the rows after
it, and every input row keeps its place; a field cannot hold a tab or a line break. (CSV is read with
its usual quoting, so a quoted field may span lines.)

Output values: JSON lines hold valid JSON only: a NaN or infinite number is written as null. Binary
columns (Parquet `binary`) are written as base64 text to JSON lines, CSV and TSV, whose values are
text; Parquet keeps them binary. A value that an output format cannot hold is an error naming the
output file and the column.

An input without any row (an empty file, or JSON lines with only blank lines) is an error saying so.
"""

from __future__ import annotations

import base64
import codecs
import contextlib
import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa

from pipeline.common import READ_ERRORS, PipelineError, atomic_path, check_output_file, json_object_line, run_main
from pipeline.inference import Checkpoint, classify_texts

LABEL_COLUMN = "predicted_label"
PROB_PREFIX = "prob_"
_COMPRESSION = (".gz", ".bz2", ".xz")
INPUT_KINDS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl",
               ".json": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
OUTPUT_KINDS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl",
                ".ndjson": "jsonl"}


@dataclass(frozen=True)
class BatchSummary:
    rows: int
    rows_without_text: int
    chunks: int


def input_kind(path: Path) -> str:
    """csv, tsv, jsonl or parquet, from the file name (a compression suffix looked through)."""
    name = path.name.lower()
    for suffix in _COMPRESSION:
        name = name.removesuffix(suffix)
    kind = INPUT_KINDS.get(Path(name).suffix)
    if kind is None or (kind == "parquet" and name != path.name.lower()):
        raise PipelineError(f"{path}: unknown input format: expected .csv, .tsv, .jsonl (or .json lines) or "
                            ".parquet (the text formats may be .gz, .bz2 or .xz)")
    return kind


def output_kind(path: Path) -> str:
    kind = OUTPUT_KINDS.get(path.suffix.lower())
    if kind is None:
        raise PipelineError(f"{path}: unknown output format: name it .parquet, .csv, .tsv or .jsonl")
    return kind


def output_columns(labels: list[str]) -> list[str]:
    return [LABEL_COLUMN] + [f"{PROB_PREFIX}{label}" for label in labels]


# --- reading, chunk by chunk --------------------------------------------------------------------


def check_encoding(encoding: str, where: str) -> str:
    """`encoding` if Python knows it; else an error naming `where` it was given (an option or a key)."""
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise PipelineError(f"{where}: unknown text encoding {encoding!r} (e.g. utf-8, latin-1, cp1252)") from None
    return encoding


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
            import pyarrow.parquet as pq

            self._parquet = pq.ParquetFile(self.path)
            return self._parquet.schema_arrow
        if self.kind == "jsonl":
            return jsonl_schema(self.path, self.encoding)
        import pandas as pd

        try:
            header = pd.read_csv(self.path, nrows=0, **self._csv_options)
        except pd.errors.EmptyDataError:
            raise _no_rows(self.path) from None
        return pa.schema([(str(c), pa.string()) for c in header.columns])

    @property
    def _csv_options(self) -> dict:
        if self.kind == "csv":
            return {"sep": ",", "encoding": self.encoding}
        return {"sep": "\t", "encoding": self.encoding, "quoting": csv.QUOTE_NONE}

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
        import pandas as pd

        # Only empty fields are missing, as in the prepare stage: 'NA', 'null' or 'nan' are text.
        reader = pd.read_csv(self.path, dtype=str, keep_default_na=False, na_values=[""],
                             chunksize=self.chunk_rows, **self._csv_options)
        with reader:
            for df in reader:
                yield pa.Table.from_pandas(df, self.schema, preserve_index=False)

    def _jsonl_chunks(self) -> Iterator[pa.Table]:
        names = self.schema.names
        as_json = {f.name for f in self.schema if f.metadata and f.metadata.get(b"json") == b"1"}
        rows: list[dict] = []
        for _, row in _jsonl_rows(self.path, self.encoding):
            rows.append({k: (_json_text(row.get(k)) if k in as_json else row.get(k)) for k in names})
            if len(rows) == self.chunk_rows:
                yield pa.Table.from_pylist(rows, self.schema)
                rows = []
        if rows:
            yield pa.Table.from_pylist(rows, self.schema)


def _jsonl_rows(path: Path, encoding: str) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line; a line that is not a JSON object is an error."""
    from pipeline.prepare import open_text  # decompresses by suffix, as the prepare stage reads corpora

    lineno = 0
    try:
        with open_text(path, encoding) as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                yield lineno, json_object_line(line, path, lineno)
    except READ_ERRORS as err:
        raise PipelineError(f"{path}: cannot read past line {lineno} ({err}): a truncated or corrupt file?") from None


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


def _json_safe(value):
    """`value` as JSON can hold it: NaN and infinities as None, bytes as base64 text, in nested values too."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, dict):
        return {key: _json_safe(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _json_dumps(value) -> str:
    """Valid JSON (never NaN); values JSON has no type for (dates, decimals) as their text."""
    return json.dumps(_json_safe(value), ensure_ascii=False, allow_nan=False, default=str)


def _json_text(value):
    return None if value is None else _json_dumps(value)


def jsonl_schema(path: Path, encoding: str = "utf-8") -> pa.Schema:
    """One pass over a JSON-lines file: each key, in order of first appearance, typed by all its values.

    Mixed kinds (or lists and objects) make a string column of JSON text, marked in the field metadata."""
    kinds: dict[str, set] = {}
    rows = 0
    for _, row in _jsonl_rows(path, encoding):
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


# --- classifying and writing --------------------------------------------------------------------


def check_columns(schema: pa.Schema, text_column: str, labels: list[str], path: Path) -> None:
    if text_column not in schema.names:
        raise PipelineError(f"{path}: no text column '{text_column}' (name it with --text-column, or "
                            f"predict.text_column); columns are: {', '.join(schema.names) or '(none)'}")
    text_field = schema.field(text_column)
    if text_field.metadata and text_field.metadata.get(b"json") == b"1":
        raise PipelineError(f"{path}: text column '{text_column}' holds values that are not all text "
                            "(numbers, booleans, lists or objects)")
    text_type = text_field.type
    if pa.types.is_dictionary(text_type):  # pandas' categorical columns
        text_type = text_type.value_type
    if not (pa.types.is_string(text_type) or pa.types.is_large_string(text_type) or pa.types.is_null(text_type)
            or getattr(pa.types, "is_string_view", bool)(text_type)):
        raise PipelineError(f"{path}: text column '{text_column}' holds {text_type} values, not text")
    clash = [c for c in output_columns(labels) if c in schema.names]
    if clash:
        raise PipelineError(f"{path}: the input already has a column '{clash[0]}', which the predictions "
                            "would overwrite; rename or drop it (is this a predictions file?)")


def output_schema(schema: pa.Schema, labels: list[str]) -> pa.Schema:
    kept = [pa.field(f.name, f.type, f.nullable) for f in schema]  # without the readers' metadata
    added = [pa.field(LABEL_COLUMN, pa.string())] + [pa.field(f"{PROB_PREFIX}{lab}", pa.float32()) for lab in labels]
    return pa.schema(kept + added)


def predict_table(ckpt: Checkpoint, table: pa.Table, text_column: str, batch_size: int = 256) -> pa.Table:
    """The table with predicted_label and prob_<label> columns added; rows without text get nulls."""
    texts = table.column(text_column).to_pylist()
    has_text = np.array([isinstance(t, str) and bool(t.strip()) for t in texts], dtype=bool)
    probs = np.zeros((len(texts), len(ckpt.labels)), dtype=np.float32)
    if has_text.any():
        probs[has_text] = classify_texts(ckpt, [t for t, ok in zip(texts, has_text) if ok], batch_size)
    missing = ~has_text
    best = probs.argmax(axis=1)
    label = pa.array([ckpt.labels[b] if ok else None for b, ok in zip(best, has_text)], pa.string())
    columns = {LABEL_COLUMN: label}
    for k, name in enumerate(ckpt.labels):
        columns[f"{PROB_PREFIX}{name}"] = pa.array(probs[:, k], pa.float32(), mask=missing)
    out = table
    for name, column in columns.items():
        out = out.append_column(name, column)
    return out


def _is_binary(arrow_type: pa.DataType) -> bool:
    return (pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type)
            or pa.types.is_fixed_size_binary(arrow_type) or getattr(pa.types, "is_binary_view", bool)(arrow_type))


def _as_text_table(table: pa.Table) -> pa.Table:
    """Nested columns (lists, structs, maps) as JSON text and binary columns as base64 text, for the CSV
    and TSV writers, which take only flat text values."""
    for i, field in enumerate(table.schema):
        kind = field.type.value_type if pa.types.is_dictionary(field.type) else field.type
        if pa.types.is_nested(kind):
            text = pa.array([_json_text(v) for v in table.column(i).to_pylist()], pa.string())
        elif _is_binary(kind):
            text = pa.array([_json_safe(v) for v in table.column(i).to_pylist()], pa.string())
        elif getattr(pa.types, "is_string_view", bool)(kind):
            text = table.column(i).cast(pa.string())
        else:
            continue
        table = table.set_column(i, pa.field(field.name, pa.string()), text)
    return table


def _with_short_floats(table: pa.Table) -> pa.Table:
    """float32 columns as the float64 of their shortest decimal form, so JSON says 0.99999857 rather
    than 0.9999985694885254 (the same float32 either way)."""
    for i, field in enumerate(table.schema):
        if pa.types.is_float32(field.type):
            values = [None if v is None else float(str(np.float32(v))) for v in table.column(i).to_pylist()]
            table = table.set_column(i, pa.field(field.name, pa.float64()), pa.array(values, pa.float64()))
    return table


def _json_lines(table: pa.Table) -> Iterator[str]:
    for row in _with_short_floats(table).to_pylist():
        yield _json_dumps(row) + "\n"


def _csv_write_options(kind: str):
    import pyarrow.csv as pcsv

    return pcsv.WriteOptions(delimiter="," if kind == "csv" else "\t", quoting_style="needed")


def _write_to_memory(kind: str, table: pa.Table) -> None:
    """Write `table` as `kind` into memory: what TableWriter does, to find the column it cannot write."""
    if kind == "jsonl":
        for _ in _json_lines(table):
            pass
    elif kind == "parquet":
        import pyarrow.parquet as pq

        pq.write_table(table, pa.BufferOutputStream())
    else:
        import pyarrow.csv as pcsv

        pcsv.write_csv(_as_text_table(table), pa.BufferOutputStream(), write_options=_csv_write_options(kind))


def _failing_column(kind: str, table: pa.Table) -> str | None:
    for name in table.column_names:
        try:
            _write_to_memory(kind, table.select([name]))
        except Exception:
            return name
    return None


class TableWriter:
    """Writes Arrow tables, one after another, to .parquet, .csv, .tsv or .jsonl. `name`: the path errors
    name (the final output, when `path` is the temporary file beside it)."""

    def __init__(self, path: Path, kind: str, schema: pa.Schema, name: Path | None = None):
        self.kind, self.name = kind, Path(name or path)
        self._writer = None
        self._file = None
        with self._write_errors(schema.empty_table()):
            if kind == "parquet":
                import pyarrow.parquet as pq

                self._writer = pq.ParquetWriter(path, schema)
            elif kind == "jsonl":
                self._file = open(path, "w", encoding="utf-8", newline="\n")
            else:
                import pyarrow.csv as pcsv

                self._writer = pcsv.CSVWriter(path, _as_text_table(schema.empty_table()).schema,
                                              write_options=_csv_write_options(kind))

    @contextlib.contextmanager
    def _write_errors(self, table: pa.Table):
        """The writers' errors as one line naming the output file and, where one is to blame, the column."""
        try:
            yield
        except (pa.ArrowException, TypeError, ValueError, OSError) as err:
            column = None if isinstance(err, OSError) and not isinstance(err, pa.ArrowException) \
                else _failing_column(self.kind, table)
            what = f"column '{column}' ({table.schema.field(column).type})" if column else "the predictions"
            raise PipelineError(f"{self.name}: cannot write {what} as {self.kind}: {err}") from None

    def write(self, table: pa.Table) -> None:
        with self._write_errors(table):
            if self.kind == "jsonl":
                self._file.writelines(_json_lines(table))
            elif self.kind == "parquet":
                self._writer.write_table(table)
            else:
                self._writer.write_table(_as_text_table(table))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._file is not None:
            self._file.close()


def predict_file(ckpt: Checkpoint, input_path: Path, output_path: Path, text_column: str = "text",
                 batch_size: int = 256, chunk_rows: int = 10_000, encoding: str = "utf-8") -> BatchSummary:
    """Classify every row of `input_path` and write it, with its predictions, to `output_path` (atomically)."""
    input_path, output_path = Path(input_path), Path(output_path)
    kind = output_kind(output_path)
    check_output_file(output_path, input_path)
    with TableReader(input_path, chunk_rows, encoding) as reader:
        return _predict_chunks(ckpt, reader, output_path, kind, text_column, batch_size)


def _predict_chunks(ckpt: Checkpoint, reader: TableReader, output_path: Path, kind: str, text_column: str,
                    batch_size: int) -> BatchSummary:
    check_columns(reader.schema, text_column, ckpt.labels, reader.path)
    schema = output_schema(reader.schema, ckpt.labels)
    rows = without_text = chunks = 0
    with atomic_path(output_path) as tmp:
        writer = TableWriter(tmp, kind, schema, output_path)
        try:
            for table in reader.chunks():
                out = predict_table(ckpt, table, text_column, batch_size).cast(schema)
                writer.write(out)
                rows += out.num_rows
                without_text += out.column(LABEL_COLUMN).null_count
                chunks += 1
        finally:
            writer.close()
    return BatchSummary(rows, without_text, chunks)


def describe(summary: BatchSummary, output_path: Path) -> str:
    skipped = f" ({summary.rows_without_text} without text: no prediction)" if summary.rows_without_text else ""
    return f"wrote {summary.rows} rows{skipped} to {output_path}"


def main() -> None:
    """The DVC stage `predict` (it runs on every `dvc repro`): params.yaml `predict` names the input and
    the output."""
    from pipeline import params as P
    from pipeline.inference import MODEL_PATH, load_checkpoint

    pp = P.load("predict")
    summary = predict_file(load_checkpoint(MODEL_PATH), Path(pp.input), Path(pp.output), pp.text_column,
                           pp.batch_size, pp.chunk_rows, pp.encoding)
    print(describe(summary, Path(pp.output)))


if __name__ == "__main__":
    run_main(main)
