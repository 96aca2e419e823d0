"""Metadata filters: parsing, error paths, SQL translation and Python evaluation agree."""

from __future__ import annotations

import json
import random
import sqlite3
from typing import Any

import pytest

from meshrag.errors import ValidationError
from meshrag.store.filters import And, Eq, In, Not, Or, Range, dump_filter, matches, parse_filter, to_sql


def sql_matching_ids(docs: list[dict[str, Any]], filter_obj: Any) -> set[int]:
    """Ids of the documents an in-memory SQLite table returns for the filter."""
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE docs (id INTEGER PRIMARY KEY, metadata TEXT NOT NULL)")
    conn.executemany("INSERT INTO docs VALUES (?, ?)", [(i, json.dumps(m)) for i, m in enumerate(docs)])
    where, params = to_sql(parse_filter(filter_obj), "metadata")
    return {row[0] for row in conn.execute(f"SELECT id FROM docs WHERE {where}", params)}


def python_matching_ids(docs: list[dict[str, Any]], filter_obj: Any) -> set[int]:
    flt = parse_filter(filter_obj)
    return {i for i, m in enumerate(docs) if matches(flt, m)}


# ------------------------------------------------------------------ parsing
def test_parse_builds_the_expected_tree() -> None:
    parsed = parse_filter(
        {
            "lang": "en",
            "meta.year": {"$gte": 1990, "$lt": 2000},
            "$or": [{"tag": {"$in": ["a", "b"]}}, {"draft": {"$ne": True}}],
            "kind": {"$nin": [None]},
        }
    )
    assert parsed == And(
        (
            Eq(("lang",), "en"),
            And((Range(("meta", "year"), "$gte", 1990), Range(("meta", "year"), "$lt", 2000))),
            Or((In(("tag",), ("a", "b")), Not(Eq(("draft",), True)))),
            Not(In(("kind",), (None,))),
        )
    )


def test_empty_filter_matches_everything() -> None:
    assert parse_filter({}) == And(())
    assert to_sql(parse_filter({}), "m") == ("1", [])
    assert matches(parse_filter({}), {"anything": 1})


@pytest.mark.parametrize(
    ("filter_obj", "field", "says"),
    [
        ("tag", "filter", "must be an object"),
        ({"year": {"$gte": True}}, "filter.year.$gte", "numbers or strings"),
        ({"year": {"$lt": None}}, "filter.year.$lt", "numbers or strings"),
        ({"$or": [{"a": 1}, {"tag": [1]}]}, "filter.$or[1].tag", "string, a finite number"),
        ({"a": {"$foo": 1}}, "filter.a.$foo", "$in"),
        ({"a": {"b": 1}}, "filter.a.b", "dotted path"),
        ({"$not": {"a": 1}}, "filter.$not", "$and and $or"),
        ({"a": {"$in": []}}, "filter.a.$in", "non-empty array"),
        ({"a": {"$nin": "x"}}, "filter.a.$nin", "non-empty array"),
        ({"a": {"$in": [1, {"x": 1}]}}, "filter.a.$in[1]", "got object"),
        ({"a": {}}, "filter.a", "at least one operator"),
        ({"bad name": 1}, "filter.bad name", "letters, digits"),
        ({"a..b": 1}, "filter.a..b", "dot-separated"),
        ({'a"b': 1}, 'filter.a"b', "dot-separated"),
        ({"a": float("nan")}, "filter.a", "finite"),
        ({"a": 2**64}, "filter.a", "64-bit"),
        ({"$and": []}, "filter.$and", "non-empty array"),
        ({"$and": {"a": 1}}, "filter.$and", "non-empty array"),
        ({"$and": [{"a": 1}, 3]}, "filter.$and[1]", "must be an object"),
    ],
)
def test_invalid_filters_name_the_field_at_fault(filter_obj: Any, field: str, says: str) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_filter(filter_obj)
    assert caught.value.field == field
    assert says in caught.value.message


@pytest.mark.parametrize(
    ("filter_obj", "field", "says"),
    [
        ({"a": "x\ud800"}, "filter.a", "lone surrogate"),
        ({"a": {"$in": ["ok", "\udfff"]}}, "filter.a.$in[1]", "lone surrogate"),
        ({"a": {"$gte": "\ud800"}}, "filter.a.$gte", "lone surrogate"),
        ({"$or": [{"a": {"$ne": "n\x00ul"}}]}, "filter.$or[0].a.$ne", "NUL"),
        ({"a": {"$\ud800": 1}}, "filter.a.$\\ud800", "unknown operator"),
        ({"\ud800": 1}, "filter.\\ud800", "not allowed"),
        ({"$\ud800": 1}, "filter.$\\ud800", "unknown operator"),
        ({"a": {"b\ud800": 1}}, "filter.a.b\\ud800", "dotted path"),
        ({"a": -(2**63) - 1}, "filter.a", "64-bit"),
    ],
)
def test_values_and_names_no_replica_could_carry_are_rejected_with_a_renderable_field(
    filter_obj: Any, field: str, says: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_filter(filter_obj)
    assert caught.value.field == field and says in caught.value.message
    (caught.value.field + caught.value.message).encode("utf-8")  # the 400 itself can be rendered


def test_custom_root_path_prefixes_error_fields() -> None:
    with pytest.raises(ValidationError) as caught:
        parse_filter({"a": {"$gt": [1]}}, path="body.filter")
    assert caught.value.field == "body.filter.a.$gt"


def nested(depth: int) -> dict[str, Any]:
    filter_obj: dict[str, Any] = {"a": 1}
    for _ in range(depth - 1):
        filter_obj = {"$and": [filter_obj]}
    return filter_obj


def test_nesting_up_to_eight_levels_is_accepted_and_deeper_is_rejected() -> None:
    parse_filter(nested(8))
    with pytest.raises(ValidationError) as caught:
        parse_filter(nested(9))
    assert caught.value.field == "filter" + ".$and[0]" * 8
    assert "at most 8" in caught.value.message


# ---------------------------------------------------------------- semantics
TYPED_DOCS: list[dict[str, Any]] = [
    {"flag": True},  # 0
    {"flag": False},  # 1
    {"flag": 1},  # 2
    {"flag": 0},  # 3
    {"flag": "true"},  # 4
    {"flag": None},  # 5
    {},  # 6
    {"flag": [True]},  # 7
    {"flag": {"x": True}},  # 8
    {"flag": 1.0},  # 9
]


@pytest.mark.parametrize(
    ("filter_obj", "expected"),
    [
        ({"flag": True}, {0}),
        ({"flag": False}, {1}),
        ({"flag": 1}, {2, 9}),
        ({"flag": 0}, {3}),
        ({"flag": "true"}, {4}),
        ({"flag": None}, {5, 6}),
        ({"flag": {"$ne": True}}, set(range(10)) - {0}),
        ({"flag": {"$ne": None}}, set(range(10)) - {5, 6}),
        ({"flag": {"$in": [True, 0, None]}}, {0, 3, 5, 6}),
        ({"flag": {"$nin": [True, 0, None]}}, {1, 2, 4, 7, 8, 9}),
        ({"flag": {"$gte": 0.5}}, {2, 9}),
        ({"flag": {"$lt": "u"}}, {4}),
    ],
)
def test_values_compare_only_within_their_json_type(filter_obj: Any, expected: set[int]) -> None:
    assert sql_matching_ids(TYPED_DOCS, filter_obj) == expected
    assert python_matching_ids(TYPED_DOCS, filter_obj) == expected


def test_string_ranges_select_iso_dates_by_code_point_order() -> None:
    docs = [{"day": "2023-12-31"}, {"day": "2024-01-01"}, {"day": "2024-06-30"}, {"day": "2025-01-01"}, {"day": 2024}]
    filter_obj = {"day": {"$gte": "2024-01-01", "$lt": "2025-01-01"}}
    assert sql_matching_ids(docs, filter_obj) == python_matching_ids(docs, filter_obj) == {1, 2}


def test_dotted_paths_descend_only_through_objects() -> None:
    docs = [{"a": {"b": {"c": 5}}}, {"a": {"b": 5}}, {"a": [{"b": {"c": 5}}]}, {"a.b.c": 5}, {"a": {"b-x": {"c_1": 5}}}]
    assert sql_matching_ids(docs, {"a.b.c": 5}) == python_matching_ids(docs, {"a.b.c": 5}) == {0}
    assert sql_matching_ids(docs, {"a.b-x.c_1": 5}) == python_matching_ids(docs, {"a.b-x.c_1": 5}) == {4}


def test_values_are_bound_as_parameters_never_interpolated() -> None:
    hostile = "x' OR 1=1 --\"]}"
    where, params = to_sql(parse_filter({"title": hostile, "n": {"$in": [1, 2]}}), "metadata")
    assert hostile not in where and "OR 1=1" not in where
    assert hostile in params
    docs = [{"title": hostile, "n": 1}, {"title": "other", "n": 1}]
    assert sql_matching_ids(docs, {"title": hostile}) == {0}


def test_to_sql_rejects_a_column_that_is_not_an_identifier() -> None:
    with pytest.raises(ValueError):
        to_sql(parse_filter({"a": 1}), "metadata; DROP TABLE docs")


# ------------------------------------------------------- random agreement
FIELDS = ["a", "b", "c", "n.x", "n.y"]
VALUES: list[Any] = [0, 1, 2, 2.0, 2.5, -1, "a", "b", "c", "", True, False, None]


def random_metadata(rng: random.Random) -> dict[str, Any]:
    metadata: dict[str, Any] = {}
    for field in ("a", "b", "c"):
        if rng.random() < 0.8:
            metadata[field] = rng.choice([*VALUES, [1, 2], {"k": 1}])
    if rng.random() < 0.7:
        metadata["n"] = rng.choice([{"x": rng.choice(VALUES), "y": rng.choice(VALUES)}, {"x": rng.choice(VALUES)}, 3, None])
    return metadata


def random_condition(rng: random.Random) -> Any:
    op = rng.choice(["eq", "$eq", "$ne", "$in", "$nin", "$gt", "$gte", "$lt", "$lte", "range2"])
    if op == "eq":
        return rng.choice(VALUES)
    if op in ("$in", "$nin"):
        return {op: rng.sample(VALUES, rng.randint(1, 4))}
    if op.startswith("$g") or op.startswith("$l"):
        return {op: rng.choice([0, 1, 2, 2.5, -1, "a", "b", ""])}
    if op == "range2":
        return {"$gt": rng.choice([-1, 0, 1]), "$lte": rng.choice([2, 2.5, 3])}
    return {op: rng.choice(VALUES)}


def random_filter(rng: random.Random, depth: int = 1) -> dict[str, Any]:
    filter_obj: dict[str, Any] = {}
    for field in rng.sample(FIELDS, rng.randint(1, 2)):
        filter_obj[field] = random_condition(rng)
    if depth < 4 and rng.random() < 0.4:
        filter_obj[rng.choice(["$and", "$or"])] = [random_filter(rng, depth + 1) for _ in range(rng.randint(1, 3))]
    return filter_obj


def test_sql_and_python_agree_on_random_documents_and_filters() -> None:
    rng = random.Random(20240611)
    docs = [random_metadata(rng) for _ in range(300)]
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE docs (id INTEGER PRIMARY KEY, metadata TEXT NOT NULL)")
    conn.executemany("INSERT INTO docs VALUES (?, ?)", [(i, json.dumps(m)) for i, m in enumerate(docs)])
    non_trivial = 0
    for _ in range(400):
        filter_obj = random_filter(rng)
        flt = parse_filter(filter_obj)
        where, params = to_sql(flt, "metadata")
        from_sql = {row[0] for row in conn.execute(f"SELECT id FROM docs WHERE {where}", params)}
        from_python = {i for i, m in enumerate(docs) if matches(flt, m)}
        assert from_sql == from_python, filter_obj
        non_trivial += 0 < len(from_sql) < len(docs)
    assert non_trivial > 150  # the filters actually discriminate, so agreement means something


def test_dump_filter_round_trips_through_parse() -> None:
    rng = random.Random(7)
    for _ in range(200):
        parsed = parse_filter(random_filter(rng))
        dumped = dump_filter(parsed)
        assert parse_filter(json.loads(json.dumps(dumped))) == parsed


def test_dump_of_a_maximally_nested_filter_is_still_accepted() -> None:
    filter_obj: dict[str, Any] = {"a": {"$gte": 1, "$lt": 9}, "b": "x"}
    for level in range(7):
        filter_obj = {"c": level, "d": {"$ne": None}, "$or": [filter_obj, {"e": True}], "$and": [{"f": 1}, {"g": 2}]}
    parsed = parse_filter(filter_obj)
    assert parse_filter(dump_filter(parsed)) == parsed
