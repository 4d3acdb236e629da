"""A small test indexer (a few parameters of a few types, written with the search AST
directly), so that the engine tests do not depend on the production search registry."""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from decimal import Decimal
from pathlib import Path
from typing import Any

from server.fhir.search.ast import (
    MAX_MS,
    MIN_MS,
    DateValue,
    IndexValues,
    NumberValue,
    QuantityValue,
    ReferenceValue,
    SearchParam,
    StringValue,
    TokenValue,
    UriValue,
)
from server.store.embedded import EmbeddedStore

MONGO_SKIP_REASON = ("MONGODB_URI is not set: the MongoDB engine suite needs a real MongoDB "
                     "server (docker compose up mongo)")

GENDER_SYSTEM = "http://hl7.org/fhir/administrative-gender"


def _param(code: str, type_: str, base: str, *targets: str) -> SearchParam:
    return SearchParam(code=code, type=type_, base=(base,), targets=targets)  # type: ignore[arg-type]


PARAMS: dict[str, SearchParam] = {
    p.base[0] + "." + p.code: p for p in (
        _param("identifier", "token", "Patient"),
        _param("name", "string", "Patient"),
        _param("family", "string", "Patient"),
        _param("birthdate", "date", "Patient"),
        _param("gender", "token", "Patient"),
        _param("active", "token", "Patient"),
        _param("language", "token", "Patient"),
        _param("general-practitioner", "reference", "Patient", "Practitioner"),
        _param("birth-order", "number", "Patient"),
        _param("identifier", "token", "Practitioner"),
        _param("name", "string", "Practitioner"),
        _param("status", "token", "Task"),
        _param("priority", "token", "Task"),
        _param("owner", "reference", "Task", "Practitioner", "Patient"),
        _param("for", "reference", "Task", "Patient"),
        _param("period", "date", "Task"),
        _param("authored-on", "date", "Task"),
        _param("lifecycle-status", "token", "Goal"),
        _param("subject", "reference", "Goal", "Patient"),
        _param("target-quantity", "quantity", "Goal"),
        _param("status", "token", "Communication"),
        _param("based-on", "reference", "Communication", "Task"),
        _param("url", "uri", "Subscription"),
        _param("patient", "reference", "AuditEvent", "Patient"),
    )
}
ID = SearchParam("_id", "token", ("Resource",))
LAST_UPDATED = SearchParam("_lastUpdated", "date", ("Resource",))


def norm(text: str) -> str:
    """Lower case, accents removed, whitespace collapsed (as the registry normalises)."""
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(plain.lower().split())


_DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?$")


def _ms(moment: dt.datetime) -> int:
    return int(moment.timestamp() * 1000)


def date_range(text: str) -> tuple[int, int]:
    """``[lo, hi]`` epoch milliseconds of a FHIR date (``2024``, ``2024-01``, ``2024-01-02``)
    or dateTime (``2024-01-02T03:04:05[.678](Z|+01:00)``; no zone means UTC)."""
    match = _DATE.match(text)
    if match:
        year, month, day = (int(g) if g else None for g in match.groups())
        start = dt.datetime(year or 1, month or 1, day or 1, tzinfo=dt.UTC)
        if day is not None:
            end = start + dt.timedelta(days=1)
        elif month is not None:
            end = start.replace(year=year + (month == 12), month=month % 12 + 1)
        else:
            end = start.replace(year=start.year + 1)
        return _ms(start), _ms(end) - 1
    moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    lo = _ms(moment)
    return lo, lo if moment.microsecond or "." in text else lo + 999


def _date(param: str, text: str | None) -> list[DateValue]:
    return [] if not text else [DateValue(param, *date_range(text))]


def _period(param: str, period: dict[str, str] | None) -> list[DateValue]:
    if not period:
        return []
    lo = date_range(period["start"])[0] if "start" in period else MIN_MS
    hi = date_range(period["end"])[1] if "end" in period else MAX_MS
    return [DateValue(param, lo, hi)]


def _reference(param: str, ref: dict[str, Any] | None) -> list[ReferenceValue]:
    literal = (ref or {}).get("reference")
    if not literal:
        return []
    parts = literal.split("/")
    if "://" in literal or len(parts) not in (2, 4):
        return [ReferenceValue(param, "", "", url=literal)]
    version = parts[3] if len(parts) == 4 else ""
    return [ReferenceValue(param, parts[0], parts[1], url=literal, version=version)]


def _reference_identifier(param: str, ref: dict[str, Any] | None) -> list[TokenValue]:
    ident = (ref or {}).get("identifier")
    if not ident:
        return []
    return [TokenValue(param, ident.get("system", ""), ident["value"], identifier=True)]


def _identifiers(param: str, resource: dict[str, Any]) -> list[TokenValue]:
    return [TokenValue(param, i.get("system", ""), i["value"])
            for i in resource.get("identifier", [])]


def _codings(param: str, concept: dict[str, Any]) -> list[TokenValue]:
    codings = concept.get("coding", [])
    text = norm(concept.get("text") or next((c["display"] for c in codings if "display" in c),
                                            ""))
    return [TokenValue(param, c.get("system", ""), c["code"], text) for c in codings]


def _code(param: str, value: Any, system: str = "") -> list[TokenValue]:
    if value is None:
        return []
    code = str(value).lower() if isinstance(value, bool) else str(value)
    return [TokenValue(param, system, code)]


def _names(resource: dict[str, Any]) -> tuple[list[StringValue], list[StringValue]]:
    names, families = [], []
    for name in resource.get("name", []):
        parts = [name["family"]] if "family" in name else []
        parts += name.get("given", [])
        names += [StringValue("name", norm(p), p) for p in parts]
        if "family" in name:
            families.append(StringValue("family", norm(name["family"]), name["family"]))
    return names, families


def _index_patient(r: dict[str, Any], out: IndexValues) -> None:
    names, families = _names(r)
    out.strings += names + families
    out.tokens += _identifiers("identifier", r)
    out.tokens += _code("gender", r.get("gender"), GENDER_SYSTEM)
    out.tokens += _code("active", r.get("active"))
    for comm in r.get("communication", []):
        out.tokens += _codings("language", comm["language"])
    out.dates += _date("birthdate", r.get("birthDate"))
    for gp in r.get("generalPractitioner", []):
        out.references += _reference("general-practitioner", gp)
    if "multipleBirthInteger" in r:
        out.numbers.append(NumberValue("birth-order", Decimal(r["multipleBirthInteger"])))


def _index_practitioner(r: dict[str, Any], out: IndexValues) -> None:
    out.strings += _names(r)[0]
    out.tokens += _identifiers("identifier", r)


def _index_task(r: dict[str, Any], out: IndexValues) -> None:
    out.tokens += _code("status", r.get("status")) + _code("priority", r.get("priority"))
    out.references += _reference("owner", r.get("owner")) + _reference("for", r.get("for"))
    out.tokens += _reference_identifier("for", r.get("for"))
    out.dates += _period("period", r.get("executionPeriod"))
    out.dates += _date("authored-on", r.get("authoredOn"))


def _index_goal(r: dict[str, Any], out: IndexValues) -> None:
    out.tokens += _code("lifecycle-status", r.get("lifecycleStatus"))
    out.references += _reference("subject", r.get("subject"))
    for target in r.get("target", []):
        q = target.get("detailQuantity")
        if q:
            out.quantities.append(QuantityValue("target-quantity", Decimal(q["value"]),
                                                q.get("system", ""), q.get("code", ""),
                                                q.get("unit", "")))


def _index_communication(r: dict[str, Any], out: IndexValues) -> None:
    out.tokens += _code("status", r.get("status"))
    for ref in r.get("basedOn", []):
        out.references += _reference("based-on", ref)


def _index_subscription(r: dict[str, Any], out: IndexValues) -> None:
    endpoint = r.get("channel", {}).get("endpoint")
    if endpoint:
        out.uris.append(UriValue("url", endpoint))


def _index_audit_event(r: dict[str, Any], out: IndexValues) -> None:
    for entity in r.get("entity", []):
        if entity.get("what", {}).get("reference", "").startswith("Patient/"):
            out.references += _reference("patient", entity["what"])


_INDEXERS = {
    "AuditEvent": _index_audit_event,
    "Patient": _index_patient,
    "Practitioner": _index_practitioner,
    "Task": _index_task,
    "Goal": _index_goal,
    "Communication": _index_communication,
    "Subscription": _index_subscription,
}


def index_resource(resource: dict[str, Any]) -> IndexValues:
    """The test indexer: the parameters in :data:`PARAMS`, extracted from known fields."""
    out = IndexValues()
    extract = _INDEXERS.get(resource["resourceType"])
    if extract is not None:
        extract(resource, out)
    return out


def embedded_store(path: Path) -> EmbeddedStore:
    return EmbeddedStore(index_resource, path)


