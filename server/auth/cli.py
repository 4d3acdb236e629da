"""``planbro client add|list|remove`` and ``planbro keys generate|rotate|list``.

:func:`register` adds the subcommands to the main argparse parser. Each subcommand sets
``func`` (called as ``func(args, store) -> exit code``) and ``needs_store`` (False for the
key commands, which work on the keys folder only).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from joserfc import jwk
from joserfc.errors import JoseError

from ..store.port import Store
from . import keys as keyfiles
from .clients import GRANT_TYPES, ClientRecord, ClientRegistry
from .config import AuthConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    client = subparsers.add_parser("client", help="manage OAuth clients")
    csub = client.add_subparsers(dest="client_command", required=True)

    add = csub.add_parser("add", help="register a client (a system or an app)")
    add.add_argument("client_id")
    add.add_argument("--name", required=True, help="human-readable name")
    add.add_argument("--org", help="organisation number the client acts for")
    keys_group = add.add_mutually_exclusive_group()
    keys_group.add_argument("--jwks", type=Path, help="file with the client's public JWKS/JWK")
    keys_group.add_argument("--jwks-uri", help="URL where the client publishes its JWKS")
    keys_group.add_argument("--public-key", type=Path, help="PEM file with one public key")
    add.add_argument("--scope", default="", help="allowed scopes, space separated")
    add.add_argument("--grant", action="append", choices=GRANT_TYPES, dest="grants",
                     help="allowed grant type (repeatable; default client_credentials)")
    add.add_argument("--redirect-uri", action="append", dest="redirect_uris", default=[])
    add.add_argument("--public", action="store_true",
                     help="a public client (no key; authorization_code with PKCE)")
    add.add_argument("--may-introspect", action="store_true")
    add.add_argument("--may-assert-practitioner", action="store_true",
                     help="may name the acting practitioner (hpr) in its client assertion")
    add.add_argument("--replace", action="store_true", help="overwrite an existing client")
    add.set_defaults(func=client_add, needs_store=True)

    lst = csub.add_parser("list", help="list registered clients")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=client_list, needs_store=True)

    rm = csub.add_parser("remove", help="remove a client")
    rm.add_argument("client_id")
    rm.set_defaults(func=client_remove, needs_store=True)

    keys = subparsers.add_parser("keys", help="manage our token signing keys")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    for name, func, text in (
        ("generate", keys_generate, "create the first signing key if there is none"),
        ("rotate", keys_rotate, "new signing key; old keys verify until their tokens expire"),
        ("list", keys_list, "list signing keys and their state"),
    ):
        p = ksub.add_parser(name, help=text)
        p.add_argument("--keys-dir", type=Path, help="default: PLANBRO_KEYS_DIR or <data>/keys")
        p.set_defaults(func=func, needs_store=False)


# -- clients -------------------------------------------------------------------------------


def _load_jwks(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if "keys" in data else {"keys": [data]}


def _pem_jwks(path: Path) -> dict[str, Any]:
    raw = path.read_bytes()
    for kty in ("RSA", "EC", "OKP"):
        try:
            key = jwk.import_key(raw, kty)  # type: ignore[call-overload]
        except (JoseError, ValueError, TypeError):
            continue
        if key.is_private:
            raise ValueError(f"{path} holds a private key; give the public key only")
        data = key.as_dict(private=False)
        data["kid"] = key.thumbprint()
        return {"keys": [data]}
    raise ValueError(f"{path} is not a PEM public key")


def client_add(args: argparse.Namespace, store: Store) -> int:
    jwks = None
    if args.jwks:
        jwks = _load_jwks(args.jwks)
    elif args.public_key:
        jwks = _pem_jwks(args.public_key)
    grants = tuple(args.grants or (("authorization_code", "refresh_token") if args.public
                                   else ("client_credentials",)))
    record = ClientRecord(
        client_id=args.client_id,
        name=args.name,
        token_endpoint_auth_method="none" if args.public else "private_key_jwt",
        grant_types=grants,
        scope=args.scope,
        organization=args.org,
        redirect_uris=tuple(args.redirect_uris),
        jwks=jwks,
        jwks_uri=args.jwks_uri,
        may_introspect=args.may_introspect,
        may_assert_practitioner=args.may_assert_practitioner,
    )
    registry = ClientRegistry(store)
    try:
        if args.replace:
            registry.put(record)
        elif not registry.add(record):
            print(f"client {args.client_id} exists (use --replace)", file=sys.stderr)
            return 1
    except ValueError as exc:
        print(f"invalid client: {exc}", file=sys.stderr)
        return 2
    print(f"client {record.client_id} registered")
    return 0


def client_list(args: argparse.Namespace, store: Store) -> int:
    clients = ClientRegistry(store).list()
    if args.json:
        print(json.dumps([c.to_json() for c in clients], indent=2))
        return 0
    for c in clients:
        print(f"{c.client_id}\t{c.name}\torg={c.organization or '-'}\t"
              f"auth={c.token_endpoint_auth_method}\tgrants={','.join(c.grant_types)}\t"
              f"scope={c.scope}")
    return 0


def client_remove(args: argparse.Namespace, store: Store) -> int:
    if not ClientRegistry(store).remove(args.client_id):
        print(f"no client {args.client_id}", file=sys.stderr)
        return 1
    print(f"client {args.client_id} removed")
    return 0


# -- keys ----------------------------------------------------------------------------------


def _key_settings(args: argparse.Namespace) -> tuple[Path, str, int]:
    cfg = AuthConfig.from_env()
    directory = args.keys_dir or cfg.keys_dir
    return directory, cfg.signing_alg, cfg.access_token_ttl + cfg.clock_skew


def keys_generate(args: argparse.Namespace, store: Store | None = None) -> int:
    directory, alg, _ = _key_settings(args)
    key = keyfiles.generate(directory, alg)
    if key is None:
        print("an active signing key exists already (use 'keys rotate' for a new one)")
        return 0
    print(f"generated {key.alg} key {key.kid} in {directory}")
    return 0


def keys_rotate(args: argparse.Namespace, store: Store | None = None) -> int:
    directory, alg, window = _key_settings(args)
    new, retired, pruned = keyfiles.rotate(directory, alg, window)
    print(f"new signing key {new.kid} ({new.alg})")
    for key in retired:
        print(f"retired {key.kid}: verifies tokens for {window} s more")
    for kid in pruned:
        print(f"removed expired key {kid}")
    return 0


def keys_list(args: argparse.Namespace, store: Store | None = None) -> int:
    directory, _, window = _key_settings(args)
    now = time.time()
    for key in keyfiles.list_keys(directory):
        if key.retired is None:
            state = "signing"
        elif key.verifies_at(now, window):
            state = "verifying"
        else:
            state = "expired"
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(key.created))
        print(f"{key.kid}\t{key.alg}\tcreated {created}\t{state}")
    return 0
