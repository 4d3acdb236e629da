"""The MongoDB query compiler (server/store/mongo_query.py), as pure functions.

No MongoDB server takes part here. These tests pin the exact filter documents, pipelines and
index declarations the compiler emits, and check the compiler's LOGIC by evaluating its filters
on sample documents with :func:`matches`, a small evaluator of the few query operators the
compiler uses ($and/$or/$nor/$elemMatch/$in/$nin/$ne/$gt/$gte/$lt/$lte/$regex), written from
MongoDB's documented semantics. It is not MongoDB and proves nothing about it: the engine runs
against a real server in tests/test_store_contract.py (with MONGODB_URI set).
"""

from __future__ import annotations

import itertools
import re
from decimal import Decimal
from typing import Any

import bson
import pytest
from bson.decimal128 import Decimal128

from server.fhir.outcome import FhirError
from server.fhir.search.ast import (
    MAX_MS,
    MIN_MS,
    Chain,
    Clause,
    DateQuery,
    DateValue,
    Has,
    IndexValues,
    Keyset,
    MissingQuery,
    NumberQuery,
    NumberValue,
    QuantityQuery,
    QuantityValue,
    QueryValue,
    ReferenceQuery,
    ReferenceValue,
    SearchParam,
    SearchQuery,
    SortKey,
    StringQuery,
    StringValue,
    TokenQuery,
    TokenValue,
    UriQuery,
    UriValue,
    page_order,
)
from server.fhir.search.parse import parse_search
from server.fhir.search.registry import Registry
from server.store.mongo_query import (
    ABSOLUTE_REFERENCE,
    DEFAULT_SORT,
    MS_PER_DAY,
    NOTHING,
    RESOURCE_INDEXES,
    CompiledQuery,
    Pipeline,
    approx_margin,
    compile_clause,
    compile_query,
    history_at_pipeline,
    id_pipeline,
    index_document,
    match_filter,
    referenced_ids_pipeline,
    regex_literal,
    sort_pipeline,
    to_decimal128,
    uri_prefixes,
)

DAY = MS_PER_DAY
QLO = 1_704_153_600_000  # 2024-01-02T00:00:00.000Z
QHI = QLO + DAY - 1  # 2024-01-02T23:59:59.999Z
NOW = QLO + 100 * DAY
SYS = "http://example.org/ids"
UCUM = "http://unitsofmeasure.org"


def param(code: str, type_: str) -> SearchParam:
    return SearchParam(code, type_, ("Patient",))  # type: ignore[arg-type]


GENDER = param("gender", "token")
IDENTIFIER = param("identifier", "token")
LANGUAGE = param("language", "token")
GP = param("general-practitioner", "reference")
BIRTHDATE = param("birthdate", "date")
NAME = param("name", "string")
URL = param("url", "uri")
ORDER = param("birth-order", "number")
WEIGHT = param("weight", "quantity")
COMPOSITE = param("code-value", "composite")
ID = param("_id", "token")
LAST_UPDATED = param("_lastUpdated", "date")
TASK_FOR = SearchParam("for", "reference", ("Task",))
TASK_STATUS = SearchParam("status", "token", ("Task",))
COMM_BASED_ON = SearchParam("based-on", "reference", ("Communication",))
COMM_STATUS = SearchParam("status", "token", ("Communication",))


def clause(p: SearchParam, *values: QueryValue, mod: str | None = None) -> Clause:
    return Clause(p, mod, values)


def no_lookups(pipeline: Pipeline) -> list[str]:
    raise AssertionError(f"no sub-query expected, got {pipeline}")


def compile_one(c: Clause, type_: str = "Patient") -> dict[str, Any]:
    return compile_clause(c, type_, NOW)


def dec(text: str) -> Decimal:
    return Decimal(text)


def plain(obj: Any) -> Any:
    """Decimal128 -> Decimal throughout (BSON decimals with equal values may differ in form)."""
    if isinstance(obj, Decimal128):
        return obj.to_decimal()
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [plain(v) for v in obj]
    return obj


def number(prefix: str, value: str, cls: type = NumberQuery, **extra: Any) -> Any:
    exact = Decimal(value)
    half = Decimal(1).scaleb(exact.as_tuple().exponent) / 2  # type: ignore[arg-type]
    return cls(prefix, exact, exact - half, exact + half, **extra)


def elem(array: str, **cond: Any) -> dict[str, Any]:
    return {f"ix.{array}": {"$elemMatch": cond}}


# -- the evaluator (checks the compiler's logic; NOT MongoDB) --------------------------------

_MISSING = object()
_ORDER_OPS = {"$gt": lambda a, b: a > b, "$gte": lambda a, b: a >= b,
              "$lt": lambda a, b: a < b, "$lte": lambda a, b: a <= b}


def _get(doc: dict[str, Any], path: str) -> Any:
    value: Any = doc
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _same_bracket(a: Any, b: Any) -> bool:
    """MongoDB compares values of one type bracket only (numbers with numbers...)."""
    def bracket(v: Any) -> str:
        if isinstance(v, bool):
            return "bool"
        return "number" if isinstance(v, int | Decimal) else type(v).__name__
    return bracket(a) == bracket(b)


def _op(value: Any, op: str, arg: Any) -> bool:
    if op == "$elemMatch":
        return isinstance(value, list) and any(matches(e, arg) for e in value)
    if op == "$ne":
        return not _op(value, "$eq", arg)
    if op == "$nin":
        return not _op(value, "$in", arg)
    if value is _MISSING:
        return False
    items = [plain(v) for v in (value if isinstance(value, list) else [value])]
    if op == "$eq":
        return any(_same_bracket(v, plain(arg)) and v == plain(arg) for v in items)
    if op == "$in":
        return any(_op(value, "$eq", a) for a in arg)
    if op == "$regex":
        return any(isinstance(v, str) and re.search(arg, v) is not None for v in items)
    if op in _ORDER_OPS:
        return any(_same_bracket(v, plain(arg)) and _ORDER_OPS[op](v, plain(arg))
                   for v in items)
    raise AssertionError(f"the evaluator does not know {op}")


def matches(doc: dict[str, Any], filter_: dict[str, Any]) -> bool:
    for key, cond in filter_.items():
        if key in ("$and", "$or", "$nor"):
            assert cond, f"{key} must not be empty (MongoDB rejects it)"
            hits = [matches(doc, f) for f in cond]
            ok = all(hits) if key == "$and" else any(hits) if key == "$or" else not any(hits)
        elif isinstance(cond, dict) and any(k.startswith("$") for k in cond):
            ok = all(_op(_get(doc, key), op, arg) for op, arg in cond.items())
        else:
            ok = _op(_get(doc, key), "$eq", cond)
        if not ok:
            return False
    return True


def run_id_pipeline(docs: list[dict[str, Any]], pipeline: Pipeline) -> list[str]:
    """Evaluates the two id pipelines the compiler builds (same caveat as :func:`matches`)."""
    selected = [d for d in docs if matches(d, pipeline[0]["$match"])]
    if pipeline == id_pipeline(pipeline[0]["$match"]):
        return [d["id"] for d in selected]
    element = pipeline[2]["$match"]
    refs = [{"ix": {"ref": r}} for d in selected for r in d["ix"].get("ref", [])]
    return sorted({r["ix"]["ref"]["id"] for r in refs if matches(r, element)})


def doc(id_: str, values: IndexValues | None = None, *, type_: str = "Patient",
        lum: int = 0, deleted: bool = False) -> dict[str, Any]:
    return {"_id": f"{type_}/{id_}", "type": type_, "id": id_, "lum": lum,
            "deleted": deleted, "ix": index_document(values or IndexValues())}


def found(docs: list[dict[str, Any]], *conditions: Any, type_: str = "Patient",
          ids: frozenset[str] | None = None) -> set[str]:
    def resolve(pipeline: Pipeline) -> list[str]:
        return run_id_pipeline(docs, pipeline)

    compiled = compile_query(SearchQuery(type_, list(conditions), ids=ids), resolve, NOW)
    return {d["id"] for d in docs if matches(d, compiled.filter)}


def test_evaluator_basics() -> None:
    d = {"a": 1, "b": [1, 2], "s": "abc", "t": True, "x": [{"p": "q", "v": 3}]}
    assert matches(d, {"a": 1}) and not matches(d, {"a": True})
    assert matches(d, {"b": 2}) and matches(d, {"b": {"$gt": 1}})
    assert not matches(d, {"s": {"$gt": 1}})  # no comparison across type brackets
    assert matches(d, {"zz": {"$ne": 1}}) and not matches(d, {"zz": {"$gt": 0}})
    assert matches(d, {"x": {"$elemMatch": {"p": "q", "v": {"$gte": 3}}}})
    assert not matches(d, {"x": {"$elemMatch": {"p": "q", "v": {"$gt": 3}}}})
    assert matches(d, {"$nor": [{"a": 2}], "$or": [{"s": {"$regex": "^ab"}}, {"a": 5}]})
    assert not matches(d, NOTHING) and matches(d, {})


# -- index documents (write side) ------------------------------------------------------------


def test_index_document_shape() -> None:
    values = IndexValues(
        tokens=[TokenValue("gender", "http://hl7.org/fhir/administrative-gender", "female"),
                TokenValue("gender", "http://hl7.org/fhir/administrative-gender", "female"),
                TokenValue("general-practitioner", SYS, "123", identifier=True)],
        references=[ReferenceValue("general-practitioner", "Practitioner", "d1",
                                   version="2")],
        dates=[DateValue("birthdate", QLO, QHI)],
        strings=[StringValue("name", "asheim", "Åsheim")],
        uris=[UriValue("url", "https://app.example/hooks")],
        numbers=[NumberValue("birth-order", Decimal("2"))],
        quantities=[QuantityValue("weight", Decimal("1.10"), UCUM, "kg", "kilo")],
    )
    assert index_document(values) == {
        "tok": [{"p": "gender", "s": "http://hl7.org/fhir/administrative-gender",
                 "c": "female", "x": "", "i": False},
                {"p": "general-practitioner", "s": SYS, "c": "123", "x": "", "i": True}],
        "ref": [{"p": "general-practitioner", "t": "Practitioner", "id": "d1", "u": "",
                 "v": "2"}],
        "dt": [{"p": "birthdate", "lo": QLO, "hi": QHI}],
        "str": [{"p": "name", "n": "asheim", "e": "Åsheim"}],
        "uri": [{"p": "url", "v": "https://app.example/hooks"}],
        "num": [{"p": "birth-order", "v": Decimal128("2")}],
        "qty": [{"p": "weight", "v": Decimal128("1.10"), "s": UCUM, "c": "kg", "u": "kilo"}],
        "has": ["birth-order", "birthdate", "gender", "general-practitioner", "name", "url",
                "weight"],
    }
    assert index_document(IndexValues()) == {}
    only_identifier = IndexValues(tokens=[TokenValue("general-practitioner", SYS, "1",
                                                     identifier=True)])
    assert "has" not in index_document(only_identifier)  # :missing ignores identifiers


def test_the_resources_with_absolute_references() -> None:
    def refs(*values: ReferenceValue) -> dict[str, Any]:
        return doc("x", IndexValues(references=list(values)))

    absolute = refs(ReferenceValue("subject", "Patient", "p", url="https://a/fhir/Patient/p"),
                    ReferenceValue("performer", "Practitioner", "d"))
    elsewhere = refs(ReferenceValue("subject", "", "", url="urn:uuid:1"))
    relative = refs(ReferenceValue("subject", "Patient", "p"))
    chosen = {"ix.ref": ABSOLUTE_REFERENCE}
    assert matches(absolute, chosen) and matches(elsewhere, chosen)
    assert not matches(relative, chosen) and not matches(doc("none"), chosen)


def test_decimal128_keeps_34_digits_and_rejects_overflow() -> None:
    assert to_decimal128(Decimal("1.10")) == Decimal128("1.10")
    long = Decimal("1." + "3" * 40)
    assert to_decimal128(long).to_decimal() == Decimal("1." + "3" * 33)
    with pytest.raises(FhirError) as err:
        to_decimal128(Decimal("1e7000"))
    assert err.value.status == 400


# -- tokens ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [
    (TokenQuery(None, "female"), {"p": "gender", "c": "female", "i": False}),
    (TokenQuery("", "female"), {"p": "gender", "c": "female", "s": "", "i": False}),
    (TokenQuery(SYS, "female"), {"p": "gender", "c": "female", "s": SYS, "i": False}),
    (TokenQuery(SYS, None), {"p": "gender", "s": SYS, "i": False}),
    (TokenQuery(None, None), {"p": "gender", "i": False}),
])
def test_token_forms(value: TokenQuery, expected: dict[str, Any]) -> None:
    assert compile_one(clause(GENDER, value)) == {"ix.tok": {"$elemMatch": expected}}


def test_token_or_not_text_missing() -> None:
    male, female = TokenQuery(None, "male"), TokenQuery(None, "female")
    assert compile_one(clause(GENDER, male, female)) == {"$or": [
        elem("tok", p="gender", c="male", i=False), elem("tok", p="gender", c="female",
                                                         i=False)]}
    assert compile_one(clause(GENDER, male, female, mod="not")) == {"$nor": [
        elem("tok", p="gender", c="male", i=False), elem("tok", p="gender", c="female",
                                                         i=False)]}
    assert compile_one(clause(LANGUAGE, TokenQuery(None, "norsk b.*"), mod="text")) == elem(
        "tok", p="language", x={"$regex": r"^norsk\ b\.\*"}, i=False)
    assert compile_one(clause(GENDER, MissingQuery(True), mod="missing")) == {
        "ix.has": {"$ne": "gender"}}
    assert compile_one(clause(GENDER, MissingQuery(False), mod="missing")) == {
        "ix.has": "gender"}


def test_token_logic() -> None:
    gender = "http://hl7.org/fhir/administrative-gender"
    docs = [
        doc("t1", IndexValues(tokens=[TokenValue("identifier", SYS, "A"),
                                      TokenValue("gender", gender, "male")])),
        doc("t2", IndexValues(tokens=[TokenValue("identifier", "", "A"),
                                      TokenValue("gender", gender, "female")])),
        doc("t3", IndexValues(tokens=[TokenValue("identifier", SYS, "B"),
                                      TokenValue("identifier", "urn:other", "A")])),
        doc("t4", IndexValues(tokens=[TokenValue("language", "urn:ietf:bcp:47", "nb",
                                                 "norsk bokmal")])),
        doc("gone", IndexValues(tokens=[TokenValue("gender", gender, "male")]), deleted=True),
    ]
    assert found(docs, clause(IDENTIFIER, TokenQuery(None, "A"))) == {"t1", "t2", "t3"}
    assert found(docs, clause(IDENTIFIER, TokenQuery("", "A"))) == {"t2"}
    assert found(docs, clause(IDENTIFIER, TokenQuery(SYS, "A"))) == {"t1"}
    assert found(docs, clause(IDENTIFIER, TokenQuery(SYS, None))) == {"t1", "t3"}
    assert found(docs, clause(IDENTIFIER, TokenQuery(SYS, "A"), mod="not")) == {
        "t2", "t3", "t4"}  # no value equal, resources without a value included
    assert found(docs, clause(GENDER, TokenQuery(None, "male"), TokenQuery(None, "female"),
                              mod="not")) == {"t3", "t4"}
    assert found(docs, clause(LANGUAGE, TokenQuery(None, "norsk"), mod="text")) == {"t4"}
    assert found(docs, clause(LANGUAGE, TokenQuery(None, "bokmal"), mod="text")) == set()
    assert found(docs, clause(GENDER, MissingQuery(True), mod="missing")) == {"t3", "t4"}


def test_code_tokens_are_read_against_their_implicit_system() -> None:
    """``system|code`` on a ``code`` element (indexed without its system) is parsed against
    the system of the element's value set; the filters it compiles to select as the
    embedded engine does (tests/api/test_search.py)."""
    registry = Registry.load_default()
    task_status = "http://hl7.org/fhir/task-status"
    docs = [doc(status, registry.extract({"resourceType": "Task", "id": status,
                                          "status": status, "intent": "order"}),
                type_="Task") for status in ("ready", "draft")]

    def tasks(name: str, value: str) -> set[str]:
        conditions = parse_search(registry, "Task", [(name, value)]).query.conditions
        return found(docs, *conditions, type_="Task")

    assert tasks("status", f"{task_status}|ready") == {"ready"}
    assert tasks("status", f"{task_status}|") == {"ready", "draft"}
    assert tasks("status", "http://hl7.org/fhir/request-status|ready") == set()
    assert tasks("status", "|ready") == set()
    assert tasks("status:not", f"{task_status}|ready") == {"draft"}
    assert tasks("status:not", "|ready") == {"ready", "draft"}
    assert tasks("intent", "http://hl7.org/fhir/request-intent|order") == {"ready", "draft"}


# -- references ------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [
    (ReferenceQuery("Practitioner", "d1"),
     elem("ref", p="general-practitioner", id="d1", t="Practitioner")),
    (ReferenceQuery(None, "d1"), elem("ref", p="general-practitioner", id="d1")),
    (ReferenceQuery(None, None, url="https://x.example/fhir/Practitioner/9"),
     elem("ref", p="general-practitioner", u="https://x.example/fhir/Practitioner/9")),
    (ReferenceQuery("Practitioner", "d1", url="https://x.example/fhir/Practitioner/d1"),
     {"$or": [elem("ref", p="general-practitioner", id="d1", t="Practitioner"),
              elem("ref", p="general-practitioner",
                   u="https://x.example/fhir/Practitioner/d1")]}),
    (ReferenceQuery("Practitioner", "d1", version="2"),
     elem("ref", p="general-practitioner", id="d1", t="Practitioner", v="2")),
])
def test_reference_forms(value: ReferenceQuery, expected: dict[str, Any]) -> None:
    assert compile_one(clause(GP, value)) == expected


def test_reference_identifier_and_logic() -> None:
    assert compile_one(clause(GP, TokenQuery(SYS, "123"), mod="identifier")) == elem(
        "tok", p="general-practitioner", c="123", s=SYS, i=True)
    docs = [
        doc("r1", IndexValues(references=[ReferenceValue("general-practitioner",
                                                         "Practitioner", "d1")])),
        doc("r2", IndexValues(references=[ReferenceValue("general-practitioner", "Patient",
                                                         "d1", version="3")])),
        doc("r3", IndexValues(tokens=[TokenValue("general-practitioner", SYS, "123",
                                                 identifier=True)])),
        doc("r4", IndexValues(tokens=[TokenValue("identifier", SYS, "123")])),
    ]
    assert found(docs, clause(GP, ReferenceQuery(None, "d1"))) == {"r1", "r2"}
    assert found(docs, clause(GP, ReferenceQuery("Practitioner", "d1"))) == {"r1"}
    assert found(docs, clause(GP, ReferenceQuery("Patient", "d1", version="3"))) == {"r2"}
    assert found(docs, clause(GP, ReferenceQuery("Patient", "d1", version="4"))) == set()
    assert found(docs, clause(GP, TokenQuery(SYS, "123"), mod="identifier")) == {"r3"}
    assert found(docs, clause(IDENTIFIER, TokenQuery(SYS, "123"))) == {"r4"}
    assert found(docs, clause(GP, MissingQuery(True), mod="missing")) == {"r3", "r4"}


# -- dates -----------------------------------------------------------------------------------


def test_date_prefix_filters() -> None:
    def compiled(prefix: str) -> dict[str, Any]:
        return compile_one(clause(BIRTHDATE, DateQuery(prefix, QLO, QHI)))  # type: ignore[arg-type]

    eq = elem("dt", p="birthdate", lo={"$gte": QLO, "$lte": QHI}, hi={"$lte": QHI})
    assert compiled("eq") == eq
    assert compiled("ne") == {"$or": [elem("dt", p="birthdate", lo={"$lt": QLO}),
                                      elem("dt", p="birthdate", hi={"$gt": QHI})]}
    assert compiled("gt") == elem("dt", p="birthdate", hi={"$gt": QHI})
    assert compiled("lt") == elem("dt", p="birthdate", lo={"$lt": QLO})
    assert compiled("ge") == elem("dt", p="birthdate", hi={"$gte": QLO})
    assert compiled("le") == elem("dt", p="birthdate", lo={"$lte": QHI})
    assert compiled("sa") == elem("dt", p="birthdate", lo={"$gt": QHI})
    assert compiled("eb") == elem("dt", p="birthdate", hi={"$lt": QLO})
    margin = (NOW - QHI) // 10
    assert compiled("ap") == elem("dt", p="birthdate", lo={"$lte": QHI + margin},
                                  hi={"$gte": QLO - margin})


def test_approx_margin() -> None:
    query = DateQuery("ap", QLO, QHI)
    assert approx_margin(query, QLO + 5) == DAY  # now inside: the minimum, one day
    assert approx_margin(query, QHI + 20 * DAY) == 2 * DAY
    assert approx_margin(query, QLO - 30 * DAY) == 3 * DAY
    assert approx_margin(query, QHI + 3 * DAY) == DAY


def _date_oracle(prefix: str, lo: int, hi: int, qlo: int, qhi: int) -> bool:
    """The documented date rules, for one stored range."""
    eq = lo >= qlo and hi <= qhi
    d = approx_margin(DateQuery("ap", qlo, qhi), NOW)
    return {"eq": eq, "ne": not eq, "gt": hi > qhi, "lt": lo < qlo, "ge": hi >= qlo,
            "le": lo <= qhi, "sa": lo > qhi, "eb": hi < qlo,
            "ap": lo <= qhi + d and hi >= qlo - d}[prefix]


_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
_POINTS = [QLO - 40 * DAY, QLO - DAY, QLO - 1, QLO, QLO + 5, QHI, QHI + 1, QHI + 15 * DAY]
_RANGES = [(lo, hi) for lo, hi in itertools.product([MIN_MS, *_POINTS], [*_POINTS, MAX_MS])
           if lo <= hi]


@pytest.mark.parametrize("prefix", _PREFIXES)
def test_date_logic_matches_the_rules(prefix: str) -> None:
    docs = [doc(f"d{n}", IndexValues(dates=[DateValue("birthdate", lo, hi)]))
            for n, (lo, hi) in enumerate(_RANGES)]
    docs.append(doc("none"))
    query = clause(BIRTHDATE, DateQuery(prefix, QLO, QHI))  # type: ignore[arg-type]
    expected = {f"d{n}" for n, (lo, hi) in enumerate(_RANGES)
                if _date_oracle(prefix, lo, hi, QLO, QHI)}
    assert found(docs, query) == expected


def test_date_any_value_matches() -> None:
    two = doc("two", IndexValues(dates=[DateValue("birthdate", QLO, QLO),
                                        DateValue("birthdate", QLO - 9 * DAY, QLO - 9 * DAY)]))
    one = doc("one", IndexValues(dates=[DateValue("birthdate", QLO, QLO)]))
    assert found([two, one], clause(BIRTHDATE, DateQuery("ne", QLO, QHI))) == {"two"}
    assert found([two, one], clause(BIRTHDATE, DateQuery("eq", QLO, QHI),
                                    DateQuery("lt", QLO - 20 * DAY, QLO - 20 * DAY))) == {
        "two", "one"}


@pytest.mark.parametrize("prefix", _PREFIXES)
def test_last_updated_is_the_date_rules_on_a_point(prefix: str) -> None:
    docs = [doc(f"u{n}", lum=point) for n, point in enumerate(_POINTS)]
    query = clause(LAST_UPDATED, DateQuery(prefix, QLO, QHI))  # type: ignore[arg-type]
    expected = {f"u{n}" for n, point in enumerate(_POINTS)
                if _date_oracle(prefix, point, point, QLO, QHI)}
    assert found(docs, query) == expected


def test_last_updated_filters() -> None:
    def compiled(prefix: str) -> dict[str, Any]:
        return compile_one(clause(LAST_UPDATED, DateQuery(prefix, QLO, QHI)))  # type: ignore[arg-type]

    assert compiled("eq") == {"lum": {"$gte": QLO, "$lte": QHI}}
    assert compiled("ne") == {"$or": [{"lum": {"$lt": QLO}}, {"lum": {"$gt": QHI}}]}
    assert compiled("ge") == {"lum": {"$gte": QLO}}
    assert compiled("sa") == {"lum": {"$gt": QHI}}
    assert compile_one(clause(LAST_UPDATED, MissingQuery(True), mod="missing")) == NOTHING
    assert compile_one(clause(LAST_UPDATED, MissingQuery(False), mod="missing")) == {}


# -- strings and uris ------------------------------------------------------------------------


def test_string_filters_escape_user_input() -> None:
    assert compile_one(clause(NAME, StringQuery("a.b*("))) == elem(
        "str", p="name", n={"$regex": r"^a\.b\*\("})
    assert compile_one(clause(NAME, StringQuery("Åse"), mod="exact")) == elem(
        "str", p="name", e="Åse")
    assert compile_one(clause(NAME, StringQuery("a.b*("), mod="contains")) == elem(
        "str", p="name", n={"$regex": r"a\.b\*\("})
    assert compile_one(clause(NAME, StringQuery("per"), StringQuery("ola"))) == {"$or": [
        elem("str", p="name", n={"$regex": "^per"}), elem("str", p="name",
                                                          n={"$regex": "^ola"})]}


@pytest.mark.parametrize("text", ["a.b*(", "x+y?", "[z]{2}", "a|b", "c$^", "back\\slash",
                                  "50% #1 & ~", "tab\there", "nul\x00", "æøå ü", ""])
def test_regex_literal_matches_only_the_text(text: str) -> None:
    pattern = re.compile(regex_literal(text))
    assert pattern.fullmatch(text)
    assert re.fullmatch(r"[\w\\]*", regex_literal("abcÆØÅ123"))  # letters stay as they are
    if text:
        assert not pattern.fullmatch(text[:-1] + "X")


def test_string_logic() -> None:
    docs = [doc("s1", IndexValues(strings=[StringValue("name", "a.b*(c", "A.b*(c")])),
            doc("s2", IndexValues(strings=[StringValue("name", "axb*(c", "Axb*(c")])),
            doc("s3", IndexValues(strings=[StringValue("name", "asheim", "Åsheim"),
                                           StringValue("name", "kari", "Kari")]))]
    assert found(docs, clause(NAME, StringQuery("a.b*("))) == {"s1"}
    assert found(docs, clause(NAME, StringQuery("b*(c"), mod="contains")) == {"s1", "s2"}
    assert found(docs, clause(NAME, StringQuery("ka"))) == {"s3"}
    assert found(docs, clause(NAME, StringQuery("heim"))) == set()
    assert found(docs, clause(NAME, StringQuery("heim"), mod="contains")) == {"s3"}
    assert found(docs, clause(NAME, StringQuery("Åsheim"), mod="exact")) == {"s3"}
    assert found(docs, clause(NAME, StringQuery("asheim"), mod="exact")) == set()
    assert found(docs, clause(NAME, StringQuery(""))) == {"s1", "s2", "s3"}


def test_uri_filters_and_logic() -> None:
    base = "https://app.example/hooks"
    assert compile_one(clause(URL, UriQuery(base))) == elem("uri", p="url", v=base)
    assert compile_one(clause(URL, UriQuery(base), mod="below")) == elem(
        "uri", p="url", v={"$regex": r"^https\:\/\/app\.example\/hooks"})
    assert compile_one(clause(URL, UriQuery("a/b"), mod="above")) == elem(
        "uri", p="url", v={"$in": ["a", "a/", "a/b"]})
    assert compile_one(clause(URL, UriQuery(""), mod="above")) == NOTHING
    assert uri_prefixes("abc") == ["a", "ab", "abc"]
    docs = [doc("s1", IndexValues(uris=[UriValue("url", base + "/plan")])),
            doc("s2", IndexValues(uris=[UriValue("url", base)])),
            doc("s3", IndexValues(uris=[UriValue("url", "https://other.example/x")]))]
    assert found(docs, clause(URL, UriQuery(base))) == {"s2"}
    assert found(docs, clause(URL, UriQuery(base), mod="below")) == {"s1", "s2"}
    assert found(docs, clause(URL, UriQuery(base + "/plan/42"), mod="above")) == {"s1", "s2"}
    assert found(docs, clause(URL, UriQuery(base + "/p"), mod="above")) == {"s2"}
    assert found(docs, clause(URL, UriQuery("https://app.example"), mod="above")) == set()


# -- numbers and quantities ------------------------------------------------------------------


def test_number_filters() -> None:
    def compiled(prefix: str, value: str) -> dict[str, Any]:
        return plain(compile_one(clause(ORDER, number(prefix, value))))

    def num(**cond: Any) -> dict[str, Any]:
        return elem("num", p="birth-order", v=cond)

    assert compiled("eq", "100") == num(**{"$gte": dec("99.5"), "$lt": dec("100.5")})
    assert compiled("ne", "100") == {"$or": [num(**{"$lt": dec("99.5")}),
                                             num(**{"$gte": dec("100.5")})]}
    assert compiled("gt", "100") == num(**{"$gt": dec("100")})
    assert compiled("lt", "100") == num(**{"$lt": dec("100")})
    assert compiled("ge", "100") == num(**{"$gte": dec("100")})
    assert compiled("le", "100") == num(**{"$lte": dec("100")})
    assert compiled("sa", "100") == num(**{"$gte": dec("100.5")})
    assert compiled("eb", "100") == num(**{"$lt": dec("99.5")})
    assert compiled("ap", "100") == num(**{"$gte": dec("90"), "$lte": dec("110")})
    assert isinstance(compile_one(clause(ORDER, number("eq", "1")))["ix.num"]["$elemMatch"][
        "v"]["$gte"], Decimal128)


def _number_oracle(prefix: str, v: Decimal, q: NumberQuery) -> bool:
    margin = abs(q.value) / 10
    return {"eq": q.lo <= v < q.hi, "ne": not q.lo <= v < q.hi, "gt": v > q.value,
            "lt": v < q.value, "ge": v >= q.value, "le": v <= q.value, "sa": v >= q.hi,
            "eb": v < q.lo, "ap": q.value - margin <= v <= q.value + margin}[prefix]


@pytest.mark.parametrize("prefix", _PREFIXES)
@pytest.mark.parametrize("query", ["100", "100.0", "1.1", "5", "0"])
def test_number_logic_matches_the_rules(prefix: str, query: str) -> None:
    stored = ["0", "1.10", "5", "89", "91", "99.4", "99.5", "99.96", "100", "100.04",
              "100.5", "109", "111", "150", "-3"]
    docs = [doc(f"n{n}", IndexValues(numbers=[NumberValue("birth-order", Decimal(s))]))
            for n, s in enumerate(stored)]
    docs.append(doc("none"))
    q = number(prefix, query)
    expected = {f"n{n}" for n, s in enumerate(stored) if _number_oracle(prefix, Decimal(s), q)}
    assert found(docs, clause(ORDER, q)) == expected


def test_quantity_filters_and_logic() -> None:
    q = number("eq", "100", QuantityQuery, system=UCUM, code="kg")
    assert plain(compile_one(clause(WEIGHT, q))) == elem(
        "qty", p="weight", v={"$gte": dec("99.5"), "$lt": dec("100.5")}, s=UCUM, c="kg")
    by_unit = number("gt", "5", QuantityQuery, system=None, code="mmHg")
    assert plain(compile_one(clause(WEIGHT, by_unit))) == {"$or": [
        elem("qty", p="weight", v={"$gt": dec("5")}, c="mmHg"),
        elem("qty", p="weight", v={"$gt": dec("5")}, u="mmHg")]}
    docs = [doc("g1", IndexValues(quantities=[QuantityValue("weight", dec("99.6"), UCUM, "kg",
                                                            "kg")])),
            doc("g2", IndexValues(quantities=[QuantityValue("weight", dec("100"), UCUM,
                                                            "mm[Hg]", "mmHg")])),
            doc("g3", IndexValues(quantities=[QuantityValue("weight", dec("150"), UCUM, "kg",
                                                            "kg")])),
            doc("g4")]

    def qty(prefix: str, value: str, system: str | None, code: str | None) -> set[str]:
        query = number(prefix, value, QuantityQuery, system=system, code=code)
        return found(docs, clause(WEIGHT, query))

    assert qty("eq", "100", None, None) == {"g1", "g2"}
    assert qty("eq", "100", UCUM, "kg") == {"g1"}
    assert qty("eq", "100", None, "mmHg") == {"g2"}
    assert qty("eq", "100", None, "mm[Hg]") == {"g2"}
    assert qty("eq", "100", UCUM, "mmHg") == set()  # with a system: the code only
    assert qty("eq", "100", "urn:other", "kg") == set()
    assert qty("ne", "100", None, None) == {"g3"}  # some value not equal; g4 has none
    assert qty("gt", "0", UCUM, None) == {"g1", "g2", "g3"}


# -- _id, ids, chains, _has ------------------------------------------------------------------


def test_id_and_ids() -> None:
    assert compile_one(clause(ID, TokenQuery(None, "a"), TokenQuery(None, "b"))) == {
        "_id": {"$in": ["Patient/a", "Patient/b"]}}
    assert compile_one(clause(ID, TokenQuery(None, "a"), mod="not")) == {
        "_id": {"$nin": ["Patient/a"]}}
    assert compile_one(clause(ID, MissingQuery(True), mod="missing")) == NOTHING
    with pytest.raises(FhirError):
        compile_one(clause(ID, TokenQuery(SYS, None)))
    compiled = compile_query(SearchQuery("Patient", [clause(GENDER, TokenQuery(None, "male"))],
                                         ids=frozenset({"b", "a"})), no_lookups, NOW)
    assert compiled.filter == {"type": "Patient", "deleted": False, "$and": [
        elem("tok", p="gender", c="male", i=False), {"_id": {"$in": ["Patient/a",
                                                                     "Patient/b"]}}]}
    empty = compile_query(SearchQuery("Patient", ids=frozenset()), no_lookups, NOW)
    assert empty.filter["$and"] == [NOTHING]
    docs = [doc("a"), doc("b"), doc("c"), doc("a", type_="Practitioner")]
    assert found(docs, clause(ID, TokenQuery(None, "a"), mod="not")) == {"b", "c"}
    assert found(docs, ids=frozenset({"a", "zz"})) == {"a"}
    assert found(docs, clause(ID, TokenQuery(None, "a")), type_="Practitioner") == {"a"}


def test_chain_runs_the_inner_search_first() -> None:
    calls: list[Pipeline] = []

    def resolve(pipeline: Pipeline) -> list[str]:
        calls.append(pipeline)
        return ["p1", "p2"]

    inner = clause(NAME, StringQuery("ola"))
    chain = Chain(GP, "Practitioner", inner)
    compiled = compile_query(SearchQuery("Patient", [chain]), resolve, NOW)
    inner_filter = match_filter("Practitioner", [compile_one(inner, "Practitioner")])
    assert calls == [[{"$match": inner_filter}, {"$project": {"_id": 0, "id": 1}}]]
    assert compiled.filter["$and"] == [elem("ref", p="general-practitioner",
                                            id={"$in": ["p1", "p2"]}, t="Practitioner")]


def test_has_nests_inner_first() -> None:
    calls: list[Pipeline] = []

    def resolve(pipeline: Pipeline) -> list[str]:
        calls.append(pipeline)
        return [f"x{len(calls)}"]

    completed = clause(COMM_STATUS, TokenQuery(None, "completed"))
    nested = Has("Task", TASK_FOR, Has("Communication", COMM_BASED_ON, completed))
    compiled = compile_query(SearchQuery("Patient", [nested]), resolve, NOW)
    communications = match_filter("Communication", [compile_one(completed, "Communication")])
    tasks = match_filter("Task", [{"_id": {"$in": ["Task/x1"]}}])
    assert calls == [referenced_ids_pipeline(communications, "based-on", "Task"),
                     referenced_ids_pipeline(tasks, "for", "Patient")]
    assert calls[1] == [
        {"$match": tasks},
        {"$unwind": "$ix.ref"},
        {"$match": {"ix.ref.p": "for", "ix.ref.t": "Patient"}},
        {"$group": {"_id": "$ix.ref.id"}},
        {"$project": {"_id": 0, "id": "$_id"}},
    ]
    assert compiled.filter["$and"] == [{"_id": {"$in": ["Patient/x2"]}}]


def test_chain_and_has_logic() -> None:
    def ref(p: str, type_: str, id_: str) -> IndexValues:
        return IndexValues(references=[ReferenceValue(p, type_, id_)])

    def status(code: str, *more: ReferenceValue) -> IndexValues:
        return IndexValues(tokens=[TokenValue("status", "", code)], references=list(more))

    docs = [
        doc("p1", IndexValues(strings=[StringValue("name", "asheim", "Åsheim")])),
        doc("p2", IndexValues(strings=[StringValue("name", "ornulfsen", "Ørnulfsen")])),
        doc("r1", status("ready", ReferenceValue("for", "Patient", "p1")), type_="Task"),
        doc("r2", status("completed", ReferenceValue("for", "Patient", "p2")), type_="Task"),
        doc("r3", status("ready", ReferenceValue("for", "Group", "p2")), type_="Task"),
        doc("c1", status("completed", ReferenceValue("based-on", "Task", "r2")),
            type_="Communication"),
    ]
    chain = Chain(TASK_FOR, "Patient", clause(NAME, StringQuery("orn")))
    assert found(docs, chain, type_="Task") == {"r2"}
    ready = clause(TASK_STATUS, TokenQuery(None, "ready"))
    assert found(docs, Has("Task", TASK_FOR, ready)) == {"p1"}  # r3 points at a Group
    nested = Has("Task", TASK_FOR, Has("Communication", COMM_BASED_ON, clause(
        COMM_STATUS, TokenQuery(None, "completed"))))
    assert found(docs, nested) == {"p2"}


# -- unsupported forms -----------------------------------------------------------------------


@pytest.mark.parametrize("bad", [
    clause(GENDER, TokenQuery(None, "x"), mod="below"),
    clause(GENDER, StringQuery("x")),
    clause(NAME, StringQuery("x"), mod="text"),
    clause(BIRTHDATE, DateQuery("eq", QLO, QHI), mod="exact"),
    clause(GP, ReferenceQuery("Patient", "1"), mod="Patient"),
    clause(COMPOSITE, TokenQuery(None, "x")),
    clause(COMPOSITE, MissingQuery(True), mod="missing"),
    clause(LAST_UPDATED, DateQuery("eq", QLO, QHI), mod="not"),
])
def test_unsupported_forms_are_400(bad: Clause) -> None:
    with pytest.raises(FhirError) as err:
        compile_one(bad)
    assert err.value.status == 400
    assert err.value.issues[0].code == "not-supported"


def test_system_wide_search_is_400() -> None:
    with pytest.raises(FhirError):
        compile_query(SearchQuery(None), no_lookups, NOW)  # type: ignore[arg-type]


# -- sort, paging ----------------------------------------------------------------------------


def test_plain_search_pages_with_find() -> None:
    compiled = compile_query(SearchQuery("Patient", count=10, offset=30, total=True),
                             no_lookups, NOW)
    assert compiled == CompiledQuery({"type": "Patient", "deleted": False}, DEFAULT_SORT, 30, 10)
    assert DEFAULT_SORT == [("lum", 1), ("id", 1)]  # last update, then id


def _page_of(docs: list[dict[str, Any]], sort: list[SortKey], keyset: Keyset | None,
             count: int = 3) -> tuple[list[dict[str, Any]], CompiledQuery]:
    """A page of ``docs`` (current Patients, each with its sort values in ``vals``) the way
    the engine runs the compiled search: ``find`` with its filter and sort, or the
    aggregation stage by stage (a computed sort value ``_s{n}`` is taken from ``vals``)."""
    compiled = compile_query(SearchQuery("Patient", sort=sort, count=count, keyset=keyset),
                             no_lookups, NOW)
    unique = list(dict.fromkeys(k.param.code for k in sort))
    if compiled.pipeline is None:
        found = [dict(d) for d in docs if matches(d, compiled.page or compiled.filter)]
        order = compiled.sort
    else:
        found, order = [dict(d) for d in docs], []
        for stage in compiled.pipeline:
            (op, arg), = stage.items()
            if op == "$match":
                found = [d for d in found if matches(d, arg)]
            elif op == "$addFields":
                for d, name in itertools.product(found, arg):
                    d[name] = (int(d["lum"] > keyset.snapshot_ms) if name == "_chg" and keyset
                               else d["vals"].get(unique[int(name[2:])]) if name[:2] == "_s"
                               else int(d.get(f"_s{name[2:]}") is None))
            elif op == "$sort":
                order = list(arg.items())
    for field, direction in reversed(order):
        found.sort(key=lambda d, f=field: (d[f] is None, 0 if d[f] is None else d[f]),
                   reverse=direction < 0)
    page = found[:count]
    return (page[::-1] if compiled.reverse else page), compiled


def _keyset_of(page: list[dict[str, Any]], compiled: CompiledQuery, at: int, snapshot: int,
               backward: bool = False) -> Keyset:
    doc = page[at]
    return Keyset(tuple(doc.get(f) for f in compiled.key_fields), snapshot, backward,
                  changed=doc["lum"] > snapshot)


def _walk_pages(docs: list[dict[str, Any]], sort: list[SortKey], snapshot: int,
                between: Any = None) -> list[str]:
    seen: list[str] = []
    keyset: Keyset | None = None
    for n in range(20):
        page, compiled = _page_of(docs, sort, keyset)
        if not page:
            return seen
        seen += [d["id"] for d in page]
        if between is not None:
            between(n, seen)
        keyset = _keyset_of(page, compiled, -1, snapshot)
    raise AssertionError(f"paging did not end: {seen}")


@pytest.mark.parametrize("sort", [
    [], [SortKey(LAST_UPDATED, True)], [SortKey(ID, True)],
    [SortKey(LAST_UPDATED), SortKey(ID, True)], [SortKey(GENDER)],
    [SortKey(GENDER, True), SortKey(LAST_UPDATED, True)]],
    ids=["default", "-lastUpdated", "-id", "lastUpdated,-id", "gender", "-gender,-updated"])
def test_keyset_pages_neither_skip_nor_take_in_what_came_later(sort: list[SortKey]) -> None:
    def doc(id_: str, lum: int, born: int | None, gender: str | None) -> dict[str, Any]:
        out = {"_id": f"Patient/{id_}", "type": "Patient", "deleted": False, "id": id_,
               "lum": lum, "born": born, "vals": {"gender": gender}}
        return out if born is not None else {k: v for k, v in out.items() if k != "born"}

    # k0 has no ``born`` (written before the field was): it is as old as any
    docs = [doc(f"k{n}", 1000 + 10 * n, None if n == 0 else 1000 + 10 * n,
                (None, "female", "male")[n % 3]) for n in range(9)]
    snapshot = 2000
    order = [d["id"] for d in _page_of(docs, sort, None, count=100)[0]]
    by_id = {d["id"]: d for d in docs}
    gone: list[str] = []

    def write(page: int, seen: list[str]) -> None:
        if page == 0:  # a seen one and an unseen one changed, one deleted, one created
            unseen = [i for i in order if i not in seen]
            by_id[seen[0]].update(lum=3000, vals={"gender": "other"})
            by_id[unseen[0]].update(lum=3010, vals={"gender": None})
            docs.remove(by_id[unseen[1]])
            gone.append(unseen[1])
            docs.append(doc("later", 3020, 3020, "female"))

    seen = _walk_pages(docs, sort, snapshot, write)
    assert set(seen) == set(order) - set(gone) and "later" not in seen
    assert len(seen) - len(set(seen)) <= (0 if page_order(sort)[0][0] == "_id" else 1)
    # with no writes, a new walk forward and one back from its last resource agree
    snapshot = 4000
    forward = _walk_pages(docs, sort, snapshot)
    last, compiled = _page_of(docs, sort, None, count=100)
    back = [forward[-1]]
    keyset = _keyset_of(last, compiled, -1, snapshot, backward=True)
    while True:
        page, compiled = _page_of(docs, sort, keyset)
        if not page:
            break
        back = [d["id"] for d in page] + back
        keyset = _keyset_of(page, compiled, 0, snapshot, backward=True)
    assert back == forward and len(forward) == 9


def test_row_sorts_use_find() -> None:
    by_update = compile_query(SearchQuery("Patient", sort=[SortKey(LAST_UPDATED, True)]),
                              no_lookups, NOW)
    assert (by_update.sort, by_update.pipeline) == ([("lum", -1), ("id", 1)], None)
    by_id = compile_query(SearchQuery("Patient", sort=[SortKey(ID, True), SortKey(ID)]),
                          no_lookups, NOW)
    assert by_id.sort == [("id", -1)]


def _sorted_by(p: SearchParam, array: str, field: str, descending: bool) -> dict[str, Any]:
    own: Any = {"$eq": ["$$v.p", p.code]}
    if array == "tok":
        own = {"$and": [own, {"$eq": ["$$v.i", False]}]}
    values = {"$filter": {"input": {"$ifNull": [f"$ix.{array}", []]}, "as": "v",
                          "cond": own}}
    return {"$max" if descending else "$min": {"$map": {"input": values, "as": "v",
                                                        "in": f"$$v.{field}"}}}


def test_parameter_sort_pipeline() -> None:
    keys = [SortKey(GENDER), SortKey(BIRTHDATE, True), SortKey(LAST_UPDATED, True)]
    compiled = compile_query(SearchQuery("Patient", [clause(GENDER, TokenQuery(None, "male"))],
                                         sort=keys, count=5, offset=10), no_lookups, NOW)
    assert compiled.sort == []
    assert compiled.pipeline == [
        {"$match": compiled.filter},
        {"$addFields": {"_s0": _sorted_by(GENDER, "tok", "c", False),
                        "_s1": _sorted_by(BIRTHDATE, "dt", "hi", True)}},
        {"$addFields": {
            "_m0": {"$cond": [{"$eq": [{"$ifNull": ["$_s0", None]}, None]}, 1, 0]},
            "_m1": {"$cond": [{"$eq": [{"$ifNull": ["$_s1", None]}, None]}, 1, 0]}}},
        {"$sort": {"_m0": 1, "_s0": 1, "_m1": 1, "_s1": -1, "lum": -1, "id": 1}},
        {"$skip": 10},
        {"$limit": 5},
        {"$project": {"json": 1, "_s0": 1, "_s1": 1, "lum": 1, "id": 1}},  # and the keys
    ]
    assert list(compiled.pipeline[3]["$sort"]) == ["_m0", "_s0", "_m1", "_s1", "lum", "id"]


@pytest.mark.parametrize(("p", "array", "low", "high"), [
    (NAME, "str", "n", "n"), (BIRTHDATE, "dt", "lo", "hi"), (GP, "ref", "id", "id"),
    (URL, "uri", "v", "v"), (ORDER, "num", "v", "v"), (WEIGHT, "qty", "v", "v"),
])
def test_sort_fields_per_type(p: SearchParam, array: str, low: str, high: str) -> None:
    filter_ = {"type": "Patient", "deleted": False}
    ascending = sort_pipeline(filter_, [SortKey(p)], 0, 0)
    descending = sort_pipeline(filter_, [SortKey(p, True)], 0, 0)
    assert ascending[1] == {"$addFields": {"_s0": _sorted_by(p, array, low, False)}}
    assert descending[1] == {"$addFields": {"_s0": _sorted_by(p, array, high, True)}}
    assert [list(s) for s in ascending] == [["$match"], ["$addFields"], ["$addFields"],
                                            ["$sort"], ["$project"]]  # no skip/limit of 0


def test_sort_by_composite_is_400() -> None:
    with pytest.raises(FhirError):
        compile_query(SearchQuery("Patient", sort=[SortKey(COMPOSITE)]), no_lookups, NOW)


# -- every compiled filter is index-backed ---------------------------------------------------

_INDEX_KEYS = [tuple(field for field, _ in keys) for _, keys in RESOURCE_INDEXES]
# The value fields whose bounds make an index scan narrow, per ix array.
_VALUE_FIELDS = {"tok": {"c", "x"}, "ref": {"id", "u"}, "dt": {"lo", "hi"},
                 "str": {"n", "e"}, "uri": {"v"}, "num": {"v"}, "qty": {"v"}}


def _bounded(cond: Any) -> bool:
    """Does this condition give an index range (equality, $in, a range, an anchored regex)?"""
    if not isinstance(cond, dict):
        return True
    if set(cond) & {"$in", "$gt", "$gte", "$lt", "$lte"}:
        return True
    return str(cond.get("$regex", "")).startswith("^")


def _positive_leaves(filter_: dict[str, Any]) -> list[tuple[str, Any]]:
    """(field, condition) of every predicate outside a negation ($nor cannot use bounds)."""
    out = []
    for key, cond in filter_.items():
        if key in ("$and", "$or"):
            for part in cond:
                out.extend(_positive_leaves(part))
        elif key != "$nor":
            out.append((key, cond))
    return out


def assert_index_backed(filter_: dict[str, Any]) -> None:
    for field, cond in _positive_leaves(filter_):
        if field in ("type", "deleted", "_id"):  # `_id` has its built-in index
            continue
        if isinstance(cond, dict) and "$elemMatch" in cond:
            array = field.removeprefix("ix.")
            element = cond["$elemMatch"]
            assert "p" in element, f"{field}: the parameter must be in the $elemMatch"
            narrowing = {f"{field}.{name}" for name, c in element.items()
                         if name in _VALUE_FIELDS[array] and _bounded(c)}
            serving = [ix for ix in _INDEX_KEYS if ix[:2] == ("type", f"{field}.p")]
            assert serving, f"no index leads with type, {field}.p"
            if narrowing:
                assert any(ix[2] in narrowing for ix in serving), (field, narrowing)
        else:
            assert any(ix[:2] == ("type", field) for ix in _INDEX_KEYS), field


def _every_kind_of_filter() -> list[dict[str, Any]]:
    filters = [compile_one(clause(BIRTHDATE, DateQuery(p, QLO, QHI))) for p in _PREFIXES]  # type: ignore[arg-type]
    filters += [compile_one(clause(LAST_UPDATED, DateQuery(p, QLO, QHI)))  # type: ignore[arg-type]
                for p in _PREFIXES]
    filters += [compile_one(clause(ORDER, number(p, "100"))) for p in _PREFIXES]
    filters += [compile_one(clause(WEIGHT, number(p, "100", QuantityQuery, system=None,
                                                  code="kg"))) for p in _PREFIXES]
    filters += [compile_one(c) for c in (
        clause(GENDER, TokenQuery(SYS, "x")),
        clause(GENDER, TokenQuery(None, "x"), TokenQuery("", "y")),
        clause(GENDER, TokenQuery(SYS, None)),
        clause(GENDER, TokenQuery(None, "x"), mod="not"),
        clause(LANGUAGE, TokenQuery(None, "nor"), mod="text"),
        clause(GENDER, MissingQuery(True), mod="missing"),
        clause(GENDER, MissingQuery(False), mod="missing"),
        clause(GP, ReferenceQuery("Practitioner", "1")),
        clause(GP, ReferenceQuery(None, "1", url="https://x.example/Practitioner/1")),
        clause(GP, TokenQuery(SYS, "1"), mod="identifier"),
        clause(NAME, StringQuery("ola")),
        clause(NAME, StringQuery("Ola"), mod="exact"),
        clause(NAME, StringQuery("la"), mod="contains"),
        clause(URL, UriQuery("https://a.example/x")),
        clause(URL, UriQuery("https://a.example/x"), mod="below"),
        clause(URL, UriQuery("https://a.example/x"), mod="above"),
        clause(ID, TokenQuery(None, "1")),
    )]
    chain = Chain(GP, "Practitioner", clause(NAME, StringQuery("ola")))
    has = Has("Task", TASK_FOR, clause(TASK_STATUS, TokenQuery(None, "ready")))
    filters.append(compile_query(SearchQuery("Patient", [chain, has]), lambda _: ["1"],
                                 NOW).filter)
    return filters


@pytest.mark.parametrize("filter_", _every_kind_of_filter())
def test_every_filter_kind_is_index_backed(filter_: dict[str, Any]) -> None:
    assert_index_backed(filter_)


def test_filters_pipelines_and_index_documents_are_bson() -> None:
    """No Python-only value (a Decimal, a set) may reach the driver."""
    keys = [SortKey(p, d) for p in (GENDER, BIRTHDATE, ORDER, WEIGHT) for d in (False, True)]
    pipeline = compile_query(SearchQuery("Patient", sort=keys), no_lookups, NOW).pipeline
    values = IndexValues(numbers=[NumberValue("birth-order", Decimal("2.50"))],
                         quantities=[QuantityValue("weight", Decimal("7"), UCUM, "kg")])
    documents = [*_every_kind_of_filter(), {"pipeline": pipeline},
                 {"ix": index_document(values)}]
    for document in documents:
        assert bson.decode(bson.encode(document)) == document


def test_index_declarations() -> None:
    names = [name for name, _ in RESOURCE_INDEXES]
    assert len(names) == len(set(names))
    assert all(keys[0] == ("type", 1) for _, keys in RESOURCE_INDEXES)
    assert ("type", "lum", "id") in _INDEX_KEYS  # serves the default order
    with pytest.raises(AssertionError):  # the check itself can fail
        assert_index_backed({"ix.tok": {"$elemMatch": {"p": "x", "x2": "y"}}, "lu": 1})


def test_history_at_pipeline() -> None:
    """Versions current at some time in each period: written by its end, and the next
    version of the resource (by type, id and version + 1) none or written after its start."""
    pipeline = history_at_pipeline({"type": "Patient"}, [(10, 20), (15, 30)], "history")
    match, lookup, current = pipeline
    assert match == {"$match": {"$and": [{"type": "Patient"}, {"lum": {"$lte": 20}},
                                         {"lum": {"$lte": 30}}]}}
    assert lookup["$lookup"]["from"] == "history"
    assert lookup["$lookup"]["let"] == {"type": "$type", "id": "$id",
                                        "next": {"$add": ["$version", 1]}}
    assert lookup["$lookup"]["pipeline"][0] == {"$match": {"$expr": {"$and": [
        {"$eq": ["$type", "$$type"]}, {"$eq": ["$id", "$$id"]},
        {"$eq": ["$version", "$$next"]}]}}}
    assert current == {"$match": {"$and": [
        {"$or": [{"later": {"$size": 0}}, {"later.0.lum": {"$gt": 10}}]},
        {"$or": [{"later": {"$size": 0}}, {"later.0.lum": {"$gt": 15}}]}]}}
