"""Optimistic locking (If-Match, If-None-Match) and race-free conditional creates under
concurrent clients."""

from __future__ import annotations

import http.client
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import requests

from .conftest import FNR_SYSTEM, Fhir, patient, refused, synthetic_fnr

THREADS = 8


def _together(n: int, work: Callable[[int], requests.Response]) -> list[requests.Response]:
    """Run ``work(i)`` in ``n`` threads released at the same moment; each has its own
    connection."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n

    def run(i: int) -> None:
        barrier.wait(timeout=30)
        try:
            results[i] = work(i)
        except Exception as exc:  # reported by the assertion below
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert all(isinstance(r, requests.Response) for r in results), results
    return results


def test_if_match_mismatch_is_412(fhir: Fhir) -> None:
    created = fhir.create(patient(1))
    pid = created["id"]
    stale = fhir.put(f"Patient/{pid}", created, headers={"If-Match": 'W/"9"'})
    assert stale.status_code == 412
    assert stale.json()["resourceType"] == "OperationOutcome"
    ok = fhir.put(f"Patient/{pid}", created, headers={"If-Match": 'W/"1"'})
    assert ok.status_code == 200
    plain = fhir.put(f"Patient/{pid}", created, headers={"If-Match": '"2"'})
    assert plain.status_code == 200
    assert fhir.delete(f"Patient/{pid}", headers={"If-Match": 'W/"1"'}).status_code == 412
    assert fhir.delete(f"Patient/{pid}", headers={"If-Match": 'W/"3"'}).status_code == 204


def test_malformed_if_match_is_400(fhir: Fhir) -> None:
    created = fhir.create(patient(2))
    response = fhir.put(f"Patient/{created['id']}", created, headers={"If-Match": "W/one"})
    assert response.status_code == 400
    assert response.json()["issue"][0]["expression"] == ["If-Match"]
    assert fhir.get(f"Patient/{created['id']}").json()["meta"]["versionId"] == "1"


def test_if_match_any_needs_a_current_resource(fhir: Fhir) -> None:
    before = fhir.versions()
    absent = fhir.put("Patient/absent-1", {**patient(30), "id": "absent-1"},
                      headers={"If-Match": "*"})
    refused(absent, 412, "conflict", ["If-Match"])
    assert fhir.get("Patient/absent-1").status_code == 404
    # a PATCH of nothing is 404 with or without a precondition (RFC 9110 13.2.1)
    op = [{"op": "replace", "path": "/active", "value": False}]
    refused(fhir.patch("Patient/absent-1", op, headers={"If-Match": "*"}), 404, "not-found")
    assert fhir.versions() == before
    created = fhir.create(patient(31))
    pid = created["id"]
    assert fhir.put(f"Patient/{pid}", {**created, "active": True},
                    headers={"If-Match": "*"}).status_code == 200
    assert fhir.patch(f"Patient/{pid}", op, headers={"If-Match": "*"}).status_code == 200
    assert fhir.delete(f"Patient/{pid}", headers={"If-Match": "*"}).status_code == 204
    before = fhir.versions()
    refused(fhir.delete(f"Patient/{pid}", headers={"If-Match": "*"}), 412, "conflict",
            ["If-Match"])
    refused(fhir.put(f"Patient/{pid}", created, headers={"If-Match": "*"}), 412, "conflict",
            ["If-Match"])
    assert fhir.versions() == before
    assert fhir.get(f"Patient/{pid}").status_code == 410


def test_if_match_list_proceeds_when_one_matches(fhir: Fhir) -> None:
    created = fhir.create(patient(32))
    pid = created["id"]
    both = fhir.put(f"Patient/{pid}", {**created, "active": True},
                    headers={"If-Match": 'W/"7", W/"1"'})
    assert both.status_code == 200, both.text
    before = fhir.versions()
    stale = fhir.put(f"Patient/{pid}", created, headers={"If-Match": 'W/"1", W/"3"'})
    issue = refused(stale, 412, "conflict", ["If-Match"])
    assert "version 2" in issue["diagnostics"]
    # several header fields are one list (RFC 9110 5.3)
    url = urlsplit(fhir.url(f"Patient/{pid}"))
    connection = http.client.HTTPConnection(url.netloc, timeout=30)
    try:
        connection.putrequest("DELETE", url.path)
        for name, value in (*fhir.auth.items(), ("If-Match", 'W/"1"'), ("If-Match", 'W/"9"')):
            connection.putheader(name, value)
        connection.endheaders()
        split = connection.getresponse()
        assert split.status == 412 and b'"expression":["If-Match"]' in split.read()
    finally:
        connection.close()
    assert fhir.versions() == before
    assert fhir.get(f"Patient/{pid}").json()["active"] is True
    ok = fhir.delete(f"Patient/{pid}", headers={"If-Match": 'W/"1", "2", W/"3"'})
    assert ok.status_code == 204


def test_if_none_match_any_makes_a_put_create_only(fhir: Fhir) -> None:
    body = {**patient(33), "id": "only-once"}
    first = fhir.put("Patient/only-once", body, headers={"If-None-Match": "*"})
    assert first.status_code == 201, first.text
    before = fhir.versions()
    again = fhir.put("Patient/only-once", {**body, "active": True},
                     headers={"If-None-Match": "*"})
    issue = refused(again, 412, "conflict", ["If-None-Match"])
    assert "version 1" in issue["diagnostics"]
    assert fhir.versions() == before
    stored = fhir.get("Patient/only-once").json()
    assert stored["meta"]["versionId"] == "1" and "active" not in stored
    # a version listed in If-None-Match refuses the write too; another one lets it through
    refused(fhir.put("Patient/only-once", body, headers={"If-None-Match": 'W/"1"'}), 412,
            "conflict", ["If-None-Match"])
    assert fhir.put("Patient/only-once", body,
                    headers={"If-None-Match": 'W/"5"'}).status_code == 200
    assert fhir.delete("Patient/only-once").status_code == 204
    recreated = fhir.put("Patient/only-once", body, headers={"If-None-Match": "*"})
    assert recreated.status_code == 201, recreated.text
    assert recreated.json()["meta"]["versionId"] == "4"


def test_if_none_match_any_on_a_conditional_update(fhir: Fhir) -> None:
    criteria = f"Patient?identifier={FNR_SYSTEM}|{synthetic_fnr(34)}"
    created = fhir.put(criteria, patient(34), headers={"If-None-Match": "*"})
    assert created.status_code == 201, created.text
    before = fhir.versions()
    refused(fhir.put(criteria, {**patient(34), "active": True},
                     headers={"If-None-Match": "*"}), 412, "conflict", ["If-None-Match"])
    assert fhir.versions() == before
    refused(fhir.put(f"Patient?identifier={FNR_SYSTEM}|{synthetic_fnr(35)}", patient(35),
                     headers={"If-Match": "*"}), 412, "conflict", ["If-Match"])
    assert fhir.versions() == before


def test_concurrent_create_only_puts_create_once(fhir: Fhir) -> None:
    def create(i: int) -> requests.Response:
        body = {**patient(36), "id": "raced", "name": [{"family": f"Writer{i}"}]}
        return requests.put(fhir.url("Patient/raced"), json=body, timeout=60,
                            headers={**fhir.auth, "If-None-Match": "*",
                                     "Content-Type": "application/fhir+json"})

    responses = _together(THREADS, create)
    assert Counter(r.status_code for r in responses) == {201: 1, 412: THREADS - 1}
    winner = next(r for r in responses if r.status_code == 201).json()
    current = fhir.get("Patient/raced").json()
    assert current["meta"]["versionId"] == "1"
    assert current["name"] == winner["name"]


def test_read_with_if_none_match_list_or_any(fhir: Fhir) -> None:
    pid = fhir.create(patient(37))["id"]
    for value in ('W/"7", W/"1"', '"1"', "*"):
        for method in ("GET", "HEAD"):
            response = fhir.request(method, f"Patient/{pid}", headers={"If-None-Match": value})
            assert response.status_code == 304, (value, method)
            assert response.content == b"" and response.headers["ETag"] == 'W/"1"'
    assert fhir.get(f"Patient/{pid}",
                    headers={"If-None-Match": 'W/"7", W/"8"'}).status_code == 200


def test_malformed_preconditions_are_400(fhir: Fhir) -> None:
    created = fhir.create(patient(38))
    pid = created["id"]
    before = fhir.versions()
    for header, value in (("If-Match", 'W/"1" W/"2"'), ("If-Match", '*, W/"1"'),
                          ("If-Match", ""), ("If-None-Match", "W/one"),
                          ("If-None-Match", 'W/"1", *')):
        response = fhir.put(f"Patient/{pid}", {**created, "active": True},
                            headers={header: value})
        refused(response, 400, "value", [header])
    refused(fhir.get(f"Patient/{pid}", headers={"If-None-Match": "W/1"}), 400, "value",
            ["If-None-Match"])
    assert fhir.versions() == before


def test_concurrent_updates_with_same_if_match(fhir: Fhir) -> None:
    created = fhir.create(patient(3))
    pid = created["id"]

    def update(i: int) -> requests.Response:
        body = {**created, "name": [{"family": f"Writer{i}"}]}
        return requests.put(fhir.url(f"Patient/{pid}"), json=body, timeout=60,
                            headers={**fhir.auth, "If-Match": 'W/"1"',
                                     "Content-Type": "application/fhir+json"})

    responses = _together(THREADS, update)
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {200: 1, 412: THREADS - 1}
    winner = next(r for r in responses if r.status_code == 200).json()
    current = fhir.get(f"Patient/{pid}").json()
    assert current["meta"]["versionId"] == "2"
    assert current["name"] == winner["name"]


def test_concurrent_conditional_creates(fhir: Fhir) -> None:
    fnr = synthetic_fnr(4)
    body = patient(4)

    def create(_: int) -> requests.Response:
        return requests.post(fhir.url("Patient"), json=body, timeout=60, headers={
            **fhir.auth, "Content-Type": "application/fhir+json",
            "If-None-Exist": f"identifier={FNR_SYSTEM}|{fnr}"})

    responses = _together(THREADS, create)
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {201: 1, 200: THREADS - 1}
    ids = {r.json()["id"] for r in responses}
    assert len(ids) == 1
    assert fhir.ids(f"Patient?identifier={FNR_SYSTEM}|{fnr}") == list(ids)


def test_concurrent_transactions_create_one_patient(fhir: Fhir) -> None:
    fnr = synthetic_fnr(5)
    placeholder = "urn:uuid:5f0b7a9e-0000-4000-8000-00000000000a"

    def transaction(i: int) -> requests.Response:
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": placeholder,
             "resource": patient(5),
             "request": {"method": "POST", "url": "Patient",
                         "ifNoneExist": f"identifier={FNR_SYSTEM}|{fnr}"}},
            {"resource": {"resourceType": "Goal", "lifecycleStatus": "proposed",
                          "description": {"text": f"Goal {i}"},
                          "subject": {"reference": placeholder}},
             "request": {"method": "POST", "url": "Goal"}},
        ]}
        return requests.post(fhir.base, json=bundle, timeout=60,
                             headers={**fhir.auth, "Content-Type": "application/fhir+json"})

    responses = _together(THREADS, transaction)
    assert {r.status_code for r in responses} == {200}, [r.text for r in responses]
    patients = fhir.ids(f"Patient?identifier={FNR_SYSTEM}|{fnr}")
    assert len(patients) == 1
    subjects = {e["resource"]["subject"]["reference"]
                for e in fhir.search("Goal?_count=50")["entry"]}
    assert subjects == {f"Patient/{patients[0]}"}
    statuses = Counter(r.json()["entry"][0]["response"]["status"] for r in responses)
    assert statuses == {"201 Created": 1, "200 OK": THREADS - 1}
