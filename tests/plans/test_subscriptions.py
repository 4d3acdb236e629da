"""Subscriptions (rest-hook): checked when written, matched in the unit of work of every
write, queued in the outbox with it, delivered by the background worker with bounded retries
- to a receiver on 127.0.0.1."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from plansupport import (
    TASK_OUTPUT,
    Receiver,
    Running,
    engine_config,
    notification_bundle,
    person,
    start,
    subscription,
)

from server.access.labels import OWNER_SYSTEM
from server.fhir.outcome import FhirError
from server.notify import outbox, subscriptions
from server.notify.subscriptions import endpoint_problem
from server.notify.worker import Job, Worker


def _subscribe(planbro: Running, party: str, criteria: str, endpoint: str,
               **kwargs: Any) -> dict[str, Any]:
    return planbro.ok(planbro.post(party, "Subscription",
                                   subscription(criteria, endpoint, **kwargs)), 201)


def _notify(planbro: Running, seq: int, owner: str = "kommune") -> dict[str, Any]:
    response = planbro.post("hospital", "", notification_bundle(person("kari", seq),
                                                                owner=owner))
    assert response.status_code == 200, response.text
    task: dict[str, Any] = response.json()["entry"][-1]["resource"]
    return task


@pytest.fixture
def quiet(engine: str, tmp_path: Path) -> Iterator[Running]:
    """Planbro without the background worker: deliveries run when a test asks."""
    config, cleanup = engine_config(engine, tmp_path / "data", worker=False)
    running = start(config)
    try:
        yield running
    finally:
        running.close()
        cleanup()


# -- checking subscriptions -------------------------------------------------------------------


@pytest.mark.parametrize(("change", "where"), [
    ({"criteria": "Nothing?x=1"}, "Subscription.criteria"),
    ({"criteria": "Task?nonsense=1"}, "Subscription.criteria"),
    ({"criteria": "Task?_include=Task:focus"}, "Subscription.criteria"),
    ({"channel": {"type": "email", "endpoint": "mailto:a@example.org"}},
     "Subscription.channel.type"),
    ({"channel": {"type": "rest-hook", "endpoint": "http://example.org/hook"}},
     "Subscription.channel.endpoint"),
    ({"channel": {"type": "rest-hook", "endpoint": "https://example.org/hook",
                  "payload": "application/fhir+xml"}}, "Subscription.channel.payload"),
])
def test_what_cannot_be_subscribed_is_refused(planbro: Running, change: dict[str, Any],
                                              where: str) -> None:
    body = {**subscription("Task?owner=Organization/kommune", "https://example.org/hook"),
            **change}
    refused = planbro.post("kommune", "Subscription", body)
    assert refused.status_code == 422, refused.text
    assert where in refused.json()["issue"][0]["expression"]


def test_a_requested_subscription_becomes_active(planbro: Running) -> None:
    created = _subscribe(planbro, "kommune", "Task?owner=Organization/kommune",
                         "https://example.org/hook")
    assert created["status"] == "active"


def test_a_subscription_belongs_to_the_caller_that_created_it(planbro: Running) -> None:
    body = subscription("Task?owner=Organization/kommune", "https://kommune.example/hook")
    body["meta"] = {"tag": [{"system": OWNER_SYSTEM, "code": "someone-else"}]}  # replaced
    mine = _subscribe(planbro, "kommune", body["criteria"], "https://kommune.example/hook")
    forged = planbro.ok(planbro.post("kommune", "Subscription", body), 201)
    owner = [t["code"] for t in mine["meta"]["tag"] if t["system"] == OWNER_SYSTEM]
    assert owner and [t["code"] for t in forged["meta"]["tag"]
                      if t["system"] == OWNER_SYSTEM] == owner
    path = f"Subscription/{mine['id']}"
    assert planbro.read("kommune", path)["id"] == mine["id"]
    assert {s["id"] for s in planbro.search("kommune", "Subscription")} == {
        mine["id"], forged["id"]}
    # another organisation neither sees, changes nor deletes it
    assert planbro.get("hospital", path).status_code == 404
    assert planbro.search("hospital", "Subscription") == []
    stolen = {**mine, "channel": {**mine["channel"], "endpoint": "https://thief.example/h"}}
    assert planbro.put("hospital", stolen).status_code == 404
    assert planbro.request("hospital", "DELETE", path).status_code == 404
    assert planbro.read("kommune", path)["channel"]["endpoint"] == \
        "https://kommune.example/hook"
    # its owner changes it, and it stays the owner's; administrative systems see it too
    changed = planbro.ok(planbro.put("kommune", {**mine, "status": "off"}), 200)
    assert [t["code"] for t in changed["meta"]["tag"] if t["system"] == OWNER_SYSTEM] == owner
    assert planbro.read("admin", path)["status"] == "off"
    assert planbro.request("kommune", "DELETE", path).status_code in (200, 204)


def test_endpoints_are_https_or_loopback_when_allowed() -> None:
    assert endpoint_problem("https://kommune.example/hook", False) is None
    assert endpoint_problem("http://127.0.0.1:8080/hook", True) is None
    assert endpoint_problem("http://[::1]:8080/hook", True) is None
    assert endpoint_problem("http://127.0.0.1:8080/hook", False) is not None
    assert endpoint_problem("http://10.0.0.1/hook", True) is not None
    assert endpoint_problem("ftp://example.org", True) is not None


# -- delivery ---------------------------------------------------------------------------------


def test_the_municipality_hears_of_new_notifications_and_the_hospital_of_answers(
        planbro: Running, receiver: Receiver) -> None:
    _subscribe(planbro, "kommune", "Task?owner=Organization/kommune&status=requested",
               receiver.url)
    answers = Receiver()
    try:
        _subscribe(planbro, "hospital",
                   "Task?requester=Organization/hospital&status=completed,rejected",
                   answers.url, payload=False)
        task = _notify(planbro, 51)
        _notify(planbro, 52, owner="nykommune")  # another municipality's: not announced
        got = receiver.wait_for(1)[0]
        assert (got.method, got.path) == ("PUT", f"/hook/Task/{task['id']}")
        assert got.body["id"] == task["id"] and got.body["status"] == "requested"
        assert got.headers["X-Subscriber"] == "test"
        assert got.headers["Content-Type"] == "application/fhir+json"
        current = planbro.read("kommune", f"Task/{task['id']}")
        planbro.ok(planbro.put("kommune", {**current, "status": "completed", "output": [{
            "type": {"coding": [{"system": TASK_OUTPUT, "code": "koordinator"}]},
            "valueReference": {"reference": "PractitionerRole/siri-rolle"}}]}))
        answer = answers.wait_for(1)[0]
        assert (answer.method, answer.path, answer.body) == ("POST", "/hook", None)
        time.sleep(0.5)
        assert len(receiver.received) == 1  # the completed Task no longer matches
    finally:
        answers.close()


def test_a_notification_is_queued_only_with_the_change(quiet: Running,
                                                       receiver: Receiver) -> None:
    _subscribe(quiet, "kommune", "Task?owner=Organization/kommune", receiver.url)
    bundle = notification_bundle(person("kari", 53))
    bundle["entry"].append({"resource": {"resourceType": "Goal"},  # invalid: no subject
                            "request": {"method": "POST", "url": "Goal"}})
    assert quiet.post("hospital", "", bundle).status_code in (400, 422)
    assert outbox.pending(quiet.service.store) == []
    _notify(quiet, 54)
    assert len(outbox.pending(quiet.service.store)) == 1
    assert quiet.workflow.deliver() is None
    assert len(receiver.wait_for(1)) == 1
    assert outbox.pending(quiet.service.store) == []


def _count_lookups(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    looked_up: list[str] = []
    real = subscriptions.of_type

    def counted(service: Any, uow: Any, type_: str) -> list[dict[str, Any]]:
        looked_up.append(type_)
        return real(service, uow, type_)

    monkeypatch.setattr(subscriptions, "of_type", counted)
    return looked_up


def test_a_unit_of_work_looks_up_the_subscriptions_of_each_type_once(
        quiet: Running, receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    """A transaction of several resources of a type looks up the active subscriptions to
    that type once, and still queues a notification for each resource that matches."""
    looked_up = _count_lookups(monkeypatch)
    _subscribe(quiet, "hospital", "Goal?lifecycle-status=active", receiver.url)
    looked_up.clear()
    response = quiet.post("hospital", "", notification_bundle(
        person("kari", 55), goals=("Bo hjemme", "Gå tur", "Handle selv")))
    assert response.status_code == 200, response.text
    assert looked_up.count("Goal") == 1 and len(looked_up) == len(set(looked_up))
    assert len(outbox.pending(quiet.service.store)) == 3


def test_the_subscriptions_are_looked_up_again_only_after_one_changed_in_any_process(
        quiet: Running, receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    looked_up = _count_lookups(monkeypatch)
    _notify(quiet, 57)
    _notify(quiet, 58)
    assert looked_up.count("Task") == 1  # no Subscription changed in between
    assert outbox.pending(quiet.service.store) == []
    # another process of the same server subscribes
    other = start(quiet.planbro.config, load_directory=False)
    try:
        _subscribe(other, "kommune", "Task?owner=Organization/kommune", receiver.url)
    finally:
        other.close()
    _notify(quiet, 59)
    assert looked_up.count("Task") == 2
    assert len(outbox.pending(quiet.service.store)) == 1
    # what a unit of work that subscribed saw is not kept: it may yet be rolled back (here
    # after the matching) while the next change makes the history as long again
    bundle = notification_bundle(person("kari", 60))
    bundle["entry"].insert(0, {
        "resource": subscription("Task?owner=Organization/kommune", receiver.url),
        "request": {"method": "POST", "url": "Subscription"}})

    def refuse(ctx: Any, uow: Any) -> None:
        raise FhirError.of(409, "refused after the matching")

    quiet.service.before_commit.append(refuse)
    try:
        assert quiet.post("hospital", "", bundle).status_code == 409
    finally:
        quiet.service.before_commit.remove(refuse)
    assert len(outbox.pending(quiet.service.store)) == 1
    kept = _subscribe(quiet, "hospital", "Goal?lifecycle-status=active", receiver.url)
    looked_up.clear()
    _notify(quiet, 61)
    assert looked_up.count("Task") == 1
    pending = outbox.pending(quiet.service.store)
    assert len(pending) == 3  # the Task to the first subscription, the Goal to the new one
    assert kept["id"] in {message.subscription for message in pending}


def test_failed_deliveries_are_retried_with_backoff(planbro: Running) -> None:
    flaky = Receiver(fail=2)
    try:
        _subscribe(planbro, "kommune", "Task?owner=Organization/kommune", flaky.url)
        started = time.monotonic()
        task = _notify(planbro, 55)
        got = flaky.wait_for(1)
        assert got[0].body["id"] == task["id"]
        assert flaky.answered == 3
        assert time.monotonic() - started >= 0.2 + 0.4  # two back-offs, doubling
        time.sleep(0.3)
        assert outbox.pending(planbro.service.store) == []
    finally:
        flaky.close()


def test_a_subscription_errs_after_the_last_attempt(planbro: Running) -> None:
    down = Receiver(fail=1000)
    try:
        created = _subscribe(planbro, "kommune", "Task?owner=Organization/kommune", down.url)
        _notify(planbro, 56)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            current = planbro.read("kommune", f"Subscription/{created['id']}")
            if current["status"] == "error":
                break
            time.sleep(0.1)
        assert current["status"] == "error", current
        assert "3 times" in current["error"] and "HTTP 500" in current["error"]
        assert down.answered == 3
        assert outbox.pending(planbro.service.store) == []
        _notify(planbro, 57)  # an erring subscription hears nothing more
        time.sleep(0.5)
        assert down.answered == 3
    finally:
        down.close()


def test_concurrent_workers_deliver_each_notification_once(quiet: Running,
                                                           receiver: Receiver) -> None:
    _subscribe(quiet, "kommune", "Task?owner=Organization/kommune", receiver.url)
    for seq in range(58, 62):
        _notify(quiet, seq)
    threads = [threading.Thread(target=quiet.workflow.deliver) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    receiver.wait_for(4)
    time.sleep(0.3)
    assert len(receiver.received) == 4
    assert len({r.path for r in receiver.received}) == 4


# -- the worker -------------------------------------------------------------------------------


def test_the_worker_runs_jobs_when_woken_and_stops() -> None:
    ran = threading.Event()
    calls: list[float] = []

    def job() -> None:
        calls.append(time.monotonic())
        ran.set()

    worker = Worker([Job("job", 3600.0, job)], burst_s=0.0)
    worker.start(first_delay_s=3600.0)
    assert not ran.wait(0.3)
    worker.wake("job")
    assert ran.wait(5)
    worker.stop()
    assert not worker.running
    assert len(calls) == 1


def test_a_failing_job_does_not_end_the_worker() -> None:
    runs: list[int] = []

    def job() -> float:
        runs.append(1)
        if len(runs) == 1:
            raise RuntimeError("boom")
        return 0.01

    worker = Worker([Job("job", 0.05, job)])
    worker.start(first_delay_s=0.0)
    deadline = time.monotonic() + 5
    while len(runs) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    worker.stop()
    assert len(runs) >= 3


def test_a_subscriber_hears_only_of_what_it_may_see(planbro: Running,
                                                    receiver: Receiver) -> None:
    criteria = "Task?code=http://planbro.no/fhir/CodeSystem/task-code|ip-notification"
    refused = planbro.post("nav", "Subscription", subscription("Condition?", receiver.url))
    assert refused.status_code == 403, refused.text  # NAV may not search conditions at all
    outsider = Receiver()
    try:
        _subscribe(planbro, "nav", criteria, outsider.url)
        _subscribe(planbro, "kommune", criteria, receiver.url)
        task = _notify(planbro, 62)
        assert receiver.wait_for(1)[0].body["id"] == task["id"]
        time.sleep(0.5)
        assert outsider.received == []  # NAV takes no part in this person's care
    finally:
        outsider.close()
