"""Synthetic demo data: one FHIR R4 transaction Bundle.

Everything here is invented for demonstration except the Swedish example, which follows the
SIP example "Rut, 82" of the Jönköping county presentation "Samordnad individuell plan"
(goals, sub-goal, measures, responsible parties and follow-up dates as given there).

* Norwegian person numbers are synthetic (month + 80, see :mod:`server.plans.identifiers`),
  organisation numbers start with 3 (real ones start with 8 or 9), HPR numbers and RESH ids
  are placeholders (neither register has a test-number convention).
* Every entry is a conditional create (``POST`` with ``ifNoneExist`` on an identifier), so
  loading the bundle again finds the resources already there and creates nothing new.
  Resources without a natural identifier carry one in the demo system :data:`DEMO_SYSTEM`.
  No two entries refer to each other (no reference cycles), which repeated loading needs.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from .fhir import bundle as fhir_bundle
from .fhir.service import FhirService, RequestContext
from .plans.identifiers import (
    ENH_SYSTEM,
    FNR_SYSTEM,
    HPR_SYSTEM,
    RESH_SYSTEM,
    SE_PERSONNUMMER_SYSTEM,
    synthetic_fnr,
    synthetic_orgnr,
)

CANONICAL_BASE = "http://planbro.no/fhir"
DEMO_SYSTEM = f"{CANONICAL_BASE}/sid/demo"
PLAN_CATEGORY_SYSTEM = f"{CANONICAL_BASE}/CodeSystem/plan-category"
TASK_CODE_SYSTEM = f"{CANONICAL_BASE}/CodeSystem/task-code"
CARE_TEAM_ROLE_SYSTEM = f"{CANONICAL_BASE}/CodeSystem/care-team-role"

IP_CATEGORY = {"coding": [{"system": PLAN_CATEGORY_SYSTEM, "code": "IP",
                           "display": "Individuell plan"}], "text": "Individuell plan"}
SIP_CATEGORY = {"coding": [{"system": PLAN_CATEGORY_SYSTEM, "code": "SIP",
                            "display": "Samordnad individuell plan (SIP)"}],
                "text": "Samordnad individuell plan (SIP)"}

_NAMESPACE = uuid.UUID("6f1c7f0e-3f47-5b8e-9a55-2d0c1b7e4a10")

# The Norwegian person of the demo: Kari Nordmann (the Norwegian placeholder name).
KARI_FNR = synthetic_fnr(dt.date(1986, 9, 12), 0, female=True)
# Organisation numbers of the demo, synthetic (see the module docstring).
ORGNR = {
    "kommune": synthetic_orgnr(0),
    "koordinerende-enhet": synthetic_orgnr(1),
    "sykehus": synthetic_orgnr(2),
    "nav": synthetic_orgnr(3),
    "legesenter": synthetic_orgnr(4),
}
HPR = {
    "koordinator": "990000011",
    "sykepleier": "990000022",
    "nav-veileder": "990000033",
    "fastlege": "990000044",
}
RESH_REHAB = "990001"

# Rut's Swedish personnummer. Sweden has no arithmetic test convention like Norway's month
# + 80: Skatteverket publishes a list of test numbers instead, whose entries for early birth
# years have birth numbers 980-982. This number has that shape and a valid Luhn check digit,
# but it is made up for the demo: the source gives only Rut's age (82), not her birth date,
# so the date in the number (17 May 1930) is invented and Patient.birthDate is left out.
RUT_PERSONNUMMER = "193005179829"


def urn(key: str) -> str:
    """The stable ``urn:uuid`` fullUrl of a demo resource."""
    return f"urn:uuid:{uuid.uuid5(_NAMESPACE, key)}"


def ref(key: str, display: str | None = None) -> dict[str, str]:
    out = {"reference": urn(key)}
    if display:
        out["display"] = display
    return out


def text(value: str) -> dict[str, str]:
    """A text-only CodeableConcept."""
    return {"text": value}


def coded(system: str, code: str, display: str, label: str | None = None) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": display}],
            "text": label or display}


def demo_id(key: str) -> dict[str, str]:
    return {"system": DEMO_SYSTEM, "value": key}


class _Bundle:
    """Collects conditional-create entries keyed by a demo key."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []

    def add(self, key: str, resource: dict[str, Any], match: dict[str, str] | None = None) -> None:
        """Add ``resource``, created unless a resource with identifier ``match`` exists
        (default: its demo identifier, which is then added to the resource)."""
        if match is None:
            match = demo_id(key)
            resource.setdefault("identifier", []).insert(0, match)
        type_ = resource["resourceType"]
        self.entries.append({
            "fullUrl": urn(key),
            "resource": resource,
            "request": {"method": "POST", "url": type_,
                        "ifNoneExist": f"identifier={match['system']}|{match['value']}"},
        })


def demo_bundle() -> dict[str, Any]:
    """The demo data as one R4 transaction Bundle (safe to load repeatedly)."""
    bundle = _Bundle()
    _organisations(bundle)
    _practitioners(bundle)
    _kari(bundle)
    _rut(bundle)
    return {"resourceType": "Bundle", "type": "transaction", "entry": bundle.entries}


def load_demo(service: FhirService, base_url: str = "http://localhost/fhir") -> dict[str, int]:
    """Load :func:`demo_bundle` as one transaction. Returns how many resources were
    ``created`` and how many were ``existing`` already (from an earlier load)."""
    result = fhir_bundle.process(service, RequestContext(base_url=base_url), demo_bundle())
    statuses = [entry["response"]["status"] for entry in (result.body or {})["entry"]]
    created = sum(status.startswith("201") for status in statuses)
    return {"created": created, "existing": len(statuses) - created}


# ---------------------------------------------------------------------------------------------
# Organisations and health personnel (Norway)
# ---------------------------------------------------------------------------------------------


def _organisation(bundle: _Bundle, key: str, name: str, kind: str, identifier: dict[str, str],
                  part_of: str | None = None) -> None:
    org: dict[str, Any] = {"resourceType": "Organization", "identifier": [identifier],
                           "active": True, "type": [text(kind)], "name": name}
    if part_of:
        org["partOf"] = ref(part_of)
    bundle.add(key, org, match=identifier)


def _organisations(bundle: _Bundle) -> None:
    def enh(key: str) -> dict[str, str]:
        return {"system": ENH_SYSTEM, "value": ORGNR[key]}

    _organisation(bundle, "kommune", "Eksempel kommune", "Kommune", enh("kommune"))
    _organisation(bundle, "koordinerende-enhet", "Koordinerende enhet",
                  "Koordinerende enhet", enh("koordinerende-enhet"), part_of="kommune")
    _organisation(bundle, "sykehus", "Eksempel sykehus HF", "Helseforetak", enh("sykehus"))
    _organisation(bundle, "rehab", "Avdeling for fysikalsk medisin og rehabilitering",
                  "Sykehusavdeling", {"system": RESH_SYSTEM, "value": RESH_REHAB},
                  part_of="sykehus")
    _organisation(bundle, "nav", "NAV Eksempel", "NAV-kontor", enh("nav"))
    _organisation(bundle, "legesenter", "Eksempel legesenter", "Legekontor", enh("legesenter"))


# key, given, family, role text, organisation key
_PERSONNEL = (
    ("koordinator", "Hanne", "Hansen", "Koordinator", "koordinerende-enhet"),
    ("sykepleier", "Per", "Pettersen", "Sykepleier", "rehab"),
    ("nav-veileder", "Nina", "Nilsen", "Veileder", "nav"),
    ("fastlege", "Lars", "Larsen", "Fastlege", "legesenter"),
)


def _practitioners(bundle: _Bundle) -> None:
    for key, given, family, role, org in _PERSONNEL:
        hpr = {"system": HPR_SYSTEM, "value": HPR[key]}
        bundle.add(key, {"resourceType": "Practitioner", "identifier": [hpr], "active": True,
                         "name": [{"family": family, "given": [given]}]}, match=hpr)
        bundle.add(f"{key}-rolle", {
            "resourceType": "PractitionerRole", "active": True,
            "practitioner": ref(key, f"{given} {family}"),
            "organization": ref(org), "code": [text(role)],
        })


# ---------------------------------------------------------------------------------------------
# (a) Kari Nordmann: an individual plan (individuell plan) in Norway
# ---------------------------------------------------------------------------------------------

_KARI_PERIOD = {"start": "2025-09-01", "end": "2026-08-31"}
_KARI_ORGS = ("kommune", "sykehus", "nav", "legesenter")


def _kari(bundle: _Bundle) -> None:
    fnr = {"system": FNR_SYSTEM, "value": KARI_FNR}
    bundle.add("kari", {
        "resourceType": "Patient", "identifier": [fnr], "active": True,
        "name": [{"use": "official", "family": "Nordmann", "given": ["Kari"]}],
        "gender": "female", "birthDate": "1986-09-12",
        "generalPractitioner": [ref("fastlege-rolle")],
    }, match=fnr)
    bundle.add("kari-skade", {
        "resourceType": "Condition", "subject": ref("kari"),
        "clinicalStatus": coded("http://terminology.hl7.org/CodeSystem/condition-clinical",
                                "active", "Active"),
        "code": text("Ervervet hjerneskade etter trafikkulykke"),
        "onsetDateTime": "2025-05-10",
        "note": [{"text": "Nedsatt hukommelse og utholdenhet; trenger hjelp til å planlegge "
                          "hverdagen og komme tilbake i arbeid."}],
    })
    _kari_goals(bundle)
    _kari_care_team(bundle)
    _kari_consent(bundle)
    _kari_plan(bundle)
    _kari_notification(bundle)


def _kari_goals(bundle: _Bundle) -> None:
    bundle.add("kari-maal", {
        "resourceType": "Goal", "lifecycleStatus": "active",
        "description": text("Jeg vil klare meg selv hjemme og være tilbake i jobb i halv "
                            "stilling innen ett år."),
        "subject": ref("kari"), "expressedBy": ref("kari"), "startDate": "2025-09-01",
        "target": [{"dueDate": "2026-08-31"}], "addresses": [ref("kari-skade")],
        "extension": [{
            "url": "http://hl7.org/fhir/StructureDefinition/goal-relationship",
            "extension": [
                {"url": "type", "valueCodeableConcept": coded(
                    "http://hl7.org/fhir/goal-relationship-type", "milestone", "Milestone",
                    "Delmål")},
                {"url": "target", "valueReference": ref("kari-delmaal")},
            ],
        }],
    })
    bundle.add("kari-delmaal", {
        "resourceType": "Goal", "lifecycleStatus": "active",
        "description": text("Jeg handler og lager middag selv minst tre dager i uka."),
        "subject": ref("kari"), "expressedBy": ref("kari"), "startDate": "2025-09-01",
        "target": [{"dueDate": "2026-01-31"}],
    })


def _kari_care_team(bundle: _Bundle) -> None:
    def member(key: str, role: str, org: str) -> dict[str, Any]:
        return {"role": [text(role)], "member": ref(key), "onBehalfOf": ref(org),
                "period": {"start": _KARI_PERIOD["start"]}}

    bundle.add("kari-team", {
        "resourceType": "CareTeam", "status": "active", "name": "Ansvarsgruppe for Kari",
        "subject": ref("kari"), "period": {"start": _KARI_PERIOD["start"]},
        "participant": [
            {"role": [text("Bruker")], "member": ref("kari")},
            {"role": [coded(CARE_TEAM_ROLE_SYSTEM, "koordinator", "Koordinator")],
             "member": ref("koordinator"), "onBehalfOf": ref("koordinerende-enhet"),
             "period": {"start": _KARI_PERIOD["start"]}},
            member("sykepleier", "Kontaktsykepleier", "rehab"),
            member("nav-veileder", "Veileder", "nav"),
            member("fastlege", "Fastlege", "legesenter"),
        ],
        "managingOrganization": [ref("kommune")],
    })


def _kari_consent(bundle: _Bundle) -> None:
    bundle.add("kari-samtykke", {
        "resourceType": "Consent", "status": "active",
        "scope": coded("http://terminology.hl7.org/CodeSystem/consentscope",
                       "patient-privacy", "Privacy Consent"),
        "category": [text("Samtykke til individuell plan og til deling av opplysninger")],
        "patient": ref("kari"), "dateTime": "2025-08-25", "performer": [ref("kari")],
        "organization": [ref("kommune")],
        "policyRule": text("Samtykke etter forskrift om habilitering og rehabilitering, "
                           "individuell plan og koordinator"),
        # The plan refers to this consent (CarePlan.supportingInfo); the consent does not
        # refer back: a reference cycle between conditional creates cannot be resolved when
        # the bundle is loaded again and both already exist.
        "provision": {
            "type": "permit", "period": _KARI_PERIOD,
            "provision": [{
                "type": "permit",
                "action": [text("Dele opplysninger i planen")],
                "actor": [{"role": text("Samarbeidspart"), "reference": ref(org)}
                          for org in _KARI_ORGS],
            }],
        },
    })


def _activity(description: str, performer: dict[str, str], scheduled: dict[str, Any],
              status: str = "in-progress", goals: tuple[str, ...] = ()) -> dict[str, Any]:
    detail: dict[str, Any] = {"status": status, "description": description,
                              "performer": [performer], **scheduled}
    if goals:
        detail["goal"] = [ref(g) for g in goals]
    return {"detail": detail}


def _weekly(times: int, start: str) -> dict[str, Any]:
    return {"scheduledTiming": {"repeat": {"boundsPeriod": {"start": start},
                                           "frequency": times, "period": 1,
                                           "periodUnit": "wk"}}}


def _kari_plan(bundle: _Bundle) -> None:
    both = ("kari-maal", "kari-delmaal")
    bundle.add("kari-plan", {
        "resourceType": "CarePlan", "status": "active", "intent": "plan",
        "category": [IP_CATEGORY], "title": "Individuell plan for Kari Nordmann",
        "description": "Koordinerte tjenester etter utskriving fra rehabilitering: hverdagsliv "
                       "hjemme, oppfølging fra sykehuset, arbeidsavklaring og fastlege.",
        "subject": ref("kari"), "period": _KARI_PERIOD, "created": "2025-08-28",
        "author": ref("koordinator-rolle"), "careTeam": [ref("kari-team")],
        "addresses": [ref("kari-skade")], "supportingInfo": [ref("kari-samtykke")],
        "goal": [ref(g) for g in both],
        "activity": [
            _activity("Hverdagsrehabilitering hjemme: trening i innkjøp og matlaging",
                      ref("koordinerende-enhet", "Eksempel kommune"),
                      _weekly(2, "2025-09-08"), goals=both),
            _activity("Poliklinisk kontroll og samtale med kontaktsykepleier",
                      ref("sykepleier-rolle"),
                      {"scheduledPeriod": {"start": "2025-10-06", "end": "2026-02-28"}},
                      status="scheduled", goals=("kari-maal",)),
            _activity("Arbeidsavklaring og plan for gradvis tilbakeføring til arbeid",
                      ref("nav-veileder-rolle"),
                      {"scheduledPeriod": {"start": "2025-11-01", "end": "2026-08-31"}},
                      status="not-started", goals=("kari-maal",)),
            _activity("Oppfølging hos fastlege hver sjette uke", ref("fastlege-rolle"),
                      {"scheduledTiming": {"repeat": {"boundsPeriod": _KARI_PERIOD,
                                                      "frequency": 1, "period": 6,
                                                      "periodUnit": "wk"}}},
                      goals=("kari-maal",)),
            _activity("Egen innsats: gåtur hver dag og ukeplan i kalenderen", ref("kari"),
                      {"scheduledTiming": {"repeat": {"boundsPeriod": _KARI_PERIOD,
                                                      "frequency": 1, "period": 1,
                                                      "periodUnit": "d"}}}, goals=both),
            _activity("Evaluering av planen i møte med ansvarsgruppen", ref("koordinator-rolle"),
                      {"scheduledPeriod": {"start": "2026-02-02", "end": "2026-02-02"}},
                      status="scheduled"),
        ],
    })


def _kari_notification(bundle: _Bundle) -> None:
    bundle.add("kari-melding", {
        "resourceType": "Task", "status": "completed", "intent": "order",
        "businessStatus": text("Koordinator oppnevnt"),
        "code": coded(TASK_CODE_SYSTEM, "melding-individuell-plan",
                      "Melding om behov for individuell plan"),
        "focus": ref("kari-plan"), "for": ref("kari"),
        "authoredOn": "2025-08-20T10:00:00+02:00", "lastModified": "2025-08-28T14:30:00+02:00",
        "requester": ref("rehab"), "owner": ref("koordinerende-enhet"),
        "restriction": {"period": {"end": "2025-09-03"}},
        "output": [
            {"type": text("Oppnevnt koordinator"), "valueReference": ref("koordinator-rolle")},
            {"type": text("Ansvarsgruppe"), "valueReference": ref("kari-team")},
        ],
    })


# ---------------------------------------------------------------------------------------------
# (b) Rut, 82: a coordinated individual plan (SIP) in Sweden
# ---------------------------------------------------------------------------------------------
# What the source gives: the overall goal "Rut känner sig trygg i sin vardag" with the date
# 2013-04-25; sub-goal 1 "Rut vet vem hon ska kontakta när hon känner sig orolig" with Rut's
# wish for a coordinator; two measures with their responsible parties and follow-up dates
# "9 maj" and "16 maj"; and Rut's current needs and situation.
# What the source leaves open, and is therefore left out: Rut's family name, birth date and
# address; the municipality and region (the principals); which principal has the overall
# responsibility for the plan; a named coordinator (Rut only wishes for one); who signed;
# whether and how consent was given; the plan period.
# How the open points in what it gives are read: the goal's date is taken as its target date
# (the source asks for goals that are "tidssatta"); the follow-up dates carry no year, so they
# are kept as written ("Uppföljning 9 maj") rather than given an invented year.

RUT_GOAL = "Rut känner sig trygg i sin vardag"
RUT_GOAL_DATE = "2013-04-25"
RUT_SUBGOAL = "Rut vet vem hon ska kontakta när hon känner sig orolig"
RUT_COORDINATOR_WISH = ("Samordnare: Rut önskar att det finns en samordnare dit hon kan vända "
                        "sig när hon blir osäker på vad som gäller.")
# measure, follow-up date as written, and the responsible parties (demo key and display) as
# care-team members: the source writes "Kontaktpersoner inom hemsjukvård och hemtjänst
# tillsammans med Rut" for the first measure and "hemtjänst" for the second.
RUT_MEASURES = (
    ("Kartlägga situationer som gör Rut orolig", "9 maj",
     (("hemsjukvarden", "Kontaktperson inom hemsjukvården"),
      ("hemtjansten", "Kontaktperson inom hemtjänsten"), ("rut", "Rut"))),
    ("Notera vart Rut ska vända sig vid vilka situationer, på ett sätt som Rut förstår",
     "16 maj", (("hemtjansten", "Hemtjänsten"),)),
)
RUT_SITUATION = (
    "Rut, 82 år, bor i egen lägenhet. Rut har komplikationer efter stroke samt diabetes. "
    "Hon har yrsel, vänstersidig svaghet och känselnedsättning, bröstsmärtor samt ett "
    "svårläkt bensår. Ibland är Rut väldigt orolig över sin hälsa och sin situation och känner "
    "sig otrygg. I samband med oron föreställer hon sig att andra vill henne illa. När Rut blir "
    "orolig och otrygg, mestadels på kvällar, kontaktar hon akutmottagningen på närmaste "
    "sjukhus. Rut vet inte vem hon annars ska ringa. Vårdcentralen och distriktssköterskan har "
    "telefontid, hemtjänsten har gått för dagen och svägerskan har sina egna krämpor. Rut har "
    "stöd från hemtjänsten med att komma upp och igång på mornarna, med mat tre gånger om "
    "dagen samt med medicinering. Hemsjukvården lägger om bensåret enligt särskilt schema. "
    "Rut som är änka sedan tre år tillbaka, har daglig kontakt med en svägerska, mestadels på "
    "telefon. Rut har också en son, sonhustru samt två barnbarn. Sonen och hans familj bor "
    "sedan ett år tillbaka i Australien på grund av utlandsarbete och ska stanna borta i "
    "ytterligare ett år."
)


def _rut(bundle: _Bundle) -> None:
    pnr = {"system": SE_PERSONNUMMER_SYSTEM, "value": RUT_PERSONNUMMER}
    bundle.add("rut", {
        "resourceType": "Patient", "identifier": [pnr],
        "name": [{"given": ["Rut"], "text": "Rut"}], "gender": "female",
        "maritalStatus": coded("http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "W",
                               "Widowed", "Änka"),
    }, match=pnr)
    for key, name in (("hemtjansten", "Hemtjänsten"), ("hemsjukvarden", "Hemsjukvården")):
        bundle.add(key, {"resourceType": "Organization", "active": True, "name": name})
    for key, condition in (("rut-stroke", "Komplikationer efter stroke"),
                           ("rut-diabetes", "Diabetes")):
        bundle.add(key, {
            "resourceType": "Condition", "subject": ref("rut"), "code": text(condition),
            "clinicalStatus": coded(
                "http://terminology.hl7.org/CodeSystem/condition-clinical", "active", "Active"),
        })
    bundle.add("rut-maal", {
        "resourceType": "Goal", "lifecycleStatus": "active", "description": text(RUT_GOAL),
        "subject": ref("rut"), "target": [{"dueDate": RUT_GOAL_DATE}],
        "extension": [{
            "url": "http://hl7.org/fhir/StructureDefinition/goal-relationship",
            "extension": [
                {"url": "type", "valueCodeableConcept": coded(
                    "http://hl7.org/fhir/goal-relationship-type", "milestone", "Milestone",
                    "Delmål 1")},
                {"url": "target", "valueReference": ref("rut-delmal-1")},
            ],
        }],
    })
    bundle.add("rut-delmal-1", {
        "resourceType": "Goal", "lifecycleStatus": "active", "description": text(RUT_SUBGOAL),
        "subject": ref("rut"), "note": [{"text": RUT_COORDINATOR_WISH}],
    })
    _rut_team_and_plan(bundle)


def _rut_team_and_plan(bundle: _Bundle) -> None:
    # The measures name contact persons (not by name) within two services, and Rut herself.
    bundle.add("rut-team", {
        "resourceType": "CareTeam", "status": "active", "subject": ref("rut"),
        "participant": [
            {"role": [text("Den enskilde")], "member": ref("rut", "Rut")},
            {"role": [text("Kontaktperson")], "member": ref("hemsjukvarden", "Hemsjukvården")},
            {"role": [text("Kontaktperson")], "member": ref("hemtjansten", "Hemtjänsten")},
        ],
    })
    activities = [
        {"detail": {"status": "not-started", "description": measure,
                    "performer": [ref(key, display) for key, display in performers],
                    "scheduledString": f"Uppföljning {follow_up}",
                    "goal": [ref("rut-delmal-1")]}}
        for measure, follow_up, performers in RUT_MEASURES
    ]
    bundle.add("rut-sip", {
        "resourceType": "CarePlan", "status": "active", "intent": "plan",
        "category": [SIP_CATEGORY], "title": "Samordnad individuell plan för Rut",
        "subject": ref("rut", "Rut"), "careTeam": [ref("rut-team")],
        "addresses": [ref("rut-stroke"), ref("rut-diabetes")],
        "goal": [ref("rut-maal"), ref("rut-delmal-1")], "activity": activities,
        "note": [{"text": "Aktuella behov, förutsättningar och intressen: " + RUT_SITUATION}],
    })
