"""Labels as the prepare stage reads them: a raw value as text (label_text), and the spellings of one
label told apart from different labels (canonical_labels): spellings that differ only by case,
surrounding blanks or the spelling of a number ('pos', 'Pos ', ' pos'; '1', '01', '1.0') are one label,
an error naming each spelling by default (corpus.label_variants), or merged and counted."""

from __future__ import annotations

import decimal
import re
import unicodedata
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from pipeline.errors import PipelineError

if TYPE_CHECKING:
    from pipeline.corpus import CorpusFacts


def label_text(value) -> tuple[str | None, str | None]:
    """A raw label as text, and the policy that changed it (None if none did):
    - integer_from_float: 1.0 reads as '1' (an integer column with a missing value becomes floats in
      pandas and Parquet; the class must still be '1', as it is in the same corpus without the gap);
    - unicode_normalized: NFKC, as texts are ('café' typed on macOS and on Linux is one class)."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA or value is pd.NaT:
        return None, None
    if isinstance(value, float) and value.is_integer():
        return str(int(value)), "integer_from_float"
    text = str(value)
    normal = unicodedata.normalize("NFKC", text)
    return normal, ("unicode_normalized" if normal != text else None)


_NUMBER_LABEL = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def variant_key(spelling: str) -> str:
    """What two spellings of one label share: stripped and case-folded; a number by its value, so '01',
    '1', '1.0', '+1' and ' 1' are one label written four ways (a column of codes saved by two tools)."""
    text = spelling.strip()
    if _NUMBER_LABEL.fullmatch(text):
        try:
            value = decimal.Decimal(text)
            return "number:" + str(value.normalize() if value else decimal.Decimal(0))
        except decimal.DecimalException:  # an exponent past the context's: compare as written
            return "number:" + text.lower()
    return text.casefold()


def canonical_labels(rows: CorpusFacts, variants: str, source: str) -> list[str]:
    """Each raw label spelling's class name (canonical_spellings) of a single-label corpus."""
    counts = np.bincount(rows.label[rows.label >= 0], minlength=len(rows.spellings))
    return canonical_spellings(rows.spellings, counts, lambda i: int(np.argmax(rows.label == i)) + 1, variants,
                               source)


def canonical_spellings(spellings: list[str], counts: np.ndarray, first_row, variants: str, source: str) -> list[str]:
    """Each raw label spelling's class name: stripped. Spellings that differ only by case, surrounding
    blanks or the spelling of a number ('01' and '1') are an error naming each spelling, its count and the
    first row that has it (`first_row(i)`, 1-based), or (variants: merge) each group becomes its most
    frequent spelling. `counts`: rows per spelling."""
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(spellings):
        if s.strip():  # an empty or blank label ('', ' ', a tab) is no label: dropped, counted, never a clash
            groups.setdefault(variant_key(s), []).append(i)
    # Within a group: most frequent first, then first seen.
    groups = {k: sorted(v, key=lambda i: -counts[i]) for k, v in groups.items()}
    clashes = {k: v for k, v in groups.items() if len(v) > 1}
    if clashes and variants == "error":
        k, members = sorted(clashes.items())[0]
        first = {i: first_row(i) for i in members}
        shown = ", ".join(f"{spellings[i]!r} ({counts[i]}; first at row {first[i]})"
                          for i in sorted(members, key=first.get))
        what = "the spelling of a number" if k.startswith("number:") else "case or surrounding blanks"
        raise PipelineError(
            f"{source}: labels {shown} differ only by {what}"
            f"{f' ({len(clashes)} such groups)' if len(clashes) > 1 else ''}; rows are counted from 1 in the "
            "order the corpus is read (a one-table corpus: its data rows); fix the data, or set "
            "corpus.label_variants: merge to merge each group into its most frequent spelling"
        )
    # Ties in a merged group: the first spelling in sorted order.
    canonical = {k: min((spellings[i] for i in v if counts[i] == counts[v[0]])).strip() for k, v in groups.items()}
    return [canonical[variant_key(s)] if s.strip() else "" for s in spellings]


def merged_labels(rows: CorpusFacts, canonical: list[str]) -> dict:
    """The spellings label_variants: merge folded into another (more than stripping): {spelling: {into, rows}}."""
    return merged_spellings(rows.spellings, canonical, np.bincount(rows.label[rows.label >= 0],
                                                                   minlength=len(rows.spellings)))


def merged_spellings(spellings: list[str], canonical: list[str], counts: np.ndarray) -> dict:
    return {s: {"into": c, "rows": int(n)} for s, c, n in zip(spellings, canonical, counts) if s.strip() != c and n}


# The prepared splits' task (pipeline/prepared_task.py), kept apart so that train reads it without the
# prepare stage's modules.
from pipeline.prepared_task import TASK_KEY, prepared_task, task_metadata  # noqa: E402,F401
