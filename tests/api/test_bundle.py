"""batch and transaction Bundles POSTed to the base URL."""

from __future__ import annotations

import base64
import json
from typing import Any

from .conftest import FNR_SYSTEM, Fhir, patient, refused, synthetic_fnr

UUID_PATIENT = "urn:uuid:0f3c2a52-1111-4c3e-9d5a-6a3e1f0b0001"
UUID_GOAL = "urn:uuid:0f3c2a52-2222-4c3e-9d5a-6a3e1f0b0002"
UUID_OTHER = "urn:uuid:0f3c2a52-3333-4c3e-9d5a-6a3e1f0b0003"
EXT_URL = "http://example.org/fhir/StructureDefinition/responsible"


def _bundle(kind: str, *entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def _post(resource: dict[str, Any], full_url: str | None = None,
          **request: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"resource": resource,
                             "request": {"method": "POST", "url": resource["resourceType"],
                                         **request}}
    if full_url:
        entry["fullUrl"] = full_url
    return entry


def _goal(subject: str, status: str = "active") -> dict[str, Any]:
    return {"resourceType": "Goal", "lifecycleStatus": status,
            "description": {"text": "Mestre egen økonomi"}, "subject": {"reference": subject}}


def _statuses(response_bundle: dict[str, Any]) -> list[str]:
    return [e["response"]["status"] for e in response_bundle["entry"]]


def test_transaction_resolves_placeholders_everywhere(fhir: Fhir) -> None:
    plan = {
        "resourceType": "CarePlan", "status": "active", "intent": "plan",
        "subject": {"reference": UUID_PATIENT},
        "goal": [{"reference": UUID_GOAL}],
        "contained": [{"resourceType": "Goal", "id": "g1", "lifecycleStatus": "proposed",
                       "description": {"text": "Delmål"},
                       "subject": {"reference": UUID_PATIENT}}],
        "extension": [{"url": EXT_URL,
                       "valueReference": {"reference": f"{fhir.base}/Practitioner/doc-1"}}],
        "activity": [{"detail": {"status": "scheduled", "goal": [{"reference": "#g1"}]}}],
    }
    response = fhir.post("", _bundle(
        "transaction",
        _post(plan),
        _post(_goal(UUID_PATIENT), UUID_GOAL),
        _post(patient(1), UUID_PATIENT),
        {"fullUrl": f"{fhir.base}/Practitioner/doc-1",
         "resource": {"resourceType": "Practitioner", "id": "doc-1",
                      "name": [{"family": "Lege"}]},
         "request": {"method": "PUT", "url": "Practitioner/doc-1"}},
    ))
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["type"] == "transaction-response"
    assert _statuses(result) == ["201 Created"] * 4
    locations = [e["response"]["location"] for e in result["entry"]]
    plan_id, goal_id, patient_id = (loc.split("/")[1] for loc in locations[:3])
    assert locations[3] == "Practitioner/doc-1/_history/1"
    for entry in result["entry"]:
        assert entry["response"]["etag"] == 'W/"1"'
        assert entry["response"]["lastModified"]
    stored = fhir.get(f"CarePlan/{plan_id}").json()
    assert stored["subject"]["reference"] == f"Patient/{patient_id}"
    assert stored["goal"][0]["reference"] == f"Goal/{goal_id}"
    assert stored["contained"][0]["subject"]["reference"] == f"Patient/{patient_id}"
    assert stored["extension"][0]["valueReference"]["reference"] == "Practitioner/doc-1"
    assert stored["activity"][0]["detail"]["goal"][0]["reference"] == "#g1"
    goal = fhir.get(f"Goal/{goal_id}").json()
    assert goal["subject"]["reference"] == f"Patient/{patient_id}"
    assert fhir.ids(f"CarePlan?subject=Patient/{patient_id}") == [plan_id]


def test_transaction_is_all_or_nothing(fhir: Fhir) -> None:
    before = fhir.versions()
    response = fhir.post("", _bundle(
        "transaction",
        _post(patient(2), UUID_PATIENT),
        _post(_goal(UUID_PATIENT)),
        _post(_goal(UUID_PATIENT, status="splendid")),
    ))
    assert response.status_code == 400
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    expressions = [e for i in body["issue"] for e in i.get("expression", [])]
    assert "Bundle.entry[2].resource.lifecycleStatus" in expressions
    assert fhir.versions() == before


def test_unresolved_placeholder_names_the_reference(fhir: Fhir) -> None:
    before = fhir.versions()
    response = fhir.post("", _bundle(
        "transaction",
        _post(patient(3), UUID_PATIENT),
        _post({"resourceType": "CarePlan", "status": "active", "intent": "plan",
               "subject": {"reference": UUID_PATIENT},
               "careTeam": [{"reference": UUID_OTHER}]}),
    ))
    assert response.status_code == 400
    issue = response.json()["issue"][0]
    assert issue["expression"] == ["Bundle.entry[1].resource.careTeam[0]"]
    assert fhir.versions() == before


def test_conditional_references(fhir: Fhir) -> None:
    pid = fhir.create(patient(4))["id"]
    fhir.create(patient(5, family="Lie"))
    fhir.create(patient(6, family="Lie"))
    query = f"Patient?identifier={FNR_SYSTEM}|{synthetic_fnr(4)}"
    response = fhir.post("", _bundle("transaction", _post(_goal(query))))
    assert response.status_code == 200, response.text
    goal_id = response.json()["entry"][0]["response"]["location"].split("/")[1]
    assert fhir.get(f"Goal/{goal_id}").json()["subject"]["reference"] == f"Patient/{pid}"
    before = fhir.versions()
    several = fhir.post("", _bundle("transaction", _post(patient(7)),
                                    _post(_goal("Patient?family=Lie"))))
    assert several.status_code == 412
    assert several.json()["issue"][0]["expression"] == ["Bundle.entry[1].resource.subject"]
    none = fhir.post("", _bundle("transaction", _post(
        _goal(f"Patient?identifier={FNR_SYSTEM}|{synthetic_fnr(99)}"))))
    assert none.status_code == 400
    assert fhir.versions() == before


def test_conditional_create_matching_another_entry(fhir: Fhir) -> None:
    criteria = f"identifier={FNR_SYSTEM}|{synthetic_fnr(8)}"
    response = fhir.post("", _bundle(
        "transaction",
        _post(_goal(UUID_GOAL)),  # refers to the conditional create below
        _post(patient(8), UUID_PATIENT),
        _post(patient(8), UUID_GOAL, ifNoneExist=criteria),
        _post(patient(8), UUID_OTHER, ifNoneExist=criteria),
    ))
    assert response.status_code == 200, response.text
    entries = response.json()["entry"]
    assert _statuses(response.json()) == ["201 Created", "201 Created", "200 OK", "200 OK"]
    pid = entries[1]["response"]["location"].split("/")[1]
    assert fhir.ids(f"Patient?{criteria}") == [pid]
    goal_id = entries[0]["response"]["location"].split("/")[1]
    assert fhir.get(f"Goal/{goal_id}").json()["subject"]["reference"] == f"Patient/{pid}"


def test_transaction_order_if_match_and_reads(fhir: Fhir) -> None:
    old = fhir.create(patient(9))
    keep = fhir.create(patient(10))
    response = fhir.post("", _bundle(
        "transaction",
        {"request": {"method": "GET", "url": f"Patient?identifier={FNR_SYSTEM}|"
                                             f"{synthetic_fnr(11)}"}},
        {"resource": {**keep, "active": True},
         "request": {"method": "PUT", "url": f"Patient/{keep['id']}", "ifMatch": 'W/"1"'}},
        _post(patient(11)),
        {"request": {"method": "DELETE", "url": f"Patient/{old['id']}"}},
    ))
    assert response.status_code == 200, response.text
    entries = response.json()["entry"]
    assert _statuses(response.json()) == ["200 OK", "200 OK", "201 Created", "204 No Content"]
    found = entries[0]["resource"]
    assert found["type"] == "searchset" and found["total"] == 1  # sees the POST
    assert fhir.get(f"Patient/{old['id']}").status_code == 410
    before = fhir.versions()
    stale = fhir.post("", _bundle(
        "transaction",
        _post(patient(12)),
        {"resource": keep, "request": {"method": "PUT", "url": f"Patient/{keep['id']}",
                                       "ifMatch": 'W/"1"'}},
    ))
    assert stale.status_code == 412
    assert stale.json()["issue"][0]["expression"] == ["Bundle.entry[1].request.ifMatch"]
    assert fhir.versions() == before


def test_transaction_reads_include_what_it_wrote(fhir: Fhir) -> None:
    """A GET entry of a transaction runs after its writes (R4 3.1.0.11.2) and sees them
    everywhere: in its matches, its _include and _revinclude, and an id without a type."""
    fnr = synthetic_fnr(15)
    response = fhir.post("", _bundle(
        "transaction",
        {"request": {"method": "GET", "url": f"Goal?subject:Patient.identifier={FNR_SYSTEM}|"
                                             f"{fnr}&_include=Goal:subject"}},
        {"request": {"method": "GET", "url": f"Patient?identifier={FNR_SYSTEM}|{fnr}"
                                             "&_revinclude=Goal:subject"}},
        _post(_goal(UUID_PATIENT), UUID_GOAL),
        _post(patient(15), UUID_PATIENT),
    ))
    assert response.status_code == 200, response.text
    entries = response.json()["entry"]
    goal_id, pid = (e["response"]["location"].split("/")[1] for e in entries[2:])
    for found in (entries[0]["resource"], entries[1]["resource"]):
        assert sorted((e["resource"]["resourceType"], e["resource"]["id"],
                       e["search"]["mode"]) for e in found["entry"]) == sorted([
            ("Goal", goal_id, "match" if found is entries[0]["resource"] else "include"),
            ("Patient", pid, "include" if found is entries[0]["resource"] else "match")])


def test_transaction_reads_include_the_versions_it_wrote(fhir: Fhir) -> None:
    """A GET entry reads the versions the transaction writes: a vread, and the version a
    versioned reference in an _include names (R4 search 3.1.1.4.13)."""
    pid = fhir.create(patient(27))["id"]
    goal = fhir.create(_goal(f"Patient/{pid}"))
    plan = {"resourceType": "CarePlan", "id": "versioned-plan", "status": "draft",
            "intent": "plan", "subject": {"reference": f"Patient/{pid}"},
            "goal": [{"reference": f"Goal/{goal['id']}/_history/2"}]}
    response = fhir.post("", _bundle(
        "transaction",
        {"request": {"method": "GET",
                     "url": "CarePlan?_id=versioned-plan&_include=CarePlan:goal"}},
        {"resource": {**goal, "lifecycleStatus": "completed"},
         "request": {"method": "PUT", "url": f"Goal/{goal['id']}"}},
        {"resource": plan, "request": {"method": "PUT", "url": "CarePlan/versioned-plan"}},
        {"request": {"method": "GET", "url": f"Goal/{goal['id']}/_history/2"}}))
    assert response.status_code == 200, response.text
    assert response.json()["entry"][3]["resource"]["lifecycleStatus"] == "completed"
    found = response.json()["entry"][0]["resource"]["entry"]
    assert sorted((e["search"]["mode"], e["resource"]["id"], e["resource"]["meta"]["versionId"],
                   e["resource"].get("lifecycleStatus")) for e in found) == [
        ("include", goal["id"], "2", "completed"), ("match", "versioned-plan", "1", None)]


def test_transaction_history_entries_list_the_versions_it_wrote(fhir: Fhir) -> None:
    """A history GET entry is processed after the writes (R4 transaction order), and lists
    the versions the transaction wrote: a deletion and a re-creation included."""
    pid = fhir.create(patient(28))["id"]
    response = fhir.post("", _bundle(
        "transaction",
        {"request": {"method": "GET", "url": f"Patient/{pid}/_history"}},
        {"request": {"method": "GET", "url": "Patient/_history?_count=1"}},
        {"resource": {**patient(28, active=False), "id": pid},
         "request": {"method": "PUT", "url": f"Patient/{pid}"}}))
    assert response.status_code == 200, response.text
    instance, of_type = (response.json()["entry"][i]["resource"] for i in (0, 1))
    assert [(e["response"]["etag"], e["request"]["method"]) for e in instance["entry"]] == [
        ('W/"2"', "PUT"), ('W/"1"', "POST")]
    assert of_type["total"] == 2 and of_type["entry"][0]["response"]["etag"] == 'W/"2"'


def test_transaction_reads_count_what_it_wrote_for_an_ambiguous_id(fhir: Fhir) -> None:
    """An id without a type that the transaction's own writes make ambiguous is refused in
    its GET entry (R4 search 3.1.1.4.12), and nothing of the transaction is stored."""
    before = fhir.versions()
    response = fhir.post("", _bundle(
        "transaction",
        {"request": {"method": "GET", "url": "Goal?subject=twin-1"}},
        {"resource": {**patient(16), "id": "twin-1"},
         "request": {"method": "PUT", "url": "Patient/twin-1"}},
        {"resource": {"resourceType": "Organization", "id": "twin-1", "name": "Tvilling"},
         "request": {"method": "PUT", "url": "Organization/twin-1"}},
    ))
    assert response.status_code == 400, response.text
    assert response.json()["issue"][0]["expression"] == ["Bundle.entry[0]", "subject"]
    assert fhir.versions() == before


def test_transaction_patch_and_conditional_update(fhir: Fhir) -> None:
    pid = fhir.create(patient(13))["id"]
    ops = [{"op": "add", "path": "/active", "value": True}]
    binary = {"resourceType": "Binary", "contentType": "application/json-patch+json",
              "data": base64.b64encode(json.dumps(ops).encode()).decode()}
    criteria = f"identifier={FNR_SYSTEM}|{synthetic_fnr(14)}"
    response = fhir.post("", _bundle(
        "transaction",
        {"resource": binary, "request": {"method": "PATCH", "url": f"Patient/{pid}"}},
        {"fullUrl": UUID_PATIENT, "resource": patient(14),
         "request": {"method": "PUT", "url": f"Patient?{criteria}"}},
        _post(_goal(UUID_PATIENT)),
    ))
    assert response.status_code == 200, response.text
    entries = response.json()["entry"]
    assert fhir.get(f"Patient/{pid}").json()["active"] is True
    created = entries[1]["response"]["location"].split("/")[1]
    assert fhir.ids(f"Patient?{criteria}") == [created]
    goal_id = entries[2]["response"]["location"].split("/")[1]
    assert fhir.get(f"Goal/{goal_id}").json()["subject"]["reference"] == f"Patient/{created}"


def test_conditional_put_sees_what_the_posts_created(fhir: Fhir) -> None:
    """POSTs are processed before PUTs (R4 http.html#trules), so a conditional PUT whose
    criteria match the resource a POST of the same transaction creates updates it."""
    criteria = "identifier=urn:test:org|order-1"
    org = {"resourceType": "Organization",
           "identifier": [{"system": "urn:test:org", "value": "order-1"}]}
    response = fhir.post("", _bundle(
        "transaction",
        {"resource": {**org, "name": "via PUT"},
         "request": {"method": "PUT", "url": f"Organization?{criteria}"}},
        _post({**org, "name": "via POST"}),
    ))
    assert response.status_code == 200, response.text
    assert _statuses(response.json()) == ["200 OK", "201 Created"]
    found = fhir.search(f"Organization?{criteria}")["entry"]
    assert len(found) == 1
    assert found[0]["resource"]["name"] == "via PUT"
    assert found[0]["resource"]["meta"]["versionId"] == "2"


def test_overlapping_identities_are_refused(fhir: Fhir) -> None:
    body = {**patient(15), "id": "twice"}
    response = fhir.post("", _bundle(
        "transaction",
        {"resource": body, "request": {"method": "PUT", "url": "Patient/twice"}},
        {"request": {"method": "DELETE", "url": "Patient/twice"}},
    ))
    assert response.status_code == 400
    assert fhir.get("Patient/twice").status_code == 404


def test_placeholders_outside_a_transaction_are_refused(fhir: Fhir) -> None:
    """A urn:uuid or conditional reference resolves only inside a transaction: a plain
    create, an update or a batch entry that holds one is 400 naming it, and nothing is
    stored (it would never point at a resource)."""
    pid = fhir.create(patient(40))["id"]
    versions = fhir.versions()
    conditional = f"Patient?identifier={FNR_SYSTEM}|{synthetic_fnr(40)}"
    for ref in (UUID_PATIENT, conditional):
        response = fhir.post("Goal", _goal(ref))
        assert response.status_code == 400, response.text
        assert response.json()["issue"][0]["expression"] == ["Goal.subject.reference"]
    goal = fhir.create(_goal(f"Patient/{pid}"))
    updated = fhir.put(f"Goal/{goal['id']}", {**goal, "addresses": [{"reference": UUID_OTHER}]})
    assert updated.status_code == 400
    assert updated.json()["issue"][0]["expression"] == ["Goal.addresses[0].reference"]
    versions += 1  # the goal
    batch = fhir.post("", _bundle("batch", _post(_goal(conditional)),
                                  _post(_goal(f"Patient/{pid}"))))
    statuses = _statuses(batch.json())
    assert statuses[0].startswith("400") and statuses[1].startswith("201")
    assert fhir.versions() == versions + 1  # the batch's second goal only
    # the same conditional reference in a transaction is resolved
    done = fhir.post("", _bundle("transaction", _post(_goal(conditional))))
    assert done.status_code == 200, done.text


def test_batch_entries_are_independent(fhir: Fhir) -> None:
    response = fhir.post("", _bundle(
        "batch",
        _post(patient(16)),
        {"request": {"method": "GET", "url": "Patient/missing"}},
        _post(_goal("Patient/x", status="splendid")),
        {"request": {"method": "FETCH", "url": "Patient"}},
        _post(patient(17)),
    ))
    assert response.status_code == 200
    result = response.json()
    assert result["type"] == "batch-response"
    assert _statuses(result) == ["201 Created", "404 Not Found", "400 Bad Request",
                                 "400 Bad Request", "201 Created"]
    failed = result["entry"][2]["response"]["outcome"]
    assert failed["resourceType"] == "OperationOutcome"
    assert "Bundle.entry[2].resource.lifecycleStatus" in [
        e for i in failed["issue"] for e in i.get("expression", [])]
    assert result["entry"][3]["response"]["outcome"]["issue"][0]["expression"] == [
        "Bundle.entry[3].request.method"]
    assert len(fhir.ids("Patient")) == 2
    # an entry whose request has an element R4 does not define fails alone, like any other
    # malformed entry; it is not served as if that element were not there
    unknown = fhir.post("", _bundle(
        "batch", {"request": {"method": "GET", "url": "Patient", "ifUnchanged": "W/1"}},
        _post(patient(90))))
    assert _statuses(unknown.json()) == ["400 Bad Request", "201 Created"]
    assert unknown.json()["entry"][0]["response"]["outcome"]["issue"][0]["expression"] == [
        "Bundle.entry[0].request.ifUnchanged"]


def test_bundle_itself_is_checked(fhir: Fhir) -> None:
    before = fhir.versions()
    cases = [
        (patient(18), "Bundle"),
        (_bundle("collection", _post(patient(18))), "Bundle.type"),
        (_bundle("transaction", {"resource": patient(18)}), "Bundle.entry[0].request"),
        (_bundle("transaction", _post(patient(18), "not a url")), "Bundle.entry[0].fullUrl"),
        (_bundle("transaction", _post(patient(18), UUID_PATIENT),
                 _post(patient(19), UUID_PATIENT)), "Bundle.entry[1].fullUrl"),
        (_bundle("transaction", _post(_bundle("batch"))), "Bundle.entry[0].resource"),
        (_bundle("transaction", {"request": {"method": "POST", "url": "Patient"}}),
         "Bundle.entry[0].resource"),
        (_bundle("transaction", {"request": {"method": "GET", "url": "Patient/a/b/c/d"}}),
         "Bundle.entry[0].request.url"),
        # the envelope is checked as the resources are: unknown elements, JSON types
        ({**_bundle("transaction", _post(patient(18))), "note": "x"}, "Bundle.note"),
        ({**_bundle("transaction", _post(patient(18))), "timestamp": 5}, "Bundle.timestamp"),
        (_bundle("transaction", {"request": {"method": "GET", "url": "Patient", "when": 1}}),
         "Bundle.entry[0].request.when"),
        (_bundle("transaction", {**_post(patient(18)), "fullUrl": ["urn:uuid:x"]}),
         "Bundle.entry[0].fullUrl"),
    ]
    for bundle, expression in cases:
        response = fhir.post("", bundle)
        assert response.status_code == 400, (bundle, response.text)
        assert expression in response.json()["issue"][0]["expression"], response.text
    assert fhir.versions() == before


def test_prefer_minimal_in_transaction(fhir: Fhir) -> None:
    response = fhir.post("", _bundle("transaction", _post(patient(20))),
                         headers={"Prefer": "return=minimal"})
    entry = response.json()["entry"][0]
    assert "resource" not in entry
    assert entry["response"]["location"].startswith("Patient/")


def test_reference_cycle_through_matched_conditional_create(fhir: Fhir) -> None:
    existing = fhir.create(patient(21))["id"]
    criteria = f"identifier={FNR_SYSTEM}|{synthetic_fnr(21)}"
    before = fhir.versions()
    # Two conditional creates refer to each other; the second matches an existing Patient
    # after the first was stored with a reference to the id the second would have had.
    response = fhir.post("", _bundle(
        "transaction",
        _post(patient(22, link=[{"other": {"reference": UUID_OTHER}, "type": "seealso"}]),
              UUID_PATIENT, ifNoneExist=f"identifier={FNR_SYSTEM}|{synthetic_fnr(22)}"),
        _post(patient(21, link=[{"other": {"reference": UUID_PATIENT}, "type": "seealso"}]),
              UUID_OTHER, ifNoneExist=criteria),
    ))
    assert response.status_code == 400
    assert "Bundle.entry[0].resource.link[0].other" in response.json()["issue"][0]["expression"]
    assert fhir.versions() == before
    # When only one of them is conditional, it is processed first and the other refers to
    # the existing Patient.
    response = fhir.post("", _bundle(
        "transaction",
        _post(patient(22, link=[{"other": {"reference": UUID_OTHER}, "type": "seealso"}]),
              UUID_PATIENT),
        _post(patient(21, link=[{"other": {"reference": UUID_PATIENT}, "type": "seealso"}]),
              UUID_OTHER, ifNoneExist=criteria),
    ))
    assert response.status_code == 200, response.text
    new_id = response.json()["entry"][0]["response"]["location"].split("/")[1]
    stored = fhir.get(f"Patient/{new_id}").json()
    assert stored["link"][0]["other"]["reference"] == f"Patient/{existing}"


def test_request_conditions_must_fit_the_method(fhir: Fhir) -> None:
    body = {**patient(23), "id": "p23"}
    for request in ({"method": "PUT", "url": "Patient/p23", "ifNoneExist": "_id=p23"},
                    {"method": "POST", "url": "Patient", "ifMatch": 'W/"1"'},
                    {"method": "PUT", "url": "Patient/p23", "ifMatch": "one"},
                    {"method": "PUT", "url": "Patient/p23",
                     "ifModifiedSince": "2020-01-01T00:00:00Z"}):
        response = fhir.post("", _bundle("transaction", {"resource": body,
                                                         "request": request}))
        assert response.status_code == 400, request
        assert response.json()["issue"][0]["expression"][0].startswith(
            "Bundle.entry[0].request.")
    assert fhir.get("Patient/p23").status_code == 404


def test_entry_preconditions_read_like_the_headers(fhir: Fhir) -> None:
    kept = fhir.create(patient(25))
    pid = kept["id"]
    body = {**patient(26), "id": "entry-once"}
    before = fhir.versions()
    stale = fhir.post("", _bundle(
        "transaction",
        {"resource": body, "request": {"method": "PUT", "url": "Patient/entry-once",
                                       "ifNoneMatch": "*"}},
        {"resource": {**kept, "active": True},
         "request": {"method": "PUT", "url": f"Patient/{pid}", "ifNoneMatch": "*"}}))
    refused(stale, 412, "conflict", ["Bundle.entry[1].request.ifNoneMatch"])
    assert fhir.versions() == before
    assert fhir.get("Patient/entry-once").status_code == 404
    done = fhir.post("", _bundle(
        "transaction",
        {"resource": body, "request": {"method": "PUT", "url": "Patient/entry-once",
                                       "ifNoneMatch": "*"}},
        {"resource": {**kept, "active": True},
         "request": {"method": "PUT", "url": f"Patient/{pid}", "ifMatch": 'W/"4", W/"1"'}}))
    assert done.status_code == 200, done.text
    assert _statuses(done.json()) == ["201 Created", "200 OK"]
    batch = fhir.post("", _bundle(
        "batch",
        {"request": {"method": "GET", "url": f"Patient/{pid}", "ifNoneMatch": 'W/"1", W/"2"'}},
        {"request": {"method": "DELETE", "url": "Patient/never-was", "ifMatch": "*"}},
        {"request": {"method": "GET", "url": f"Patient/{pid}", "ifNoneMatch": "W/2"}}))
    assert batch.status_code == 200, batch.text
    entries = batch.json()["entry"]
    assert _statuses(batch.json()) == ["304 Not Modified", "412 Precondition Failed",
                                       "400 Bad Request"]
    assert "resource" not in entries[0]
    assert entries[1]["response"]["outcome"]["issue"][0]["expression"] == [
        "Bundle.entry[1].request.ifMatch"]
    assert entries[2]["response"]["outcome"]["issue"][0]["expression"] == [
        "Bundle.entry[2].request.ifNoneMatch"]
    made = fhir.get(f"Patient/{pid}").json()["meta"]["lastUpdated"]
    since = fhir.post("", _bundle(
        "batch",
        *({"request": {"method": "GET", "url": f"Patient/{pid}", "ifModifiedSince": value}}
          for value in ("2099-01-01T00:00:00Z", made, "2000-01-01T00:00:00Z",
                        "2000-01-01", "yesterday"))))
    assert since.status_code == 200, since.text
    assert _statuses(since.json()) == ["304 Not Modified", "304 Not Modified", "200 OK",
                                       "400 Bad Request", "400 Bad Request"]
    assert since.json()["entry"][4]["response"]["outcome"]["issue"][0]["expression"] == [
        "Bundle.entry[4].request.ifModifiedSince"]


def test_conditional_delete_in_transaction(fhir: Fhir) -> None:
    pid = fhir.create(patient(24))["id"]
    criteria = f"identifier={FNR_SYSTEM}|{synthetic_fnr(24)}"
    stale = fhir.post("", _bundle("transaction", {"request": {
        "method": "DELETE", "url": f"Patient?{criteria}", "ifMatch": 'W/"2"'}}))
    assert stale.status_code == 412
    response = fhir.post("", _bundle("transaction", {"request": {
        "method": "DELETE", "url": f"Patient?{criteria}", "ifMatch": 'W/"1"'}}))
    assert response.status_code == 200
    assert response.json()["entry"][0]["response"]["etag"] == 'W/"2"'
    assert fhir.get(f"Patient/{pid}").status_code == 410
