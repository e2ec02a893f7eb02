"""Batch prediction over a table of texts, with the probability of each class.

    textclf-predict --input reviews.csv --text-column text --output predictions.parquet
    python -m pipeline.stages.predict          # the DVC stage `predict`: the same, set by params.yaml `predict`

Reads a CSV, TSV, JSON-lines or Parquet file (pipeline.tables.TableReader; the text formats may be
compressed) and
writes .parquet, .csv, .tsv or .jsonl: every column of the input, in its order, then `predicted_label`
and one `prob_<label>` column per class (the model's calibrated softmax; each row's probabilities sum to 1).
Row i of the output is row i of the input, always: a row whose text is missing, empty or only blanks
(a blank line of a CSV, TSV or JSON-lines file is such a row), or has no tokens after the pipeline's
own cleaning (markup, a link, invisible characters only: pipeline.inference), keeps its place with an
empty (null) label, empty probabilities, and the reason in `no_label_reason` (null where a label was
given); both kinds are counted in the summary. With a minimum confidence (predict.min_confidence,
--min-confidence), a row whose top probability is below it gets a null label too, its probabilities,
and an "uncertain: ..." reason (counted as uncertain).

A multi-label model (pipeline.tasks.MultiLabel) writes `predicted_labels` instead of `predicted_label`:
each row's set of labels, those whose probability reaches their threshold, in the order of the model's
labels; possibly none. In Parquet it is a list<string> column and in JSON lines a list (`[]` for no label,
null where the row has no answer: no text, no tokens, uncertain); CSV and TSV hold flat text, so there the
labels are joined by `|` ("film|pos"), an empty field for both no label and no answer (no_label_reason
tells them apart). A label that holds `|` could not be read back from CSV or TSV: such a model's
predictions are refused there (write .parquet or .jsonl). The prob_<label> columns are each label's own
sigmoid probability (they do not sum to 1). Under a minimum confidence, a row is uncertain when any of its
label decisions is less sure than it (pipeline.inference).

The file is read, classified and written `chunk_rows` rows at a time, so memory does not grow with its
size (a Parquet file is read one row group at a time, at most chunk_rows rows of it per chunk). The
output is written beside its target and renamed into place at the end (atomic_path): a failed
run never leaves a half-written predictions file.

Column types: a Parquet input keeps its own schema. CSV and TSV columns are carried as text, as the
prepare stage reads them (only an empty field is missing: 'NA' and 'null' are text). JSON-lines columns
get the type of their values over the whole file (a first pass reads it): all booleans, all integers,
numbers, or strings; a column whose values mix those kinds, or hold lists or objects, is carried as
each value's JSON text.

CSV and TSV are read under the one rule of pipeline.readers, as the prepare stage reads them: the usual
quoting, and a stray quote that would swallow the rows after it is an error naming the row.

Output values: JSON lines hold valid JSON only: a NaN or infinite number is written as null. Binary
columns (Parquet `binary`) are written as base64 text to JSON lines, CSV and TSV, whose values are
text; Parquet keeps them binary. A value that an output format cannot hold is an error naming the
output file and the column.

An input without any row (an empty file, or JSON lines with only blank lines) is an error saying so.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa

from pipeline.checkpoint import Checkpoint
from pipeline.errors import PipelineError
from pipeline.files import atomic_path, check_output_file, json_dumps, json_safe, json_text
from pipeline.formats import output_format, suffixes_shown
from pipeline.inference import NO_TEXT, NO_TOKENS, predict_texts
from pipeline.tables import TableReader

LABEL_COLUMN = "predicted_label"
LABELS_COLUMN = "predicted_labels"  # a multi-label model's (module doc)
LABELS_SEPARATOR = "|"              # its labels joined, in CSV and TSV
PROB_PREFIX = "prob_"
REASON_COLUMN = "no_label_reason"


@dataclass(frozen=True)
class BatchSummary:
    rows: int
    rows_without_text: int
    chunks: int
    rows_without_tokens: int = 0
    rows_uncertain: int = 0


def output_kind(path: Path) -> str:
    kind = output_format(path)
    if kind is None:
        raise PipelineError(f"{path}: unknown output format: name it {suffixes_shown('output_suffixes')}")
    return kind


def output_columns(labels: list[str], multi_label: bool = False) -> list[str]:
    first = LABELS_COLUMN if multi_label else LABEL_COLUMN
    return [first] + [f"{PROB_PREFIX}{label}" for label in labels] + [REASON_COLUMN]


# --- classifying and writing --------------------------------------------------------------------


def check_columns(schema: pa.Schema, text_column: str, labels: list[str], path: Path,
                  multi_label: bool = False) -> None:
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
    clash = [c for c in output_columns(labels, multi_label) if c in schema.names]
    if clash:
        raise PipelineError(f"{path}: the input already has a column '{clash[0]}', which the predictions "
                            "would overwrite; rename or drop it (is this a predictions file?)")


def output_schema(schema: pa.Schema, labels: list[str], multi_label: bool = False) -> pa.Schema:
    kept = [pa.field(f.name, f.type, f.nullable) for f in schema]  # without the readers' metadata
    given = pa.field(LABELS_COLUMN, pa.list_(pa.string())) if multi_label else pa.field(LABEL_COLUMN, pa.string())
    added = ([given] + [pa.field(f"{PROB_PREFIX}{lab}", pa.float32()) for lab in labels]
             + [pa.field(REASON_COLUMN, pa.string())])
    return pa.schema(kept + added)


def predict_table(ckpt: Checkpoint, table: pa.Table, text_column: str, batch_size: int = 256,
                  min_confidence: float | None = None) -> pa.Table:
    """The table with predicted_label (a multi-label model's predicted_labels, a list), prob_<label> and
    no_label_reason columns added; rows without text, or without tokens after cleaning, get nulls and their
    reason; rows below `min_confidence`, a null label, their probabilities and the reason."""
    predictions = predict_texts(ckpt, table.column(text_column).to_pylist(), batch_size, min_confidence)
    missing = np.isnan(predictions.probs).any(axis=1)
    given = [predictions.label(i, ckpt.labels) for i in range(table.num_rows)]
    columns = {LABELS_COLUMN: pa.array(given, pa.list_(pa.string()))} if predictions.multi_label \
        else {LABEL_COLUMN: pa.array(given, pa.string())}
    for k, name in enumerate(ckpt.labels):
        columns[f"{PROB_PREFIX}{name}"] = pa.array(np.nan_to_num(predictions.probs[:, k]), pa.float32(), mask=missing)
    columns[REASON_COLUMN] = pa.array(predictions.reasons, pa.string())
    out = table
    for name, column in columns.items():
        out = out.append_column(name, column)
    return out


def _is_binary(arrow_type: pa.DataType) -> bool:
    return (pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type)
            or pa.types.is_fixed_size_binary(arrow_type) or getattr(pa.types, "is_binary_view", bool)(arrow_type))


def _as_text_table(table: pa.Table) -> pa.Table:
    """Nested columns (lists, structs, maps) as JSON text and binary columns as base64 text, for the CSV
    and TSV writers, which take only flat text values; a multi-label model's predicted_labels (no input
    column has that name: check_columns) as its labels joined by '|'."""
    for i, field in enumerate(table.schema):
        kind = field.type.value_type if pa.types.is_dictionary(field.type) else field.type
        if field.name == LABELS_COLUMN and pa.types.is_list(kind):
            text = pa.array([None if v is None else LABELS_SEPARATOR.join(v) for v in table.column(i).to_pylist()],
                            pa.string())
        elif pa.types.is_nested(kind):
            text = pa.array([json_text(v) for v in table.column(i).to_pylist()], pa.string())
        elif _is_binary(kind):
            text = pa.array([json_safe(v) for v in table.column(i).to_pylist()], pa.string())
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
        yield json_dumps(row) + "\n"


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
                 batch_size: int = 256, chunk_rows: int = 10_000, encoding: str = "utf-8",
                 min_confidence: float | None = None) -> BatchSummary:
    """Classify every row of `input_path` and write it, with its predictions, to `output_path` (atomically)."""
    input_path, output_path = Path(input_path), Path(output_path)
    kind = output_kind(output_path)
    check_output_file(output_path, input_path)
    with TableReader(input_path, chunk_rows, encoding) as reader:
        return _predict_chunks(ckpt, reader, output_path, kind, text_column, batch_size, min_confidence)


def _predict_chunks(ckpt: Checkpoint, reader: TableReader, output_path: Path, kind: str, text_column: str,
                    batch_size: int, min_confidence: float | None = None) -> BatchSummary:
    multi_label = ckpt.task.name == "multi_label"
    check_columns(reader.schema, text_column, ckpt.labels, reader.path, multi_label)
    joined = next((label for label in ckpt.labels if LABELS_SEPARATOR in label), None) if multi_label else None
    if joined is not None and kind in ("csv", "tsv"):
        raise PipelineError(f"{output_path}: the model's label {joined!r} holds '{LABELS_SEPARATOR}', which joins a "
                            f"text's labels in {kind.upper()}: write .parquet or .jsonl instead")
    schema = output_schema(reader.schema, ckpt.labels, multi_label)
    rows = without_text = without_tokens = uncertain_rows = chunks = 0
    with atomic_path(output_path) as tmp:
        writer = TableWriter(tmp, kind, schema, output_path)
        try:
            for table in reader.chunks():
                out = predict_table(ckpt, table, text_column, batch_size, min_confidence).cast(schema)
                writer.write(out)
                rows += out.num_rows
                reasons = out.column(REASON_COLUMN).to_pylist()
                without_text += reasons.count(NO_TEXT)
                without_tokens += reasons.count(NO_TOKENS)
                uncertain_rows += sum(r is not None and r.startswith("uncertain") for r in reasons)
                chunks += 1
        finally:
            writer.close()
        if rows == 0:  # raised inside atomic_path: no output is left
            raise PipelineError(f"{reader.path}: the file has no rows (only a header, or an empty table): "
                                "nothing to classify")
    return BatchSummary(rows, without_text, chunks, without_tokens, uncertain_rows)


def describe(summary: BatchSummary, output_path: Path) -> str:
    parts = [f"{n} {what}" for n, what in ((summary.rows_without_text, "without text"),
                                           (summary.rows_without_tokens, "with no tokens after cleaning"),
                                           (summary.rows_uncertain, "uncertain (below the minimum confidence)"))
             if n]
    skipped = f" ({', '.join(parts)}: no label, the reason in {REASON_COLUMN})" if parts else ""
    return f"wrote {summary.rows} rows{skipped} to {output_path}"
