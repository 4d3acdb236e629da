"""The hospital's notification (one transaction), the contribution attached to the person's
one plan, the green form, the default due date, overdue notifications and reminders."""

from __future__ import annotations

import copy
import datetime as dt
import math
import threading
from pathlib import Path
from typing import Any

import pytest
from plansupport import (
    ORGS,
    REJECTION,
    TASK_CODE,
    TASK_OUTPUT,
    Receiver,
    Running,
    engine_config,
    notification_bundle,
    person,
    start,
    subscription,
)

from server.access.labels import REDACTED
from server.plans.calendar import add_working_days, easter_sunday, is_working_day
from server.plans.notification import REMINDER_SYSTEM, fill_due_date, send_reminders
from server.plans.settings import WorkflowSettings
from server.plans.support import now_ms
from server.plans.workflow import REMINDER_JOB
from server.store.port import format_instant as instant

OSLO = WorkflowSettings().zone


def _notify(planbro: Running, bundle: dict[str, Any]) -> dict[str, Any]:
    """Send the hospital's transaction; the stored notification Task (the receipt)."""
    response = planbro.post("hospital", "", bundle)
    assert response.status_code == 200, response.text
    task = response.json()["entry"][-1]
    assert task["response"]["status"] == "201 Created"
    stored: dict[str, Any] = task["resource"]
    return stored


def _plan_id(task: dict[str, Any]) -> str:
    ref = task["focus"]["reference"]
    assert ref.startswith("CarePlan/"), ref
    return str(ref.split("/")[1])


def _answer(planbro: Running, party: str, task: dict[str, Any], status: str,
            **changes: Any) -> Any:
    current = planbro.read(party, f"Task/{task['id']}")
    return planbro.put(party, {**current, "status": status, **changes})


def _reminders(planbro: Running, party: str, task: dict[str, Any]) -> list[dict[str, Any]]:
    found = planbro.search(party, f"Communication?identifier={REMINDER_SYSTEM}|")
    return [c for c in found if c["about"] == [{"reference": f"Task/{task['id']}"}]]


def _coordinator(role_id: str = "siri-rolle") -> list[dict[str, Any]]:
    return [{"type": {"coding": [{"system": TASK_OUTPUT, "code": "koordinator"}]},
             "valueReference": {"reference": f"PractitionerRole/{role_id}"}}]


# -- the notification -------------------------------------------------------------------------


def test_the_notification_makes_the_draft_plan(planbro: Running) -> None:
    kari = person("kari", 31)
    task = _notify(planbro, notification_bundle(kari, goals=("Klare meg selv", "Jobbe")))
    assert "contained" not in task
    assert task["owner"]["reference"] == "Organization/kommune"
    assert task["restriction"]["period"]["end"]  # the default due date
    plan = planbro.read("hospital", f"CarePlan/{_plan_id(task)}")
    assert plan["status"] == "draft"
    assert len(plan["goal"]) == 2 and len(plan["activity"]) == 1
    team = planbro.read("hospital", plan["careTeam"][0]["reference"])
    members = {p["member"]["reference"] for p in team["participant"]}
    assert members == {plan["subject"]["reference"], "Organization/hospital"}
    # the municipality finds it; the hospital sees what it sent
    inbox = planbro.search("kommune", "Task?owner=Organization/kommune&status=requested")
    assert [t["id"] for t in inbox] == [task["id"]]
    sent = planbro.search("hospital", "Task?requester=Organization/hospital")
    assert [t["id"] for t in sent] == [task["id"]]
    assert len(planbro.search("admin", f"CarePlan?subject={plan['subject']['reference']}")) == 1


def test_a_second_notification_is_attached_to_the_same_plan(planbro: Running) -> None:
    kari = person("kari", 32)
    first = _notify(planbro, notification_bundle(kari, goals=("Klare meg selv",)))
    second = _notify(planbro, notification_bundle(kari, goals=("Komme tilbake i jobb",),
                                                  owner="kommune"))
    assert _plan_id(first) == _plan_id(second)
    plan = planbro.read("admin", f"CarePlan/{_plan_id(first)}")
    patients = planbro.search("admin", f"Patient?{kari.criteria}")
    assert len(patients) == 1
    assert len(planbro.search("admin", f"CarePlan?subject=Patient/{patients[0]['id']}")) == 1
    assert len(plan["goal"]) == 2 and len(plan["activity"]) == 2
    goals = [planbro.read("admin", g["reference"])["description"]["text"]
             for g in plan["goal"]]
    assert goals == ["Klare meg selv", "Komme tilbake i jobb"]
    history = planbro.read("admin", f"CarePlan/{plan['id']}/_history")
    assert history["total"] == 2  # created by the first, added to by the second


def test_a_plan_made_by_the_municipality_gets_the_hospitals_contribution(
        planbro: Running) -> None:
    kari = person("kari", 33)
    first = _notify(planbro, notification_bundle(kari))
    planbro.ok(_answer(planbro, "kommune", first, "completed", output=_coordinator()))
    plan_before = planbro.read("admin", f"CarePlan/{_plan_id(first)}")
    bundle = notification_bundle(kari, goals=("Gå tur hver dag",))
    task = bundle["entry"][-1]["resource"]
    task["contained"][0]["activity"][0]["detail"]["description"] = "Ny opptrening i 4 uker"
    task["contained"][1]["participant"].append({
        "role": [{"coding": [{"system": "http://planbro.no/fhir/CodeSystem/participant-role",
                              "code": "koordinator"}]}],
        "member": {"reference": "PractitionerRole/per-rolle"}})
    second = _notify(planbro, bundle)
    assert _plan_id(second) == plan_before["id"]
    plan = planbro.read("kommune", f"CarePlan/{plan_before['id']}")
    assert len(plan["activity"]) == 2 and len(plan["goal"]) == 2
    team = planbro.read("kommune", plan["careTeam"][0]["reference"])
    coordinators = [p for p in team["participant"]
                    if p["role"][0]["coding"][0]["code"] == "koordinator"]
    # the plan keeps its coordinator: the contribution's is not taken over
    assert [c["member"]["reference"] for c in coordinators] == ["PractitionerRole/siri-rolle"]


def test_what_is_wrong_in_the_contribution_is_named_and_nothing_is_stored(
        planbro: Running) -> None:
    before = planbro.read("admin", "_history?_count=0")["total"]
    bundle = notification_bundle(person("kari", 34))
    task = bundle["entry"][-1]["resource"]
    task["contained"][0]["activity"][0]["detail"].pop("performer")
    refused = planbro.post("hospital", "", bundle)
    assert refused.status_code == 422, refused.text
    where = [e for i in refused.json()["issue"] for e in i.get("expression", [])]
    last = len(bundle["entry"]) - 1
    assert f"Bundle.entry[{last}].resource.contained[0].activity[0].detail.performer" in where
    active = copy.deepcopy(notification_bundle(person("kari", 35)))
    active["entry"][-1]["resource"]["contained"][0]["status"] = "active"
    refused = planbro.post("hospital", "", active)
    assert refused.status_code == 422
    assert any(e.endswith("contained[0].status") for i in refused.json()["issue"]
               for e in i.get("expression", []))
    assert planbro.read("admin", "_history?_count=0")["total"] == before


# -- the green form ---------------------------------------------------------------------------


def test_the_green_form_appoints_the_coordinator(planbro: Running) -> None:
    task = _notify(planbro, notification_bundle(person("kari", 36)))
    accepted = planbro.ok(_answer(planbro, "kommune", task, "accepted"))
    assert accepted["executionPeriod"]["start"]
    assert _answer(planbro, "hospital", task, "completed",
                   output=_coordinator()).status_code == 403
    done = planbro.ok(_answer(planbro, "kommune", task, "completed", output=_coordinator()))
    plan = planbro.read("kommune", f"CarePlan/{_plan_id(task)}")
    team_ref = plan["careTeam"][0]["reference"]
    outputs = {o["type"]["coding"][0]["code"]: o["valueReference"]["reference"]
               for o in done["output"]}
    assert outputs == {"koordinator": "PractitionerRole/siri-rolle", "ansvarsgruppe": team_ref}
    team = planbro.read("kommune", team_ref)
    roles = {(p["member"]["reference"], p["role"][0]["coding"][0]["code"])
             for p in team["participant"]}
    assert ("PractitionerRole/siri-rolle", "koordinator") in roles
    assert ("Organization/kommune", "koordinerende-enhet") in roles
    responsible = next(e for e in plan["extension"]
                       if e["url"].endswith("ip-responsible-organization"))
    assert responsible["valueReference"]["reference"] == "Organization/kommune"
    # the hospital sees the outcome on its Task
    seen = planbro.read("hospital", f"Task/{task['id']}")
    assert seen["status"] == "completed"
    history = planbro.read("hospital", f"Task/{task['id']}/_history")
    assert [e["resource"]["status"] for e in reversed(history["entry"])] == [
        "requested", "accepted", "completed"]


def test_the_green_form_names_a_coordinator(planbro: Running) -> None:
    task = _notify(planbro, notification_bundle(person("kari", 37)))
    refused = _answer(planbro, "kommune", task, "completed")
    assert refused.status_code == 422
    assert any("koordinator" in i["diagnostics"].lower() or "coordinator" in i["diagnostics"]
               for i in refused.json()["issue"])


def test_a_rejection_needs_a_reason_and_only_the_hospital_cancels(planbro: Running) -> None:
    task = _notify(planbro, notification_bundle(person("kari", 38)))
    assert _answer(planbro, "kommune", task, "rejected").status_code == 422
    assert _answer(planbro, "kommune", task, "cancelled").status_code == 403
    reason = {"coding": [{"system": REJECTION, "code": "har-plan"}]}
    rejected = planbro.ok(_answer(planbro, "kommune", task, "rejected", statusReason=reason))
    assert rejected["executionPeriod"]["end"]
    again = _answer(planbro, "kommune", task, "accepted")
    assert again.status_code == 422 and "final" in again.json()["issue"][0]["diagnostics"]
    assert planbro.read("hospital", f"CarePlan/{_plan_id(task)}")["status"] == "draft"


def test_the_request_itself_does_not_change(planbro: Running) -> None:
    task = _notify(planbro, notification_bundle(person("kari", 39)))
    changed = _answer(planbro, "kommune", task, "accepted",
                      owner={"reference": "Organization/nykommune"})
    assert changed.status_code == 422
    assert changed.json()["issue"][0]["expression"] == ["Task.owner"]


# -- the due date -----------------------------------------------------------------------------


def test_working_days_skip_weekends_and_norwegian_holidays() -> None:
    assert easter_sunday(2027) == dt.date(2027, 3, 28)
    assert easter_sunday(2026) == dt.date(2026, 4, 5)
    assert not is_working_day(dt.date(2027, 3, 25))  # Maundy Thursday
    assert not is_working_day(dt.date(2026, 5, 14))  # Ascension Day
    assert not is_working_day(dt.date(2026, 5, 17))
    start = dt.datetime(2027, 3, 23, 10, 0, tzinfo=OSLO)  # Tuesday of Easter week
    # Wed 24, (Thu 25, Fri 26, weekend, Mon 29 Easter), Tue 30, Wed 31, Thu 1, Fri 2
    assert add_working_days(start, 5) == dt.datetime(2027, 4, 2, 10, 0, tzinfo=OSLO)


def test_the_default_due_date_is_filled_before_validation() -> None:
    settings = WorkflowSettings(due_working_days=5)
    task = {"resourceType": "Task", "authoredOn": "2026-12-22T09:30:00+01:00",
            "code": {"coding": [{"system": TASK_CODE, "code": "ip-notification"}]}}
    assert fill_due_date(task, settings) == []
    # 23, (24 Christmas Eve is a working day), 28, 29, 30 - skipping 25, 26 and the weekend
    assert task["restriction"]["period"]["end"] == "2026-12-30T09:30:00+01:00"
    dated = {**task, "authoredOn": "2026-12-22", "restriction": {}}
    fill_due_date(dated, settings)
    assert dated["restriction"]["period"]["end"] == "2026-12-30"
    given = {**task, "restriction": {"period": {"end": "2027-01-15"}}}
    fill_due_date(given, settings)
    assert given["restriction"]["period"]["end"] == "2027-01-15"
    other = {"resourceType": "Task", "code": {"coding": [{"system": TASK_CODE,
                                                          "code": "evaluation"}]}}
    fill_due_date(other, settings)
    assert "restriction" not in other


def test_the_due_date_is_configurable(engine: str, tmp_path: Path) -> None:
    config, cleanup = engine_config(engine, tmp_path / "data", due_working_days=2)
    planbro = start(config)
    try:
        bundle = notification_bundle(person("kari", 40))
        bundle["entry"][-1]["resource"]["authoredOn"] = "2026-03-06T08:00:00+01:00"  # Friday
        task = _notify(planbro, bundle)
        assert task["restriction"]["period"]["end"] == "2026-03-10T08:00:00+01:00"
    finally:
        planbro.close()
        cleanup()


# -- overdue ----------------------------------------------------------------------------------


def _overdue(planbro: Running, seq: int) -> dict[str, Any]:
    bundle = notification_bundle(person("kari", seq), due=(
        dt.date.today() - dt.timedelta(days=3)).isoformat())
    bundle["entry"][-1]["resource"]["authoredOn"] = (
        dt.date.today() - dt.timedelta(days=10)).isoformat()
    return _notify(planbro, bundle)


def _scans_only_when_asked(planbro: Running) -> Running:
    """The test counts the reminders its own scans send: the worker's first scan (a second
    after the start, sooner than a slow machine creates the notifications) must not race it."""
    planbro.workflow.worker.jobs[REMINDER_JOB].next_at = math.inf
    return planbro


def test_overdue_notifications_are_listed_for_both_sides(planbro: Running) -> None:
    late = _overdue(planbro, 41)
    _notify(planbro, notification_bundle(person("kari", 42)))  # not due yet
    answered = _overdue(planbro, 43)
    planbro.ok(_answer(planbro, "kommune", answered, "completed", output=_coordinator()))
    query = (f"Task?code={TASK_CODE}|ip-notification&status=requested,accepted"
             f"&due-date=lt{instant(now_ms())}")
    for party, side in (("kommune", "owner"), ("hospital", "requester")):
        found = planbro.search(party, f"{query}&{side}=Organization/{party}")
        assert [t["id"] for t in found] == [late["id"]], party


def test_a_reminder_goes_once_per_interval_and_survives_restarts(
        engine: str, tmp_path: Path) -> None:
    config, cleanup = engine_config(engine, tmp_path / "data")
    planbro = _scans_only_when_asked(start(config))
    try:
        late = _overdue(planbro, 44)
        workflow = planbro.workflow
        results: list[int] = []
        threads = [threading.Thread(target=lambda: results.append(workflow.send_reminders()))
                   for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(results) == [0, 0, 0, 1]
        reminders = _reminders(planbro, "admin", late)
        assert len(reminders) == 1
        reminder = reminders[0]
        assert reminder["recipient"] == [{"reference": "Organization/kommune"}]
        assert reminder["identifier"][0]["system"] == REMINDER_SYSTEM
        assert late["id"] in reminder["payload"][0]["contentString"]
    finally:
        planbro.close()
    restarted = start(config, load_directory=False)
    try:
        assert restarted.workflow.send_reminders() == 0
        interval_ms = int(restarted.workflow.settings.reminder_interval_s * 1000)
        later = now_ms() + interval_ms
        service, settings = restarted.service, restarted.workflow.settings
        assert send_reminders(service, settings, later) == 1  # the next interval
        assert send_reminders(service, settings, later) == 0
        found = _reminders(restarted, "admin", late)
        assert len(found) == 2
    finally:
        restarted.close()
        cleanup()


def test_a_reminder_about_a_person_named_by_absolute_url(planbro: Running) -> None:
    """The scan runs outside any request: it declares the configured base itself, so the
    person of a Task that names them by an absolute URL of this server is read as ours (the
    reminder is written, and kept with the person for the parties), not as another
    server's Patient (refused)."""
    _scans_only_when_asked(planbro)
    kari = person("kari", 49)
    registered = planbro.ok(planbro.post("admin", "Patient", kari.patient()), 201)
    absolute = f"{planbro.base}/Patient/{registered['id']}"
    bundle = notification_bundle(kari, due=(dt.date.today() - dt.timedelta(days=3)).isoformat())
    task = bundle["entry"][-1]["resource"]
    task["authoredOn"] = (dt.date.today() - dt.timedelta(days=10)).isoformat()
    task["for"] = {"reference": absolute}
    late = _notify(planbro, bundle)
    assert late["for"] == {"reference": absolute}
    sent: list[int] = []
    scan = threading.Thread(target=lambda: sent.append(planbro.workflow.send_reminders()))
    scan.start()  # a thread of its own, as the worker's: no request declared a base there
    scan.join()
    assert sent == [1]
    reminder = _reminders(planbro, "kommune", late)
    assert len(reminder) == 1 and reminder[0]["subject"] == {"reference": absolute}
    assert len(_reminders(planbro, "hospital", late)) == 1
    assert _reminders(planbro, "nykommune", late) == []


def test_a_scan_that_finds_every_reminder_sent_writes_nothing(
        planbro: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reminders already sent are found by one search per page, without the write lock: a
    scan every minute over many overdue notifications must not queue behind the writers."""
    _scans_only_when_asked(planbro)
    late = [_overdue(planbro, n) for n in (45, 46, 47)]
    assert planbro.workflow.send_reminders() == 3

    def no_write(*_: object, **__: object) -> None:
        raise AssertionError("a scan with nothing to send opened a unit of work")

    monkeypatch.setattr(planbro.service, "unit_of_work", no_write)
    assert planbro.workflow.send_reminders() == 0
    assert all(len(_reminders(planbro, "admin", task)) == 1 for task in late)


@pytest.mark.parametrize("status", ["completed", "rejected"])
def test_no_reminder_once_answered(planbro: Running, status: str) -> None:
    late = _overdue(planbro, 45)
    changes: dict[str, Any] = {"output": _coordinator()} if status == "completed" else {
        "statusReason": {"coding": [{"system": REJECTION, "code": "ikke-behov"}]}}
    planbro.ok(_answer(planbro, "kommune", late, status, **changes))
    assert planbro.workflow.send_reminders() == 0


def test_another_organisation_finds_the_person_by_national_identity_number(
        planbro: Running) -> None:
    kari = person("kari", 46)
    first = _notify(planbro, notification_bundle(kari))
    patient_id = first["for"]["reference"].split("/")[1]
    found = planbro.post("nykommune", "Patient", kari.patient(),
                         **{"If-None-Exist": kari.criteria})
    assert found.status_code == 200, found.text
    stub = found.json()
    assert stub["id"] == patient_id
    # it learns the id behind the number it had, nothing more, and the lookup is logged
    assert stub["meta"]["security"] == [REDACTED] and "name" not in stub
    assert [i["value"] for i in stub["identifier"]] == [kari.fnr]
    assert planbro.get("nykommune", f"Patient/{patient_id}").status_code == 404
    assert planbro.search("admin", f"Patient?{kari.criteria}") == [
        planbro.read("admin", f"Patient/{patient_id}")]
    log = planbro.search("auditor", f"AuditEvent?patient=Patient/{patient_id}&_count=100")
    lookups = [e for e in log if e["subtype"][0]["code"] == "search-type"
               and ORGS["nykommune"][0] in str(e["agent"])]
    assert len(lookups) == 1, log
    # a search by the same number shows nothing: only conditional writes resolve identity
    assert planbro.search("nykommune", f"Patient?{kari.criteria}") == []
    # resolving the identity gives no right to change or delete the person
    renamed = {**kari.patient(), "name": [{"family": "Endret", "given": ["Kari"]}]}
    changed = planbro.request("nykommune", "PUT", f"Patient?{kari.criteria}", renamed)
    assert changed.status_code == 404, changed.text
    deleted = planbro.request("nykommune", "DELETE", f"Patient?{kari.criteria}")
    assert deleted.status_code == 404, deleted.text
    assert planbro.read("admin", f"Patient/{patient_id}")["name"] == kari.patient()["name"]


def test_the_notification_finds_a_person_registered_before(planbro: Running) -> None:
    """The hospital sees nothing of a person registered by someone else (here an
    administrative system), yet its notification names that Patient, not a second one."""
    kari = person("kari", 48)
    registered = planbro.post("admin", "Patient", kari.patient())
    assert registered.status_code == 201, registered.text
    task = _notify(planbro, notification_bundle(kari))
    assert task["for"]["reference"] == f"Patient/{registered.json()['id']}"
    assert len(planbro.search("admin", f"Patient?{kari.criteria}")) == 1


def test_the_municipality_reads_its_reminder(planbro: Running, receiver: Receiver) -> None:
    planbro.ok(planbro.post("kommune", "Subscription", subscription(
        "Communication?recipient=Organization/kommune", receiver.url)))
    _scans_only_when_asked(planbro)
    late = _overdue(planbro, 47)
    assert planbro.workflow.send_reminders() == 1
    reminder = _reminders(planbro, "kommune", late)
    assert len(reminder) == 1
    got = receiver.wait_for(1)[0]  # and hears of it
    assert got.path == f"/hook/Communication/{reminder[0]['id']}", got.path
    assert len(_reminders(planbro, "hospital", late)) == 1  # the sender sees it too
    assert _reminders(planbro, "nykommune", late) == []
    assert planbro.get("legekontor", f"Communication/{reminder[0]['id']}").status_code == 404
