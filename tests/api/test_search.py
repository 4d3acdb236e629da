"""Search over HTTP: parameters, chains, _has, includes, sorting, paging and result shaping."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from .conftest import FNR_SYSTEM, Fhir, patient, synthetic_fnr

SUBSETTED = "SUBSETTED"


def _links(bundle: dict) -> dict[str, str]:
    return {link["relation"]: link["url"] for link in bundle["link"]}


def _goal(subject: str, status: str = "active", text: str = "Bo hjemme") -> dict:
    return {"resourceType": "Goal", "lifecycleStatus": status, "description": {"text": text},
            "subject": {"reference": subject}}


@pytest.fixture
def people(fhir: Fhir) -> dict[str, str]:
    """Two practitioners, three patients (one with a GP), goals and a care plan."""
    gp = fhir.create({"resourceType": "Practitioner", "name": [{"family": "Lege"}]})["id"]
    nurse = fhir.create({"resourceType": "Practitioner", "name": [{"family": "Sykepleier"}]})
    ids = {"gp": gp, "nurse": nurse["id"]}
    ids["kari"] = fhir.create(patient(1, family="Nordmann", gender="female",
                                      birthDate="1985-03-01",
                                      generalPractitioner=[{"reference": f"Practitioner/{gp}"}]
                                      ))["id"]
    ids["ola"] = fhir.create(patient(2, family="Nordmann", gender="male",
                                     birthDate="1972-11-20"))["id"]
    ids["rut"] = fhir.create(patient(3, family="Åberg", gender="female",
                                     birthDate="1942-06-15"))["id"]
    ids["goal_kari"] = fhir.create(_goal(f"Patient/{ids['kari']}"))["id"]
    ids["goal_rut"] = fhir.create(_goal(f"Patient/{ids['rut']}", "completed"))["id"]
    ids["plan"] = fhir.create({
        "resourceType": "CarePlan", "status": "active", "intent": "plan",
        "subject": {"reference": f"Patient/{ids['kari']}"},
        "goal": [{"reference": f"Goal/{ids['goal_kari']}"}]})["id"]
    return ids


def test_token_and_string(fhir: Fhir, people: dict[str, str]) -> None:
    assert fhir.ids(f"Patient?identifier={FNR_SYSTEM}|{synthetic_fnr(2)}") == [people["ola"]]
    assert sorted(fhir.ids("Patient?gender=female")) == sorted([people["kari"], people["rut"]])
    assert sorted(fhir.ids("Patient?family=nordmann")) == sorted([people["kari"],
                                                                  people["ola"]])
    assert fhir.ids("Patient?family=aberg") == [people["rut"]]


def test_code_and_boolean_tokens_have_their_implicit_system(fhir: Fhir,
                                                              people: dict[str, str]) -> None:
    """A ``code`` element's system is its value set's (R4 search, token: "(implicit)", "the
    system is defined in the value set"); a boolean's is special-values. ``system|code``
    matches with that system and with no other, ``system|`` any code of it, and ``|code``
    (no system) does not match a code that has one."""
    task_status = "http://hl7.org/fhir/task-status"
    ready = fhir.create({"resourceType": "Task", "status": "ready", "intent": "order",
                         "for": {"reference": f"Patient/{people['kari']}"}})["id"]
    draft = fhir.create({"resourceType": "Task", "status": "draft", "intent": "order",
                         "for": {"reference": f"Patient/{people['kari']}"}})["id"]
    assert fhir.ids(f"Task?status={task_status}|ready") == [ready]
    assert fhir.ids(f"Task?status={task_status}|ready,{task_status}|draft&_sort=_id"
                    ) == sorted([ready, draft])
    assert sorted(fhir.ids(f"Task?status={task_status}|")) == sorted([ready, draft])
    assert fhir.ids(f"Task?status:not={task_status}|ready") == [draft]
    assert fhir.ids("Task?status=http://hl7.org/fhir/request-status|ready") == []
    assert fhir.ids("Task?status=|ready") == []
    assert sorted(fhir.ids("Task?status:not=|ready")) == sorted([ready, draft])
    assert fhir.ids("Task?status=ready") == [ready]
    # a value set of two code systems: each code has its own
    assert sorted(fhir.ids("Task?intent=http://hl7.org/fhir/request-intent|order")
                  ) == sorted([ready, draft])
    assert fhir.ids("Task?intent=http://hl7.org/fhir/task-intent|order") == []
    assert fhir.ids("CarePlan?status=http://hl7.org/fhir/request-status|active") == [
        people["plan"]]
    assert fhir.ids("CarePlan?status=http://hl7.org/fhir/event-status|active") == []
    female = sorted([people["kari"], people["rut"]])
    assert sorted(fhir.ids("Patient?gender=http://hl7.org/fhir/administrative-gender|female")
                  ) == female
    assert fhir.ids("Patient?gender=http://hl7.org/fhir/v3-AdministrativeGender|female") == []
    active = fhir.create(patient(70, active=True))["id"]
    assert fhir.ids("Patient?active=http://hl7.org/fhir/special-values|true") == [active]
    assert fhir.ids("Patient?active=http://terminology.hl7.org/CodeSystem/special-values|true"
                    ) == [active]
    assert fhir.ids("Patient?active=|true") == []
    assert fhir.ids("Patient?active=true") == [active]


def test_mime_types_and_languages_have_their_code_system(fhir: Fhir,
                                                        people: dict[str, str]) -> None:
    """A ``code`` bound to mime types or languages has the code system of its grammar
    (BCP-13, BCP-47) for any code, listed or not: ``system|code`` matches with it and with no
    other, ``system|`` every value, ``|code`` nothing."""
    doc = fhir.create({"resourceType": "DocumentReference", "status": "current",
                       "subject": {"reference": f"Patient/{people['kari']}"},
                       "content": [{"attachment": {"contentType": "application/pdf",
                                                   "language": "nb-NO"}}]})["id"]
    assert fhir.ids("DocumentReference?contenttype=urn:ietf:bcp:13|application/pdf") == [doc]
    assert fhir.ids("DocumentReference?contenttype=urn:ietf:bcp:13|") == [doc]
    assert fhir.ids("DocumentReference?contenttype=application/pdf") == [doc]
    assert fhir.ids("DocumentReference?contenttype=urn:ietf:bcp:13|text/plain") == []
    assert fhir.ids("DocumentReference?contenttype=urn:ietf:bcp:47|application/pdf") == []
    assert fhir.ids("DocumentReference?contenttype=|application/pdf") == []
    assert fhir.ids("DocumentReference?contenttype:not=urn:ietf:bcp:13|application/pdf"
                    ) == []
    assert fhir.ids("DocumentReference?language=urn:ietf:bcp:47|nb-NO") == [doc]
    assert fhir.ids("DocumentReference?language=urn:ietf:bcp:13|nb-NO") == []


def test_dates(fhir: Fhir, people: dict[str, str]) -> None:
    assert fhir.ids("Patient?birthdate=1985") == [people["kari"]]
    assert sorted(fhir.ids("Patient?birthdate=lt1980-01-01")) == sorted([people["ola"],
                                                                         people["rut"]])
    assert fhir.ids("Patient?birthdate=ge1950&birthdate=lt1980") == [people["ola"]]


def test_reference_by_this_servers_absolute_url(fhir: Fhir, people: dict[str, str]) -> None:
    """A reference value under the server's base matches the relative reference it stands
    for (R4 search 3.1.1.4.12); another server's URL with the same tail does not."""
    kari = people["kari"]
    assert fhir.ids(f"Goal?subject={fhir.base}/Patient/{kari}") == [people["goal_kari"]]
    assert fhir.ids(f"CarePlan?subject={fhir.base}/Patient/{kari}&status=active") == [
        people["plan"]]
    assert fhir.ids(f"Patient?general-practitioner={fhir.base}/Practitioner/{people['gp']}"
                    ) == [kari]
    assert fhir.ids(f"Goal?subject=https://other.example.org/fhir/Patient/{kari}") == []


def test_an_id_of_resources_of_two_types_is_400_naming_the_parameter(
        fhir: Fhir, people: dict[str, str]) -> None:
    """R4 search 3.1.1.4.12: "Servers SHOULD reject a search where the logical id refers to
    more than one matching resource across different types"; the client names the type."""
    assert fhir.put("Patient/shared", {**patient(80), "id": "shared"}).status_code == 201
    assert fhir.put("Organization/shared", {"resourceType": "Organization", "id": "shared",
                                            "name": "Delt"}).status_code == 201
    of_patient = fhir.create(_goal("Patient/shared"))["id"]
    of_org = fhir.create(_goal("Organization/shared"))["id"]
    for query, name in (("Goal?subject=shared", "subject"),
                        ("Goal?subject=shared,Patient/x", "subject"),
                        ("CarePlan?goal.subject=shared", "goal.subject"),
                        ("Patient?_has:Goal:subject:subject=shared", "_has:Goal:subject:subject")):
        response = fhir.get(query)
        assert response.status_code == 400, (query, response.text)
        issue = response.json()["issue"][0]
        assert issue["expression"] == [name]
        assert "Patient/shared" in issue["diagnostics"]
        assert "Organization/shared" in issue["diagnostics"]
    assert fhir.ids("Goal?subject=Patient/shared") == [of_patient]
    assert fhir.ids("Goal?subject:Organization=shared") == [of_org]
    assert fhir.ids(f"Goal?subject={people['kari']}") == [people["goal_kari"]]
    conditional = fhir.post("Goal", _goal("Patient/shared"), headers={
        "If-None-Exist": "subject=shared"})
    assert conditional.status_code == 400, conditional.text
    assert fhir.delete("Organization/shared").status_code == 204
    assert sorted(fhir.ids("Goal?subject=shared")) == sorted([of_patient, of_org])


def test_another_servers_reference_names_nothing_here(fhir: Fhir) -> None:
    """A reference to another server's resource is not taken for the resource with the same
    type and id here (R4 search 3.1.1.4.12): not by search, chain, _has or _include; its URL
    finds it. An absolute URL under this server's base is a reference to a resource here."""
    local = fhir.create({"resourceType": "Organization", "name": "Local one"})["id"]
    foreign_url = f"https://other.example.org/fhir/Organization/{local}"
    pid = fhir.create(patient(60, managingOrganization={"reference": foreign_url}))["id"]
    own = fhir.create(patient(61, managingOrganization={
        "reference": f"{fhir.base}/Organization/{local}"}))["id"]
    assert fhir.ids(f"Patient?organization=Organization/{local}") == [own]
    assert fhir.ids(f"Patient?organization={foreign_url}") == [pid]
    assert fhir.ids("Patient?organization.name=local") == [own]
    assert fhir.ids(f"Organization?_has:Patient:organization:_id={pid}") == []
    assert fhir.ids(f"Patient?_id={pid}&_include=Patient:organization", "include") == []
    assert fhir.ids(f"Patient?_id={own}&_include=Patient:organization", "include") == [local]


def test_a_patient_on_another_server_is_refused(fhir: Fhir, people: dict[str, str]) -> None:
    """A person's data is kept with their Patient here: a reference to a Patient elsewhere
    is 422 naming it (it would leave the data with no person, so with no one's protection)."""
    foreign = f"https://other.example.org/fhir/Patient/{people['kari']}"
    versions = fhir.versions()
    response = fhir.post("Goal", _goal(foreign))
    assert response.status_code == 422, response.text
    assert response.json()["resourceType"] == "OperationOutcome"
    assert response.json()["issue"][0]["expression"] == ["Goal.subject.reference"]
    assert fhir.versions() == versions  # nothing stored
    assert fhir.post("Goal", _goal(f"{fhir.base}/Patient/{people['kari']}")).status_code == 201


def test_chain_and_has(fhir: Fhir, people: dict[str, str]) -> None:
    assert fhir.ids("Goal?subject:Patient.birthdate=1942") == [people["goal_rut"]]
    assert fhir.ids("CarePlan?subject.family=nordmann") == [people["plan"]]
    assert fhir.ids("Patient?_has:Goal:subject:lifecycle-status=completed") == [people["rut"]]
    assert fhir.ids("Patient?general-practitioner.family=Lege") == [people["kari"]]


def test_include_and_revinclude(fhir: Fhir, people: dict[str, str]) -> None:
    bundle = fhir.search("CarePlan?_include=CarePlan:subject&_include=CarePlan:goal")
    modes = {(e["resource"]["resourceType"], e["resource"]["id"]): e["search"]["mode"]
             for e in bundle["entry"]}
    assert modes == {("CarePlan", people["plan"]): "match",
                     ("Patient", people["kari"]): "include",
                     ("Goal", people["goal_kari"]): "include"}
    iterate = fhir.search("CarePlan?_include=CarePlan:subject"
                          "&_include:iterate=Patient:general-practitioner")
    included = {e["resource"]["id"] for e in iterate["entry"] if e["search"]["mode"] == "include"}
    assert included == {people["kari"], people["gp"]}
    reverse = fhir.search("Patient?family=nordmann&_revinclude=Goal:subject")
    assert {e["resource"]["id"] for e in reverse["entry"]
            if e["search"]["mode"] == "include"} == {people["goal_kari"]}
    assert reverse["total"] == 2  # includes are not counted
    for entry in reverse["entry"]:
        resource = entry["resource"]
        assert entry["fullUrl"] == f"{fhir.base}/{resource['resourceType']}/{resource['id']}"


def test_include_of_a_versioned_reference_is_that_version(fhir: Fhir,
                                                           people: dict[str, str]) -> None:
    """R4 search 3.1.1.4.13: "If a resource has a reference that is versioned and _include
    is performed, the specified version SHOULD be provided"; a version that does not exist
    is left out without an error, as any reference that cannot be resolved."""
    goal = people["goal_kari"]
    first = fhir.get(f"Goal/{goal}").json()
    assert fhir.put(f"Goal/{goal}", {**first, "lifecycleStatus": "completed"}).ok
    kari = f"Patient/{people['kari']}"
    old_plan = fhir.create({
        "resourceType": "CarePlan", "status": "draft", "intent": "plan",
        "subject": {"reference": kari},
        "goal": [{"reference": f"Goal/{goal}/_history/1"},
                 {"reference": f"Goal/{goal}/_history/9"}]})["id"]
    bundle = fhir.search(f"CarePlan?_id={old_plan}&_include=CarePlan:goal")
    included = [e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "include"]
    assert [(r["id"], r["meta"]["versionId"], r["lifecycleStatus"]) for r in included] == [
        (goal, "1", "active")]
    # with the plan that names the goal itself: the current version comes too, once each
    both = fhir.search(f"CarePlan?_id={old_plan},{people['plan']}&_include=CarePlan:goal")
    versions = sorted((e["resource"]["meta"]["versionId"], e["resource"]["lifecycleStatus"])
                      for e in both["entry"] if e["search"]["mode"] == "include")
    assert versions == [("1", "active"), ("2", "completed")]


def test_sort(fhir: Fhir, people: dict[str, str]) -> None:
    assert fhir.ids("Patient?_sort=birthdate") == [people["rut"], people["ola"], people["kari"]]
    assert fhir.ids("Patient?_sort=-birthdate") == [people["kari"], people["ola"], people["rut"]]


def test_paging_walks_every_match_once(fhir: Fhir) -> None:
    created = {fhir.create(patient(100 + n, family="Paging"))["id"] for n in range(23)}
    seen: list[str] = []
    bundle = fhir.search("Patient?family=paging&_count=5&_sort=family&_total=accurate")
    pages = 1
    seen += [e["resource"]["id"] for e in bundle["entry"]]
    while "next" in _links(bundle):
        bundle = fhir.search(_links(bundle)["next"])
        seen += [e["resource"]["id"] for e in bundle["entry"]]
        assert "previous" in _links(bundle)
        pages += 1
    assert pages == 5
    assert len(seen) == len(set(seen)) == 23
    assert set(seen) == created
    assert bundle["total"] == 23
    first = _links(bundle)["first"]
    assert dict(parse_qsl(urlsplit(first).query))["_count"] == "5"
    assert "_offset" not in dict(parse_qsl(urlsplit(first).query))


def _walk(fhir: Fhir, url: str, between: Any = None) -> tuple[list[str], list[dict]]:
    """The ids of every page from ``url`` on by the ``next`` links, and the pages;
    ``between(page, ids so far)`` runs after each page."""
    seen: list[str] = []
    pages: list[dict] = []
    while url:
        bundle = fhir.search(url)
        pages.append(bundle)
        seen += [e["resource"]["id"] for e in bundle.get("entry", [])]
        if between is not None:
            between(len(pages), seen)
        url = _links(bundle).get("next", "")
        assert len(pages) < 50, "paging did not end"
    return seen, pages


@pytest.mark.parametrize("order", ["", "&_sort=-_lastUpdated", "&_sort=_id",
                                   "&_sort=birthdate", "&_sort=-given,_lastUpdated"])
def test_paging_neither_skips_nor_shifts_when_resources_change(fhir: Fhir,
                                                               order: str) -> None:
    """Pages follow one another by where the last one ended, among the resources there were
    when the first page was made: writes between pages skip nothing and bring in nothing
    new, and an updated resource comes (again) at its new place in the order, or after the
    rest."""
    made = [fhir.create(patient(200 + n, family="Keyset", birthDate=f"19{50 + n % 4}-01-01")
                        | ({} if n % 3 else {"name": [{"family": "Keyset"}]}))["id"]
            for n in range(10)]
    later: list[str] = []
    unseen: list[str] = []

    def write(page: int, seen: list[str]) -> None:
        if page == 1:  # a seen one updated, an unseen one updated, one deleted, one created
            unseen.extend(i for i in made if i not in seen)
            for pid, born in ((seen[0], "2001-01-01"), (unseen[0], "1900-01-01")):
                assert fhir.put(f"Patient/{pid}", patient(
                    200 + made.index(pid), family="Keyset", birthDate=born) | {"id": pid}
                                ).status_code == 200
            assert fhir.delete(f"Patient/{unseen[1]}").status_code in (200, 204)
            made.remove(unseen[1])
            later.append(fhir.create(patient(300, family="Keyset"))["id"])

    seen, pages = _walk(fhir, f"Patient?family=keyset&_count=4{order}", write)
    assert set(seen) == set(made) and later[0] not in seen
    assert len(seen) - len(set(seen)) <= (0 if order.endswith("_id") else 1)
    for bundle in pages[1:]:
        assert "previous" in _links(bundle) and "_page=" in _links(bundle)["self"]
    assert "_page" not in _links(pages[0])["self"] and "_page" not in _links(pages[0])["first"]


def test_previous_links_lead_back_through_the_same_pages(fhir: Fhir) -> None:
    for n in range(11):
        fhir.create(patient(400 + n, family="Backward"))
    _, pages = _walk(fhir, "Patient?family=backward&_count=3&_total=accurate")
    assert [len(p.get("entry", [])) for p in pages] == [3, 3, 3, 2]
    assert {p["total"] for p in pages} == {11}
    bundle, back = pages[-1], [pages[-1]]
    while "previous" in _links(bundle):
        bundle = fhir.search(_links(bundle)["previous"])
        back.insert(0, bundle)
    ids = [[e["resource"]["id"] for e in p["entry"]] for p in pages]
    assert [[e["resource"]["id"] for e in p["entry"]] for p in back] == ids
    assert "next" in _links(back[0]) and "previous" not in _links(back[0])


@pytest.mark.parametrize(("query", "why"), [
    ("Patient?_page=garbage", "not a page of this search"),
    ("Patient?_page=n1~2", "not a page of this search"),
    ("Patient?_sort=family&_page=WyJuMSIsMl0", "not a page of this search"),  # one key short
    ("Patient?_offset=3&_page=n1~2~abc", "exclude each other"),
])
def test_a_page_that_is_not_one_of_the_search_is_400(fhir: Fhir, query: str,
                                                     why: str) -> None:
    response = fhir.get(query)
    assert response.status_code == 400, response.text
    problem = response.json()["issue"][0]
    assert problem["expression"] == ["_page"] and why in problem["diagnostics"]


def test_total_and_summary_count(fhir: Fhir, people: dict[str, str]) -> None:
    page = fhir.search("Patient?_count=1")
    assert "total" not in page and len(page["entry"]) == 1
    accurate = fhir.search("Patient?_count=1&_total=accurate")
    assert accurate["total"] == 3 and len(accurate["entry"]) == 1
    count = fhir.search("Patient?gender=female&_summary=count")
    assert count["total"] == 2
    assert not count.get("entry")
    zero = fhir.search("Patient?_count=0")
    assert zero["total"] == 3 and not zero.get("entry")
    assert "next" not in _links(zero)


def test_elements(fhir: Fhir, people: dict[str, str]) -> None:
    bundle = fhir.search(f"Patient?_id={people['kari']}&_elements=gender")
    resource = bundle["entry"][0]["resource"]
    assert set(resource) == {"resourceType", "id", "meta", "gender"}
    assert any(t["code"] == SUBSETTED for t in resource["meta"]["tag"])
    assert "_elements=gender" in _links(bundle)["self"]
    qualified = fhir.search(f"Patient?_id={people['kari']}&_elements=Patient.name")
    assert set(qualified["entry"][0]["resource"]) == {"resourceType", "id", "meta", "name"}
    # a Goal's mandatory elements come whether asked for or not; its optional ones do not
    goal = fhir.search(f"Goal?_id={people['goal_kari']}&_elements=target")["entry"][0]
    assert set(goal["resource"]) == {"resourceType", "id", "meta", "lifecycleStatus",
                                     "description", "subject"}


def test_empty_results_have_no_entry_array(fhir: Fhir, people: dict[str, str]) -> None:
    """FHIR JSON has no empty arrays: a search or history without entries leaves the element
    out (a strict parser rejects ``"entry": []``)."""
    for query in ("Patient?family=nobody-by-this-name", "Patient?_count=0",
                  f"Patient?_id={people['kari']}&_count=1&_offset=5"):
        assert "entry" not in fhir.search(query)
    history = fhir.get(f"Patient/{people['kari']}/_history?_since=2999-01-01T00:00:00Z")
    assert history.status_code == 200 and "entry" not in history.json()


def test_summary_modes(fhir: Fhir) -> None:
    pid = fhir.create(patient(
        20, maritalStatus={"text": "Gift"},
        text={"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">K</div>'},
    ))["id"]
    full = fhir.search(f"Patient?_id={pid}")["entry"][0]["resource"]
    assert {"maritalStatus", "text"} <= set(full)
    assert "tag" not in full["meta"]
    summary = fhir.search(f"Patient?_id={pid}&_summary=true")["entry"][0]["resource"]
    assert "maritalStatus" not in summary and "text" not in summary
    assert summary["name"] == full["name"]
    data = fhir.search(f"Patient?_id={pid}&_summary=data")["entry"][0]["resource"]
    assert "text" not in data and data["maritalStatus"] == {"text": "Gift"}
    text = fhir.search(f"Patient?_id={pid}&_summary=text")["entry"][0]["resource"]
    assert "text" in text and "name" not in text
    for shaped in (summary, data, text):
        assert any(t["code"] == SUBSETTED for t in shaped["meta"]["tag"])


def test_unknown_parameter_is_400_naming_it(fhir: Fhir) -> None:
    response = fhir.get("Patient?shoe-size=44&family=x")
    assert response.status_code == 400
    issue = response.json()["issue"][0]
    assert issue["expression"] == ["shoe-size"]
    assert "shoe-size" in issue["diagnostics"]


def test_lenient_ignores_unknown_parameters(fhir: Fhir, people: dict[str, str]) -> None:
    bundle = fhir.search("Patient?shoe-size=44&gender=male",
                         headers={"Prefer": "handling=lenient"})
    assert [e["resource"]["id"] for e in bundle["entry"]
            if e["search"]["mode"] == "match"] == [people["ola"]]
    self_link = _links(bundle)["self"]
    assert "shoe-size" not in self_link and "gender=male" in self_link
    warnings = [e for e in bundle["entry"] if e["search"]["mode"] == "outcome"]
    assert warnings[0]["resource"]["issue"][0]["expression"] == ["shoe-size"]


def test_post_search_merges_form_and_query(fhir: Fhir, people: dict[str, str]) -> None:
    response = fhir.post("Patient/_search?family=nordmann", "gender=male",
                         content_type="application/x-www-form-urlencoded")
    assert response.status_code == 200, response.text
    assert [e["resource"]["id"] for e in response.json()["entry"]] == [people["ola"]]
    wrong = fhir.post("Patient/_search", {"gender": "male"})
    assert wrong.status_code == 415


def test_post_search_honours_format_in_the_form(fhir: Fhir, people: dict[str, str]) -> None:
    """``_format`` in a POST search's form is read as in the URL (R4 http.html, search:
    "Parameters have the same meaning in either place"): XML is 406, JSON is answered even
    when Accept asks for something else, as ``_format`` overrides Accept."""
    form = "application/x-www-form-urlencoded"
    for value in ("xml", "application/fhir+xml"):
        response = fhir.post("Patient/_search", f"gender=male&_format={value}",
                             content_type=form)
        assert response.status_code == 406, response.text
        assert response.json()["resourceType"] == "OperationOutcome"
    response = fhir.post("Patient/_search", "gender=male&_format=json", content_type=form,
                         headers={"Accept": "application/fhir+xml"})
    assert response.status_code == 200, response.text
    assert [e["resource"]["id"] for e in response.json()["entry"]] == [people["ola"]]
    assert "_format" not in _links(response.json())["self"]
    assert fhir.post("Patient/_search?_format=xml", "gender=male",
                     content_type=form).status_code == 406
    assert fhir.post("Patient/_search", "gender=male", content_type=form,
                     headers={"Accept": "application/fhir+xml"}).status_code == 406


def test_search_of_deleted_is_empty(fhir: Fhir, people: dict[str, str]) -> None:
    fhir.delete(f"Patient/{people['ola']}")
    assert fhir.ids("Patient?family=nordmann") == [people["kari"]]
