"""Planbro's profiles checked by the official HAPI FHIR validator.

The Java harness in ``hapi/`` is built once with Maven (offline when the local repository
already has the dependencies) into ``tests/.cache/hapi-build/`` and rebuilt only when its
sources change. One JVM run loads every StructureDefinition, CodeSystem and ValueSet of
``profiles/``, generates each snapshot from the differential, validates every example against
the profiles it claims and every broken variant against its profile, and reports JSON.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.hapi

ROOT = Path(__file__).resolve().parents[2]
PROFILES = ROOT / "profiles"
HARNESS = Path(__file__).resolve().parent / "hapi"
BUILD = ROOT / "tests" / ".cache" / "hapi-build"  # <directory> in hapi/pom.xml
JAR = BUILD / "planbro-hapi-check.jar"
STAMP = BUILD / "sources.sha256"
MAIN_CLASS = "no.planbro.conformance.HapiCheck"
# The R4 4.0.1 package types Resource.id in resource snapshots as System.String ("string");
# HAPI's bundled R4 definitions say "id". Our snapshots copy the official package.
ID_TYPE_DIFFERENCE = re.compile(r"^\w+\.id: committed 0\.\.1 \[string\], HAPI 0\.\.1 \[id\]$")


def _sources_digest() -> str:
    digest = hashlib.sha256()
    for path in sorted([HARNESS / "pom.xml", *HARNESS.glob("src/**/*.java")]):
        digest.update(path.relative_to(HARNESS).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _dependencies_cached() -> bool:
    version = re.search(r"<hapi\.version>([^<]+)</hapi\.version>",
                        (HARNESS / "pom.xml").read_text())
    assert version is not None
    repo = Path.home() / ".m2" / "repository" / "ca" / "uhn" / "hapi" / "fhir"
    return (repo / "hapi-fhir-validation" / version[1]).is_dir()


def _build() -> None:
    digest = _sources_digest()
    if JAR.exists() and STAMP.exists() and STAMP.read_text() == digest:
        return
    offline = ["mvn", "-q", "-B", "-o", "package"]
    online = ["mvn", "-q", "-B", "package"]
    attempts = [offline, online] if _dependencies_cached() else [online]
    for command in attempts:
        done = subprocess.run(command, cwd=HARNESS, capture_output=True, text=True,
                              timeout=1200)
        if done.returncode == 0:
            STAMP.write_text(digest)
            return
    pytest.fail(f"building the HAPI harness failed:\n{done.stdout[-4000:]}{done.stderr[-4000:]}")


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    for tool in ("java", "mvn"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed: the HAPI FHIR validator cannot run")
    _build()
    started = time.monotonic()
    classpath = f"{JAR}:{BUILD / 'lib' / '*'}"
    done = subprocess.run(
        ["java", "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn", "-cp", classpath, MAIN_CLASS,
         str(PROFILES)],
        capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    out: dict[str, Any] = json.loads(done.stdout)
    out["wall_seconds"] = time.monotonic() - started
    return out


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("*.json") if p.name != "expectations.json")


def test_hapi_loads_every_artefact_and_generates_snapshots(report: dict[str, Any]) -> None:
    structure_definitions = sorted(PROFILES.glob("StructureDefinition-*.json"))
    assert report["loaded"] == len(structure_definitions)
    assert len(report["snapshots"]) == len(structure_definitions)
    for snapshot in report["snapshots"]:
        assert snapshot["errors"] == [], snapshot["url"]
        assert snapshot["warnings"] == [], snapshot["url"]
        unexplained = [d for d in snapshot["differences"] if not ID_TYPE_DIFFERENCE.match(d)]
        assert unexplained == [], snapshot["url"]


def test_hapi_accepts_every_example(report: dict[str, Any]) -> None:
    assert [e["file"] for e in report["examples"]] == _names(PROFILES / "examples")
    for example in report["examples"]:
        assert example["errors"] == [], example["file"]


def test_hapi_rejects_every_broken_variant(report: dict[str, Any]) -> None:
    invalid = PROFILES / "examples" / "invalid"
    expectations = json.loads((invalid / "expectations.json").read_text())
    assert [e["file"] for e in report["invalid"]] == _names(invalid)
    for variant in report["invalid"]:
        expected = expectations[variant["file"]]
        assert variant["profile"] == expected["profile"]
        assert any(expected["hapi"] in error for error in variant["errors"]), variant
