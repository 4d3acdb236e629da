"""Optimistic locking (If-Match) and race-free conditional creates under concurrent clients."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import requests

from .conftest import FNR_SYSTEM, Fhir, patient, synthetic_fnr

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
