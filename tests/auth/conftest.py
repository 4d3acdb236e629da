"""Fixtures: a running auth server (Flask app + init_app + a test-only protected route) on a
free loopback port, with registered system clients and demo people."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from authsupport import (
    ORG_HOSPITAL,
    ORG_KOMMUNE,
    Env,
    LiveServer,
    build_app,
    ec_key,
    make_fnr,
    public_jwks,
    rsa_key,
)

from server.auth.clients import ClientRecord


@pytest.fixture(scope="session")
def people() -> list[tuple[str, str, str]]:
    return [
        ("pat-1", "Kari Demo", make_fnr(1)),
        ("pat-2", "Ola Demo", make_fnr(2)),
    ]


@pytest.fixture(scope="session")
def client_keys() -> dict[str, Any]:
    return {
        "ec256": ec_key("P-256", "ec256"),
        "ec384": ec_key("P-384", "ec384"),
        "rsa": rsa_key("rsa"),
        "other": ec_key("P-256", "ec256"),  # same kid, different key: must not verify
    }


def register_clients(env: Env) -> None:
    keys = env.client_keys
    env.auth.clients.put(ClientRecord(
        client_id="ehr", name="Hospital EHR", organization=ORG_HOSPITAL,
        jwks=public_jwks(keys["ec256"], keys["ec384"], keys["rsa"]),
        scope="system/*.cruds", may_assert_practitioner=True,
    ))
    env.auth.clients.put(ClientRecord(
        client_id="kommune", name="Municipal system", organization=ORG_KOMMUNE,
        jwks=public_jwks(keys["ec256"]), scope="system/CarePlan.rs system/Task.cruds",
    ))
    env.auth.clients.put(ClientRecord(
        client_id="gateway", name="API gateway", organization=ORG_KOMMUNE,
        jwks=public_jwks(keys["ec256"]), scope="system/*.rs", may_introspect=True,
    ))


@pytest.fixture
def make_env(tmp_path: Path, people: list, client_keys: dict) -> Iterator[Callable[..., Env]]:
    servers: list[LiveServer] = []

    def make(**overrides: Any) -> Env:
        live = LiveServer()
        servers.append(live)
        folder = tmp_path / f"srv{len(servers)}"
        known = overrides.pop("people", people)
        app, auth, store, config = build_app(live, folder, known, **overrides)
        env = Env(live, app, auth, store, config, dict(client_keys))
        register_clients(env)
        return env

    yield make
    for live in servers:
        live.close()


@pytest.fixture
def env(make_env: Callable[..., Env]) -> Env:
    return make_env()
