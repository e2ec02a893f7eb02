"""The generic machinery that checks a params.yaml section against its dataclass (pipeline.params).

A dataclass field's type says what values it takes (Literal choices, unions, lists, int, float, str, bool,
None); its metadata adds a range (`_range`: numbers finite, integers below INT_MAX unless the range says
otherwise), `nonempty` (a list holding a value) and `encoding` (a codec name Python knows). Errors name the
file and the key, and quote a short prefix of the value.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import field
from typing import Literal

from pipeline.errors import PipelineError, short
from pipeline.files import check_encoding

# Every number is finite and in range. Integers without a stated bound stop at INT_MAX (what torch and
# numpy take as a size or a count); seeds at SEED_MAX (numpy's and scikit-learn's seeds are 32-bit).
INT_MAX = 2**31 - 1
SEED_MAX = 2**32 - 1


def _range(lo=None, hi=None, lo_open=False, hi_open=False):
    return {"range": (lo, hi, lo_open, hi_open)}


def _seed():
    return field(metadata=_range(0, SEED_MAX))


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false", type(None): "null"}[tp]


def _matches(value, tp) -> bool:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return value in typing.get_args(tp) and not isinstance(value, bool)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in typing.get_args(tp))
    if origin is list:
        return isinstance(value, list) and all(_matches(v, typing.get_args(tp)[0]) for v in value)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:  # YAML writes 1 for 1.0; accept integers where a number is asked for.
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, tp)


def _check_range(key: str, value, spec, where: str) -> None:
    """A number finite and in its range (each item of a list of numbers); integers below INT_MAX unless
    their range says otherwise."""
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_range(f"{key}[{i}]", item, spec, where)
        return
    if value is None or isinstance(value, (str, bool)):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise PipelineError(f"{where}: '{key}' must be a finite number, got {short(value)}")
    lo, hi, lo_open, hi_open = spec.get("range", (None, None, False, False))
    if isinstance(value, int) and hi is None:
        hi, hi_open = INT_MAX, False
    bad = (lo is not None and (value <= lo if lo_open else value < lo)) or (
        hi is not None and (value >= hi if hi_open else value > hi)
    )
    if bad:
        lo_s = "" if lo is None else f"{'>' if lo_open else '>='} {lo}"
        hi_s = "" if hi is None else f"{'<' if hi_open else '<='} {hi}"
        raise PipelineError(f"{where}: '{key}' must be {' and '.join(s for s in (lo_s, hi_s) if s)}, got {short(value)}")


def _as_float(key: str, value, where: str):
    """An integer where a number is asked for, as a float (one too large for a float is out of range)."""
    if isinstance(value, list):
        return [_as_float(f"{key}[{i}]", v, where) for i, v in enumerate(value)]
    if not isinstance(value, int) or isinstance(value, bool):  # a float, null, or another kind of a union
        return value
    try:
        return float(value)
    except OverflowError:
        raise PipelineError(f"{where}: '{key}' must be a finite number, got {short(value)}") from None


def _asks_float(tp) -> bool:
    if tp is float:
        return True
    origin = typing.get_origin(tp)
    return origin in (list, typing.Union, types.UnionType) and any(_asks_float(a) for a in typing.get_args(tp))


def check_fields(cls, name: str, raw, where: str) -> dict:
    """Section `name`'s mapping `raw` checked against dataclass `cls`: every key known, none missing, each
    value of its type and in its range; the values (integers where a number is asked for as floats)."""
    if not isinstance(raw, dict):
        raise PipelineError(f"{where}: section '{name}' must be a mapping of keys to values")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(str(key) for key in set(raw) - set(fields))
    if unknown:
        raise PipelineError(f"{where}: unknown key '{name}.{unknown[0]}' (known keys of '{name}': {', '.join(fields)})")
    missing = [k for k in fields if k not in raw]
    if missing:
        raise PipelineError(f"{where}: missing key '{name}.{missing[0]}'")
    values = {}
    for key, f in fields.items():
        value, tp = raw[key], hints[key]
        if not _matches(value, tp):
            raise PipelineError(f"{where}: '{name}.{key}' must be {_type_name(tp)}, got {short(value)} "
                                f"({type(value).__name__})")
        if _asks_float(tp):
            value = _as_float(f"{name}.{key}", value, where)
        _check_range(f"{name}.{key}", value, f.metadata, where)
        if f.metadata.get("nonempty") and not value:
            raise PipelineError(f"{where}: '{name}.{key}' must hold at least one value, got []")
        if f.metadata.get("encoding"):
            check_encoding(value, f"{where}: '{name}.{key}'")
        values[key] = value
    return values
