"""Parsing search parameters into the search AST."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import pytest

from server.fhir.outcome import FhirError
from server.fhir.search.ast import (
    AllOf,
    AnyOf,
    Chain,
    Clause,
    DateQuery,
    Has,
    Keyset,
    MissingQuery,
    NumberQuery,
    QuantityQuery,
    ReferenceQuery,
    StringQuery,
    TokenQuery,
    UriQuery,
    page_order,
)
from server.fhir.search.parse import (
    BareId,
    ParsedSearch,
    page_token,
    parse_search,
    split_escaped,
    unescape,
)
from server.fhir.search.registry import Registry

FNR_SYSTEM = "urn:oid:2.16.578.1.12.4.1.4.1"
FNR = "15888512036"  # synthetic, passes the modulus-11 checks


@pytest.fixture(scope="module")
def registry() -> Registry:
    registry = Registry.load_default()
    registry.add({"code": "multiple-birth", "type": "number", "base": ["Patient"],
                  "expression": "Patient.multipleBirth.as(integer)"})
    return registry


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


def parse(registry: Registry, type_: str, *params: tuple[str, str],
          **options: object) -> ParsedSearch:
    return parse_search(registry, type_, list(params), **options)  # type: ignore[arg-type]


def clause(registry: Registry, type_: str, name: str, value: str) -> Clause:
    conditions = parse(registry, type_, (name, value)).query.conditions
    assert len(conditions) == 1 and isinstance(conditions[0], Clause)
    return conditions[0]


def error(registry: Registry, type_: str, *params: tuple[str, str],
          **options: object) -> FhirError:
    with pytest.raises(FhirError) as info:
        parse(registry, type_, *params, **options)
    assert info.value.status == 400
    return info.value


def single_issue(registry: Registry, type_: str, name: str, value: str) -> tuple[str, str]:
    """(code, diagnostics) of the one issue a bad parameter gives; it must name the param."""
    issues = error(registry, type_, (name, value)).issues
    assert len(issues) == 1
    assert issues[0].expression == (name,)
    return issues[0].code, issues[0].diagnostics


# ---------------------------------------------------------------------------------------------
# Escapes
# ---------------------------------------------------------------------------------------------


def test_split_and_unescape() -> None:
    assert split_escaped(r"a,b\,c,d\\", ",") == ["a", r"b\,c", "d\\\\"]
    assert [unescape(p) for p in split_escaped(r"a\|b|c\$d\\", "|")] == ["a|b", "c$d\\"]
    assert split_escaped("", ",") == [""]


def test_escaped_commas_and_bars(registry: Registry) -> None:
    c = clause(registry, "Patient", "identifier", r"urn:x|A\,1,urn:x|B\|2")
    assert c.values == (TokenQuery("urn:x", "A,1"), TokenQuery("urn:x", "B|2"))
    c = clause(registry, "Patient", "family", r"Dahl\,Berg\$")
    assert c.values == (StringQuery("dahl,berg$"),)


# ---------------------------------------------------------------------------------------------
# Tokens
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [
    ("active", TokenQuery(None, "active")),
    (f"{FNR_SYSTEM}|{FNR}", TokenQuery(FNR_SYSTEM, FNR)),
    ("|abc", TokenQuery("", "abc")),
    (f"{FNR_SYSTEM}|", TokenQuery(FNR_SYSTEM, None)),
])
def test_token_forms(registry: Registry, value: str, expected: TokenQuery) -> None:
    assert clause(registry, "Patient", "identifier", value).values == (expected,)


def test_token_modifiers(registry: Registry) -> None:
    c = clause(registry, "CarePlan", "status:not", "completed,revoked")
    assert c.modifier == "not"
    assert c.values == (TokenQuery(None, "completed"), TokenQuery(None, "revoked"))
    c = clause(registry, "CarePlan", "category:text", "Individuell  PLAN")
    assert (c.modifier, c.values) == ("text", (TokenQuery(None, "individuell plan"),))
    c = clause(registry, "CarePlan", "status:missing", "true")
    assert (c.modifier, c.values) == ("missing", (MissingQuery(True),))


TASK_STATUS = "http://hl7.org/fhir/task-status"


def test_code_and_boolean_values_have_an_implicit_system(registry: Registry) -> None:
    """A ``code`` element is indexed without the system its value set gives it, a boolean
    without special-values: ``system|code`` is read against that system (another system
    can match nothing, nor can ``|code``); parameters of Codings keep their values."""
    status = registry.param("Task", "status")
    assert status is not None and (TASK_STATUS, "ready") in status.implicit
    intent = registry.param("Task", "intent")  # one value set, two code systems
    assert intent is not None and {("http://hl7.org/fhir/request-intent", "order"),
                                   ("http://hl7.org/fhir/task-intent", "unknown")
                                   } <= intent.implicit
    assert registry.param("CarePlan", "category").implicit == frozenset()  # type: ignore
    assert registry.param("Patient", "identifier").implicit == frozenset()  # type: ignore
    assert clause(registry, "Task", "status", f"{TASK_STATUS}|ready").values == (
        TokenQuery("", "ready"),)
    assert clause(registry, "Task", "status", "ready").values == (TokenQuery(None, "ready"),)
    assert clause(registry, "Task", "status:not", f"{TASK_STATUS}|ready,draft").values == (
        TokenQuery("", "ready"), TokenQuery(None, "draft"))
    every = clause(registry, "Task", "status", f"{TASK_STATUS}|").values
    assert TokenQuery("", "ready") in every and len(every) == len(status.implicit)
    assert clause(registry, "Task", "status", "|made-up").values == (
        TokenQuery("", "made-up"),)  # a code outside the value set has no system
    for value in ("|ready", "http://hl7.org/fhir/request-status|ready", "|"):
        assert parse(registry, "Task", ("status", value)).query.conditions == [AnyOf(())]
    assert parse(registry, "Task", ("status:not", "|ready")).query.conditions == [AllOf(())]
    assert clause(registry, "Patient", "active",
                  "http://hl7.org/fhir/special-values|true").values == (TokenQuery("", "true"),)
    inner = parse(registry, "CarePlan", ("subject:Patient.gender",
                                         "http://hl7.org/fhir/administrative-gender|female")
                  ).query.conditions[0]
    assert isinstance(inner, Chain) and inner.inner.values == (  # type: ignore[union-attr]
        TokenQuery("", "female"),)



def test_mime_types_and_languages_are_read_against_their_grammar(registry: Registry) -> None:
    """A ``code`` bound to mime types or languages (no list of codes) is read against
    BCP-13 or BCP-47 for any code."""
    mime = "urn:ietf:bcp:13"
    assert registry.param("DocumentReference", "contenttype").implicit_system == mime  # type: ignore
    assert registry.param("Subscription", "payload").implicit_system == mime  # type: ignore
    assert registry.param("DocumentReference", "language"  # type: ignore
                          ).implicit_system == "urn:ietf:bcp:47"
    assert registry.param("Task", "status").implicit_system is None  # type: ignore
    assert clause(registry, "Subscription", "payload", f"{mime}|application/fhir+json,x"
                  ).values == (TokenQuery("", "application/fhir+json"), TokenQuery(None, "x"))
    assert clause(registry, "Subscription", "payload", f"{mime}|").values == (
        TokenQuery("", None),)
    for value in ("|application/fhir+json", "urn:ietf:bcp:47|application/fhir+json"):
        assert parse(registry, "Subscription", ("payload", value)).query.conditions == [
            AnyOf(())]

def test_or_within_and_across(registry: Registry) -> None:
    result = parse(registry, "CarePlan", ("status", "active,draft"), ("status:not", "draft"))
    assert [(c.modifier, len(c.values)) for c in result.query.conditions] == [  # type: ignore
        (None, 2), ("not", 1)]


def test_token_with_too_many_bars(registry: Registry) -> None:
    code, text = single_issue(registry, "Patient", "identifier", "a|b|c")
    assert code == "value" and "identifier" in text


# ---------------------------------------------------------------------------------------------
# References
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "value", "expected"), [
    ("subject", "Patient/p1", ReferenceQuery("Patient", "p1")),
    ("subject", "p1", ReferenceQuery(None, "p1")),
    ("subject:Patient", "p1", ReferenceQuery("Patient", "p1")),
    ("subject", "Patient/p1/_history/2", ReferenceQuery("Patient", "p1", version="2")),
    ("subject", "https://fhir.example.no/Patient/p1",
     ReferenceQuery(None, None, url="https://fhir.example.no/Patient/p1")),
    ("instantiates-canonical", "http://planbro.no/fhir/PlanDefinition/ip|1.0",
     ReferenceQuery(None, None, url="http://planbro.no/fhir/PlanDefinition/ip", version="1.0")),
    ("based-on", "urn:uuid:0b0e2b6e-7a3c-4f51-9f5e-3a9c2d1e1f00",
     ReferenceQuery(None, None, url="urn:uuid:0b0e2b6e-7a3c-4f51-9f5e-3a9c2d1e1f00")),
])
def test_reference_forms(registry: Registry, name: str, value: str,
                         expected: ReferenceQuery) -> None:
    c = clause(registry, "CarePlan", name, value)
    assert (c.modifier, c.values) == (None, (expected,))


def test_reference_identifier_and_missing(registry: Registry) -> None:
    c = clause(registry, "Task", "owner:identifier", "urn:oid:2.16.578.1.12.4.1.4.101|964338531")
    assert c.modifier == "identifier"
    assert c.values == (TokenQuery("urn:oid:2.16.578.1.12.4.1.4.101", "964338531"),)
    c = clause(registry, "Task", "owner:missing", "false")
    assert c.values == (MissingQuery(False),)


def test_bare_ids_that_may_name_several_stored_types(registry: Registry) -> None:
    """An id without a type, of a parameter that may refer to more than one stored type, is
    listed with the name it was given under, for the service to check the data (R4 search
    3.1.1.4.12); the only stored target of CarePlan.subject (Group is not stored) is not."""
    def bare(type_: str, name: str, value: str) -> list[BareId]:
        return parse(registry, type_, (name, value)).bare_ids

    assert bare("Goal", "subject", "g1,Patient/p1") == [
        BareId("subject", "g1", ("Organization", "Patient"))]
    assert bare("CarePlan", "subject", "p1") == []
    for name, value in (("subject", "Patient/p1"), ("subject:Patient", "p1"),
                        ("subject:missing", "true")):
        assert bare("Goal", name, value) == []
    assert bare("CarePlan", "goal.subject", "g1") == [
        BareId("goal.subject", "g1", ("Organization", "Patient"))]
    assert bare("Patient", "_has:Goal:subject:subject", "g1")[0].name == (
        "_has:Goal:subject:subject")
    focus = bare("Task", "focus", "x")  # Reference(Any): every stored type
    assert len(focus) == 1 and set(focus[0].types) == set(registry.types)


@pytest.mark.parametrize(("name", "value"), [
    ("subject:Patient", "Group/g1"),  # type modifier and value disagree
    ("subject", "Practitioner/x"),  # not a target of CarePlan.subject
    ("subject", "not an id!"),
])
def test_bad_references(registry: Registry, name: str, value: str) -> None:
    code, text = single_issue(registry, "CarePlan", name, value)
    assert code == "value" and name in text


def test_unknown_type_modifier(registry: Registry) -> None:
    code, _ = single_issue(registry, "CarePlan", "subject:Practitioner", "x")
    assert code == "not-supported"


# ---------------------------------------------------------------------------------------------
# Dates, numbers, quantities
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["", "eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"])
def test_date_prefixes(registry: Registry, prefix: str) -> None:
    c = clause(registry, "Patient", "birthdate", f"{prefix}1985-08")
    assert c.values == (DateQuery(prefix or "eq", ms("1985-08-01T00:00:00+00:00"),
                                  ms("1985-09-01T00:00:00+00:00") - 1),)


@pytest.mark.parametrize(("value", "lo", "hi"), [
    ("2024", "2024-01-01T00:00:00+00:00", "2025-01-01T00:00:00+00:00"),
    ("2024-05-01", "2024-05-01T00:00:00+00:00", "2024-05-02T00:00:00+00:00"),
    ("2024-05-01T10:00", "2024-05-01T10:00:00+00:00", "2024-05-01T10:01:00+00:00"),
    ("2024-05-01T10:00:00Z", "2024-05-01T10:00:00+00:00", "2024-05-01T10:00:01+00:00"),
    ("2024-05-01T10:00:00+02:00", "2024-05-01T08:00:00+00:00", "2024-05-01T08:00:01+00:00"),
    ("2024-05-01T10:00:00 02:00", "2024-05-01T08:00:00+00:00", "2024-05-01T08:00:01+00:00"),
    ("2024-05-01T10:00-03:00", "2024-05-01T13:00:00+00:00", "2024-05-01T13:01:00+00:00"),
])
def test_date_precision_and_zones(registry: Registry, value: str, lo: str, hi: str) -> None:
    c = clause(registry, "CarePlan", "date", f"ge{value}")
    assert c.values == (DateQuery("ge", ms(lo), ms(hi) - 1),)


@pytest.mark.parametrize("value", ["2024-13", "xx2024", "gt", "2024-02-30", "05/01/2024",
                                   "2024-05-01T25:00Z", "today"])
def test_bad_dates(registry: Registry, value: str) -> None:
    code, text = single_issue(registry, "CarePlan", "date", value)
    assert code == "value" and "'date'" in text


def test_last_updated(registry: Registry) -> None:
    c = clause(registry, "CarePlan", "_lastUpdated", "gt2024-05-01T12:00:00Z")
    assert c.param.code == "_lastUpdated" and c.param.expression == ""
    assert c.values == (DateQuery("gt", ms("2024-05-01T12:00:00+00:00"),
                                  ms("2024-05-01T12:00:01+00:00") - 1),)


@pytest.mark.parametrize(("value", "expected"), [
    ("100", NumberQuery("eq", Decimal("100"), Decimal("99.5"), Decimal("100.5"))),
    ("100.00", NumberQuery("eq", Decimal("100.00"), Decimal("99.995"), Decimal("100.005"))),
    ("1e2", NumberQuery("eq", Decimal("1e2"), Decimal("50"), Decimal("150"))),
    ("gt2", NumberQuery("gt", Decimal("2"), Decimal("1.5"), Decimal("2.5"))),
    ("le-0.5", NumberQuery("le", Decimal("-0.5"), Decimal("-0.55"), Decimal("-0.45"))),
    ("ap.5", NumberQuery("ap", Decimal(".5"), Decimal(".45"), Decimal(".55"))),
])
def test_numbers(registry: Registry, value: str, expected: NumberQuery) -> None:
    assert clause(registry, "Patient", "multiple-birth", value).values == (expected,)


@pytest.mark.parametrize("value", ["abc", "NaN", "Infinity", "gtx", "1,5x"])
def test_bad_numbers(registry: Registry, value: str) -> None:
    code, _ = single_issue(registry, "Patient", "multiple-birth", value)
    assert code == "value"


@pytest.mark.parametrize(("value", "expected"), [
    ("5.4|http://unitsofmeasure.org|a",
     QuantityQuery("eq", Decimal("5.4"), Decimal("5.35"), Decimal("5.45"),
                   "http://unitsofmeasure.org", "a")),
    ("gt5||a", QuantityQuery("gt", Decimal(5), Decimal("4.5"), Decimal("5.5"), None, "a")),
    ("lt7", QuantityQuery("lt", Decimal(7), Decimal("6.5"), Decimal("7.5"), None, None)),
])
def test_quantities(registry: Registry, value: str, expected: QuantityQuery) -> None:
    assert clause(registry, "Condition", "onset-age", value).values == (expected,)


@pytest.mark.parametrize("value", ["5|a", "x|http://unitsofmeasure.org|a", "1|2|3|4"])
def test_bad_quantities(registry: Registry, value: str) -> None:
    code, _ = single_issue(registry, "Condition", "onset-age", value)
    assert code == "value"


# ---------------------------------------------------------------------------------------------
# Strings and uris
# ---------------------------------------------------------------------------------------------


def test_strings(registry: Registry) -> None:
    assert clause(registry, "Patient", "family", "ØDEGÅRD").values == (StringQuery("odegard"),)
    c = clause(registry, "Patient", "family:exact", "Ødegård")
    assert (c.modifier, c.values) == ("exact", (StringQuery("Ødegård"),))
    c = clause(registry, "Patient", "name:contains", "  Åse ")
    assert (c.modifier, c.values) == ("contains", (StringQuery("ase"),))


def test_uris(registry: Registry) -> None:
    c = clause(registry, "CarePlan", "instantiates-uri:below", "http://planbro.no/veileder")
    assert (c.modifier, c.values) == ("below", (UriQuery("http://planbro.no/veileder"),))
    c = clause(registry, "CarePlan", "_profile:above", "http://planbro.no/fhir/x")
    assert c.modifier == "above"
    assert clause(registry, "CarePlan", "_source", "http://kommune.example.no/fagsystem").values \
        == (UriQuery("http://kommune.example.no/fagsystem"),)


@pytest.mark.parametrize(("type_", "name"), [
    ("Patient", "family"), ("Patient", "birthdate"), ("Patient", "identifier"),
    ("Patient", "organization"), ("Patient", "multiple-birth"), ("Condition", "onset-age"),
    ("CarePlan", "instantiates-uri"), ("CarePlan", "_tag"),
])
def test_missing_on_every_type(registry: Registry, type_: str, name: str) -> None:
    c = clause(registry, type_, f"{name}:missing", "false")
    assert (c.modifier, c.values) == ("missing", (MissingQuery(False),))
    code, _ = single_issue(registry, type_, f"{name}:missing", "yes")
    assert code == "value"


def test_resource_level_params(registry: Registry) -> None:
    c = clause(registry, "CarePlan", "_id", "ip-1,ip-2")
    assert c.param.code == "_id" and c.values == (TokenQuery(None, "ip-1"),
                                                  TokenQuery(None, "ip-2"))
    c = clause(registry, "CarePlan", "_tag", "http://planbro.no/fhir/CodeSystem/plan-tag|ip")
    assert c.values == (TokenQuery("http://planbro.no/fhir/CodeSystem/plan-tag", "ip"),)
    c = clause(registry, "CarePlan", "_security:not", "R")
    assert c.modifier == "not"
    code, _ = single_issue(registry, "CarePlan", "_id", "bad id")
    assert code == "value"


# ---------------------------------------------------------------------------------------------
# Chaining and _has
# ---------------------------------------------------------------------------------------------


def test_chain_with_explicit_type(registry: Registry) -> None:
    [chain] = parse(registry, "CarePlan",
                    ("subject:Patient.identifier", f"{FNR_SYSTEM}|{FNR}")).query.conditions
    assert isinstance(chain, Chain)
    assert (chain.param.code, chain.target_type) == ("subject", "Patient")
    assert chain.inner.param.code == "identifier" and chain.inner.param.base == ("Patient",)
    assert chain.inner.values == (TokenQuery(FNR_SYSTEM, FNR),)


def test_chain_with_the_only_stored_target(registry: Registry) -> None:
    [chain] = parse(registry, "CarePlan", ("subject.name:exact", "Kari")).query.conditions
    assert isinstance(chain, Chain) and chain.target_type == "Patient"  # Group is not stored
    assert chain.inner.modifier == "exact"
    [chain] = parse(registry, "CarePlan", ("care-team.status", "active")).query.conditions
    assert isinstance(chain, Chain) and chain.target_type == "CareTeam"


@pytest.mark.parametrize(("name", "code", "words"), [
    ("owner.name", "value", "name the type"),  # several targets have 'name'
    ("subject:Patient.organization.name", "not-supported", "one level"),
    ("status.name", "value", "reference"),
    ("subject:Patient.nosuch", "not-supported", "nosuch"),
    ("subject:Practitioner.name", "not-supported", "Practitioner"),
    ("subject.nosuch", "not-supported", "nosuch"),
])
def test_bad_chains(registry: Registry, name: str, code: str, words: str) -> None:
    type_ = "Task" if name.startswith("owner") else "CarePlan"
    got_code, text = single_issue(registry, type_, name, "x")
    assert got_code == code and words in text


def test_has(registry: Registry) -> None:
    [has] = parse(registry, "Patient", ("_has:CarePlan:subject:status", "active")).query.conditions
    assert isinstance(has, Has)
    assert (has.other_type, has.ref_param.code) == ("CarePlan", "subject")
    assert isinstance(has.inner, Clause) and has.inner.values == (TokenQuery(None, "active"),)


def test_nested_has_and_chain_inside(registry: Registry) -> None:
    [has] = parse(registry, "Patient",
                  ("_has:CarePlan:subject:_has:Provenance:target:agent", "Practitioner/p9"),
                  ).query.conditions
    assert isinstance(has, Has) and isinstance(has.inner, Has)
    assert (has.inner.other_type, has.inner.ref_param.code) == ("Provenance", "target")
    assert has.inner.inner.values == (ReferenceQuery("Practitioner", "p9"),)  # type: ignore
    [has] = parse(registry, "Patient",
                  ("_has:CarePlan:subject:care-team.status", "active")).query.conditions
    assert isinstance(has, Has) and isinstance(has.inner, Chain)


@pytest.mark.parametrize(("name", "code"), [
    ("_has:CarePlan:status:status", "value"),  # not a reference parameter
    ("_has:Encounter:subject:status", "not-supported"),  # type not stored
    ("_has:CarePlan:subject", "value"),  # incomplete
    ("_has:CarePlan:nosuch:status", "not-supported"),
    ("_has:CarePlan:care-team:status", "value"),  # care-team cannot refer to a Patient
])
def test_bad_has(registry: Registry, name: str, code: str) -> None:
    assert single_issue(registry, "Patient", name, "x")[0] == code


# ---------------------------------------------------------------------------------------------
# Result parameters
# ---------------------------------------------------------------------------------------------


def test_defaults(registry: Registry) -> None:
    result = parse(registry, "CarePlan")
    q = result.query
    assert (q.type, q.count, q.offset, q.total, q.sort, q.conditions) == (
        "CarePlan", 20, 0, False, [], [])
    assert (result.includes, result.elements, result.summary) == ([], None, None)
    assert result.self_params == [("_count", "20")]
    assert parse(registry, "CarePlan", default_count=50, max_count=10).query.count == 10


def test_sort(registry: Registry) -> None:
    q = parse(registry, "CarePlan", ("_sort", "-date,status,_lastUpdated,-_id")).query
    assert [(k.param.code, k.descending) for k in q.sort] == [
        ("date", True), ("status", False), ("_lastUpdated", False), ("_id", True)]
    assert single_issue(registry, "CarePlan", "_sort", "nosuch")[0] == "not-supported"
    assert single_issue(registry, "CarePlan", "_sort", "date,,status")[0] == "value"


def test_count_offset_total(registry: Registry) -> None:
    q = parse(registry, "CarePlan", ("_count", "5000"), ("_offset", "40"),
              ("_total", "accurate")).query
    assert (q.count, q.offset, q.total) == (1000, 40, True)
    assert parse(registry, "CarePlan", ("_total", "none")).query.total is False
    assert parse(registry, "CarePlan", ("_total", "estimate")).query.total is True
    q = parse(registry, "CarePlan", ("_count", "0")).query
    assert (q.count, q.total) == (0, True)
    for name, value in (("_count", "abc"), ("_count", "-1"), ("_offset", "1.5"),
                        ("_total", "some")):
        assert single_issue(registry, "CarePlan", name, value)[0] == "value"


@pytest.mark.parametrize(("sort", "keyset"), [
    ("", Keyset((1763856000123, "a-1.b"), 1763856000999)),
    ("-_lastUpdated", Keyset((1763856000123, "x"), 1763856000999, backward=True)),
    ("-_id", Keyset(("x",), 5)),
    ("_lastUpdated,-_id,_lastUpdated", Keyset((-12, "x"), 5)),
    ("status,-date", Keyset(("active", None, "x"), 5, changed=True)),  # a missing value
    ("-date", Keyset((1763856000123, "x"), 5, backward=True)),
    ("_id", Keyset(("x",), 5))])
def test_page_tokens_read_back_as_their_keyset(registry: Registry, sort: str,
                                               keyset: Keyset) -> None:
    token = page_token(keyset)
    params = [("_page", token), *([("_sort", sort)] if sort else [])]
    result = parse(registry, "CarePlan", *params)
    assert result.query.keyset == keyset and result.query.offset == 0
    assert ("_page", token) in result.self_params
    for other in ("", "-_lastUpdated", "-_id", "_id,_lastUpdated"):  # keys of another order
        if len(page_order(parse(registry, "CarePlan", ("_sort", other)).query.sort
                         if other else [])) != len(keyset.values):
            assert error(registry, "CarePlan", ("_page", token),
                         *([("_sort", other)] if other else [])).issues[0].expression == (
                "_page",)


def test_summary_and_elements(registry: Registry) -> None:
    result = parse(registry, "CarePlan", ("_summary", "count"))
    assert (result.summary, result.query.count, result.query.total) == ("count", 0, True)
    assert parse(registry, "CarePlan", ("_summary", "true")).summary == "true"
    result = parse(registry, "CarePlan", ("_elements", "status, subject,CarePlan.period"))
    assert result.elements == ["status", "subject", "CarePlan.period"]
    assert single_issue(registry, "CarePlan", "_summary", "yes")[0] == "value"
    assert single_issue(registry, "CarePlan", "_elements", "status,1x")[0] == "value"


def test_includes(registry: Registry) -> None:
    result = parse(registry, "CarePlan", ("_include", "CarePlan:subject"),
                   ("_include", "CarePlan:performer:Organization"),
                   ("_include:iterate", "CareTeam:participant"),
                   ("_revinclude", "Provenance:target"),
                   ("_revinclude:iterate", "AuditEvent:entity"))
    got = [(i.source_type, i.param.code, i.target_type, i.iterate, i.reverse)
           for i in result.includes]
    assert got == [("CarePlan", "subject", None, False, False),
                   ("CarePlan", "performer", "Organization", False, False),
                   ("CareTeam", "participant", None, True, False),
                   ("Provenance", "target", None, False, True),
                   ("AuditEvent", "entity", None, True, True)]


@pytest.mark.parametrize(("name", "value", "code"), [
    ("_include", "*", "not-supported"),
    ("_include", "CarePlan", "value"),
    ("_include", "CarePlan:status", "value"),
    ("_include", "CarePlan:nosuch", "not-supported"),
    ("_include", "CareTeam:participant", "value"),  # not from the searched type
    ("_include", "CarePlan:subject:Practitioner", "value"),
    ("_include", "Encounter:subject", "not-supported"),
    ("_include:deep", "CarePlan:subject", "not-supported"),
    ("_revinclude", "Goal:subject", "value"),  # Goal.subject cannot refer to a CarePlan
])
def test_bad_includes(registry: Registry, name: str, value: str, code: str) -> None:
    assert single_issue(registry, "CarePlan", name, value)[0] == code


def test_format_and_pretty(registry: Registry) -> None:
    for value in ("json", "application/fhir+json", "application/fhir json",
                  "application/json;charset=utf-8"):
        assert parse(registry, "CarePlan", ("_format", value)).query.conditions == []
    assert parse(registry, "CarePlan", ("_pretty", "true")).self_params == [("_count", "20")]
    code, text = single_issue(registry, "CarePlan", "_format", "application/fhir+xml")
    assert code == "not-supported" and "XML" in text
    assert single_issue(registry, "CarePlan", "_format", "text/html")[0] == "not-supported"


def test_single_result_params_may_not_repeat(registry: Registry) -> None:
    issues = error(registry, "CarePlan", ("_count", "5"), ("_count", "6")).issues
    assert [(i.code, i.expression) for i in issues] == [("value", ("_count",))]


# ---------------------------------------------------------------------------------------------
# Errors, lenient handling, self link
# ---------------------------------------------------------------------------------------------


def test_all_problems_are_reported_together(registry: Registry) -> None:
    issues = error(registry, "Patient", ("foo", "1"), ("birthdate:text", "x"),
                   ("_count", "abc"), ("birthdate", "2024-13"), ("family:sounds", "x"),
                   ("_text", "kari"), ("gender", "female")).issues
    assert [(i.code, i.expression) for i in issues] == [
        ("not-supported", ("foo",)),
        ("not-supported", ("birthdate:text",)),
        ("value", ("_count",)),
        ("value", ("birthdate",)),
        ("not-supported", ("family:sounds",)),
        ("not-supported", ("_text",)),
    ]
    assert all(i.severity == "error" for i in issues)
    assert "foo" in issues[0].diagnostics and ":text" in issues[1].diagnostics
    assert "full-text" in issues[5].diagnostics


def test_composite_and_unsupported_params(registry: Registry) -> None:
    assert single_issue(registry, "DocumentReference", "relationship", "x")[0] == "not-supported"
    for name in ("_content", "_list", "_query", "_filter", "identifier:of-type"):
        assert single_issue(registry, "Patient", name, "x")[0] == "not-supported"


def test_lenient_ignores_unknown_but_not_bad_values(registry: Registry) -> None:
    result = parse(registry, "Patient", ("foo", "1"), ("birthdate:text", "x"),
                   ("gender", "female"), ("_sort", "nosuch,-birthdate"),
                   ("_include", "Patient:nosuch"), lenient=True)
    assert result.ignored == ["foo", "birthdate:text", "_sort", "_include"]
    assert [c.param.code for c in result.query.conditions] == ["gender"]  # type: ignore
    assert [(k.param.code, k.descending) for k in result.query.sort] == [("birthdate", True)]
    assert result.self_params == [("gender", "female"), ("_sort", "-birthdate"),
                                  ("_count", "20")]
    issues = error(registry, "Patient", ("foo", "1"), ("birthdate", "2024-13"),
                   lenient=True).issues
    assert [i.expression for i in issues] == [("birthdate",)]


def test_empty_values_are_ignored(registry: Registry) -> None:
    result = parse(registry, "Patient", ("gender", ""), ("family", "a,,b"), ("", "x"))
    [c] = result.query.conditions
    assert c.values == (StringQuery("a"), StringQuery("b"))  # type: ignore[union-attr]


def test_self_params_are_stable(registry: Registry) -> None:
    params = [("status", "active"), ("_sort", "-date"), ("_include", "CarePlan:subject"),
              ("subject:Patient.identifier", f"{FNR_SYSTEM}|{FNR}"), ("_count", "10"),
              ("date", "ge2024"), ("_offset", "10"), ("_total", "accurate"),
              ("_format", "json"), ("category", r"a\,b")]
    one = parse_search(registry, "CarePlan", params).self_params
    two = parse_search(registry, "CarePlan", list(reversed(params))).self_params
    assert one == two == [
        ("category", r"a\,b"), ("date", "ge2024"), ("status", "active"),
        ("subject:Patient.identifier", f"{FNR_SYSTEM}|{FNR}"),
        ("_include", "CarePlan:subject"), ("_sort", "-date"), ("_total", "accurate"),
        ("_count", "10"), ("_offset", "10")]


def test_unsupported_resource_type(registry: Registry) -> None:
    with pytest.raises(FhirError) as info:
        parse(registry, "Encounter", ("status", "x"))
    assert info.value.status == 400 and info.value.issues[0].code == "not-supported"
