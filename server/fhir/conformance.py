"""Profile validation against the conformance artefacts the server publishes (``profiles/``).

:meth:`Conformance.load` reads a directory of FHIR R4 artefacts once at start:
StructureDefinitions, the JSON Schema generated from each profile (``schemas/<id>.schema.json``),
CodeSystems, ValueSets, SearchParameters, and ``assignment-rules.json`` (which profiles apply to
a resource that does not claim them). It knows nothing of the domain; everything it enforces
comes from those files:

* the JSON Schema (draft 2020-12): cardinality, fixed and pattern values, slices, reference
  targets, choice types and required bindings. Errors are reported with FHIRPath locations
  (``CarePlan.activity[0].detail.performer``). A resource is first checked by the compiled
  validator of ``jsonschema-rs`` (tens of times faster); only one it finds invalid is
  walked by ``jsonschema``, whose errors carry what the report needs.
* the profile's own invariants (``ElementDefinition.constraint`` whose ``source`` is the
  profile): evaluated with FHIRPath, unless a check is registered under the invariant's key
  with :func:`register_invariant`. Registered checks carry logic FHIRPath expresses poorly
  (check digits with calendar rules, "now" with partial dates); the FHIRPath in the profile
  stays the portable definition other validators use.

Issue codes: ``required`` (missing element or slice), ``structure`` (too many, not allowed),
``value`` (wrong fixed/pattern value, code or reference target), ``invariant``, and
``not-supported`` for a profile the server does not know.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import jsonschema_rs
from fhirpathpy import compile as compile_fhirpath
from fhirpathpy.models import models

from .outcome import Issue, issue
from .search.extract import ElementModel, Unsupported, compile_fast

InvariantCheck = Callable[[Any], str | None]
"""A registered invariant: given the element's JSON value, None when it holds, else why not."""

PROFILES_DIR = Path(__file__).resolve().parents[2] / "profiles"
"""The artefacts of this server (the repository's ``profiles/``)."""

_INVARIANTS: dict[str, InvariantCheck] = {}
_R4_MODEL = models["r4"]
_CORE_SD = "http://hl7.org/fhir/StructureDefinition/"
_REQUIRED_RE = re.compile(r"^'(?P<name>[^']+)' is a required property")


def register_invariant(key: str) -> Callable[[InvariantCheck], InvariantCheck]:
    """Decorator: run ``check`` for every profile invariant with this key instead of its
    FHIRPath expression. Registering a key twice is a programming error."""

    def add(check: InvariantCheck) -> InvariantCheck:
        if key in _INVARIANTS and _INVARIANTS[key] is not check:
            raise ValueError(f"an invariant check is already registered for {key!r}")
        _INVARIANTS[key] = check
        return check

    return add


def registered_invariants() -> dict[str, InvariantCheck]:
    return dict(_INVARIANTS)


@dataclass(frozen=True)
class Invariant:
    key: str
    severity: str
    human: str
    expression: str
    path: str  # the element the invariant is defined on, e.g. "CarePlan.activity"


@dataclass(frozen=True)
class Profile:
    url: str
    id: str
    type: str
    schema: jsonschema.protocols.Validator
    invariants: tuple[Invariant, ...]
    compiled: Any = None  # jsonschema_rs validator of the same schema (is_valid only)


@dataclass(frozen=True)
class AssignmentRule:
    resource_type: str
    when: str
    profile: str
    applies: Callable[[Mapping[str, Any]], bool]
    """Whether ``when`` holds for a resource of ``resource_type`` (:func:`holds`)."""


class ConformanceError(ValueError):
    """The artefact directory is inconsistent (missing schema, unknown profile in a rule)."""


class Conformance:
    """The profiles, terminology and search parameters of one artefact directory."""

    def __init__(self, profiles: dict[str, Profile], rules: list[AssignmentRule],
                 resources: dict[str, dict[str, Any]]) -> None:
        self._profiles = profiles
        self._rules = rules
        self._resources = resources

    # -- loading --------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: Path = PROFILES_DIR) -> Conformance:
        """Read every artefact under ``path`` (not its ``examples/``)."""
        resources: dict[str, dict[str, Any]] = {}
        for file in sorted(path.glob("*.json")):
            data = json.loads(file.read_text(encoding="utf-8"))
            if isinstance(data, dict) and "resourceType" in data and "url" in data:
                resources[data["url"]] = data
        profiles = {}
        for url, sd in resources.items():
            if sd["resourceType"] == "StructureDefinition" and sd["type"] != "Extension":
                profiles[url] = _profile(sd, path / "schemas" / f"{sd['id']}.schema.json")
        rules_file = path / "assignment-rules.json"
        rules_data = json.loads(rules_file.read_text()) if rules_file.exists() else {}
        rules = []
        model = ElementModel.load_default()
        for rule in rules_data.get("rules", []):
            if rule["profile"] not in profiles:
                raise ConformanceError(f"assignment rule for unknown profile {rule['profile']}")
            rules.append(AssignmentRule(rule["resourceType"], rule["when"], rule["profile"],
                                        _rule_test(rule["when"], rule["resourceType"], model)))
        return cls(profiles, rules, resources)

    # -- queries --------------------------------------------------------------------------------

    def search_parameters(self) -> list[dict[str, Any]]:
        """The custom SearchParameter resources, for the search registry."""
        return [r for r in self._resources.values() if r["resourceType"] == "SearchParameter"]

    def resource(self, url: str) -> dict[str, Any] | None:
        """A published artefact (StructureDefinition, CodeSystem, ValueSet, SearchParameter)
        by canonical URL, optionally ``|version``."""
        return self._resources.get(url.split("|")[0])

    def profile(self, url: str) -> Profile | None:
        """The profile with this canonical URL, when the server knows it."""
        return self._profiles.get(url)

    def profiles_by_type(self) -> dict[str, list[str]]:
        """The canonical URLs of the loaded profiles per resource type they constrain
        (sorted), e.g. for ``CapabilityStatement.rest.resource.supportedProfile``."""
        out: dict[str, list[str]] = {}
        for profile in self._profiles.values():
            out.setdefault(profile.type, []).append(profile.url)
        return {type_: sorted(urls) for type_, urls in sorted(out.items())}

    def profiles_for(self, resource: Mapping[str, Any]) -> list[str]:
        """The profiles ``resource`` is validated against: those it claims in
        ``meta.profile`` (core base definitions excepted) and those the assignment rules give
        it, without duplicates, claims first."""
        out: list[str] = []
        for claimed in _claimed(resource):
            url = claimed.split("|")[0]
            if not url.startswith(_CORE_SD) and url not in out:
                out.append(url)
        rtype = resource.get("resourceType")
        for rule in self._rules:
            if rule.resource_type == rtype and rule.profile not in out \
                    and rule.applies(resource):
                out.append(rule.profile)
        return out

    # -- validation -----------------------------------------------------------------------------

    def validate(self, resource: Mapping[str, Any],
                 profiles: Sequence[str] | None = None) -> list[Issue]:
        """Every problem of ``resource`` against its profiles (:meth:`profiles_for`) and any
        ``profiles`` asked for in addition (``$validate?profile=``)."""
        wanted = self.profiles_for(resource)
        for url in profiles or ():
            if url.split("|")[0] not in wanted:
                wanted.append(url.split("|")[0])
        rtype = str(resource.get("resourceType", ""))
        issues: list[Issue] = []
        for url in wanted:
            profile = self._profiles.get(url)
            if profile is None:
                issues.append(issue(f"Profile {url} is not known to this server",
                                    code="not-supported", expression=f"{rtype}.meta.profile"))
            elif profile.type != rtype:
                issues.append(issue(f"Profile {profile.id} is for {profile.type}, not {rtype}",
                                    code="invalid", expression=f"{rtype}.meta.profile"))
            else:
                issues += _schema_issues(profile, resource)
                issues += _invariant_issues(profile, resource)
        return issues


# -- loading helpers ------------------------------------------------------------------------------


@cache
def _compiled(expression: str) -> Callable[[Any], list[Any]]:
    """Parsing FHIRPath is slow, so each expression is parsed once, when first needed."""
    return compile_fhirpath(expression, _R4_MODEL)  # type: ignore[no-any-return]


def _profile(sd: dict[str, Any], schema_file: Path) -> Profile:
    if not schema_file.exists():
        raise ConformanceError(f"{sd['url']}: no JSON Schema at {schema_file}; "
                               "run scripts/gen_profiles.py")
    schema = json.loads(schema_file.read_text(encoding="utf-8"))
    validator_cls = jsonschema.validators.validator_for(schema)
    validator_cls.check_schema(schema)
    invariants = []
    for element in sd["snapshot"]["element"]:
        for c in element.get("constraint", []):
            if c.get("source") == sd["url"]:
                invariants.append(Invariant(c["key"], c["severity"], c["human"],
                                            c["expression"], element["path"]))
    return Profile(sd["url"], sd["id"], sd["type"], validator_cls(schema),
                   tuple(invariants), jsonschema_rs.validator_for(schema))


def _rule_test(expression: str, resource_type: str,
               model: ElementModel) -> Callable[[Mapping[str, Any]], bool]:
    """:func:`holds` for ``expression`` on resources of ``resource_type``. Every write is
    tested against the rules of its type, so an expression within the FHIRPath subset the
    search index compiles (:func:`~.search.extract.compile_fast`) is run compiled, in a tenth
    of fhirpathpy's time; fhirpathpy runs any other."""
    try:
        evaluate, _, _ = compile_fast(expression, resource_type, model)
    except Unsupported:
        return lambda resource: holds(expression, resource)

    def applies(resource: Mapping[str, Any]) -> bool:
        try:
            return [value for value, _ in evaluate(dict(resource))] == [True]
        except Exception:  # noqa: BLE001 - as holds(): a failing expression does not hold
            return False

    return applies


def _claimed(resource: Mapping[str, Any]) -> list[str]:
    meta = resource.get("meta")
    claimed = meta.get("profile") if isinstance(meta, dict) else None
    return [p for p in claimed if isinstance(p, str)] if isinstance(claimed, list) else []


def evaluate(expression: str, node: Any) -> list[Any]:
    """Evaluate FHIRPath on a resource (or element) with the R4 model; raises on errors."""
    return _compiled(expression)(node)


def holds(expression: str, node: Any) -> bool:
    """FHIR constraint semantics: true only when ``expression`` evaluated on ``node`` yields
    exactly ``true``."""
    try:
        return evaluate(expression, node) == [True]
    except Exception:  # noqa: BLE001 - a failing expression means "does not hold"
        return False


# -- JSON Schema ----------------------------------------------------------------------------------


def _fhirpath(rtype: str, steps: Sequence[Any]) -> str:
    out = rtype
    for step in steps:
        out += f"[{step}]" if isinstance(step, int) else f".{step}"
    return out


_CODES = {
    "required": "required", "minItems": "required", "anyOf": "required",
    "maxItems": "structure", "false": "structure", "propertyNames": "structure",
    "const": "value", "enum": "value", "pattern": "value",
}


def _schema_issues(profile: Profile, resource: Mapping[str, Any]) -> list[Issue]:
    if profile.compiled is not None and profile.compiled.is_valid(resource):
        return []
    rtype = profile.type
    issues = []
    for error in profile.schema.iter_errors(resource):
        steps = list(error.absolute_path)
        validator = str(error.validator)
        text = _schema_text(error)
        if validator == "required":
            m = _REQUIRED_RE.match(error.message)
            if m:
                steps.append(m["name"])
                text = "is required"
        elif validator == "not" and "propertyNames" in error.relative_schema_path:
            steps.append(error.instance)
            validator = "propertyNames"
        code = _CODES.get(validator if error.schema is not False else "false", "invalid")
        if validator == "contains":
            code = _contains_code(error)
        issues.append(issue(f"{profile.id}: {_fhirpath(rtype, steps)} {text}", code=code,
                            expression=_fhirpath(rtype, steps)))
    return issues


def _contains_code(error: jsonschema.ValidationError) -> str:
    """A slice that occurs too rarely is missing, too often is structure; any other failed
    ``contains`` (a pattern or a bound code not found in the codings) is a wrong value."""
    if not isinstance(error.schema, dict) or "minContains" not in error.schema:
        return "value"
    return "required" if "does not contain" in error.message else "structure"


def _schema_text(error: jsonschema.ValidationError) -> str:
    if error.schema is False:
        return "is not allowed"
    description = error.schema.get("description") if isinstance(error.schema, dict) else None
    if error.validator == "minItems":
        return f"must have at least {error.validator_value} item(s)"
    if error.validator == "maxItems":
        return f"must have at most {error.validator_value} item(s)"
    if description:
        return str(description)
    return error.message


# -- invariants -----------------------------------------------------------------------------------


def _nodes(resource: Mapping[str, Any], path: str) -> Iterator[tuple[str, Any]]:
    """(FHIRPath location, value) of every occurrence of an element path, in document order."""
    rtype, *names = path.split(".")
    frontier: list[tuple[str, Any]] = [(rtype, resource)]
    for name in names:
        nxt = []
        for loc, value in frontier:
            if not isinstance(value, dict) or name not in value:
                continue
            child = value[name]
            if isinstance(child, list):
                nxt += [(f"{loc}.{name}[{i}]", item) for i, item in enumerate(child)]
            else:
                nxt.append((f"{loc}.{name}", child))
        frontier = nxt
    yield from frontier


def _invariant_issues(profile: Profile, resource: Mapping[str, Any]) -> list[Issue]:
    issues = []
    for inv in profile.invariants:
        check = _INVARIANTS.get(inv.key)
        for loc, node in _nodes(resource, inv.path):
            if check is not None:
                problem = check(node)
            else:
                problem = None if holds(inv.expression, node) else inv.human
            if problem is not None:
                text = problem if problem == inv.human else f"{inv.human}: {problem}"
                issues.append(issue(f"{profile.id}: {inv.key}: {text}", code="invariant",
                                    severity=inv.severity, expression=loc))
    return issues
