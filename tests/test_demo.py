"""The demo data: the profiles' examples, loaded once through the FHIR service."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from server.app import create_app
from server.auth.principal import Principal
from server.auth.scopes import ScopeSet
from server.config import Config
from server.demo import KARI_FNR, ORGNR, SIP_PLAN, demo_bundle, examples, load_demo
from server.fhir.service import FhirService, RequestContext
from server.plans.identifiers import FNR_SYSTEM, identifier_problems, parse_person_number
from server.plans.invariants import plan_kind
from server.store.port import HistoryQuery

CTX = RequestContext(base_url="http://localhost/fhir")


@pytest.fixture
def service(tmp_path: Path) -> Iterator[FhirService]:
    planbro = create_app(Config(data_dir=tmp_path)).extensions["planbro"]
    yield planbro.service
    planbro.close()


def test_the_bundle_carries_every_example_once() -> None:
    entries = demo_bundle()["entry"]
    assert len(entries) == len(examples()) > 20
    urls = [e["request"]["url"] for e in entries]
    assert len(set(urls)) == len(urls)
    assert entries[-1]["resource"]["resourceType"] == "CarePlan"


def test_identifiers_are_valid_and_synthetic() -> None:
    for resource in examples():
        for ident in resource.get("identifier", []):
            if isinstance(ident, dict) and "system" in ident:
                assert identifier_problems(ident["system"], ident["value"]) is None, ident
    person = parse_person_number(KARI_FNR)
    assert person is not None and person.synthetic
    assert all(orgnr.startswith("3") for orgnr in ORGNR.values())  # never a real organisation


def test_loading_twice_creates_nothing_new(service: FhirService) -> None:
    first = load_demo(service)
    assert first == {"created": len(examples()), "existing": 0}
    versions = service.store.history(HistoryQuery(count=0))[1]
    assert load_demo(service) == {"created": 0, "existing": len(examples())}
    assert service.store.history(HistoryQuery(count=0))[1] == versions


def test_the_plans_are_found_and_conform(service: FhirService) -> None:
    load_demo(service)
    found = service.search(CTX, "CarePlan", [
        ("subject:Patient.identifier", f"{FNR_SYSTEM}|{KARI_FNR}"), ("status", "active")])
    plans = [e["resource"] for e in (found.body or {})["entry"]]
    assert len(plans) == 1
    assert "http://planbro.no/fhir/StructureDefinition/ip-careplan" in plans[0]["meta"]["profile"]
    sip = service.read(CTX, "CarePlan", SIP_PLAN).body or {}
    assert plan_kind(sip) == "sip"
    assert "http://planbro.no/fhir/StructureDefinition/sip-careplan" in sip["meta"]["profile"]


def test_the_demo_consent_keeps_health_information_from_nav(service: FhirService) -> None:
    """What `planbro serve --demo` suggests: NAV reads Kari's plan without the measures of
    the psychiatric nurse and the GP (her consent shares plan, goals and measures with NAV);
    the municipality, which maintains the plan, reads all of it."""
    load_demo(service, CTX.base_url)

    def plan_as(org: str) -> list[str]:
        principal = Principal(kind="system", client_id=f"demo-{org}", scopes=ScopeSet.parse(
            "system/CarePlan.rs"), issuer="https://elsewhere.example", subject=f"demo-{org}",
            organization=ORGNR[org])
        body = service.read(RequestContext(CTX.base_url, principal), "CarePlan", "kari").body
        assert body is not None
        return [a["detail"]["description"].split()[0] for a in body["activity"]]

    assert plan_as("kommune") == ["Arbeidstrening", "Kari", "Samtaler", "Anne", "Legetime"]
    assert plan_as("nav") == ["Arbeidstrening", "Kari", "Anne"]
