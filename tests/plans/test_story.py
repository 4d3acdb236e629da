"""The proof: one person's story end to end, over real HTTP with real tokens.

A person is discharged from the hospital -> the hospital's notification -> the municipality
sees it -> the green form with the coordinator -> the plan completed with goals, measures
(municipal services, the GP, NAV, the person themself) and consent -> activated -> NAV joins
with a limited view -> the person reads the plan and adds a goal -> an evaluation -> the
person moves to another municipality -> the transfer is confirmed -> the plan continues with
the new coordinator.

After every step: exactly one plan, its status, care team and coordinator, the Tasks'
outputs, notifications delivered, who can see what (:func:`assert_visibility`: the parties
that may read the plan and the notification, NAV's limited view, the old municipality after
the move), the audit trail (AuditEvents of the person, a Provenance per plan version) and
the plan's history. The same story runs for a Norwegian individual plan (Kari) and for a
Swedish SIP (Rut, 82).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from plansupport import (
    EXT,
    ORGS,
    ROLE,
    TASK_CODE,
    TASK_OUTPUT,
    Person,
    Receiver,
    Running,
    consent,
    days_from_now,
    goal,
    measure,
    notification_bundle,
    org_ref,
    person,
    rut,
    subscription,
    today,
)

from server.plans.identifiers import ENH_SYSTEM
from server.plans.invariants import current_coordinators

PARTIES = ("hospital", "kommune", "nykommune", "nav", "person")
GP_MEASURE = "Legetime hver tredje måned: medisiner og søvn"
NAV_MEASURE = "Arbeidstrening i kantine, oppfølging fra NAV hver måned"


@dataclass
class Story:
    """One person's way through the workflow, and what every step leaves behind."""

    planbro: Running
    who: Person
    kind: str
    inbox: Receiver  # the municipality's rest-hook endpoint
    answers: Receiver  # the hospital's
    patient: str = ""
    plan: str = ""
    team: str = ""
    task: str = ""
    transfer: str = ""
    versions: list[str] = field(default_factory=list)  # plan status per version, oldest first
    later: list[str] = field(default_factory=list)  # what the plan gained after it began
    audit_seen: int = 0

    # -- reading ------------------------------------------------------------------------------

    def read(self, party: str, path: str) -> dict[str, Any]:
        return self.planbro.read(party, path)

    def current_plan(self) -> dict[str, Any]:
        return self.read("admin", f"CarePlan/{self.plan}")

    def current_team(self) -> dict[str, Any]:
        return self.read("admin", f"CareTeam/{self.team}")

    def coordinator(self) -> list[str]:
        return [p["member"]["reference"] for p in current_coordinators(self.current_team())]

    def responsible(self) -> str:
        url = "ip-responsible-organization" if self.kind == "individuell-plan" else \
            "sip-overall-responsible"
        ext = next(e for e in self.current_plan()["extension"] if e["url"] == f"{EXT}/{url}")
        return str(ext["valueReference"]["reference"])

    # -- the facts after every step -----------------------------------------------------------

    def check(self, step: str, *, status: str, coordinator: list[str], responsible: str,
              sees: dict[str, bool], actor: str, limited: bool = False) -> None:
        plans = self.planbro.search("admin", f"CarePlan?subject=Patient/{self.patient}")
        assert [p["id"] for p in plans] == [self.plan], (step, "exactly one plan")
        plan = plans[0]
        assert plan["status"] == status, (step, plan["status"])
        assert self.coordinator() == coordinator, (step, self.coordinator())
        assert self.responsible() == responsible, (step, self.responsible())
        history = self.read("admin", f"CarePlan/{self.plan}/_history?_count=100")
        statuses = [e["resource"]["status"] for e in reversed(history["entry"])]
        assert statuses == self.versions, (step, statuses, self.versions)
        assert_visibility(self, step, sees, limited=limited)
        self.assert_audit(step, actor, history["total"])

    def assert_audit(self, step: str, actor: str, plan_versions: int) -> None:
        """The person's log has new entries of ``actor``; every plan version has its
        Provenance; the person reads their own log."""
        events = self.planbro.search(
            "auditor", f"AuditEvent?patient=Patient/{self.patient}&_count=1000")
        assert len(events) > self.audit_seen, (step, "no new audit events")
        number = "" if actor == "person" else ORGS[actor][0]
        fresh = events[: len(events) - self.audit_seen]
        by_actor = [e for e in fresh if _acted(e, actor, number)]
        assert by_actor, (step, actor, [_agents(e) for e in fresh])
        self.audit_seen = len(events)
        provenance = self.planbro.search("admin", f"Provenance?target=CarePlan/{self.plan}"
                                                  "&_count=1000")
        assert len(provenance) == plan_versions, (step, len(provenance), plan_versions)
        if "person" in self.planbro.tokens:
            own = self.planbro.search("person", f"AuditEvent?patient=Patient/{self.patient}"
                                                "&_count=1000")
            assert len(own) >= len(events), step


def _agents(event: dict[str, Any]) -> list[Any]:
    return [a.get("who") for a in event.get("agent", [])]


def _acted(event: dict[str, Any], actor: str, number: str) -> bool:
    who = _agents(event)
    if actor == "person":
        return any(isinstance(w, dict) and str(w.get("reference", "")).startswith("Patient/")
                   for w in who)
    return any(isinstance(w, dict) and w.get("identifier", {}).get("value") == number
               for w in who)


def assert_visibility(story: Story, step: str, sees: dict[str, bool], *,
                      limited: bool = False) -> None:
    """Who may read the person's plan at ``step`` (``sees``: party -> may it), NAV's limited
    view, and the notification's parties.

    A party that may read the plan also reads what the plan gained later (the person's own
    goal, the evaluation record, the transfer); a party that may not reads none of that, nor
    the care team. The parties of the hospital's notification keep the notification itself
    (with its answer), and nothing more once it is answered: the person's consent decides."""
    planbro = story.planbro
    for party, expected in sees.items():
        if party not in planbro.tokens:
            continue
        status = planbro.get(party, f"CarePlan/{story.plan}").status_code
        assert status == (200 if expected else 404), (step, party, status)
        for ref in [*([] if expected else [f"CareTeam/{story.team}"]), *story.later]:
            found = planbro.get(party, ref).status_code
            assert found == (200 if expected else 404), (step, party, ref, found)
    for party in ("hospital", "kommune"):
        assert planbro.get(party, f"Task/{story.task}").status_code == 200, (step, party)
    assert planbro.get("nav", f"Task/{story.task}").status_code == 404, step
    if not limited:
        return
    whole = story.current_plan()
    seen = planbro.read("nav", f"CarePlan/{story.plan}")
    descriptions = [a["detail"]["description"] for a in seen.get("activity", [])]
    assert NAV_MEASURE in descriptions, step
    assert GP_MEASURE not in descriptions, (step, "NAV does not see health measures")
    assert len(seen.get("activity", [])) < len(whole["activity"]), step
    assert seen["title"] == whole["title"]


# -- the steps --------------------------------------------------------------------------------


def discharge(story: Story) -> None:
    planbro = story.planbro
    planbro.ok(planbro.post("kommune", "Subscription", subscription(
        "Task?owner=Organization/kommune&status=requested", story.inbox.url)), 201)
    planbro.ok(planbro.post("hospital", "Subscription", subscription(
        "Task?requester=Organization/hospital&status=completed,rejected",
        story.answers.url)), 201)
    response = planbro.post("hospital", "", notification_bundle(
        story.who, kind=story.kind, goals=("Jeg vil bo hjemme og klare meg selv",)))
    assert response.status_code == 200, response.text
    receipt = response.json()
    assert all(e["response"]["status"].startswith("201") for e in receipt["entry"])
    task = receipt["entry"][-1]["resource"]
    story.task = task["id"]
    story.patient = task["for"]["reference"].split("/")[1]
    story.plan = task["focus"]["reference"].split("/")[1]
    story.team = story.current_plan()["careTeam"][0]["reference"].split("/")[1]
    story.versions = ["draft"]
    assert task["status"] == "requested" and task["restriction"]["period"]["end"]
    delivered = story.inbox.wait_for(1)[0]
    assert delivered.path == f"/hook/Task/{story.task}"
    planbro.sign_in(story.patient)
    story.check("discharge", status="draft", coordinator=[], actor="hospital",
                responsible="Organization/hospital",
                sees={"hospital": True, "kommune": True, "nav": False, "nykommune": False,
                      "person": True})


def municipality_sees(story: Story) -> None:
    inbox = story.planbro.search("kommune", "Task?owner=Organization/kommune&status=requested")
    assert [t["id"] for t in inbox] == [story.task]
    story.check("municipality sees it", status="draft", coordinator=[], actor="kommune",
                responsible="Organization/hospital",
                sees={"hospital": True, "kommune": True, "nav": False, "person": True})


def green_form(story: Story) -> None:
    planbro = story.planbro
    task = story.read("kommune", f"Task/{story.task}")
    planbro.ok(planbro.put("kommune", {**task, "status": "accepted"}))
    task = story.read("kommune", f"Task/{story.task}")
    done = planbro.ok(planbro.put("kommune", {**task, "status": "completed", "output": [{
        "type": {"coding": [{"system": TASK_OUTPUT, "code": "koordinator"}]},
        "valueReference": {"reference": "PractitionerRole/siri-rolle"}}]}))
    outputs = {o["type"]["coding"][0]["code"]: o["valueReference"]["reference"]
               for o in done["output"]}
    assert outputs == {"koordinator": "PractitionerRole/siri-rolle",
                       "ansvarsgruppe": f"CareTeam/{story.team}"}
    answered = story.answers.wait_for(1)[0]
    assert answered.body["status"] == "completed"
    story.versions.append("draft")  # the municipality became responsible
    story.check("green form", status="draft", coordinator=["PractitionerRole/siri-rolle"],
                actor="kommune", responsible="Organization/kommune",
                sees={"hospital": True, "kommune": True, "nav": False, "person": True})


def complete_the_plan(story: Story) -> None:
    planbro = story.planbro
    patient = f"Patient/{story.patient}"
    team = story.read("kommune", f"CareTeam/{story.team}")
    team["participant"].append({"role": [{"coding": [{"system": ROLE, "code": "fastlege"}]}],
                                "member": {"reference": "Practitioner/lege"},
                                "onBehalfOf": org_ref("legekontor")})
    planbro.ok(planbro.put("kommune", team))
    plan = story.read("kommune", f"CarePlan/{story.plan}")
    first_goal = plan["goal"][0]["reference"]
    follow_up = days_from_now(60) if story.kind == "sip" else None
    # performed by a health worker in person: health information
    gp = measure(GP_MEASURE, {"reference": "Practitioner/lege"}, first_goal, follow_up)
    plan["activity"] += [
        measure("Hjemmetjenester morgen og kveld", org_ref("kommune"), first_goal, follow_up),
        gp, measure(NAV_MEASURE, org_ref("nav"), first_goal, follow_up),
        measure("Jeg går tur hver dag", {"reference": patient}, first_goal, follow_up)]
    plan["period"] = {"start": today()}
    plan["extension"].append({"url": f"{EXT}/ip-evaluation-date",
                              "valueDateTime": days_from_now(90)})
    planbro.ok(planbro.put("kommune", plan))
    story.versions.append("draft")
    if story.kind == "individuell-plan":
        report = story.read("kommune", f"CarePlan/{story.plan}/$completeness")
        complete = next(p["valueBoolean"] for p in report["parameter"]
                        if p["name"] == "complete")
        assert complete, report
    story.check("plan completed", status="draft", coordinator=["PractitionerRole/siri-rolle"],
                actor="kommune", responsible="Organization/kommune",
                sees={"hospital": True, "kommune": True, "nav": False, "person": True})


def activate(story: Story) -> None:
    plan = story.read("kommune", f"CarePlan/{story.plan}")
    story.planbro.ok(story.planbro.put("kommune", {**plan, "status": "active"}))
    story.versions.append("active")
    story.check("activated", status="active", coordinator=["PractitionerRole/siri-rolle"],
                actor="kommune", responsible="Organization/kommune",
                sees={"hospital": True, "kommune": True, "nav": False, "person": True})


def nav_joins(story: Story) -> None:
    planbro = story.planbro
    team = story.read("kommune", f"CareTeam/{story.team}")
    team["participant"].append({"role": [{"coding": [{"system": ROLE, "code": "nav-kontakt"}]}],
                                "member": org_ref("nav"), "period": {"start": today()}})
    planbro.ok(planbro.put("kommune", team))
    _consent_for(story, "person", ("hospital", "kommune", "nav"), nav_limited=True)
    plan = story.read("nav", f"CarePlan/{story.plan}")
    mine = next(a for a in plan["activity"] if a["detail"]["description"] == NAV_MEASURE)
    mine["detail"]["status"] = "in-progress"
    planbro.ok(planbro.put("nav", plan))
    story.versions.append("active")
    plan = story.read("nav", f"CarePlan/{story.plan}")
    assert planbro.put("nav", {**plan, "title": "NAVs plan"}).status_code == 403
    others = copy.deepcopy(plan)
    next(a for a in others["activity"] if a["detail"]["description"] != NAV_MEASURE)[
        "detail"]["status"] = "cancelled"
    assert planbro.put("nav", others).status_code == 403
    assert story.read("admin", f"CarePlan/{story.plan}")["title"] != "NAVs plan"
    story.check("NAV joins", status="active", coordinator=["PractitionerRole/siri-rolle"],
                actor="nav", responsible="Organization/kommune", limited=True,
                sees={"hospital": True, "kommune": True, "nav": True, "person": True})


def person_adds_a_goal(story: Story) -> None:
    planbro = story.planbro
    plan = story.read("person", f"CarePlan/{story.plan}")
    assert GP_MEASURE in [a["detail"]["description"] for a in plan["activity"]]
    log = planbro.search("person", f"AuditEvent?patient=Patient/{story.patient}&_count=1000")
    assert any(_acted(e, "nav", ORGS["nav"][0]) for e in log), "the person sees NAV's reads"
    created = planbro.ok(planbro.post("person", "Goal", goal(
        f"Patient/{story.patient}", "Jeg vil gå på kafé med venner hver uke")), 201)
    story.versions.append("active")
    story.later.append(f"Goal/{created['id']}")
    goals = [g["reference"] for g in story.read("person", f"CarePlan/{story.plan}")["goal"]]
    assert f"Goal/{created['id']}" in goals
    assert planbro.put("person", {**plan, "title": "Min plan"}).status_code == 403
    story.check("person adds a goal", status="active", actor="person",
                coordinator=["PractitionerRole/siri-rolle"],
                responsible="Organization/kommune", limited=True,
                sees={"hospital": True, "kommune": True, "nav": True, "person": True})


def evaluate(story: Story) -> None:
    plan = story.read("kommune", f"CarePlan/{story.plan}")
    parts = [{"name": "goal", "valueReference": {"reference": plan["goal"][0]["reference"]}},
             {"name": "achievement", "valueCodeableConcept": {"coding": [{
                 "system": "http://terminology.hl7.org/CodeSystem/goal-achievement",
                 "code": "improving"}]}}]
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "date", "valueDate": today()}, {"name": "next", "valueDate": days_from_now(180)},
        {"name": "goal", "part": parts}, {"name": "note", "valueString": "Godt i gang"}]}
    record = story.planbro.ok(story.planbro.post(
        "kommune", f"CarePlan/{story.plan}/$evaluate", body), 201)
    assert record["code"]["coding"][0]["code"] == "evaluation"
    story.versions.append("active")
    story.later.append(f"Task/{record['id']}")
    dates = [e["valueDateTime"] for e in story.current_plan()["extension"]
             if e["url"] == f"{EXT}/ip-evaluation-date"]
    assert days_from_now(180) in dates
    achieved = story.read("kommune", plan["goal"][0]["reference"])["achievementStatus"]
    assert achieved["coding"][0]["code"] == "improving"
    story.check("evaluated", status="active", coordinator=["PractitionerRole/siri-rolle"],
                actor="kommune", responsible="Organization/kommune", limited=True,
                sees={"hospital": True, "kommune": True, "nav": True, "person": True})


def move(story: Story) -> None:
    """The person moves: their consent now names the new municipality (and NAV), not the
    hospital or the old municipality; the old municipality asks for the transfer."""
    planbro = story.planbro
    _consent_for(story, "person", ("nav", "nykommune"), nav_limited=True)
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "organization", "valueIdentifier": {"system": ENH_SYSTEM,
                                                     "value": ORGS["nykommune"][0]}},
        {"name": "reason", "valueString": "Personen flytter"}]}
    transfer = planbro.ok(planbro.post("kommune", f"CarePlan/{story.plan}/$transfer", body),
                          201)
    story.transfer = transfer["id"]
    story.later.append(f"Task/{transfer['id']}")
    inbox = planbro.search("nykommune", f"Task?owner=Organization/nykommune"
                                        f"&code={TASK_CODE}|transfer&status=requested")
    assert [t["id"] for t in inbox] == [transfer["id"]]
    story.check("the person moves", status="active", actor="kommune",
                coordinator=["PractitionerRole/siri-rolle"],
                responsible="Organization/kommune", limited=True,
                sees={"hospital": False, "kommune": True, "nav": True, "nykommune": True,
                      "person": True})


def transfer_confirmed(story: Story) -> None:
    planbro = story.planbro
    task = story.read("nykommune", f"Task/{story.transfer}")
    planbro.ok(planbro.put("nykommune", {**task, "status": "accepted"}))
    task = story.read("nykommune", f"Task/{story.transfer}")
    planbro.ok(planbro.put("nykommune", {**task, "status": "completed", "output": [{
        "type": {"coding": [{"system": TASK_OUTPUT, "code": "koordinator"}]},
        "valueReference": {"reference": "PractitionerRole/berit-rolle"}}]}))
    story.versions.append("active")
    team = story.current_team()
    old = [p for p in team["participant"]
           if "Organization/kommune" in (p["member"]["reference"],
                                         p.get("onBehalfOf", {}).get("reference"))]
    assert old and all(p.get("period", {}).get("end") for p in old)
    story.check("transfer confirmed", status="active", actor="nykommune",
                coordinator=["PractitionerRole/berit-rolle"],
                responsible="Organization/nykommune", limited=True,
                sees={"hospital": False, "kommune": False, "nav": True, "nykommune": True,
                      "person": True})


def plan_continues(story: Story) -> None:
    planbro = story.planbro
    plan = story.read("nykommune", f"CarePlan/{story.plan}")
    plan["note"] = [*plan.get("note", []), {"text": "Ny koordinator har overtatt planen"}]
    planbro.ok(planbro.put("nykommune", plan))
    story.versions.append("active")
    team_history = story.read("admin", f"CareTeam/{story.team}/_history?_count=100")
    coordinators = []
    for entry in reversed(team_history["entry"]):
        now = [p["member"]["reference"] for p in entry["resource"]["participant"]
               if p["role"][0]["coding"][0]["code"] == "koordinator"]
        if now and (not coordinators or coordinators[-1] != now):
            coordinators.append(now)
    assert coordinators[0] == ["PractitionerRole/siri-rolle"]
    assert coordinators[-1] == ["PractitionerRole/siri-rolle", "PractitionerRole/berit-rolle"]
    story.check("the plan continues", status="active", actor="nykommune",
                coordinator=["PractitionerRole/berit-rolle"],
                responsible="Organization/nykommune", limited=True,
                sees={"hospital": False, "kommune": False, "nav": True, "nykommune": True,
                      "person": True})


def _consent_for(story: Story, party: str, actors: tuple[str, ...], *,
                 nav_limited: bool) -> None:
    """The person's consent (taken by the municipality) names ``actors``; NAV sees only
    the plan, goals and measures."""
    current = story.planbro.search(party, f"Consent?patient=Patient/{story.patient}")
    assert len(current) == 1
    labels = {"nav": ("plan", "goal", "measure")} if nav_limited else None
    updated = {**consent(f"Patient/{story.patient}", actors=actors, labels=labels),
               "id": current[0]["id"]}
    story.planbro.ok(story.planbro.put(party, updated))


STEPS = (discharge, municipality_sees, green_form, complete_the_plan, activate, nav_joins,
         person_adds_a_goal, evaluate, move, transfer_confirmed, plan_continues)


@pytest.fixture
def story_receivers() -> Iterator[tuple[Receiver, Receiver]]:
    inbox, answers = Receiver(), Receiver()
    yield inbox, answers
    inbox.close()
    answers.close()


@pytest.mark.parametrize(("who", "kind"), [(person("kari", 90), "individuell-plan"),
                                           (rut(), "sip")], ids=["kari-ip", "rut-sip"])
def test_one_plan_from_discharge_to_a_new_municipality(
        planbro: Running, story_receivers: tuple[Receiver, Receiver], who: Person,
        kind: str) -> None:
    story = Story(planbro, who, kind, *story_receivers)
    for step in STEPS:
        step(story)
