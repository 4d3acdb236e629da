"""read, vread, create, update, delete and history over HTTP, with their headers."""

from __future__ import annotations

import time
from datetime import timedelta
from email.utils import format_datetime, parsedate_to_datetime

from .conftest import FHIR_JSON, Fhir, patient


def _outcome(response) -> dict:  # type: ignore[no-untyped-def]
    body = response.json()
    assert body["resourceType"] == "OperationOutcome", body
    assert response.headers["Content-Type"].startswith(FHIR_JSON)
    return body


def test_create_assigns_id_and_version_headers(fhir: Fhir) -> None:
    response = fhir.post("Patient", {**patient(1), "id": "client-chosen"})
    assert response.status_code == 201
    body = response.json()
    assert body["id"] != "client-chosen"
    assert body["meta"]["versionId"] == "1"
    assert response.headers["ETag"] == 'W/"1"'
    assert response.headers["Location"] == f"{fhir.base}/Patient/{body['id']}/_history/1"
    assert response.headers["Content-Type"] == "application/fhir+json; charset=utf-8"
    assert parsedate_to_datetime(response.headers["Last-Modified"]).year >= 2024
    assert fhir.get("Patient/client-chosen").status_code == 404


def test_read_and_vread(fhir: Fhir) -> None:
    created = fhir.create(patient(2))
    pid = created["id"]
    read = fhir.get(f"Patient/{pid}")
    assert read.status_code == 200
    assert read.json() == created
    assert read.headers["ETag"] == 'W/"1"'
    updated = fhir.put(f"Patient/{pid}", {**created, "gender": "female"})
    assert updated.status_code == 200
    assert updated.headers["ETag"] == 'W/"2"'
    assert updated.json()["meta"]["versionId"] == "2"
    old = fhir.get(f"Patient/{pid}/_history/1")
    assert old.status_code == 200
    assert "gender" not in old.json()
    assert fhir.get(f"Patient/{pid}/_history/2").json()["gender"] == "female"
    assert fhir.get(f"Patient/{pid}/_history/3").status_code == 404


def test_read_with_if_none_match(fhir: Fhir) -> None:
    pid = fhir.create(patient(3))["id"]
    assert fhir.get(f"Patient/{pid}", headers={"If-None-Match": 'W/"1"'}).status_code == 304
    assert fhir.get(f"Patient/{pid}", headers={"If-None-Match": 'W/"7"'}).status_code == 200


def test_read_with_if_modified_since(fhir: Fhir) -> None:
    pid = fhir.create(patient(5))["id"]
    read = fhir.get(f"Patient/{pid}")
    made = parsedate_to_datetime(read.headers["Last-Modified"])

    def status(**headers: str) -> int:
        return fhir.get(f"Patient/{pid}", headers=headers).status_code

    # Last-Modified has whole seconds: a version made within that second is not newer.
    assert status(**{"If-Modified-Since": read.headers["Last-Modified"]}) == 304
    later = fhir.get(f"Patient/{pid}", headers={"If-Modified-Since": format_datetime(
        made + timedelta(days=1), usegmt=True)})
    assert later.status_code == 304 and later.headers["ETag"] == 'W/"1"' and not later.content
    before = format_datetime(made - timedelta(seconds=1), usegmt=True)
    assert status(**{"If-Modified-Since": before}) == 200
    assert status(**{"If-Modified-Since": "not a date"}) == 200  # ignored (RFC 9110 13.1.3)
    # If-None-Match decides alone when both are sent (RFC 9110 13.1.3).
    assert status(**{"If-Modified-Since": before, "If-None-Match": 'W/"1"'}) == 304
    assert status(**{"If-Modified-Since": read.headers["Last-Modified"],
                     "If-None-Match": 'W/"7"'}) == 200
    fhir.put(f"Patient/{pid}", {**read.json(), "gender": "female"})
    assert status(**{"If-Modified-Since": before}) == 200


def test_update_as_create_and_id_rules(fhir: Fhir) -> None:
    response = fhir.put("Patient/chosen-1", {**patient(4), "id": "chosen-1"})
    assert response.status_code == 201
    assert response.headers["Location"].endswith("/Patient/chosen-1/_history/1")
    assert fhir.put("Patient/chosen-1", {**patient(4), "id": "chosen-1"}).status_code == 200
    mismatch = fhir.put("Patient/chosen-1", {**patient(4), "id": "other"})
    assert mismatch.status_code == 400
    assert _outcome(mismatch)["issue"][0]["expression"] == ["Patient.id"]
    assert fhir.put("Patient/chosen-1", patient(4)).status_code == 400
    wrong_type = fhir.put("Patient/chosen-1", {"resourceType": "Goal", "id": "chosen-1"})
    assert wrong_type.status_code == 400
    assert fhir.get("Patient/chosen-1").json()["meta"]["versionId"] == "2"


def test_invalid_resource_is_refused_with_paths(fhir: Fhir) -> None:
    before = fhir.versions()
    response = fhir.post("Patient", {**patient(5), "gender": "sometimes", "birthDate": "x"})
    assert response.status_code == 400
    expressions = {e for i in _outcome(response)["issue"] for e in i.get("expression", [])}
    assert {"Patient.gender", "Patient.birthDate"} <= expressions
    assert fhir.versions() == before


def test_delete_then_gone(fhir: Fhir) -> None:
    pid = fhir.create(patient(6))["id"]
    deleted = fhir.delete(f"Patient/{pid}")
    assert deleted.status_code == 204
    assert deleted.content == b""
    assert deleted.headers["ETag"] == 'W/"2"'
    gone = fhir.get(f"Patient/{pid}")
    assert gone.status_code == 410
    assert _outcome(gone)["issue"][0]["code"] == "deleted"
    assert fhir.get(f"Patient/{pid}/_history/2").status_code == 410
    assert fhir.get(f"Patient/{pid}/_history/1").status_code == 200
    assert fhir.ids(f"Patient?_id={pid}") == []
    # Deleting again, or deleting what never existed, is a no-op.
    versions = fhir.versions()
    assert fhir.delete(f"Patient/{pid}").status_code == 204
    assert fhir.delete("Patient/never-was").status_code == 204
    assert fhir.versions() == versions
    # An update brings it back; the version number goes on.
    revived = fhir.put(f"Patient/{pid}", {**patient(6), "id": pid})
    assert revived.status_code == 201
    assert revived.json()["meta"]["versionId"] == "3"


def test_head_reads_and_changes_nothing(fhir: Fhir) -> None:
    """HEAD is a GET without a body (RFC 9110 9.3.2), on an instance and on a search URL; it
    never deletes (a proxy or monitor that sends one must not touch the data)."""
    pid = fhir.create(patient(7, family="Head"))["id"]
    head = fhir.request("HEAD", f"Patient/{pid}")
    assert head.status_code == 200 and head.headers["ETag"] == 'W/"1"' and not head.content
    searched = fhir.request("HEAD", f"Patient?_id={pid}")
    assert searched.status_code == 200 and not searched.content
    read = fhir.get(f"Patient/{pid}")
    assert read.status_code == 200 and read.json()["meta"]["versionId"] == "1"
    assert len(fhir.search(f"Patient/{pid}/_history")["entry"]) == 1
    assert fhir.request("HEAD", "Patient/no-such-patient").status_code == 404


def test_an_answer_without_a_body_has_no_content_type(fhir: Fhir) -> None:
    pid = fhir.create(patient(8))["id"]
    minimal = fhir.put(f"Patient/{pid}", {**patient(8), "id": pid},
                       headers={"Prefer": "return=minimal"})
    deleted = fhir.delete(f"Patient/{pid}")
    for response in (minimal, deleted):
        assert not response.content and "Content-Type" not in response.headers, response


def test_read_unknown_is_404_outcome(fhir: Fhir) -> None:
    response = fhir.get("Patient/does-not-exist")
    assert response.status_code == 404
    assert _outcome(response)["issue"][0]["code"] == "not-found"


def _history_ids(bundle: dict) -> list[tuple[str, str]]:
    return [(e["fullUrl"].rsplit("/", 1)[1], e["response"]["etag"]) for e in bundle["entry"]]


def test_instance_history_entries(fhir: Fhir) -> None:
    created = fhir.create(patient(7))
    pid = created["id"]
    fhir.put(f"Patient/{pid}", {**created, "active": True})
    fhir.delete(f"Patient/{pid}")
    bundle = fhir.search(f"Patient/{pid}/_history")
    assert bundle["type"] == "history"
    assert bundle["total"] == 3
    delete, update, create = bundle["entry"]
    assert delete["request"] == {"method": "DELETE", "url": f"Patient/{pid}"}
    assert "resource" not in delete
    assert delete["response"]["etag"] == 'W/"3"'
    assert update["request"] == {"method": "PUT", "url": f"Patient/{pid}"}
    assert update["response"]["status"].startswith("200")
    assert update["resource"]["active"] is True
    assert create["request"] == {"method": "POST", "url": "Patient"}
    assert create["response"]["status"].startswith("201")
    assert create["response"]["lastModified"] == created["meta"]["lastUpdated"]
    assert fhir.get("Patient/nobody/_history").status_code == 404


def test_history_says_201_for_a_put_that_recreates(fhir: Fhir) -> None:
    body = {**patient(9), "id": "again"}
    assert fhir.put("Patient/again", body).status_code == 201
    assert fhir.put("Patient/again", {**body, "active": True}).status_code == 200
    assert fhir.delete("Patient/again").status_code == 204
    recreated = fhir.put("Patient/again", body)
    assert recreated.status_code == 201
    fhir.put("Patient/again", {**body, "active": False})
    expected = ["200 OK", "201 Created", "204 No Content", "200 OK", "201 Created"]
    instance = fhir.search("Patient/again/_history")
    assert [e["response"]["status"] for e in instance["entry"]] == expected
    # the same where the deletion is on another page, and in the type's history
    paged = fhir.search("Patient/again/_history?_count=2")
    assert [e["response"]["status"] for e in paged["entry"]] == expected[:2]
    of_type = fhir.search("Patient/_history?_count=1&_offset=1")["entry"][0]
    assert (of_type["resource"]["meta"]["versionId"], of_type["response"]["status"]) == (
        "4", "201 Created")


def test_history_paging_and_since(fhir: Fhir) -> None:
    first = fhir.create(patient(8))
    time.sleep(0.01)
    since = first["meta"]["lastUpdated"]
    for n in range(6):
        fhir.create(patient(10 + n))
    fhir.create({"resourceType": "Practitioner", "name": [{"family": "Lege"}]})
    type_history = fhir.search("Patient/_history")
    assert type_history["total"] == 7
    seen: list[tuple[str, str]] = []
    url: str | None = "Patient/_history?_count=3"
    pages = 0
    while url:
        page = fhir.search(url)
        seen += _history_ids(page)
        url = next((link["url"] for link in page["link"] if link["relation"] == "next"), None)
        pages += 1
    assert pages == 3
    assert len(seen) == len(set(seen)) == 7
    newer = fhir.search(f"Patient/_history?_since={since}")
    assert newer["total"] == 7  # _since is inclusive of the first write's instant
    later = fhir.search("_history?_since=2999-01-01T00:00:00Z")
    assert later["total"] == 0
    assert fhir.search("_history")["total"] == 8
    bad = fhir.get("_history?_since=yesterday")
    assert bad.status_code == 400
    assert _outcome(bad)["issue"][0]["expression"] == ["_since"]


def test_history_at_lists_the_versions_current_then(fhir: Fhir) -> None:
    """``_at``: the versions that were current at some time in the period - written by its
    end, not replaced by its start (a deletion is the version current after it)."""
    first = fhir.create(patient(40))
    pid = first["id"]
    time.sleep(0.01)
    second = fhir.put(f"Patient/{pid}", patient(40, active=False) | {"id": pid}).json()
    time.sleep(0.01)
    assert fhir.delete(f"Patient/{pid}").status_code in (200, 204)
    gone = fhir.search(f"Patient/{pid}/_history")["entry"][0]
    assert gone["request"]["method"] == "DELETE"
    time.sleep(0.01)
    other = fhir.create(patient(41))

    def at(path: str, *values: str) -> list[tuple[str, str]]:
        query = "&".join(f"_at={v}" for v in values)
        return [(i, etag) for i, etag in _history_ids(fhir.search(f"{path}?{query}"))]

    one, two = first["meta"]["lastUpdated"], second["meta"]["lastUpdated"]
    assert at(f"Patient/{pid}/_history", one) == [(pid, 'W/"1"')]
    assert at(f"Patient/{pid}/_history", two) == [(pid, 'W/"2"')]
    assert at("Patient/_history", two) == [(pid, 'W/"2"')]  # the other Patient came later
    now = other["meta"]["lastUpdated"]
    assert at("Patient/_history", now) == [(other["id"], 'W/"1"'), (pid, 'W/"3"')]
    day = one[:10]  # a whole day: every version current at some time in it
    assert len(at(f"Patient/{pid}/_history", day)) == 3
    assert at(f"Patient/{pid}/_history", day, two) == [(pid, 'W/"2"')]  # each period
    assert fhir.search("_history?_at=2999-01-01")["total"] == 0
    paged = fhir.search(f"Patient/_history?_at={day}&_count=1")
    assert "_at=" in next(link["url"] for link in paged["link"] if link["relation"] == "next")
    bad = fhir.get("Patient/_history?_at=yesterday")
    assert bad.status_code == 400
    assert _outcome(bad)["issue"][0]["expression"] == ["_at"]


def test_history_pages_stay_put_while_versions_are_added(fhir: Fhir) -> None:
    """The pages after the first are of the versions there were when it was made: new
    versions written between pages neither repeat a version nor make the paging endless."""
    pid = fhir.create(patient(30))["id"]
    for n in range(4):
        assert fhir.put(f"Patient/{pid}", patient(30, active=n % 2 == 0) | {"id": pid}
                        ).status_code == 200
    seen: list[str] = []
    url: str | None = f"Patient/{pid}/_history?_count=2"
    while url:
        page = fhir.search(url)
        assert page["total"] == 5
        seen += [e["resource"]["meta"]["versionId"] for e in page["entry"]]
        assert fhir.put(f"Patient/{pid}", patient(30) | {"id": pid}).status_code == 200
        url = next((link["url"] for link in page["link"] if link["relation"] == "next"), None)
        assert len(seen) <= 5, seen
    assert seen == ["5", "4", "3", "2", "1"]
    first = next(link["url"] for link in page["link"] if link["relation"] == "first")
    assert "_page" not in first and fhir.search(first)["total"] == 8
    bad = fhir.get(f"Patient/{pid}/_history?_page=soon")
    assert bad.status_code == 400 and _outcome(bad)["issue"][0]["expression"] == ["_page"]
