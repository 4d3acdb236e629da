"""The demo transaction Bundle: valid, synthetic identifiers only, idempotent to load, and
the Swedish SIP example as its source gives it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server import demo
from server.app import create_app
from server.config import Config
from server.fhir.model import validate
from server.fhir.service import FhirService, RequestContext
from server.plans import identifiers as ids

CTX = RequestContext(base_url="http://localhost/fhir")
CHECKED_SYSTEMS = (ids.FNR_SYSTEM, ids.DNR_SYSTEM, ids.HPR_SYSTEM, ids.ENH_SYSTEM,
                   ids.RESH_SYSTEM, ids.SE_PERSONNUMMER_SYSTEM)


@pytest.fixture(scope="module")
def bundle() -> dict[str, Any]:
    return demo.demo_bundle()


def resources(bundle: dict[str, Any], type_: str | None = None) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"]
            if type_ is None or e["resource"]["resourceType"] == type_]


def by_key(bundle: dict[str, Any], key: str) -> dict[str, Any]:
    url = demo.urn(key)
    return next(e["resource"] for e in bundle["entry"] if e["fullUrl"] == url)


def references(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("reference"), str):
            yield node["reference"]
        for value in node.values():
            yield from references(value)
    elif isinstance(node, list):
        for value in node:
            yield from references(value)


# -- the bundle itself -------------------------------------------------------------------------


def test_every_resource_validates(bundle: dict[str, Any]) -> None:
    assert validate(bundle, type_="Bundle") == []
    for resource in resources(bundle):
        issues = validate(resource, type_=resource["resourceType"])
        assert [i for i in issues if i.severity == "error"] == [], resource["resourceType"]


def test_conditional_creates_with_resolvable_references(bundle: dict[str, Any]) -> None:
    assert bundle["type"] == "transaction"
    full_urls = [e["fullUrl"] for e in bundle["entry"]]
    assert len(set(full_urls)) == len(full_urls)
    assert all(u.startswith("urn:uuid:") for u in full_urls)
    for entry in bundle["entry"]:
        request = entry["request"]
        assert request["method"] == "POST"
        assert request["url"] == entry["resource"]["resourceType"]
        system, _, value = request["ifNoneExist"].removeprefix("identifier=").partition("|")
        assert {"system": system, "value": value} in entry["resource"]["identifier"]
        for ref in references(entry["resource"]):
            assert ref in full_urls, ref


def test_no_reference_cycles(bundle: dict[str, Any]) -> None:
    graph = {e["fullUrl"]: set(references(e["resource"])) for e in bundle["entry"]}
    done: set[str] = set()

    def visit(node: str, path: tuple[str, ...]) -> None:
        assert node not in path, "reference cycle"
        if node not in done:
            for target in graph[node]:
                visit(target, (*path, node))
            done.add(node)

    for node in graph:
        visit(node, ())


def test_identifiers_are_valid_and_synthetic(bundle: dict[str, Any]) -> None:
    seen: Counter[str] = Counter()
    for resource in resources(bundle):
        for identifier in resource.get("identifier", []):
            system, value = identifier["system"], identifier["value"]
            if system in CHECKED_SYSTEMS:
                assert ids.identifier_problems(system, value) is None, (system, value)
                seen[system] += 1
            if system == ids.FNR_SYSTEM:
                assert ids.parse_person_number(value).synthetic == "skatteetaten"
            if system == ids.ENH_SYSTEM:
                assert value[0] not in "89"  # real organisation numbers start with 8 or 9
    assert seen[ids.FNR_SYSTEM] == 1 and seen[ids.SE_PERSONNUMMER_SYSTEM] == 1
    assert seen[ids.HPR_SYSTEM] == 4 and seen[ids.ENH_SYSTEM] == 5
    assert seen[ids.RESH_SYSTEM] == 1


# -- (a) the Norwegian individual plan ---------------------------------------------------------


def test_individual_plan(bundle: dict[str, Any]) -> None:
    plan = by_key(bundle, "kari-plan")
    assert (plan["status"], plan["intent"]) == ("active", "plan")
    assert plan["category"][0]["text"] == "Individuell plan"
    assert plan["subject"]["reference"] == demo.urn("kari")
    assert plan["period"]["start"] and plan["period"]["end"]
    assert plan["careTeam"] == [{"reference": demo.urn("kari-team")}]
    assert {"reference": demo.urn("kari-samtykke")} in plan["supportingInfo"]
    assert all(a["detail"]["performer"] for a in plan["activity"])
    assert all(any(k.startswith("scheduled") for k in a["detail"]) for a in plan["activity"])
    performers = {a["detail"]["performer"][0]["reference"] for a in plan["activity"]}
    assert demo.urn("kari") in performers  # the person's own contribution

    team = by_key(bundle, "kari-team")
    roles = [p["role"][0]["text"] for p in team["participant"]]
    assert roles.count("Koordinator") == 1

    goals = [by_key(bundle, "kari-maal"), by_key(bundle, "kari-delmaal")]
    assert all(g["expressedBy"]["reference"] == demo.urn("kari") for g in goals)
    relation = goals[0]["extension"][0]
    assert relation["extension"][1]["valueReference"]["reference"] == demo.urn("kari-delmaal")

    consent = by_key(bundle, "kari-samtykke")
    assert consent["status"] == "active"
    actors = {a["reference"]["reference"] for a in consent["provision"]["provision"][0]["actor"]}
    assert actors == {demo.urn(k) for k in ("kommune", "sykehus", "nav", "legesenter")}

    task = by_key(bundle, "kari-melding")
    assert task["requester"]["reference"] == demo.urn("rehab")
    assert task["owner"]["reference"] == demo.urn("koordinerende-enhet")
    assert task["focus"]["reference"] == demo.urn("kari-plan")
    roles_of = {r["code"][0]["text"] for r in resources(bundle, "PractitionerRole")}
    assert roles_of == {"Koordinator", "Sykepleier", "Veileder", "Fastlege"}


# -- (b) Rut, 82: the Swedish SIP example ------------------------------------------------------


def test_rut_goals_as_in_the_source(bundle: dict[str, Any]) -> None:
    goal = by_key(bundle, "rut-maal")
    assert goal["description"]["text"] == "Rut känner sig trygg i sin vardag"
    assert goal["target"] == [{"dueDate": "2013-04-25"}]
    sub = by_key(bundle, "rut-delmal-1")
    assert sub["description"]["text"] == ("Rut vet vem hon ska kontakta när hon känner sig "
                                          "orolig")
    assert "Rut önskar att det finns en samordnare" in sub["note"][0]["text"]
    relation = goal["extension"][0]["extension"]
    assert relation[1]["valueReference"]["reference"] == demo.urn("rut-delmal-1")
    assert "expressedBy" not in goal  # the source does not say who formulated the goal


def test_rut_measures_as_in_the_source(bundle: dict[str, Any]) -> None:
    plan = by_key(bundle, "rut-sip")
    assert plan["category"][0]["text"] == "Samordnad individuell plan (SIP)"
    details = [a["detail"] for a in plan["activity"]]
    assert [d["description"] for d in details] == [
        "Kartlägga situationer som gör Rut orolig",
        "Notera vart Rut ska vända sig vid vilka situationer, på ett sätt som Rut förstår",
    ]
    assert [d["scheduledString"] for d in details] == ["Uppföljning 9 maj",
                                                       "Uppföljning 16 maj"]
    first = {p["reference"] for p in details[0]["performer"]}
    assert first == {demo.urn("hemsjukvarden"), demo.urn("hemtjansten"), demo.urn("rut")}
    assert [p["reference"] for p in details[1]["performer"]] == [demo.urn("hemtjansten")]
    assert all(d["goal"] == [{"reference": demo.urn("rut-delmal-1")}] for d in details)


def test_rut_leaves_open_what_the_source_leaves_open(bundle: dict[str, Any]) -> None:
    plan = by_key(bundle, "rut-sip")
    assert "author" not in plan and "period" not in plan  # no overall-responsible principal
    team = by_key(bundle, "rut-team")
    roles = {r["text"] for p in team["participant"] for r in p["role"]}
    assert not roles & {"Koordinator", "Samordnare"}  # no coordinator named
    rut = by_key(bundle, "rut")
    assert "birthDate" not in rut and "family" not in rut["name"][0]
    assert not any(c["patient"]["reference"] == demo.urn("rut")
                   for c in resources(bundle, "Consent"))
    assert ids.is_valid_se_personnummer(rut["identifier"][0]["value"])


# -- loading -----------------------------------------------------------------------------------


@pytest.fixture
def service(tmp_path: Path) -> Iterator[FhirService]:
    app = create_app(Config(data_dir=tmp_path))
    planbro = app.extensions["planbro"]
    yield planbro.service
    planbro.store.close()


def count(service: FhirService, type_: str) -> int:
    return service.search(CTX, type_, [("_summary", "count")]).body["total"]


def test_loading_twice_creates_nothing_new(service: FhirService,
                                           bundle: dict[str, Any]) -> None:
    expected = Counter(r["resourceType"] for r in resources(bundle))
    assert demo.load_demo(service) == {"created": len(bundle["entry"]), "existing": 0}
    assert demo.load_demo(service) == {"created": 0, "existing": len(bundle["entry"])}
    assert {t: count(service, t) for t in expected} == dict(expected)


def test_loaded_plan_is_found_by_fodselsnummer(service: FhirService) -> None:
    demo.load_demo(service)
    found = service.search(CTX, "CarePlan", [
        ("subject:Patient.identifier", f"{ids.FNR_SYSTEM}|{demo.KARI_FNR}")]).body
    plans = [e["resource"] for e in found["entry"]]
    assert [p["title"] for p in plans] == ["Individuell plan for Kari Nordmann"]
    assert plans[0]["subject"]["reference"].startswith("Patient/")
    team_id = plans[0]["careTeam"][0]["reference"].removeprefix("CareTeam/")
    team = service.read(CTX, "CareTeam", team_id).body
    assert team["subject"] == plans[0]["subject"]
