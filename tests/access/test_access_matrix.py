"""The access matrix over real HTTP with real tokens: caller x person (consent state) x
resource x interaction -> what the caller gets.

Callers: an administrative system, the coordinator's municipality, NAV, the hospital that sent
a notification, an unrelated organisation, a person (``self:active`` sees their own data and
is "another person" for everyone else's), and a health worker stating a reason for emergency
access (``doctor!``). Persons: ``active`` (consent shares everything with NAV), ``limited``
(NAV: plan and goals only), ``withdrawn`` (consent withdrawn), ``notice`` (no plan yet: only
the hospital's notification to the municipality).

Interactions per resource: read, vread, search by ``_id`` with the total, instance history,
a GET entry of a batch; and a transaction write. What may not be seen is 404 (never 403) and
is neither counted nor returned.
"""

from __future__ import annotations

import pytest
from access_kit import EMERGENCY, World
from world import KINDS, NOTICE_KINDS, STATES

CALLERS = ("admin", "kommune", "nav", "hospital", "unrelated", "self:active", "doctor!")
PERSONS = (*STATES, "notice")
NAV_LIMITED = {"Patient", "CarePlan", "Goal", "Task-nav", "CareTeam", "Consent"}
NOTICE_PARTIES = {"Patient", "Task-notification", "DocumentReference"}


def visible(caller: str, key: str, kind: str) -> bool:
    """What each caller may see (the rules of server.access)."""
    if caller in ("admin", "doctor!"):
        return True
    if caller.startswith("self:"):
        return caller == f"self:{key}"
    if key == "notice":
        return caller in ("hospital", "kommune") and kind in NOTICE_PARTIES
    if caller == "kommune":
        return key != "withdrawn"
    if caller == "nav":
        return key == "active" or (key == "limited" and kind in NAV_LIMITED)
    return False


def _session(world: World, caller: str) -> tuple[str, dict[str, str]]:
    if caller == "doctor!":
        return "doctor", {EMERGENCY: "Unconscious in the emergency room"}
    return caller, {}


def kinds_of(key: str) -> dict[str, tuple[str, str]]:
    if key == "notice":
        return NOTICE_KINDS
    return {kind: make(key) for kind, make in KINDS.items()}


@pytest.mark.parametrize("key", PERSONS)
@pytest.mark.parametrize("caller", CALLERS)
def test_reads(world: World, caller: str, key: str) -> None:
    who, headers = _session(world, caller)
    for kind, (type_, id_) in kinds_of(key).items():
        seen = visible(caller, key, kind)
        status = 200 if seen else 404
        where = (caller, key, kind)
        read = world.get(who, f"{type_}/{id_}", headers=headers)
        assert read.status_code == status, (*where, "read", read.text)
        if seen:
            assert read.json()["id"] == id_
        else:
            assert read.json()["issue"][0]["code"] == "not-found"
        vread = world.get(who, f"{type_}/{id_}/_history/1", headers=headers)
        assert vread.status_code == status, (*where, "vread", vread.text)
        search = world.bundle(who, f"{type_}?_id={id_}&_total=accurate", headers=headers)
        assert search["total"] == int(seen), (*where, "search total")
        assert len(search.get("entry", [])) == int(seen), (*where, "search entries")
        history = world.get(who, f"{type_}/{id_}/_history", headers=headers)
        assert history.status_code == status, (*where, "history", history.text)
        if seen:
            assert history.json()["total"] >= 1
        batch = world.post(who, "", {"resourceType": "Bundle", "type": "batch", "entry": [
            {"request": {"method": "GET", "url": f"{type_}/{id_}"}}]}, headers=headers)
        assert batch.status_code == 200, (*where, "batch", batch.text)
        entry = batch.json()["entry"][0]
        assert entry["response"]["status"].startswith(str(status)), (*where, "batch entry")


def _expected_write(caller: str, key: str, kind: str) -> int:
    """Status of a transaction that updates the resource unchanged."""
    if caller == "admin":
        return 200
    if caller == "doctor!":
        return 403  # the health worker's token reads only (and emergency opens no writes)
    if caller.startswith("self:"):
        return 403 if kind == "Task-nav" else (200 if caller == f"self:{key}" else 404)
    if key == "withdrawn" or caller in ("hospital", "unrelated"):
        return 404
    if caller == "kommune":
        return 200  # the coordinator's organisation maintains the plan
    if kind == "Task-nav":
        return 200  # NAV's own measure
    return 403  # NAV sees the goal but does not maintain the plan


@pytest.mark.parametrize("key", STATES)
@pytest.mark.parametrize("caller", CALLERS)
def test_transaction_writes(world: World, caller: str, key: str) -> None:
    who, headers = _session(world, caller)
    admin_view = {kind: world.get("admin", "/".join(KINDS[kind](key))).json()
                  for kind in ("Goal", "Task-nav")}
    for kind, resource in admin_view.items():
        resource = {k: v for k, v in resource.items() if k != "meta"}
        path = f"{resource['resourceType']}/{resource['id']}"
        body = {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": resource, "request": {"method": "PUT", "url": path}}]}
        response = world.post(who, "", body, headers=headers)
        expected = _expected_write(caller, key, kind)
        assert response.status_code == expected, (caller, key, kind, response.text)


def test_notice_writes(world: World) -> None:
    """Before a plan exists the notification's parties keep the notification; nobody else
    of the organisations may touch it (or even learn it exists)."""
    task = world.get("admin", "Task/notice-task").json()
    task = {k: v for k, v in task.items() if k != "meta"}
    for caller, status in (("hospital", 200), ("kommune", 200), ("nav", 404),
                           ("unrelated", 404)):
        assert world.put(caller, task).status_code == status, caller


def test_a_writes_precondition_reveals_nothing_unseen(world: World) -> None:
    """If-Match / If-None-Match that fail on a resource the caller may not see answer as the
    write would without them (404), not 412 with its version."""
    goal = world.get("admin", "Goal/active-goal").json()
    body = {k: v for k, v in goal.items() if k != "meta"}
    for headers in ({"If-None-Match": "*"}, {"If-Match": 'W/"99"'}):
        response = world.put("unrelated", body, headers=headers)
        assert response.status_code == 404, (headers, response.text)
        assert "version" not in response.json()["issue"][0]["diagnostics"]
    assert world.get("admin", "Goal/active-goal").json()["meta"] == goal["meta"]
