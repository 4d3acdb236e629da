"""Planbro's profiles: the artefacts themselves, the runtime validator, and the plan rules.

* every example in ``profiles/examples`` is valid (base R4 and our profiles);
* every broken variant in ``profiles/examples/invalid`` fails with its expected issue;
* the StructureDefinitions are consistent with the official R4 definitions (paths exist,
  cardinalities only narrow, types only restrict, fixed/pattern codes exist);
* every generated artefact (snapshots, JSON Schemas, broken variants) is up to date;
* the registered Python invariants agree with the profiles' portable FHIRPath;
* :func:`activation_problems` (rules that need other resources).
"""

from __future__ import annotations

import copy
import json
import random
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from server.fhir import model
from server.fhir.conformance import (
    Conformance,
    ConformanceError,
    holds,
    register_invariant,
    registered_invariants,
)
from server.fhir.search.extract import ElementModel, compile_fast
from server.plans.invariants import activation_problems

ROOT = Path(__file__).resolve().parent.parent
PROFILES = ROOT / "profiles"
EXAMPLES = PROFILES / "examples"
INVALID = EXAMPLES / "invalid"
CANON = "http://planbro.no/fhir"
SD = f"{CANON}/StructureDefinition/"
CORE_SD = "http://hl7.org/fhir/StructureDefinition/"

sys.path.insert(0, str(ROOT / "scripts"))
import gen_examples  # noqa: E402
import gen_profiles  # noqa: E402
from gen_fhir_core import CorePackage, core_package  # noqa: E402

Json = dict[str, Any]


def _load(path: Path) -> Json:
    return json.loads(path.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def _examples() -> dict[str, Json]:
    return {p.name: _load(p) for p in sorted(EXAMPLES.glob("*.json"))}


EXPECTATIONS: dict[str, Json] = _load(INVALID / "expectations.json")


@cache
def _conformance() -> Conformance:
    return Conformance.load(PROFILES)


@pytest.fixture(scope="module")
def conformance() -> Conformance:
    return _conformance()


@pytest.fixture(scope="module")
def core() -> CorePackage:
    return core_package()


def _artefacts(kind: str) -> list[Json]:
    return [_load(p) for p in sorted(PROFILES.glob(f"{kind}-*.json"))]


def _errors(issues: list[Any]) -> list[Any]:
    return [i for i in issues if i.severity in ("error", "fatal")]


# -- examples -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(_examples()))
def test_example_is_valid(name: str, conformance: Conformance) -> None:
    resource = _examples()[name]
    assert _errors(model.validate(resource)) == []
    assert [i.to_json() for i in conformance.validate(resource)] == []


def test_every_profile_has_a_valid_example(conformance: Conformance) -> None:
    covered = {url for r in _examples().values() for url in conformance.profiles_for(r)}
    profiles = {sd["url"] for sd in _artefacts("StructureDefinition") if sd["type"] != "Extension"}
    assert profiles <= covered


@pytest.mark.parametrize("name", sorted(EXPECTATIONS))
def test_broken_variant_fails_as_expected(name: str, conformance: Conformance) -> None:
    expected = EXPECTATIONS[name]
    resource = _load(INVALID / name)
    # The base R4 rules accept every variant: what breaks it is the profile.
    assert _errors(model.validate(resource)) == []
    issues = [(i.expression[0] if i.expression else "", i.code)
              for i in _errors(conformance.validate(resource, [expected["profile"]]))]
    for want in expected["expect"]:
        assert (want["expression"], want["code"]) in issues, issues


def test_broken_variants_fail_without_being_told_the_profile(conformance: Conformance) -> None:
    """The claimed and the assigned profiles are enough: no variant passes a write."""
    for name in EXPECTATIONS:
        assert _errors(conformance.validate(_load(INVALID / name))), name


def _mutated(resource: Json, rng: random.Random) -> Json:
    """``resource`` with one to three random changes: an element dropped, given a value of
    another JSON type, added, or a list item dropped or repeated."""
    out = copy.deepcopy(resource)
    for _ in range(rng.randint(1, 3)):
        node: Any = out
        while True:
            if isinstance(node, dict) and node:
                key, roll = rng.choice(sorted(node)), rng.random()
                if roll < 0.3:
                    del node[key]
                elif roll < 0.5:
                    node[key] = rng.choice([True, "x", 1, 1.5, [], {}, None, "true"])
                elif roll < 0.6:
                    node["unknownElement"] = 1
                else:
                    node = node[key]
                    continue
            elif isinstance(node, list) and node:
                index, roll = rng.randrange(len(node)), rng.random()
                if roll < 0.3:
                    node.pop(index)
                elif roll < 0.4:
                    node.append(copy.deepcopy(node[index]))
                else:
                    node = node[index]
                    continue
            break
    return out


def test_the_compiled_schema_check_agrees_with_the_detailed_one(
        conformance: Conformance) -> None:
    """A write passes the schema when ``jsonschema-rs`` says it is valid, and only a resource
    it refuses is walked by ``jsonschema`` for the report: both must judge alike, on the
    examples, the broken variants and thousands of random changes of them."""
    rng = random.Random(4242)
    resources = [*_examples().values(), *(_load(INVALID / name) for name in EXPECTATIONS)]
    judged = 0
    for resource in resources:
        for url in conformance.profiles_for(resource):
            profile = conformance.profile(url)
            if profile is None:  # claimed, but not ours (the report says not-supported)
                continue
            for trial in range(150):
                candidate = resource if trial == 0 else _mutated(resource, rng)
                detailed = profile.schema.is_valid(candidate)
                assert profile.compiled.is_valid(candidate) is detailed, (url, candidate)
                judged += 1
    assert judged > 3000


# -- profile selection and the validator API ------------------------------------------------------


def test_profiles_assigned_by_rule_without_a_claim(conformance: Conformance) -> None:
    examples = _examples()
    rut = copy.deepcopy(examples["CarePlan-rut-sip.json"])
    del rut["meta"]
    assert conformance.profiles_for(rut) == [SD + "sip-careplan"]
    kari = copy.deepcopy(examples["CarePlan-kari.json"])
    del kari["meta"]
    assert conformance.profiles_for(kari) == [SD + "ip-careplan"]
    task = copy.deepcopy(examples["Task-melding-kari.json"])
    del task["meta"]
    assert conformance.profiles_for(task) == [SD + "ip-notification-task"]
    assert conformance.profiles_for(examples["Patient-rut.json"]) == []
    assert conformance.profiles_for(examples["Organization-hemtjanst.json"]) == []


def test_the_assignment_rules_run_compiled_and_agree_with_fhirpath(
        conformance: Conformance) -> None:
    """Every write is tested against the rules of its type: they run in the search index's
    compiled FHIRPath subset, with fhirpathpy's answers."""
    rules = _load(PROFILES / "assignment-rules.json")["rules"]
    element_model = ElementModel.load_default()
    for rule in rules:
        compile_fast(rule["when"], rule["resourceType"], element_model)  # no Unsupported
    variants = []
    for resource in _examples().values():
        unclaimed = {k: v for k, v in resource.items() if k != "meta"}
        variants.append(unclaimed)
        for key in ("identifier", "category", "code"):
            for item in unclaimed.get(key) or []:
                if isinstance(item, dict):  # the first system changed, the rest kept
                    variant = copy.deepcopy(unclaimed)
                    changed = variant[key][unclaimed[key].index(item)]
                    target = changed["coding"][0] if "coding" in changed else changed
                    target["system"] = "urn:other"
                    variants.append(variant)
    matched = 0
    for resource in variants:
        expected = [r["profile"] for r in rules if r["resourceType"] == resource["resourceType"]
                    and holds(r["when"], resource)]
        assert conformance.profiles_for(resource) == expected, resource.get("id")
        matched += bool(expected)
    assert matched >= len(rules)


def test_unclaimed_plan_is_still_checked(conformance: Conformance) -> None:
    kari = copy.deepcopy(_examples()["CarePlan-kari.json"])
    del kari["meta"]
    del kari["careTeam"]
    issues = conformance.validate(kari)
    assert [(i.expression, i.code) for i in issues] == [(("CarePlan.careTeam",), "required")]


def test_claims_and_requested_profiles_are_combined(conformance: Conformance) -> None:
    kari = copy.deepcopy(_examples()["CarePlan-kari.json"])
    kari["meta"]["profile"].append(CORE_SD + "CarePlan")  # core base: nothing to add
    assert conformance.profiles_for(kari) == [SD + "ip-careplan"]
    issues = conformance.validate(kari, [SD + "sip-careplan|0.1.0"])
    assert issues and all(i.diagnostics.startswith("sip-careplan:") for i in issues)


def test_profile_for_another_resource_type_is_an_error(conformance: Conformance) -> None:
    patient = _examples()["Patient-kari.json"]
    issues = conformance.validate(patient, [SD + "ip-careplan"])
    assert [(i.code, i.expression) for i in issues] == [("invalid", ("Patient.meta.profile",))]


def test_search_parameters_are_our_custom_ones(conformance: Conformance) -> None:
    params = {p["code"]: p for p in conformance.search_parameters()}
    assert set(params) == {"evaluation-date", "responsible-organization", "due-date",
                           "coordinator", "parent-goal"}
    assert params["due-date"]["expression"] == "Task.restriction.period.end"
    assert all(p["url"].startswith(f"{CANON}/SearchParameter/") for p in params.values())


def test_search_parameters_find_what_they_promise(conformance: Conformance) -> None:
    examples = _examples()
    params = {p["code"]: p for p in conformance.search_parameters()}
    from server.fhir.conformance import evaluate

    plan = examples["CarePlan-kari.json"]
    assert evaluate(params["evaluation-date"]["expression"], plan) == ["2027-03-01",
                                                                       "2027-09-01"]
    responsible = evaluate(params["responsible-organization"]["expression"], plan)
    assert [r["reference"] for r in responsible] == ["Organization/kommune"]
    rut = examples["CarePlan-rut-sip.json"]
    assert evaluate(params["evaluation-date"]["expression"], rut) == ["2013-05-09",
                                                                      "2013-05-16"]
    team = examples["CareTeam-kari.json"]
    coordinators = evaluate(params["coordinator"]["expression"], team)
    assert [c["reference"] for c in coordinators] == ["PractitionerRole/koordinator-siri",
                                                      "Practitioner/per"]
    task = examples["Task-melding-kari.json"]
    assert evaluate(params["due-date"]["expression"], task) == ["2026-09-03"]


def test_search_registry_indexes_our_parameters(conformance: Conformance) -> None:
    from server.fhir.search.registry import Registry

    registry = Registry.load_default()
    for search_parameter in conformance.search_parameters():
        registry.add(search_parameter)
    examples = _examples()
    plan = registry.extract(examples["CarePlan-kari.json"])
    assert len([d for d in plan.dates if d.param == "evaluation-date"]) == 2
    assert [(r.target_type, r.target_id) for r in plan.references
            if r.param == "responsible-organization"] == [("Organization", "kommune")]
    task = registry.extract(examples["Task-melding-kari.json"])
    assert [d.param for d in task.dates if d.param == "due-date"] == ["due-date"]
    goal = registry.extract(examples["Goal-kari-delmal-arbeid.json"])
    assert [r.target_id for r in goal.references if r.param == "parent-goal"] == [
        "kari-hovedmal"]


def test_artefacts_are_found_by_canonical_url(conformance: Conformance) -> None:
    cs = conformance.resource(f"{CANON}/CodeSystem/participant-role|0.1.0")
    assert cs is not None and cs["resourceType"] == "CodeSystem"
    assert conformance.resource(f"{CANON}/CodeSystem/nope") is None


def test_missing_schema_is_refused_at_load(tmp_path: Path) -> None:
    (tmp_path / "StructureDefinition-ip-goal.json").write_text(
        (PROFILES / "StructureDefinition-ip-goal.json").read_text())
    with pytest.raises(ConformanceError, match="no JSON Schema"):
        Conformance.load(tmp_path)


def test_registering_a_key_twice_is_refused() -> None:
    existing = registered_invariants()["ip-ct-1"]
    register_invariant("ip-ct-1")(existing)  # the same check again is harmless
    with pytest.raises(ValueError, match="already registered"):
        register_invariant("ip-ct-1")(lambda node: None)


# -- terminology ----------------------------------------------------------------------------------


def test_code_systems_have_norwegian_displays_and_english_designations() -> None:
    for cs in _artefacts("CodeSystem"):
        assert cs["language"] == "nb" and cs["count"] == len(cs["concept"])
        for concept in cs["concept"]:
            languages = {d["language"] for d in concept["designation"]}
            assert concept["display"] and "en" in languages, (cs["id"], concept["code"])


def test_every_value_set_has_its_code_system() -> None:
    systems = {cs["url"] for cs in _artefacts("CodeSystem")}
    for vs in _artefacts("ValueSet"):
        assert {inc["system"] for inc in vs["compose"]["include"]} <= systems


# -- consistency with the official R4 definitions -------------------------------------------------


def _base_element(core: CorePackage, path: str) -> Json:
    """The R4 element definition of ``path``, following data types for deeper paths."""
    type_name, *names = path.split(".")
    elements = {e["path"]: e for e in core.structure_definition(type_name)["snapshot"]["element"]}
    prefix = type_name
    for i, name in enumerate(names):
        current = f"{prefix}.{name}"
        if current not in elements:
            parent = elements[prefix]
            codes = [t["code"] for t in parent.get("type", [])]
            assert len(codes) == 1, f"{path}: cannot follow {prefix} ({codes})"
            return _base_element(core, ".".join([codes[0], *names[i:]]))
        prefix = current
    return elements[prefix]


def _max(value: str) -> float:
    return float("inf") if value == "*" else int(value)


def _target_types(urls: list[str], ours: dict[str, Json]) -> set[str]:
    return {u[len(CORE_SD):] if u.startswith(CORE_SD) else ours[u]["type"] for u in urls}


def _codings(value: Any) -> list[Json]:
    if isinstance(value, dict):
        found = [value] if "system" in value and "code" in value else []
        return found + [c for v in value.values() for c in _codings(v)]
    if isinstance(value, list):
        return [c for v in value for c in _codings(v)]
    return []


@pytest.mark.parametrize("sd", _artefacts("StructureDefinition"), ids=lambda sd: sd["id"])
def test_structure_definition_only_constrains_r4(sd: Json, core: CorePackage) -> None:
    ours = {s["url"]: s for s in _artefacts("StructureDefinition")}
    systems = {cs["url"]: {c["code"] for c in cs["concept"]}
               for cs in _artefacts("CodeSystem")}
    value_sets = {vs["url"] for vs in _artefacts("ValueSet")}
    snapshot_ids = {e["id"] for e in sd["snapshot"]["element"]}
    assert {e["id"] for e in sd["differential"]["element"]} <= snapshot_ids
    for element in sd["differential"]["element"] + sd["snapshot"]["element"]:
        where = f"{sd['id']}: {element['id']}"
        base = _base_element(core, element["path"])
        if "min" in element:
            assert element["min"] >= base["min"], where
        if "max" in element:
            assert _max(element["max"]) <= _max(base["max"]), where
        base_types = {t["code"]: t for t in base.get("type", [])}
        for t in element.get("type", []):
            assert t["code"] in base_types, where
            if t.get("targetProfile"):
                allowed = _target_types(base_types[t["code"]].get("targetProfile", []), ours)
                narrowed = _target_types(t["targetProfile"], ours)
                if allowed and "Resource" not in allowed:  # else: any resource
                    assert narrowed <= allowed, where
            for profile in t.get("profile", []):
                assert profile in ours or profile.startswith(CORE_SD), where
        for key, value in element.items():
            if key.startswith(("fixed", "pattern")):
                for coding in _codings(value):
                    if coding["system"].startswith(CANON):
                        assert coding["code"] in systems[coding["system"]], where
                    else:
                        cs = core.code_system(coding["system"])
                        assert cs is not None and coding["code"] in {
                            c["code"] for c in cs["concept"]}, where
        binding = element.get("binding", {})
        if binding.get("valueSet", "").startswith(CANON):
            assert binding["valueSet"] in value_sets, where


def test_our_invariants_are_in_the_snapshot_with_their_source() -> None:
    for sd in _artefacts("StructureDefinition"):
        declared = {(e["path"], c["key"]) for e in sd["differential"]["element"]
                    for c in e.get("constraint", [])}
        sourced = {(e["path"], c["key"]) for e in sd["snapshot"]["element"]
                   for c in e.get("constraint", []) if c.get("source") == sd["url"]}
        assert declared == sourced, sd["id"]
        assert all(c.get("expression") for e in sd["snapshot"]["element"]
                   for c in e.get("constraint", [])), sd["id"]


# -- generated artefacts are up to date -----------------------------------------------------------


def test_generated_artefacts_are_up_to_date(core: CorePackage) -> None:
    stale = [name for name, data in gen_profiles.build_all(core).items()
             if (PROFILES / name).read_text() != gen_profiles.render(data)]
    assert stale == [], "run: python scripts/gen_profiles.py"


def test_json_schemas_match_the_structure_definitions_on_disk() -> None:
    """Regenerate every schema from the committed StructureDefinitions and terminology."""
    schemas = gen_profiles.schemas_for(_artefacts("StructureDefinition"), _artefacts("ValueSet"),
                                       _artefacts("CodeSystem"))
    on_disk = {p.name.removesuffix(".schema.json"): _load(p)
               for p in sorted((PROFILES / "schemas").glob("*.schema.json"))}
    assert schemas == on_disk


def test_broken_variants_are_up_to_date() -> None:
    stale = [name for name, data in gen_examples.build().items()
             if (INVALID / name).read_text() != gen_examples.render(data)]
    assert stale == [], "run: python scripts/gen_examples.py"
    assert sorted(p.name for p in INVALID.glob("*.json")) == sorted(gen_examples.build())


# -- registered invariants agree with the profiles' FHIRPath --------------------------------------


def _invariant_sites() -> list[tuple[str, str, str]]:
    """(key, element path, FHIRPath) of every invariant a Python check is registered for."""
    registered = registered_invariants()
    sites = set()
    for sd in _artefacts("StructureDefinition"):
        for element in sd["snapshot"]["element"]:
            for c in element.get("constraint", []):
                if c["key"] in registered and c.get("source") == sd["url"]:
                    sites.add((c["key"], element["path"], c["expression"]))
    return sorted(sites)


def test_every_registered_invariant_exists_in_a_profile() -> None:
    keys = {key for key, _, _ in _invariant_sites()}
    assert keys == set(registered_invariants())


def test_registered_checks_agree_with_fhirpath(conformance: Conformance) -> None:
    from server.fhir.conformance import _nodes

    resources = list(_examples().values()) + [_load(INVALID / n) for n in EXPECTATIONS]
    checks = registered_invariants()
    compared = 0
    for key, path, expression in _invariant_sites():
        rtype = path.split(".")[0]
        for resource in resources:
            if resource["resourceType"] != rtype:
                continue
            for loc, node in _nodes(resource, path):
                python_ok = checks[key](node) is None
                assert python_ok == holds(expression, node), (key, resource["id"], loc)
                compared += 1
    assert compared > 30


# -- activation: rules that need other resources --------------------------------------------------


def _lookup(resources: list[Json]) -> Any:
    """A fake FHIR search over ``resources`` for the queries activation_problems runs."""
    calls: list[tuple[str, dict[str, str]]] = []

    def lookup(rtype: str, params: dict[str, str]) -> list[Json]:
        calls.append((rtype, params))
        out = [r for r in resources if r["resourceType"] == rtype]
        if "_id" in params:
            ids = params["_id"].split(",")
            out = [r for r in out if r["id"] in ids]
        if "patient" in params:
            out = [r for r in out if r.get("patient", {}).get("reference") == params["patient"]]
        return out

    lookup.calls = calls  # type: ignore[attr-defined]
    return lookup


def test_complete_active_plan_may_be_active() -> None:
    examples = _examples()
    lookup = _lookup(list(examples.values()))
    assert activation_problems(examples["CarePlan-kari.json"], lookup) == []
    assert [c[0] for c in lookup.calls] == ["Patient", "Consent", "CareTeam"]


def test_draft_plan_is_not_checked() -> None:
    plan = copy.deepcopy(_examples()["CarePlan-kari.json"])
    plan["status"] = "draft"
    lookup = _lookup([])
    assert activation_problems(plan, lookup) == [] and lookup.calls == []


def test_active_plan_needs_the_persons_consent() -> None:
    examples = _examples()
    without_consent = [r for n, r in examples.items() if n != "Consent-kari.json"]
    # Kari's earlier consent was withdrawn: it does not count.
    problems = activation_problems(examples["CarePlan-kari.json"], _lookup(without_consent))
    assert [(p.code, p.expression) for p in problems] == [("business-rule",
                                                            ("CarePlan.status",))]


def test_active_individual_plan_needs_a_current_coordinator() -> None:
    examples = _examples()
    team = copy.deepcopy(examples["CareTeam-kari.json"])
    team["participant"][1]["period"]["end"] = "2026-10-01"
    others = [r for n, r in examples.items() if n != "CareTeam-kari.json"]
    problems = activation_problems(examples["CarePlan-kari.json"], _lookup(others + [team]))
    assert len(problems) == 1 and "coordinator" in problems[0].diagnostics


def test_active_individual_plan_needs_a_person_with_national_id() -> None:
    examples = _examples()
    patient = copy.deepcopy(examples["Patient-kari.json"])
    patient["identifier"] = [{"system": "http://example.org/mrn", "value": "4711"}]
    others = [r for n, r in examples.items() if n != "Patient-kari.json"]
    problems = activation_problems(examples["CarePlan-kari.json"], _lookup(others + [patient]))
    assert len(problems) == 1 and "fødselsnummer" in problems[0].diagnostics


def test_active_sip_is_not_held_to_the_norwegian_rules() -> None:
    lookup = _lookup([])
    assert activation_problems(_examples()["CarePlan-rut-sip.json"], lookup) == []
    assert lookup.calls == []
