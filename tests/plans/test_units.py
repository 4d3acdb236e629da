"""The workflow's pure parts: appointing a coordinator, ending participation, merging a
contribution, the settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.config import Config
from server.plans.careteam import appoint, end_participation, merge_participants
from server.plans.invariants import current_coordinators
from server.plans.notification import merge_plan
from server.plans.settings import WorkflowSettings
from server.store.port import format_instant as instant

ROLE = "http://planbro.no/fhir/CodeSystem/participant-role"
T0 = 1_800_000_000_000  # 2027-01-15T08:00:00Z


def _member(ref: str, code: str = "koordinator", start: int | None = T0 - 86_400_000,
            end: int | None = None) -> dict:
    period = {k: instant(v) for k, v in (("start", start), ("end", end)) if v is not None}
    out = {"role": [{"coding": [{"system": ROLE, "code": code}]}], "member": {"reference": ref}}
    if period:
        out["period"] = period
    return out


def test_appointing_ends_the_current_coordinator_just_before() -> None:
    team = {"participant": [_member("PractitionerRole/a"), _member("Patient/p", "bruker")]}
    changed = appoint(team, {"reference": "PractitionerRole/b"}, T0,
                      {"reference": "Organization/k"})
    old, person, new = changed["participant"]
    assert old["period"]["end"] == instant(T0 - 1)
    assert new["period"] == {"start": instant(T0)}
    assert new["onBehalfOf"] == {"reference": "Organization/k"}
    assert "end" not in person.get("period", {})
    assert [c["member"]["reference"] for c in current_coordinators(changed, T0)] == [
        "PractitionerRole/b"]
    assert [c["member"]["reference"] for c in current_coordinators(changed, T0 - 1)] == [
        "PractitionerRole/a"]
    assert appoint(changed, {"reference": "PractitionerRole/b"}, T0 + 5) == changed


def test_a_later_appointment_leaves_the_coordinator_until_then() -> None:
    team = {"participant": [_member("PractitionerRole/a")]}
    changed = appoint(team, {"reference": "PractitionerRole/b"}, T0 + 10 * 86_400_000)
    assert [c["member"]["reference"] for c in current_coordinators(changed, T0)] == [
        "PractitionerRole/a"]


def test_ending_participation_only_of_what_began_since() -> None:
    team = {"participant": [_member("Organization/k", "tjenesteyter", start=T0 - 10),
                            _member("Organization/k", "koordinerende-enhet", start=T0 + 10),
                            _member("Organization/n", "nav-kontakt", start=T0 - 10)]}
    ended = end_participation(team, "k", T0 + 20, since_ms=T0)
    assert [("end" in p["period"]) for p in ended["participant"]] == [False, True, False]
    all_ended = end_participation(team, "k", T0 + 20)
    assert [("end" in p["period"]) for p in all_ended["participant"]] == [True, True, False]


def test_merging_participants_and_plans_adds_only_what_is_new() -> None:
    team = {"participant": [_member("Patient/p", "bruker", start=None)]}
    merged = merge_participants(team, [_member("Patient/p", "bruker", start=None),
                                       _member("Organization/h", "tjenesteyter", start=None)])
    assert [p["member"]["reference"] for p in merged["participant"]] == [
        "Patient/p", "Organization/h"]
    activity = {"detail": {"description": "x", "performer": [{"reference": "Organization/h"}]}}
    plan = {"goal": [{"reference": "Goal/1"}], "activity": [activity]}
    contribution = {"goal": [{"reference": "Goal/1"}, {"reference": "Goal/2"}],
                    "activity": [activity, {"detail": {"description": "y"}}],
                    "note": [{"text": "n"}]}
    assert merge_plan(plan, contribution) == {
        "goal": [{"reference": "Goal/1"}, {"reference": "Goal/2"}],
        "activity": [activity, {"detail": {"description": "y"}}], "note": [{"text": "n"}]}
    assert merge_plan(plan, {}) == plan


def test_settings_from_the_environment_and_the_config(tmp_path: Path) -> None:
    env = {"PLANBRO_NOTIFICATION_DUE_DAYS": "7", "PLANBRO_WORKER": "false",
           "PLANBRO_SUBSCRIPTION_LOOPBACK": "yes", "PLANBRO_REMINDER_INTERVAL": "3600"}
    settings = WorkflowSettings.from_config(Config(data_dir=tmp_path), env)
    assert (settings.due_working_days, settings.worker, settings.allow_loopback_endpoints,
            settings.reminder_interval_s) == (7, False, True, 3600.0)
    configured = Config(data_dir=tmp_path, extra={"workflow": {"due_working_days": 3}})
    assert WorkflowSettings.from_config(configured, env).due_working_days == 3
    with pytest.raises(ValueError):
        WorkflowSettings.from_config(Config(data_dir=tmp_path), {"PLANBRO_TIME_ZONE": "Mars/X"})
    with pytest.raises(ValueError):
        WorkflowSettings.from_config(Config(data_dir=tmp_path),
                                     {"PLANBRO_DELIVERY_ATTEMPTS": "0"})
