"""Support for the access tests: a running Planbro (embedded engine) over real HTTP with
the demo directory, the people of :mod:`world` and real tokens for every kind of caller:

- ``admin`` (an administrative system), ``auditor`` (scope planbro/audit);
- organisations' systems: ``kommune`` (the coordinator's municipality), ``nav`` (a
  participant; limited by one person's consent), ``hospital`` (sent a notification),
  ``unrelated`` (no part in anything);
- ``doctor``: a health worker (HPR) of the unrelated organisation, for emergency access;
- the people themselves through the patient app's sign-in: ``self:<key>``.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from joserfc import jwk
from live import (
    ADMIN_SCOPE,
    AUDITOR_SCOPE,
    FHIR_JSON,
    ORG_SCOPE,
    LiveServer,
    Parties,
    system_token,
)
from world import (
    ORGS,
    STATES,
    notice_resources,
    person_resources,
    transaction,
    withdrawn,
)
from world import consent as consent_of

from server import demo
from server.app import create_app
from server.auth.clients import ClientRecord
from server.config import Config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "auth"))
from authsupport import APP_REDIRECT, Env, Flow  # noqa: E402 - the patient sign-in helpers

PERSON_SCOPE = ("openid fhirUser launch/patient offline_access patient/*.rs patient/Goal.cu "
                "patient/Consent.cu patient/Communication.c")
DOCTOR_HPR = "9144889"
EMERGENCY = "X-Planbro-Emergency-Reason"


@dataclass
class World(Parties):
    """The access tests' people and organisations, served over HTTP."""

    def get(self, caller: str, path: str, **kwargs: Any) -> requests.Response:
        return self.session(caller).get(self.url(path), timeout=30, **kwargs)

    def put(self, caller: str, resource: dict[str, Any], *,
            headers: dict[str, str] | None = None) -> requests.Response:
        path = f"{resource['resourceType']}/{resource['id']}"
        return self.session(caller).put(self.url(path), json=resource, timeout=30,
                                    headers={"Content-Type": FHIR_JSON, **(headers or {})})

    def post(self, caller: str, path: str, body: dict[str, Any], *,
             headers: dict[str, str] | None = None) -> requests.Response:
        return self.session(caller).post(self.url(path), json=body, timeout=30,
                                     headers={"Content-Type": FHIR_JSON, **(headers or {})})

    def bundle(self, caller: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = self.get(caller, path, **kwargs)
        assert response.status_code == 200, (caller, path, response.text)
        found: dict[str, Any] = response.json()
        return found

    def ids(self, caller: str, path: str, mode: str = "match") -> list[str]:
        return [f"{e['resource']['resourceType']}/{e['resource']['id']}"
                for e in self.bundle(caller, path).get("entry", [])
                if e.get("search", {}).get("mode") == mode]

def _write_people(world: World) -> None:
    admin = world.session("admin")
    for state in STATES:
        body = transaction(person_resources(state, state))
        answer = admin.post(world.base, json=body, timeout=60)
        assert answer.status_code == 200, answer.text
    answer = admin.post(world.base, json=transaction(notice_resources()), timeout=60)
    assert answer.status_code == 200, answer.text
    response = world.put("admin", withdrawn(consent_of("withdrawn", "withdrawn")))
    assert response.status_code == 200, response.text


def _doctor_token(world: World) -> str:
    """A health worker's token: a system allowed to name its practitioner (HPR) asks for
    one with the ``hpr`` claim in its client assertion."""
    key = jwk.ECKey.generate_key("P-256", parameters={"kid": "doctor-1"})
    public = {**key.as_dict(private=False), "kid": "doctor-1"}
    auth = world.planbro.auth
    auth.clients.put(ClientRecord(client_id="doctor-ehr", name="Emergency room EHR",
                                  scope="user/*.rs system/*.rs",
                                  organization=ORGS["unrelated"], jwks={"keys": [public]},
                                  may_assert_practitioner=True))
    env = Env(world.live, world.app, auth, world.planbro.store, auth.config, {"doc": key})
    return env.access_token(client_id="doctor-ehr", key="doc", scope="user/*.rs",
                            hpr=DOCTOR_HPR)


def person_token(world: World, key: str, scope: str = PERSON_SCOPE) -> str:
    """The person ``key`` signs in through the patient app (authorization code + PKCE)."""
    auth = world.planbro.auth
    env = Env(world.live, world.app, auth, world.planbro.store, auth.config)
    token: str = Flow(env, scope=scope).tokens(patient=key)["access_token"]
    return token


def build_world(data: Path, emergency_seconds: int = 3600) -> World:
    live = LiveServer()
    saved = {k: os.environ.get(k) for k in ("PLANBRO_PATIENT_APP_REDIRECT_URIS",
                                            "PLANBRO_EMERGENCY_SECONDS")}
    os.environ["PLANBRO_PATIENT_APP_REDIRECT_URIS"] = APP_REDIRECT
    os.environ["PLANBRO_EMERGENCY_SECONDS"] = str(emergency_seconds)
    try:
        app = create_app(Config(data_dir=data, base_url=f"{live.url}/fhir", demo=True))
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    live.app = app
    world = World(live, app)
    auth = world.planbro.auth
    demo.load_demo(world.planbro.service)
    world.tokens["admin"] = system_token(auth, scope=ADMIN_SCOPE)
    world.tokens["auditor"] = system_token(auth, scope=AUDITOR_SCOPE)
    for name, orgnr in ORGS.items():
        world.tokens[name] = system_token(auth, scope=ORG_SCOPE, organization=orgnr)
    _write_people(world)
    world.tokens["doctor"] = _doctor_token(world)
    for key in (*STATES, "notice"):
        world.tokens[f"self:{key}"] = person_token(world, key)
    return world


