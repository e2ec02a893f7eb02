"""The corpus's columns: which hold the text (one, or several joined: a title and a body), the label and
the split; checked when params.yaml is read, and joined when the corpus is."""

from __future__ import annotations

import math

from pipeline.errors import PipelineError, short


def text_columns(setting: str | list[str]) -> list[str]:
    """corpus.text_column as a list of column names."""
    return [setting] if isinstance(setting, str) else list(setting)


def joined_text(parts) -> str | None:
    """A row's text from several columns: the present values (not missing, not empty) joined by a line
    break, in the order the columns are named; None when no column has one."""
    present = [str(part) for part in parts
               if part is not None and not (isinstance(part, float) and math.isnan(part)) and str(part) != ""]
    return "\n".join(present) if present else None


def check_corpus_columns(values: dict, where: str) -> None:
    """The text, label and split columns are different, named columns (one read as both the text and the
    label made every text its own class); a label separator is a few characters, not blanks only."""
    roles: dict[str, str] = {}  # column -> the first role that names it
    text = values["text_column"]
    if isinstance(text, list) and not text:
        raise PipelineError(f"{where}: 'corpus.text_column' is an empty list: name the column (or columns) of the text")
    named = [("text", column) for column in text_columns(text)]
    named += [(role, values[f"{role}_column"]) for role in ("label", "split")]
    for role, column in named:
        if column is not None and not column.strip():
            raise PipelineError(f"{where}: 'corpus.{role}_column' is {column!r}: name the column")
        if column is not None and column in roles:
            raise PipelineError(f"{where}: 'corpus.{roles[column]}_column' and 'corpus.{role}_column' both name "
                                f"the column {column!r}: each names a different column")
        roles.setdefault(column, role)
    sep = values["label_separator"]
    if sep is not None and (not sep.strip() or len(sep) > 8 or any(c in sep for c in "\r\n\x1f")):
        raise PipelineError(f"{where}: 'corpus.label_separator' is {short(sep)}: expected a few characters that "
                            "separate labels ('|', ',', ';'; at most 8, not only blanks, no line break)")
