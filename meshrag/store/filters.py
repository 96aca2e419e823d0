"""Metadata filters of the public API: parse once, then run in SQLite or in Python.

Grammar (MongoDB-like, deliberately small)::

    filter    := { clause, ... }                     several clauses mean AND
    clause    := "field.path": scalar                equality
               | "field.path": { op: operand, ... }  several operators mean AND
               | "$and": [filter, ...] | "$or": [filter, ...]
    op        := $eq $ne $in $nin $gt $gte $lt $lte

Semantics, identical in :func:`to_sql` and :func:`matches` (a test checks this):

* values compare only within their JSON type: a string never equals a number,
  ``true`` never equals ``1``; numbers compare numerically (``2 == 2.0``);
* equality with ``null`` matches a field that is null *or missing*;
  ``$ne``/``$nin`` are plain negations, so they also match missing fields;
* ranges take a number or a string (strings compare by code point, which is
  what ISO-8601 dates need); a field of another type never matches a range;
* a field holding an array or object matches no scalar condition (no
  "any element" semantics), and dotted paths only descend through objects.

A filter is forwarded to peers and bound into SQLite, so values obey what
every node can carry (meshrag/wire.py): signed 64-bit integers, strings that
encode as UTF-8 without NUL. ``MAX_DEPTH`` is a cluster-wide constant, not a
setting: a peer re-parses the filter a coordinator accepted.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Union

from meshrag.errors import ValidationError
from meshrag.wire import check_text, is_int64, printable

Scalar = Union[str, int, float, bool, None]
FieldPath = tuple[str, ...]

MAX_DEPTH = 8
MAX_LIST_ITEMS = 1024
MAX_FIELD_CHARS = 256
_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")
_COLUMN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?")
RANGE_OPS = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
FIELD_OPS = ("$eq", "$ne", "$in", "$nin", *RANGE_OPS)
_SCALAR_HELP = "a string, a finite number, true, false or null"


# ------------------------------------------------------------------ the tree
@dataclass(frozen=True, slots=True)
class Eq:
    path: FieldPath
    value: Scalar


@dataclass(frozen=True, slots=True)
class In:
    path: FieldPath
    values: tuple[Scalar, ...]


@dataclass(frozen=True, slots=True)
class Range:
    path: FieldPath
    op: str  # one of RANGE_OPS
    value: str | int | float


@dataclass(frozen=True, slots=True)
class Not:
    child: "Filter"


@dataclass(frozen=True, slots=True)
class And:
    children: tuple["Filter", ...]  # empty: matches everything


@dataclass(frozen=True, slots=True)
class Or:
    children: tuple["Filter", ...]


Filter = Union[Eq, In, Range, Not, And, Or]


# ------------------------------------------------------------------- parsing
def parse_filter(obj: Any, path: str = "filter") -> Filter:
    """Validate a filter object from a request; errors name the exact field at fault."""
    return _parse_object(obj, path, depth=1)


def _parse_object(obj: Any, path: str, depth: int) -> Filter:
    if depth > MAX_DEPTH:
        raise ValidationError(f"{path}: filters may nest at most {MAX_DEPTH} levels deep", field=path)
    if not isinstance(obj, dict):
        raise ValidationError(f"{path} must be an object such as {{\"field\": value}}, got {_type_name(obj)}", field=path)
    clauses: list[Filter] = []
    for key, value in obj.items():
        key_path = f"{path}.{printable(key)}"
        if key in ("$and", "$or"):
            clauses.append(_parse_logical(key, value, key_path, depth))
        elif isinstance(key, str) and key.startswith("$"):
            raise ValidationError(
                f"{key_path}: unknown operator {key!r}; only $and and $or may appear here, "
                f"field conditions go inside a field ({', '.join(FIELD_OPS)})",
                field=key_path,
            )
        else:
            clauses.append(_parse_field(_field_path(key, key_path), value, key_path))
    return clauses[0] if len(clauses) == 1 else And(tuple(clauses))


def _parse_logical(op: str, value: Any, path: str, depth: int) -> Filter:
    if not isinstance(value, list) or not value:
        raise ValidationError(f"{path} must be a non-empty array of filter objects", field=path)
    if len(value) > MAX_LIST_ITEMS:
        raise ValidationError(f"{path} has {len(value)} entries; at most {MAX_LIST_ITEMS} allowed", field=path)
    children = tuple(_parse_object(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value))
    return And(children) if op == "$and" else Or(children)


def _field_path(key: Any, path: str) -> FieldPath:
    if not isinstance(key, str) or not key or len(key) > MAX_FIELD_CHARS:
        raise ValidationError(f"{path}: field names must be 1..{MAX_FIELD_CHARS} characters", field=path)
    segments = tuple(key.split("."))
    if not all(_SEGMENT.fullmatch(segment) for segment in segments):
        raise ValidationError(
            f"{path}: field name {key!r} is not allowed; use dot-separated segments of letters, digits, '_' and '-'",
            field=path,
        )
    return segments


def _parse_field(field: FieldPath, value: Any, path: str) -> Filter:
    if not isinstance(value, dict):
        return Eq(field, _scalar(value, path))
    if not value:
        raise ValidationError(f"{path} needs at least one operator ({', '.join(FIELD_OPS)})", field=path)
    conditions = [_parse_operator(field, op, operand, f"{path}.{printable(op)}") for op, operand in value.items()]
    return conditions[0] if len(conditions) == 1 else And(tuple(conditions))


def _parse_operator(field: FieldPath, op: Any, operand: Any, path: str) -> Filter:
    if op == "$eq":
        return Eq(field, _scalar(operand, path))
    if op == "$ne":
        return Not(Eq(field, _scalar(operand, path)))
    if op in ("$in", "$nin"):
        members = In(field, _scalar_list(operand, path))
        return members if op == "$in" else Not(members)
    if op in RANGE_OPS:
        return Range(field, op, _range_operand(operand, path))
    hint = "" if str(op).startswith("$") else f"; for a nested field write the dotted path (\"{'.'.join(field)}.{printable(op)}\")"
    raise ValidationError(f"{path}: unknown operator {op!r}; allowed: {', '.join(FIELD_OPS)}{hint}", field=path)


def _scalar(value: Any, path: str) -> Scalar:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        check_text(value, path)
        return value
    if isinstance(value, int):
        if not is_int64(value):
            raise ValidationError(f"{path}: integer out of the 64-bit range", field=path)
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValidationError(f"{path} must be a finite number", field=path)
        return value
    raise ValidationError(f"{path} must be {_SCALAR_HELP} (or an operator object), got {_type_name(value)}", field=path)


def _scalar_list(value: Any, path: str) -> tuple[Scalar, ...]:
    if not isinstance(value, list) or not value:
        raise ValidationError(f"{path} must be a non-empty array of values ({_SCALAR_HELP})", field=path)
    if len(value) > MAX_LIST_ITEMS:
        raise ValidationError(f"{path} has {len(value)} values; at most {MAX_LIST_ITEMS} allowed", field=path)
    return tuple(_scalar(item, f"{path}[{i}]") for i, item in enumerate(value))


def _range_operand(value: Any, path: str) -> str | int | float:
    if isinstance(value, bool) or value is None or not isinstance(value, (str, int, float)):
        raise ValidationError(f"{path}: ranges compare numbers or strings only, got {_type_name(value)}", field=path)
    scalar = _scalar(value, path)
    assert isinstance(scalar, (str, int, float))
    return scalar


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def dump_filter(f: Filter) -> dict[str, Any]:
    """A JSON object that :func:`parse_filter` turns back into an equal filter, nested
    no deeper than the one it was parsed from (so a coordinator can forward it to peers)."""
    if isinstance(f, And):
        if not f.children:
            return {}
        if len(f.children) == 1:
            return {"$and": [dump_filter(f.children[0])]}
        same_field = _same_field_clause(f)
        if same_field is not None:
            return dict([same_field])
        clauses = [_clause(child) for child in f.children]
        if len({key for key, _ in clauses}) == len(clauses):
            return dict(clauses)  # one object with several keys, as it was written
        return {"$and": [dump_filter(child) for child in f.children]}
    return dict([_clause(f)])


def _clause(f: Filter) -> tuple[str, Any]:
    """``f`` as one key/value pair of a filter object."""
    if isinstance(f, Or):
        return "$or", [dump_filter(child) for child in f.children]
    if isinstance(f, And):
        same_field = _same_field_clause(f) if len(f.children) > 1 else None
        return same_field or ("$and", [dump_filter(child) for child in f.children])
    return _leaf_clause(f)


def _same_field_clause(f: And) -> tuple[str, Any] | None:
    """``{"field": {"$gte": a, "$lt": b}}`` when every child is one operator on one field."""
    if not all(isinstance(child, (Eq, In, Range, Not)) for child in f.children):
        return None
    leaves = [_leaf_clause(child) for child in f.children]
    ops = [op for _, operators in leaves for op in operators]
    if len({field for field, _ in leaves}) != 1 or len(set(ops)) != len(ops):
        return None
    return leaves[0][0], {op: value for _, operators in leaves for op, value in operators.items()}


def _leaf_clause(f: Filter) -> tuple[str, dict[str, Any]]:
    if isinstance(f, Eq):
        return ".".join(f.path), {"$eq": f.value}
    if isinstance(f, In):
        return ".".join(f.path), {"$in": list(f.values)}
    if isinstance(f, Range):
        return ".".join(f.path), {f.op: f.value}
    if isinstance(f, Not) and isinstance(f.child, Eq):
        return ".".join(f.child.path), {"$ne": f.child.value}
    if isinstance(f, Not) and isinstance(f.child, In):
        return ".".join(f.child.path), {"$nin": list(f.child.values)}
    raise ValueError(f"{f!r} has no JSON form")


# ------------------------------------------------------------------- SQLite
def to_sql(f: Filter, column: str) -> tuple[str, list[Any]]:
    """A WHERE fragment over the JSON text in ``column``, with its parameters.

    Every leaf is wrapped so it yields 0 or 1, never NULL: SQL's three-valued
    logic would otherwise make ``NOT`` of a missing field drop the row, while
    :func:`matches` keeps it. Values and JSON paths are bound as parameters.
    """
    if not _COLUMN.fullmatch(column):
        raise ValueError(f"not a column reference: {column!r}")
    params: list[Any] = []
    return _sql(f, column, params), params


def _sql(f: Filter, column: str, params: list[Any]) -> str:
    if isinstance(f, And):
        return "(" + " AND ".join(_sql(c, column, params) for c in f.children) + ")" if f.children else "1"
    if isinstance(f, Or):
        return "(" + " OR ".join(_sql(c, column, params) for c in f.children) + ")"
    if isinstance(f, Not):
        return f"(NOT {_sql(f.child, column, params)})"
    if isinstance(f, Eq):
        return _sql_in(f.path, (f.value,), column, params)
    if isinstance(f, In):
        return _sql_in(f.path, f.values, column, params)
    return _sql_range(f, column, params)


def _json_path(path: FieldPath) -> str:
    # Segments are validated to [A-Za-z0-9_-], so double-quoting each is exact.
    return "$" + "".join(f'."{segment}"' for segment in path)


def _as_flag(condition: str) -> str:
    return f"(CASE WHEN {condition} THEN 1 ELSE 0 END)"


def _sql_in(path: FieldPath, values: tuple[Scalar, ...], column: str, params: list[Any]) -> str:
    """Membership, grouped by JSON type so each group is one comparison."""
    jpath = _json_path(path)
    jtype = f"json_type({column}, ?)"
    texts = [v for v in values if isinstance(v, str)]
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    bool_types = sorted({"true" if v else "false" for v in values if isinstance(v, bool)})
    terms: list[str] = []
    for kinds, group in ((("text",), texts), (("integer", "real"), numbers)):
        if group:
            type_list = ", ".join(f"'{kind}'" for kind in kinds)
            marks = ", ".join("?" * len(group))
            terms.append(f"({jtype} IN ({type_list}) AND json_extract({column}, ?) IN ({marks}))")
            params.extend([jpath, jpath, *group])
    if bool_types:
        terms.append(f"{jtype} IN ({', '.join('?' * len(bool_types))})")
        params.extend([jpath, *bool_types])
    if any(v is None for v in values):
        terms.append(f"IFNULL({jtype}, 'null') = 'null'")  # missing or null
        params.append(jpath)
    return _as_flag(" OR ".join(terms))


def _sql_range(f: Range, column: str, params: list[Any]) -> str:
    kinds = "'text'" if isinstance(f.value, str) else "'integer', 'real'"
    jpath = _json_path(f.path)
    params.extend([jpath, jpath, f.value])
    return _as_flag(f"json_type({column}, ?) IN ({kinds}) AND json_extract({column}, ?) {RANGE_OPS[f.op]} ?")


# -------------------------------------------------------------------- Python
_MISSING = object()


def matches(f: Filter, metadata: dict[str, Any]) -> bool:
    """Evaluate a filter against one document's metadata, exactly as :func:`to_sql` does."""
    if isinstance(f, And):
        return all(matches(c, metadata) for c in f.children)
    if isinstance(f, Or):
        return any(matches(c, metadata) for c in f.children)
    if isinstance(f, Not):
        return not matches(f.child, metadata)
    value = _lookup(metadata, f.path)
    if isinstance(f, Eq):
        return _equals(value, f.value)
    if isinstance(f, In):
        return any(_equals(value, candidate) for candidate in f.values)
    return _in_range(value, f)


def _lookup(metadata: Any, path: FieldPath) -> Any:
    node = metadata
    for segment in path:
        if not isinstance(node, dict) or segment not in node:
            return _MISSING
        node = node[segment]
    return node


def _kind(value: Any) -> str:
    if value is None or value is _MISSING:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "text"
    return "other"  # arrays and objects match no scalar condition


def _equals(value: Any, wanted: Scalar) -> bool:
    return _kind(value) == _kind(wanted) and (wanted is None or value == wanted)


def _in_range(value: Any, f: Range) -> bool:
    if _kind(value) != _kind(f.value):
        return False
    if f.op == "$gt":
        return bool(value > f.value)
    if f.op == "$gte":
        return bool(value >= f.value)
    if f.op == "$lt":
        return bool(value < f.value)
    return bool(value <= f.value)

