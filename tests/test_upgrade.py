"""A server started on data whose search index an older server built, by other search
parameters or other rules, indexes every resource again before it serves: its searches then
find what its own rules find. Under gunicorn the main process does it before the workers
start, once. A server started under another base URL indexes again the resources with absolute
references, which that URL reads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import requests
from live import ADMIN_SCOPE, FHIR_JSON, LiveServer, system_token
from test_gunicorn import ROOT, free_port, wait_answering

from server.app import create_app, ensure_indexed
from server.audit import store_indexer
from server.config import Config
from server.fhir.search.ast import IndexValues
from server.fhir.search.normalize import serving
from server.fhir.search.parse import parse_search
from server.plans.rules import search_registry
from server.store.embedded import EmbeddedStore
from server.store.journal import end_process

SORENSEN = {"resourceType": "Patient", "name": [{"family": "Sørensen", "given": ["Åsa"]}]}


def _stored_by_an_older_server(data: Path) -> None:
    """Ms Sørensen, stored by a server whose rules indexed no strings, and noted so."""
    indexer = store_indexer(search_registry())

    def older(resource: dict[str, Any]) -> IndexValues:
        values = indexer(resource)
        values.strings = []
        return values

    store = EmbeddedStore(older, data / "planbro.db")
    try:
        assert store.ensure_indexed("the older server's rules") == 0
        with store.unit_of_work() as uow:
            uow.create("Patient", dict(SORENSEN))
    finally:
        store.close()


def _families(base: str, token: str, family: str) -> list[str]:
    response = requests.get(f"{base}/Patient", params={"family": family}, timeout=30,
                            headers={"Authorization": f"Bearer {token}", "Accept": FHIR_JSON})
    assert response.status_code == 200, response.text
    return [e["resource"]["name"][0]["family"] for e in response.json().get("entry", [])]


def test_the_app_indexes_again_what_other_rules_indexed(tmp_path: Path) -> None:
    _stored_by_an_older_server(tmp_path)
    live = LiveServer()
    try:
        app = create_app(Config(data_dir=tmp_path, base_url=f"{live.url}/fhir"))
        live.app = app
        token = system_token(app.extensions["planbro"].auth, scope=ADMIN_SCOPE)
        for family in ("sorensen", "Sørensen", "SØR"):  # ø read as o, as å as a
            assert _families(f"{live.url}/fhir", token, family) == ["Sørensen"], family
    finally:
        live.close()
        if "app" in locals():
            app.extensions["planbro"].close()
    again = create_app(Config(data_dir=tmp_path, base_url=f"{live.url}/fhir"))
    again.extensions["planbro"].close()  # current now: started without indexing (nothing told)


def test_gunicorn_indexes_again_before_its_workers_start(tmp_path: Path) -> None:
    _stored_by_an_older_server(tmp_path)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLANBRO_", "MONGODB_"))}
    env.update(PLANBRO_DATA=str(tmp_path), PLANBRO_BASE_URL=f"http://127.0.0.1:{port}/fhir")
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "python:server.gunicorn_conf", "-w", "2",
             "-b", f"127.0.0.1:{port}", "server.app:create_app()"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_answering(process, f"http://127.0.0.1:{port}/fhir", log)
    finally:
        end_process(process, timeout=30)
    text = log.read_text()
    assert text.count("indexing every resource again") == 1, text  # by the main process only
    assert "Search index rebuilt: 1 resources indexed" in text, text
    assert text.index("rebuilt") < text.index("Booting worker"), text


def test_a_server_under_another_base_url_indexes_its_absolute_references_again(
        tmp_path: Path) -> None:
    registry = search_registry()
    store = EmbeddedStore(store_indexer(registry), tmp_path / "planbro.db")
    old, new = "https://old.example/fhir", "https://planbro.example/fhir"
    try:
        assert ensure_indexed(store, registry, Config(data_dir=tmp_path, base_url=old)) == 0
        serving(old)  # written while the server had its old address
        try:
            with store.unit_of_work() as uow:
                uow.create("Goal", {"resourceType": "Goal",
                                    "subject": {"reference": f"{new}/Patient/p1"}})
                uow.create("Goal", {"resourceType": "Goal",
                                    "subject": {"reference": "Patient/p2"}})
        finally:
            serving(None)
        query = parse_search(registry, "Goal", [("subject", "Patient/p1")]).query
        assert store.search(query).resources == []
        assert ensure_indexed(store, registry, Config(data_dir=tmp_path, base_url=new)) == 1
        assert len(store.search(query).resources) == 1
        assert ensure_indexed(store, registry, Config(data_dir=tmp_path, base_url=new)) is None
    finally:
        store.close()
