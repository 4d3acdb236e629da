"""Signing-key rotation (old tokens verify until they expire, JWKS lists both) and the
``planbro client`` / ``planbro keys`` subcommands."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pytest
import requests
from authsupport import Env, MemoryKvStore, ec_key, public_jwks

from server.auth import cli
from server.auth import keys as keyfiles
from server.auth.clients import ClientRegistry
from server.auth.keys import KeyRing


def run(argv: list[str], store: MemoryKvStore | None = None) -> int:
    parser = argparse.ArgumentParser(prog="planbro")
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    if args.needs_store:
        assert store is not None
    return args.func(args, store)


def _jwks_kids(env: Env) -> set[str]:
    body = requests.get(env.config.endpoint("jwks"), timeout=10).json()
    assert all("d" not in k for k in body["keys"])
    return {k["kid"] for k in body["keys"]}


def _expire_retired(directory: Path, window: int) -> None:
    for key in keyfiles.list_keys(directory):
        if key.retired is not None:
            path = directory / f"{key.kid}.jwk.json"
            data = json.loads(path.read_text())
            data["retired"] = int(time.time()) - window - 1
            path.write_text(json.dumps(data))


def test_rotation_keeps_old_tokens_valid_until_expiry(env: Env) -> None:
    old_kid = env.auth.keys.active.kid
    old_token = env.access_token()
    assert _jwks_kids(env) == {old_kid}

    assert run(["keys", "rotate", "--keys-dir", str(env.config.keys_dir)]) == 0
    env.auth.keys.reload()
    new_kid = env.auth.keys.active.kid
    assert new_kid != old_kid
    new_token = env.access_token()
    assert env.auth.resource.check_own(new_token)  # signed with the new key
    assert env.whoami(old_token).status_code == 200
    assert env.whoami(new_token).status_code == 200
    assert _jwks_kids(env) == {old_kid, new_kid}

    window = env.auth.keys.verify_window
    _expire_retired(env.config.keys_dir, window)
    env.auth.keys.reload()
    resp = env.whoami(old_token)
    assert resp.status_code == 401
    assert "unknown key id" in resp.json()["issue"][0]["diagnostics"]
    assert _jwks_kids(env) == {new_kid}
    assert env.whoami(new_token).status_code == 200


def test_server_notices_rotation_by_another_process(tmp_path: Path) -> None:
    ring = KeyRing(tmp_path / "k", alg="ES256", verify_window=60, reload_interval=0)
    first = ring.active.kid
    new, retired, _ = keyfiles.rotate(tmp_path / "k", "RS256", 60)
    assert [k.kid for k in retired] == [first]
    assert ring.active.kid == new.kid and ring.active.alg == "RS256"
    assert ring.verifier(first) is not None


def test_keys_generate_list_rotate_prune(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "keys"
    assert run(["keys", "generate", "--keys-dir", str(folder)]) == 0
    assert run(["keys", "generate", "--keys-dir", str(folder)]) == 0
    assert len(keyfiles.list_keys(folder)) == 1
    assert (folder / f"{keyfiles.list_keys(folder)[0].kid}.jwk.json").stat().st_mode & 0o077 == 0
    assert run(["keys", "rotate", "--keys-dir", str(folder)]) == 0
    capsys.readouterr()
    assert run(["keys", "list", "--keys-dir", str(folder)]) == 0
    listing = capsys.readouterr().out
    assert "signing" in listing and "verifying" in listing
    _expire_retired(folder, 10_000)
    assert run(["keys", "rotate", "--keys-dir", str(folder)]) == 0
    assert "removed expired key" in capsys.readouterr().out
    assert len(keyfiles.list_keys(folder)) == 2


def test_client_commands(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    store = MemoryKvStore()
    key = ec_key("P-256", "nav-1")
    jwks_file = tmp_path / "nav.jwks.json"
    jwks_file.write_text(json.dumps(public_jwks(key)))
    assert run(["client", "add", "nav", "--name", "NAV", "--org", "889640782",
                "--jwks", str(jwks_file), "--scope", "system/CarePlan.rs"], store) == 0
    record = ClientRegistry(store).get("nav")
    assert record is not None
    assert record.grant_types == ("client_credentials",)
    assert record.jwks == public_jwks(key)
    assert run(["client", "add", "nav", "--name", "NAV", "--jwks", str(jwks_file)], store) == 1

    pem = tmp_path / "sys.pem"
    pem.write_bytes(ec_key("P-256").as_pem(private=False))
    assert run(["client", "add", "sys", "--name", "System", "--public-key", str(pem)], store) == 0
    assert run(["client", "add", "app", "--name", "App", "--public",
                "--redirect-uri", "https://app.example/cb",
                "--scope", "openid patient/*.rs offline_access"], store) == 0
    assert ClientRegistry(store).get("app").token_endpoint_auth_method == "none"

    capsys.readouterr()
    assert run(["client", "list", "--json"], store) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [c["client_id"] for c in listed] == ["app", "nav", "sys"]

    assert run(["client", "remove", "sys"], store) == 0
    assert run(["client", "remove", "sys"], store) == 1
    assert ClientRegistry(store).get("sys") is None


@pytest.mark.parametrize("argv", [
    ["client", "add", "x", "--name", "X", "--public", "--grant", "client_credentials"],
    ["client", "add", "x", "--name", "X"],
    ["client", "add", "x y", "--name", "X", "--public", "--redirect-uri", "https://a/cb"],
    ["client", "add", "x", "--name", "X", "--public", "--redirect-uri", "http://a.example/cb"],
    ["client", "add", "x", "--name", "X", "--public", "--redirect-uri", "https://a/cb",
     "--scope", "patient/Task.bad"],
])
def test_invalid_clients_are_refused(argv: list[str]) -> None:
    store = MemoryKvStore()
    assert run(argv, store) == 2
    assert ClientRegistry(store).list() == []


def test_private_key_in_jwks_is_refused(tmp_path: Path) -> None:
    key = ec_key("P-256", "k")
    path = tmp_path / "leak.json"
    path.write_text(json.dumps({"keys": [key.as_dict(private=True)]}))
    store = MemoryKvStore()
    assert run(["client", "add", "x", "--name", "X", "--jwks", str(path)], store) == 2
