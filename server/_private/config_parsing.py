"""Plain data (YAML, JSON, code) <-> the typed config dataclasses, and the ``--check`` listing.

Generic over dataclasses whose fields carry attribute docstrings. A dataclass written *flat*
(its keys are not its fields, e.g. ``LimitsConfig``, whose graph ceilings live in an
``ir.Limits``) declares ``flat_types()`` (key -> type), ``flat_docs()``, ``from_flat(values)``
and ``flat()``; it is read, listed and converted through those.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import itertools
import json
import re
import textwrap
import types
import typing
from functools import cache
from typing import Any

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4}


def parse_bytes(value: object) -> int:
    """``4096``, ``"64 KiB"``, ``"1GB"`` -> bytes (binary units with ``i``, decimal without)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    m = _SIZE.match(value) if isinstance(value, str) else None
    if m is None:
        raise ValueError(f"{value!r} is not a byte size (e.g. 1048576, '1 MiB', '2GB')")
    number, unit = float(m.group(1)), (m.group(2) or "").upper()
    scale = 1024 ** "KMGT".index(unit[0]) * 1024 if "I" in unit else _UNITS[unit[:1]]
    return int(number * scale)


def build(tp: Any, data: Any, path: str, problems: list[tuple[str, str]]) -> Any:
    """``data`` converted to type ``tp`` (recursively); problems are collected, not raised."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if data is None:
            return None
        return build(args[0], data, path, problems)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(data, dict):
            problems.append((path, f"expected a mapping, got {type(data).__name__}"))
            return None
        flat = hasattr(tp, "from_flat")
        hints = typing.cast(Any, tp).flat_types() if flat else field_types(tp)
        kwargs = parse_mapping(hints, data, path, problems)
        return typing.cast(Any, tp).from_flat(kwargs) if flat else typing.cast(Any, tp)(**kwargs)
    if origin is list:
        if not isinstance(data, list):
            problems.append((path, f"expected a list, got {type(data).__name__}"))
            return []
        (item,) = typing.get_args(tp)
        return [build(item, v, f"{path}[{i}]", problems) for i, v in enumerate(data)]
    if origin is dict:
        if not isinstance(data, dict):
            problems.append((path, f"expected a mapping, got {type(data).__name__}"))
            return {}
        return dict(data)
    return _scalar(tp, data, path, problems)


def parse_mapping(
    hints: dict[str, Any], data: dict, path: str, problems: list[tuple[str, str]], what: str = "field"
) -> dict[str, Any]:
    """``data``'s values converted to the types ``hints`` gives their keys; unknown keys are problems."""
    known = list(hints)
    out = {}
    for key, value in data.items():
        sub = f"{path}.{key}" if path else str(key)
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            problems.append((sub, f"unknown {what}" + (f"; did you mean {close[0]!r}?" if close else "")))
            continue
        out[key] = parse_field(hints[key], key, value, sub, problems)
    return out


def parse_field(tp: Any, name: str, value: Any, path: str, problems: list[tuple[str, str]]) -> Any:
    if name.endswith("_bytes") and value is not None:
        try:
            return parse_bytes(value)
        except ValueError as e:
            problems.append((path, str(e)))
            return 0
    return build(tp, value, path, problems)


def _scalar(tp: Any, data: Any, path: str, problems: list[tuple[str, str]]) -> Any:
    ok = (
        (tp is bool and isinstance(data, bool))
        or (tp is int and isinstance(data, int) and not isinstance(data, bool))
        or (tp is float and isinstance(data, (int, float)) and not isinstance(data, bool))
        or (tp is str and isinstance(data, (str, int, float)) and not isinstance(data, bool))
        or tp is Any
    )
    if not ok:
        problems.append((path, f"expected {tp.__name__}, got {type(data).__name__} {data!r}"))
        return data
    if tp is float:
        return float(data)
    return str(data) if tp is str else data


# The public functions take any class; the cached ones behind them take it as a plain ``type``
# (a type checker does not see a dataclass's class object as ``Hashable``, though it is).
def field_types(cls: type) -> dict[str, Any]:
    """The resolved type hints of a dataclass's fields (computed once per class)."""
    return _field_types(cls)


@cache
def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


# ----------------------------------------------------------------------------------- describing
def field_docs(cls: type) -> dict[str, str]:
    """The attribute docstrings of a dataclass (the string right after each field)."""
    return _field_docs(cls)


@cache
def _field_docs(cls: type) -> dict[str, str]:
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for stmt, nxt in itertools.pairwise(body):
        if (
            isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs


def _items(config: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """A config dataclass's keys with their values, and their docstrings (flat ones through ``flat()``)."""
    if hasattr(config, "flat"):
        return config.flat(), type(config).flat_docs()
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}, field_docs(type(config))


def describe(config: Any, indent: str = "") -> str:
    """The config as commented YAML: every field, its value and its docstring."""
    lines = []
    values, docs = _items(config)
    for name, value in values.items():
        doc = docs.get(name, "")
        if doc:
            lines.append(f"{indent}# {doc}")
        if dataclasses.is_dataclass(value):
            lines.append(f"{indent}{name}:")
            lines.append(describe(value, indent + "  "))
        elif isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
            lines.append(f"{indent}{name}:")
            for item in value:
                lines.append(f"{indent}  -")
                lines.append(describe(item, indent + "    "))
        else:
            lines.append(f"{indent}{name}: {_yaml_value(value)}")
    return "\n".join(lines)


def config_to_dict(config: Any) -> Any:
    """A config as the plain data it was read from (:func:`describe` without the comments)."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return {k: config_to_dict(v) for k, v in _items(config)[0].items()}
    if isinstance(config, list):
        return [config_to_dict(v) for v in config]
    if isinstance(config, dict):
        return {k: config_to_dict(v) for k, v in config.items()}
    return config


def _yaml_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(value)
