"""Test support for the plan workflow: a running Planbro over real HTTP with tokens for every
party (hospital, two municipalities, NAV, an administrative system, the person), a loopback
receiver for rest-hook notifications, and builders for the resources of the stories.

All identifiers are synthetic: fødselsnumre with month + 80 (passing both check digits),
organisation numbers starting with 3 (passing the modulus-11 check), placeholder HPR numbers.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import sys
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests
from live import (
    ADMIN_SCOPE,
    AUDITOR_SCOPE,
    FHIR_JSON,
    ORG_SCOPE,
    LiveServer,
    Parties,
    system_token,
)
from live import engine_config as live_engine_config

from server.app import create_app
from server.config import Config
from server.plans.identifiers import (
    ENH_SYSTEM,
    FNR_SYSTEM,
    HPR_SYSTEM,
    SE_PERSONNUMMER_SYSTEM,
    synthetic_fnr,
    synthetic_orgnr,
)
from server.plans.workflow import Workflow

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "auth"))
from authsupport import APP_REDIRECT, Env, Flow  # noqa: E402 - the patient sign-in helpers

CANON = "http://planbro.no/fhir"
ROLE = f"{CANON}/CodeSystem/participant-role"
CATEGORY = f"{CANON}/CodeSystem/plan-category"
TASK_CODE = f"{CANON}/CodeSystem/task-code"
TASK_OUTPUT = f"{CANON}/CodeSystem/task-output"
CONSENT_SCOPE = f"{CANON}/CodeSystem/consent-scope"
CONSENT_FORM = f"{CANON}/CodeSystem/consent-form"
STATUS_REASON = f"{CANON}/CodeSystem/plan-status-reason"
REJECTION = f"{CANON}/CodeSystem/notification-rejection-reason"
EXT = f"{CANON}/StructureDefinition"
CONTENT_CLASS = f"{CANON}/CodeSystem/content-class"
NAV_SCOPE = ("system/CarePlan.rus system/CareTeam.rs system/Goal.rs system/Task.cruds "
             "system/Patient.rs system/Organization.rs system/PractitionerRole.rs "
             "system/Consent.rs system/Subscription.cruds")
PERSON_SCOPE = ("openid fhirUser launch/patient offline_access patient/*.rs patient/Goal.cu "
                "patient/Consent.cu patient/Communication.c")

# The organisations of the stories: key -> (organisation number, name).
ORGS: dict[str, tuple[str, str]] = {
    "hospital": (synthetic_orgnr(21), "Eksempel sykehus HF, rehabiliteringsteamet"),
    "kommune": (synthetic_orgnr(22), "Eksempel kommune, koordinerende enhet"),
    "nykommune": (synthetic_orgnr(23), "Ny kommune, koordinerende enhet"),
    "nav": (synthetic_orgnr(24), "NAV Eksempel"),
    "legekontor": (synthetic_orgnr(25), "Eksempel legekontor"),
    "voksen": (synthetic_orgnr(26), "Eksempel kommune, tjenester for voksne"),
}
# Coordinators: key -> (organisation key, HPR number, name).
COORDINATORS: dict[str, tuple[str, str, str]] = {
    "siri": ("kommune", "9100001", "Siri Koordinator"),
    "per": ("kommune", "9100002", "Per Koordinator"),
    "berit": ("nykommune", "9100003", "Berit Koordinator"),
    "vera": ("voksen", "9100004", "Vera Koordinator"),
}
LEGE = ("legekontor", "9100005", "Ola Lege")


def org_ref(key: str) -> dict[str, str]:
    return {"reference": f"Organization/{key}", "display": ORGS[key][1]}


def role(code: str) -> dict[str, Any]:
    return {"coding": [{"system": ROLE, "code": code}]}


def today() -> str:
    return dt.date.today().isoformat()


def days_from_now(days: int) -> str:
    return (dt.date.today() + dt.timedelta(days=days)).isoformat()


def now_instant(offset_s: float = 0) -> str:
    at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=offset_s)
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


def urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


# -- people -----------------------------------------------------------------------------------


def se_personnummer(birth: dt.date, serial: int) -> str:
    """A Swedish personnummer (12 digits) with a valid Luhn check digit."""
    nine = f"{birth:%y%m%d}{serial:03d}"
    total = 0
    for index, char in enumerate(nine):
        doubled = int(char) * (2 if index % 2 == 0 else 1)
        total += doubled - 9 if doubled > 9 else doubled
    return f"{birth.year // 100}{nine}{(10 - total % 10) % 10}"


@dataclass(frozen=True)
class Person:
    key: str
    fnr: str
    given: str
    family: str
    birth: dt.date
    extra_identifiers: tuple[dict[str, str], ...] = ()

    def patient(self) -> dict[str, Any]:
        return {"resourceType": "Patient",
                "identifier": [{"system": FNR_SYSTEM, "value": self.fnr},
                               *self.extra_identifiers],
                "name": [{"family": self.family, "given": [self.given]}],
                "birthDate": self.birth.isoformat()}

    @property
    def criteria(self) -> str:
        return f"identifier={FNR_SYSTEM}|{self.fnr}"


def person(key: str, seq: int, given: str = "Kari", family: str = "Nordmann",
           birth: dt.date = dt.date(1987, 3, 14)) -> Person:
    return Person(key, synthetic_fnr(birth, seq, female=True), given, family, birth)


def rut() -> Person:
    """Rut, 82 (the SIP example): registered with a synthetic fødselsnummer and her Swedish
    personnummer."""
    birth = dt.date(dt.date.today().year - 82, 5, 12)
    return Person("rut", synthetic_fnr(birth, 7, female=True), "Rut", "Svensson", birth,
                  ({"system": SE_PERSONNUMMER_SYSTEM, "value": se_personnummer(birth, 42)},))


# -- directory --------------------------------------------------------------------------------


def directory() -> list[dict[str, Any]]:
    """Organisations, practitioners and their roles, with fixed ids."""
    out: list[dict[str, Any]] = []
    for key, (number, name) in ORGS.items():
        out.append({"resourceType": "Organization", "id": key, "active": True, "name": name,
                    "identifier": [{"system": ENH_SYSTEM, "value": number}]})
    for key, (org, hpr, name) in {**COORDINATORS, "lege": LEGE}.items():
        given, family = name.split(" ", 1)
        out.append({"resourceType": "Practitioner", "id": key,
                    "identifier": [{"system": HPR_SYSTEM, "value": hpr}],
                    "name": [{"family": family, "given": [given]}]})
        out.append({"resourceType": "PractitionerRole", "id": f"{key}-rolle", "active": True,
                    "practitioner": {"reference": f"Practitioner/{key}", "display": name},
                    "organization": org_ref(org),
                    "code": [role("fastlege" if key == "lege" else "koordinator")]})
    return out


# -- the hospital's notification --------------------------------------------------------------


def consent(patient: str, *, actors: tuple[str, ...], taker: str = "kommune",
            labels: dict[str, tuple[str, ...]] | None = None) -> dict[str, Any]:
    """The person's written consent to the plan and to sharing with ``actors``
    (Organization ids); ``labels`` limits an actor to content classes."""
    provisions = []
    for actor in actors:
        provision: dict[str, Any] = {
            "type": "permit",
            "actor": [{"role": {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                "code": "IRCP"}]}, "reference": {"reference": f"Organization/{actor}"}}]}
        if labels and actor in labels:
            provision["securityLabel"] = [{"system": CONTENT_CLASS, "code": c}
                                          for c in labels[actor]]
        provisions.append(provision)
    return {
        "resourceType": "Consent", "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                              "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": CONSENT_SCOPE, "code": "plan-making"}]},
                     {"coding": [{"system": CONSENT_SCOPE, "code": "information-sharing"}]},
                     {"coding": [{"system": CONSENT_FORM, "code": "skriftlig"}]}],
        "patient": {"reference": patient}, "dateTime": today(),
        "performer": [{"reference": patient}],
        "organization": [{"reference": f"Organization/{taker}"}],
        "policy": [{"uri": "https://lovdata.no/dokument/SF/forskrift/2011-12-16-1256"}],
        "provision": {"type": "permit", "period": {"start": today()},
                      "provision": provisions},
    }


def goal(patient: str, text: str, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Goal", "lifecycleStatus": "active",
            "description": {"text": text}, "subject": {"reference": patient},
            "expressedBy": {"reference": patient}, "startDate": today(), **extra}


def measure(text: str, performer: dict[str, str], goal_ref: str | None = None,
            follow_up: str | None = None) -> dict[str, Any]:
    detail: dict[str, Any] = {"description": text, "status": "not-started",
                              "scheduledString": "Ukentlig", "performer": [performer]}
    if goal_ref:
        detail["goal"] = [{"reference": goal_ref}]
    activity: dict[str, Any] = {"detail": detail}
    if follow_up:
        activity["extension"] = [{"url": f"{EXT}/ip-evaluation-date",
                                  "valueDateTime": follow_up}]
    return activity


def contribution(patient: str, goal_refs: list[str], *, kind: str = "individuell-plan",
                 measures: list[dict[str, Any]] | None = None,
                 participants: list[dict[str, Any]] | None = None,
                 note: str = "Sykehuset har startet kartlegging") -> list[dict[str, Any]]:
    """The hospital's contribution, to be contained in the notification Task: a draft plan
    ``#bidrag`` and its care team ``#team``."""
    measures = measures if measures is not None else [
        measure("Opptrening etter utskrivning: fysioterapi to ganger i uken",
                org_ref("hospital"), goal_refs[0],
                days_from_now(30) if kind == "sip" else None)]
    plan: dict[str, Any] = {
        "resourceType": "CarePlan", "id": "bidrag", "status": "draft", "intent": "plan",
        "category": [{"coding": [{"system": CATEGORY, "code": kind}]}],
        "title": "Individuell plan" if kind == "individuell-plan" else "SIP",
        "description": "Behov: langvarige og koordinerte tjenester etter utskrivning.",
        "subject": {"reference": patient}, "careTeam": [{"reference": "#team"}],
        "goal": [{"reference": g} for g in goal_refs], "activity": measures,
        "note": [{"text": note}],
    }
    url = f"{EXT}/ip-responsible-organization" if kind == "individuell-plan" else \
        f"{EXT}/sip-overall-responsible"
    plan["extension"] = [{"url": url, "valueReference": {"reference": "Organization/hospital"}}]
    team = {"resourceType": "CareTeam", "id": "team", "status": "active",
            "subject": {"reference": patient},
            "participant": participants or [
                {"role": [role("bruker")], "member": {"reference": patient}},
                {"role": [role("tjenesteyter")], "member": org_ref("hospital")}]}
    return [plan, team]


def notification(patient: str, contained: list[dict[str, Any]], *, owner: str = "kommune",
                 due: str | None = None) -> dict[str, Any]:
    task: dict[str, Any] = {
        "resourceType": "Task", "status": "requested", "intent": "order",
        "code": {"coding": [{"system": TASK_CODE, "code": "ip-notification"}]},
        "description": "Pasienten skrives ut og trenger langvarige, koordinerte tjenester.",
        "for": {"reference": patient}, "requester": org_ref("hospital"),
        "owner": {"reference": f"Organization?identifier={ENH_SYSTEM}|{ORGS[owner][0]}"},
        "contained": contained, "focus": {"reference": "#bidrag"},
    }
    if due:
        task["restriction"] = {"period": {"end": due}}
    return task


def notification_bundle(who: Person, *, goals: tuple[str, ...] = (
        "Jeg vil klare meg selv hjemme",), kind: str = "individuell-plan",
                        due: str | None = None, with_consent: bool = True,
                        owner: str = "kommune") -> dict[str, Any]:
    """The hospital's ONE transaction: the person (conditional), goals, consent, and the
    notification carrying the contribution."""
    p = urn()
    entries: list[dict[str, Any]] = [
        {"fullUrl": p, "resource": who.patient(),
         "request": {"method": "POST", "url": "Patient", "ifNoneExist": who.criteria}}]
    goal_urls = []
    for text in goals:
        g = urn()
        goal_urls.append(g)
        entries.append({"fullUrl": g, "resource": goal(p, text),
                        "request": {"method": "POST", "url": "Goal"}})
    task = notification(p, contribution(p, goal_urls, kind=kind), due=due, owner=owner)
    if with_consent:
        c = urn()
        entries.append({"fullUrl": c, "resource": consent(p, actors=("hospital", owner)),
                        "request": {"method": "POST", "url": "Consent"}})
        task["input"] = [{"type": {"text": "Samtykke"}, "valueReference": {"reference": c}}]
    entries.append({"fullUrl": urn(), "resource": task,
                    "request": {"method": "POST", "url": "Task"}})
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


# -- a notification receiver ------------------------------------------------------------------


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


class Receiver:
    """A rest-hook endpoint on 127.0.0.1 that records what it receives; it answers 500 to
    the first ``fail`` requests."""

    def __init__(self, fail: int = 0) -> None:
        self.received: list[Received] = []
        self.fail = fail
        self.answered = 0
        self.arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                with receiver.arrived:
                    receiver.answered += 1
                    failing = receiver.answered <= receiver.fail
                    if not failing:
                        receiver.received.append(Received(
                            self.command, self.path, dict(self.headers.items()),
                            json.loads(raw) if raw else None))
                    receiver.arrived.notify_all()
                self.send_response(500 if failing else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_POST = do_PUT = _handle

            def log_message(self, *args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_port}/hook"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def wait_for(self, count: int, timeout_s: float = 15.0) -> list[Received]:
        """The first ``count`` successful deliveries (fails after ``timeout_s``)."""
        with self.arrived:
            ok = self.arrived.wait_for(lambda: len(self.received) >= count, timeout_s)
        assert ok, f"{len(self.received)} of {count} notifications arrived: {self.received}"
        return self.received[:count]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def subscription(criteria: str, endpoint: str, *, payload: bool = True) -> dict[str, Any]:
    channel: dict[str, Any] = {"type": "rest-hook", "endpoint": endpoint,
                               "header": ["X-Subscriber: test"]}
    if payload:
        channel["payload"] = FHIR_JSON
    return {"resourceType": "Subscription", "status": "requested", "reason": "test",
            "criteria": criteria, "channel": channel}


# -- the running server -----------------------------------------------------------------------


@dataclass
class Running(Parties):
    """A running server and one HTTP session per party."""

    @property
    def workflow(self) -> Workflow:
        found: Workflow = self.app.extensions["planbro.workflow"]
        return found

    @property
    def service(self) -> Any:
        return self.planbro.service

    def request(self, party: str, method: str, path: str, body: Any = None,
                **headers: str) -> requests.Response:
        sent = {"Content-Type": FHIR_JSON, **headers} if body is not None else dict(headers)
        return self.session(party).request(method, self.url(path), json=body, headers=sent,
                                           timeout=30)

    def get(self, party: str, path: str) -> requests.Response:
        return self.request(party, "GET", path)

    def post(self, party: str, path: str, body: Any, **headers: str) -> requests.Response:
        return self.request(party, "POST", path, body, **headers)

    def put(self, party: str, resource: dict[str, Any], **headers: str) -> requests.Response:
        path = f"{resource['resourceType']}/{resource['id']}"
        return self.request(party, "PUT", path, resource, **headers)

    def read(self, party: str, path: str) -> dict[str, Any]:
        response = self.get(party, path)
        assert response.status_code == 200, (party, path, response.text)
        found: dict[str, Any] = response.json()
        return found

    def search(self, party: str, path: str) -> list[dict[str, Any]]:
        bundle = self.read(party, path)
        return [e["resource"] for e in bundle.get("entry", [])
                if e.get("search", {}).get("mode") == "match"]

    def ok(self, response: requests.Response, *status: int) -> dict[str, Any]:
        assert response.status_code in (status or (200, 201)), response.text
        body: dict[str, Any] = response.json() if response.content else {}
        return body

    def sign_in(self, patient_id: str, scope: str = PERSON_SCOPE) -> None:
        """The person signs in through the patient app (authorization code + PKCE)."""
        auth = self.planbro.auth
        env = Env(self.live, self.app, auth, self.planbro.store, auth.config)
        self.tokens["person"] = Flow(env, scope=scope).tokens(patient=patient_id)[
            "access_token"]
        self.sessions.pop("person", None)

def start(config: Config, *, load_directory: bool = True) -> Running:
    """Planbro on ``config`` (demo sign-in on) with tokens for every party."""
    live = LiveServer()
    saved = os.environ.get("PLANBRO_PATIENT_APP_REDIRECT_URIS")
    os.environ["PLANBRO_PATIENT_APP_REDIRECT_URIS"] = APP_REDIRECT
    try:
        app = create_app(dataclasses.replace(config, base_url=f"{live.url}/fhir", demo=True))
    finally:
        if saved is None:
            os.environ.pop("PLANBRO_PATIENT_APP_REDIRECT_URIS", None)
        else:
            os.environ["PLANBRO_PATIENT_APP_REDIRECT_URIS"] = saved
    live.app = app
    server = Running(live, app)
    auth = app.extensions["planbro"].auth
    server.tokens["admin"] = system_token(auth, scope=ADMIN_SCOPE)
    server.tokens["auditor"] = system_token(auth, scope=AUDITOR_SCOPE)
    for key, (number, _) in ORGS.items():
        scope = NAV_SCOPE if key == "nav" else ORG_SCOPE
        server.tokens[key] = system_token(auth, scope=scope, organization=number)
    if load_directory:
        for resource in directory():
            server.ok(server.put("admin", resource), 200, 201)
    return server


# -- a plan made directly by the municipality -------------------------------------------------


def full_plan(patient: str, team: str, goals: list[str], *, status: str = "draft",
              kind: str = "individuell-plan", responsible: str = "kommune") -> dict[str, Any]:
    """A plan with everything the regulation asks for (measures by the municipality and the
    person, a period, an evaluation date)."""
    url = "ip-responsible-organization" if kind == "individuell-plan" else \
        "sip-overall-responsible"
    measures = [measure("Hjemmetjenester: hjelp morgen og kveld", org_ref(responsible), goals[0],
                        days_from_now(60) if kind == "sip" else None),
                measure("Jeg trener hver dag", {"reference": patient}, goals[0],
                        days_from_now(60) if kind == "sip" else None)]
    return {
        "resourceType": "CarePlan", "status": status, "intent": "plan",
        "category": [{"coding": [{"system": CATEGORY, "code": kind}]}],
        "extension": [{"url": f"{EXT}/{url}", "valueReference": org_ref(responsible)},
                      {"url": f"{EXT}/ip-evaluation-date", "valueDateTime": days_from_now(90)}],
        "title": "Individuell plan", "description": "Behov: hjelp i hverdagen.",
        "subject": {"reference": patient}, "period": {"start": today()},
        "careTeam": [{"reference": team}], "goal": [{"reference": g} for g in goals],
        "activity": measures,
    }


def team_with_coordinator(patient: str, coordinator: str = "siri") -> dict[str, Any]:
    org = COORDINATORS[coordinator][0]
    return {"resourceType": "CareTeam", "status": "active", "subject": {"reference": patient},
            "participant": [
                {"role": [role("bruker")], "member": {"reference": patient}},
                {"role": [role("koordinator")],
                 "member": {"reference": f"PractitionerRole/{coordinator}-rolle"},
                 "onBehalfOf": {"reference": f"Organization/{org}"},
                 "period": {"start": today()}},
                {"role": [role("koordinerende-enhet")], "member": org_ref(org)}],
            "managingOrganization": [{"reference": f"Organization/{org}"}]}


def plan_bundle(who: Person, *, status: str = "draft", kind: str = "individuell-plan",
                with_consent: bool = True) -> dict[str, Any]:
    """One transaction: the person, a goal, a care team with a coordinator, the consent and
    the plan (fullUrls: urn:uuid: placeholders)."""
    p, g, t = urn(), urn(), urn()
    entries = [
        {"fullUrl": p, "resource": who.patient(),
         "request": {"method": "POST", "url": "Patient", "ifNoneExist": who.criteria}},
        {"fullUrl": g, "resource": goal(p, "Jeg vil bo hjemme"),
         "request": {"method": "POST", "url": "Goal"}},
        {"fullUrl": t, "resource": team_with_coordinator(p),
         "request": {"method": "POST", "url": "CareTeam"}},
        {"fullUrl": urn(), "resource": full_plan(p, t, [g], status=status, kind=kind),
         "request": {"method": "POST", "url": "CarePlan"}},
    ]
    if with_consent:
        entries.insert(3, {"resource": consent(p, actors=("kommune",)),
                           "request": {"method": "POST", "url": "Consent"}})
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def created(response: requests.Response, type_: str) -> list[str]:
    """The ids of the ``type_`` resources a transaction created (201) or found."""
    assert response.status_code == 200, response.text
    out = []
    for entry in response.json()["entry"]:
        location = entry["response"].get("location", "")
        if location.startswith(f"{type_}/"):
            out.append(location.split("/")[1])
    return out


WORKFLOW = {"allow_loopback_endpoints": True, "delivery_backoff_s": 0.2,
            "delivery_attempts": 3, "delivery_timeout_s": 5.0, "scan_interval_s": 3600.0}


def engine_config(kind: str, data: Path, **workflow: Any) -> tuple[Config, Callable[[], None]]:
    """A configuration of engine ``kind`` with the test workflow settings, and its cleanup."""
    return live_engine_config(kind, suite="plan workflow suite", data_dir=data,
                              extra={"workflow": {**WORKFLOW, **workflow}})
