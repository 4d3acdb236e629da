"""SMART v2 scopes (v1 accepted): parsing, allows, restrictions, covers, interactions."""

from __future__ import annotations

import pytest

from server.auth.principal import Principal
from server.auth.scopes import (
    INTERACTION_PERMISSIONS,
    ResourceScope,
    ScopeError,
    ScopeSet,
    entry_interaction,
    parse_scope,
    require,
    required_permissions,
)
from server.fhir.outcome import FhirError


def principal(kind: str, scopes: str) -> Principal:
    return Principal(kind=kind, client_id="c", scopes=ScopeSet.parse(scopes), issuer="i",
                     subject="s")


@pytest.mark.parametrize(("text", "context", "rtype", "perms", "query"), [
    ("patient/Observation.rs", "patient", "Observation", "rs", ()),
    ("user/*.cruds", "user", "*", "cruds", ()),
    ("system/Task.cu", "system", "Task", "cu", ()),
    ("patient/*.read", "patient", "*", "rs", ()),
    ("user/CarePlan.write", "user", "CarePlan", "cud", ()),
    ("system/Goal.*", "system", "Goal", "cruds", ()),
    ("patient/Task.rs?category=http://snomed.info/sct|734163000&status=ready", "patient",
     "Task", "rs", (("category", "http://snomed.info/sct|734163000"), ("status", "ready"))),
])
def test_parse_resource_scopes(text: str, context: str, rtype: str, perms: str,
                               query: tuple) -> None:
    scope = parse_scope(text)
    assert isinstance(scope, ResourceScope)
    assert (scope.context, scope.resource_type, scope.permissions, scope.query) == (
        context, rtype, perms, query)


@pytest.mark.parametrize("text", ["openid", "fhirUser", "launch/patient", "offline_access"])
def test_other_scopes_are_names(text: str) -> None:
    assert parse_scope(text) == text


@pytest.mark.parametrize("text", [
    "patient/Task.sr", "patient/Task.rr", "patient/Task.x", "patient/Task.", "patient/task.r",
    "patient/Task", "patient/*.read?x=1", "patient/Task.r?", "patient/Task.r?=1",
    'bad"scope', "user/Task.cruds/x",
])
def test_invalid_scopes(text: str) -> None:
    with pytest.raises(ScopeError):
        parse_scope(text)


def test_strict_and_lenient_parsing() -> None:
    with pytest.raises(ScopeError):
        ScopeSet.parse("patient/Task.rs patient/Task.zz")
    lenient = ScopeSet.parse("patient/Task.rs patient/Task.zz openid", strict=False)
    assert lenient.names() == ["patient/Task.rs", "openid"]
    assert ScopeSet.parse(["system/Task.r", "openid"]).names() == ["system/Task.r", "openid"]
    assert ScopeSet.parse(None).names() == []
    assert "openid" in lenient and "patient/Task.rs" in lenient and "profile" not in lenient


def test_allows() -> None:
    s = ScopeSet.parse("patient/Task.rs patient/Goal.cu patient/CarePlan.read")
    assert s.allows("read", "Task") and s.allows("search-type", "Task")
    assert s.allows("vread", "Task") and s.allows("history-instance", "Task")
    assert s.allows("history-type", "Task")
    assert not s.allows("update", "Task") and not s.allows("create", "Task")
    assert s.allows("create", "Goal") and s.allows("patch", "Goal")
    assert not s.allows("read", "Goal")
    assert not s.allows("conditional-create", "Goal")  # needs search too
    assert s.allows("read", "CarePlan") and s.allows("search-type", "CarePlan")
    assert not s.allows("delete", "CarePlan")
    assert not s.allows("read", "Patient")
    assert s.allows("$validate", "Goal") and not s.allows("$validate", "Patient")
    assert s.allows("capabilities", "Patient") and s.allows("transaction", "Bundle")


def test_allows_combines_scopes_and_wildcards() -> None:
    s = ScopeSet.parse("system/*.r system/Task.s")
    assert s.allows("conditional-update", "Task") is False
    assert ScopeSet.parse("system/*.u system/Task.s").allows("conditional-update", "Task")
    assert s.allows("read", "Consent") and not s.allows("search-type", "Consent")


def test_allows_by_context() -> None:
    s = ScopeSet.parse("patient/*.rs user/Task.c")
    assert s.allows("read", "Task", contexts=["patient"])
    assert not s.allows("create", "Task", contexts=["patient"])
    assert s.allows("create", "Task", contexts=["user", "system"])


def test_restrictions() -> None:
    s = ScopeSet.parse("patient/Task.rs?category=a patient/Task.rs?category=b&status=ready "
                       "patient/Goal.rs patient/Goal.r?lifecycle-status=active")
    assert s.allows("search-type", "Task")
    assert s.restrictions("Task", "s") == [
        [("category", "a")], [("category", "b"), ("status", "ready")]]
    assert s.restrictions("Goal", "r") == []  # one granting scope is unrestricted
    with pytest.raises(ValueError):
        s.restrictions("Task", "c")
    with pytest.raises(ValueError):
        s.restrictions("Task", "rs")


def test_covers() -> None:
    wide = ScopeSet.parse("openid offline_access patient/*.rs patient/Goal.cu")
    assert wide.covers(ScopeSet.parse("patient/Task.r offline_access"))
    assert wide.covers(ScopeSet.parse("patient/Task.rs?status=ready"))
    assert wide.covers(ScopeSet.parse("patient/Goal.c"))
    assert not wide.covers(ScopeSet.parse("patient/Task.c"))
    assert not wide.covers(ScopeSet.parse("user/Task.r"))
    assert not wide.covers(ScopeSet.parse("fhirUser"))
    restricted = ScopeSet.parse("patient/Task.rs?category=a")
    assert not restricted.covers(ScopeSet.parse("patient/Task.r"))
    assert restricted.covers(ScopeSet.parse("patient/Task.r?category=a"))


def test_every_interaction_has_permissions() -> None:
    for interaction in ("read", "vread", "update", "patch", "delete", "history", "create",
                        "search-type", "search-system", "$validate", "capabilities",
                        "transaction", "batch"):
        assert interaction in INTERACTION_PERMISSIONS
    assert required_permissions("create") == "c"
    assert required_permissions("patch") == "u"
    with pytest.raises(ValueError):
        required_permissions("launch-missiles")


@pytest.mark.parametrize(("method", "url", "conditional", "expected"), [
    ("GET", "Task/1", False, ("read", "Task")),
    ("GET", "Task/1/_history/2", False, ("vread", "Task")),
    ("GET", "Task/1/_history", False, ("history-instance", "Task")),
    ("GET", "Task/_history", False, ("history-type", "Task")),
    ("GET", "_history", False, ("history-system", None)),
    ("GET", "Task?status=ready", False, ("search-type", "Task")),
    ("GET", "?_type=Task", False, ("search-system", None)),
    ("GET", "metadata", False, ("capabilities", None)),
    ("POST", "Task", False, ("create", "Task")),
    ("POST", "Task", True, ("conditional-create", "Task")),
    ("POST", "Task/_search", False, ("search-type", "Task")),
    ("POST", "Task/$validate", False, ("$validate", "Task")),
    ("PUT", "Task/1", False, ("update", "Task")),
    ("PUT", "Task?identifier=x|1", False, ("conditional-update", "Task")),
    ("PATCH", "Task/1", False, ("patch", "Task")),
    ("DELETE", "Task/1", False, ("delete", "Task")),
    ("DELETE", "Task?identifier=x|1", False, ("conditional-delete", "Task")),
])
def test_entry_interaction(method: str, url: str, conditional: bool, expected: tuple) -> None:
    assert entry_interaction(method, url, conditional=conditional) == expected


def test_require_names_the_missing_scope() -> None:
    require(principal("system", "system/Task.cruds"), "create", "Task")
    require(principal("system", ""), "capabilities", "CapabilityStatement")
    with pytest.raises(FhirError) as err:
        require(principal("system", "system/Task.rs"), "update", "Task")
    assert err.value.status == 403
    assert "system/Task.u" in err.value.message
    assert err.value.to_outcome()["issue"][0]["code"] == "forbidden"
    assert 'error="insufficient_scope"' in err.value.headers["WWW-Authenticate"]


def test_require_reads_only_the_callers_context() -> None:
    with pytest.raises(FhirError) as err:
        require(principal("patient", "system/*.cruds"), "read", "Goal")
    assert "patient/Goal.r" in err.value.message
    require(principal("patient", "patient/*.rs"), "read", "Goal")
    require(principal("practitioner", "user/Goal.r"), "read", "Goal")
    with pytest.raises(FhirError):
        require(principal("system", "user/Goal.r"), "read", "Goal")
