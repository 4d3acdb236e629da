"""The ``planbro`` command.

    planbro serve [--host H] [--port P] [--data PATH] [--demo] [--workers N] [--threads N]
    planbro demo [--data PATH]
    planbro token CLIENT_ID [--scope S] [--data PATH]
    planbro client add|list|remove ...
    planbro keys generate|rotate|list

Settings not given on the command line come from the environment (``PLANBRO_DATA``,
``MONGODB_URI``, ... see :class:`server.config.Config`). Each subcommand is one ``_add_*``
function that registers its parser and the function that runs it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from werkzeug.serving import run_simple

from .app import create_app, ensure_indexed, prepare_store
from .audit import store_indexer
from .auth import cli as auth_cli
from .auth.demo import demo_token, ensure_demo_system_clients
from .config import Config
from .demo import KARI_FNR, ORGNR, load_demo
from .fhir.search.registry import Registry
from .plans.identifiers import FNR_SYSTEM
from .plans.rules import search_registry
from .store import open_store

Run = Callable[[argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except ValueError as exc:  # invalid settings (Config.validate)
        parser.exit(2, f"planbro: {exc}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="planbro", description="Planbro: a FHIR R4 server for individual plans.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_serve, _add_demo, _add_token, _add_reindex):
        add(commands)
    auth_cli.register(commands)
    for name in ("client", "keys"):
        commands.choices[name].set_defaults(run=_run_auth_command)
        _data_argument(commands.choices[name])
    return parser


def _run_auth_command(args: argparse.Namespace) -> int:
    """``planbro client ...`` / ``planbro keys ...``: on the configured storage engine."""
    config = _config(args)
    if args.data is not None:
        os.environ.setdefault("PLANBRO_DATA", str(args.data))
    if not args.needs_store:
        return int(args.func(args, None))
    store = open_store(config, Registry.load_default().extract)
    try:
        return int(args.func(args, store))
    finally:
        store.close()


def _data_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, metavar="PATH",
                        help="data folder of the embedded engine (default: $PLANBRO_DATA "
                             "or ./data); ignored when MONGODB_URI is set")


def _config(args: argparse.Namespace, **overrides: Any) -> Config:
    if args.data is not None:
        overrides["data_dir"] = args.data
    return Config.from_env(**overrides)


# -- planbro serve -----------------------------------------------------------------------------


def _add_serve(commands: Any) -> None:
    p = commands.add_parser("serve", help="serve the FHIR API",
                            description="Serve the FHIR API at http://HOST:PORT/fhir.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on "
                   "(default 127.0.0.1; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    _data_argument(p)
    p.add_argument("--demo", action="store_true",
                   help="load the synthetic demo data first (safe to repeat)")
    p.add_argument("--workers", type=int, default=None,
                   help="gunicorn worker processes (default: WEB_CONCURRENCY, else 2 per "
                        "CPU); 0 serves in this process with werkzeug's threaded server")
    p.add_argument("--threads", type=int, default=None,
                   help="threads per gunicorn worker (default 1)")
    p.set_defaults(run=_serve)


def _serve(args: argparse.Namespace) -> int:
    if (args.workers is not None and args.workers < 0
            or args.threads is not None and args.threads < 1 or not 0 < args.port < 65536):
        raise ValueError("--workers must be >= 0, --threads >= 1, --port 1-65535")
    host = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host
    config = _config(args, demo=args.demo)
    # Links, the token issuer and the token audience follow the address served.
    config = dataclasses.replace(
        config, base_url=config.base_url or f"http://{host}:{args.port}/fhir")
    base_url = str(config.base_url)
    prepare_store(config, log=lambda text: print(text, file=sys.stderr, flush=True))
    if args.demo:
        _load_demo(config, base_url)
    print(next_steps(base_url, config), flush=True)
    if args.workers == 0 or not _has_gunicorn():
        _serve_werkzeug(config, args.host, args.port)
    else:
        _serve_gunicorn(config, args.host, args.port, args.workers, args.threads)
    return 0


def _has_gunicorn() -> bool:
    try:
        import gunicorn.app.base  # noqa: F401
    except ImportError:
        print("gunicorn is not installed: serving with werkzeug in this process",
              file=sys.stderr)
        return False
    return True


def _serve_werkzeug(config: Config, host: str, port: int) -> None:
    run_simple(host, port, create_app(config), threaded=True)


def _serve_gunicorn(config: Config, host: str, port: int, workers: int | None,
                    threads: int | None) -> None:
    from gunicorn.app.base import BaseApplication  # not importable on Windows

    from .gunicorn_conf import THREADS, default_workers, settings

    class Server(BaseApplication):
        """gunicorn with our options (and the worker class and request limits of
        :mod:`.gunicorn_conf`); each worker builds its own app (and store connections)
        after the fork."""

        def load_config(self) -> None:
            bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            options = {"bind": bind,
                       "workers": default_workers() if workers is None else workers,
                       "threads": THREADS if threads is None else threads,
                       **settings(config)}
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            return create_app(config)

    Server().run()


def next_steps(base_url: str, config: Config) -> str:
    """What to do next: the base URL, example requests, where the data is, how to stop."""
    where = (f"MongoDB database '{config.mongodb_db}' (MONGODB_URI)" if config.mongodb_uri
             else str(config.embedded_path.resolve()))
    lines = [f"Planbro FHIR API: {base_url}", "", "Try:",
             f"  curl -s {base_url}/metadata"]
    if config.demo:
        kari = quote(f"{FNR_SYSTEM}|{KARI_FNR}", safe=":")
        data = f" --data {config.data_dir}" if config.data_dir != Path("data") else ""
        auth = '-H "Authorization: Bearer $TOKEN"'
        lines += [
            "  # a token for the demo municipality's system (private_key_jwt, key in "
            f"{demo_clients_path(config)}):",
            f"  TOKEN=$(planbro token demo-municipality{data})",
            "  # the demo person, by synthetic fødselsnummer:",
            f"  curl -s {auth} '{base_url}/Patient?identifier={kari}'",
            "  # her individual plan, with its goals and care team:",
            f"  curl -s {auth} '{base_url}/CarePlan?subject:Patient.identifier={kari}"
            "&_include=CarePlan:goal&_include=CarePlan:care-team'",
            "  # what the regulation asks of a plan, item by item:",
            f"  curl -s {auth} '{base_url}/CarePlan/kari/$completeness'",
            "  # NAV's view of the same plan: her consent shares no health information with NAV,",
            "  # so the measures of the nurse and the GP are left out:",
            f"  curl -s -H \"Authorization: Bearer $(planbro token demo-nav{data})\" "
            f"'{base_url}/CarePlan/kari'",
            "  # the patient app's sign-in (demo people):",
            f"  open {base_url.rsplit('/fhir', 1)[0]}/oauth/authorize (see README.md)",
        ]
    lines += ["", f"Data: {where}", "Stop: press Ctrl+C.", ""]
    return "\n".join(lines)


# -- planbro demo ------------------------------------------------------------------------------


def _add_demo(commands: Any) -> None:
    p = commands.add_parser("demo", help="load the synthetic demo data",
                            description="Load the synthetic demo data (safe to repeat).")
    _data_argument(p)
    p.set_defaults(run=_demo)


def _demo(args: argparse.Namespace) -> int:
    config = _config(args, demo=True)
    _load_demo(config, config.base_url or "http://localhost:8080/fhir")
    return 0


def _load_demo(config: Config, base_url: str) -> None:
    planbro = create_app(config).extensions["planbro"]
    try:
        counts = load_demo(planbro.service, base_url)
        ensure_demo_system_clients(planbro.auth.clients, planbro.auth.config, ORGNR,
                                   demo_clients_path(config))
    finally:
        planbro.close()
    print(f"Demo data: {counts['created']} resources created, {counts['existing']} "
          f"already there. Demo clients and their keys: {demo_clients_path(config)}",
          flush=True)


def demo_clients_path(config: Config) -> Path:
    return config.data_dir / "demo-clients.json"


# -- planbro token -----------------------------------------------------------------------------


def _add_token(commands: Any) -> None:
    p = commands.add_parser(
        "token", help="get an access token for a demo system (private_key_jwt)",
        description="Get an access token for one of the demo systems that `planbro serve "
                    "--demo` registers, signing the client assertion with its key from "
                    "<data>/demo-clients.json. Prints the token.")
    p.add_argument("client_id", help="e.g. demo-hospital-ehr, demo-municipality, demo-nav")
    p.add_argument("--scope", help="scopes to ask for (default: all the client may have)")
    p.add_argument("--json", action="store_true", help="print the whole token response")
    _data_argument(p)
    p.set_defaults(run=_token)


def _token(args: argparse.Namespace) -> int:
    answer = demo_token(demo_clients_path(_config(args)), args.client_id, args.scope)
    print(json.dumps(answer, indent=2) if args.json else answer["access_token"])
    return 0


# -- planbro reindex ---------------------------------------------------------------------------


def _add_reindex(commands: Any) -> None:
    p = commands.add_parser(
        "reindex", help="extract every resource's search values again",
        description="Extract the search values of every current resource again, as the "
                    "server now does, and replace the stored ones (after an upgrade that "
                    "changes search parameters or how their values are read). The server "
                    "may keep running: each batch is a transaction of its own.")
    _data_argument(p)
    p.add_argument("--base-url", metavar="URL",
                   help="the server's public FHIR base URL, which tells references to "
                        "resources here from references to other servers (default: "
                        "$PLANBRO_BASE_URL)")
    p.set_defaults(run=_reindex)


def _reindex(args: argparse.Namespace) -> int:
    config = _config(args)
    base_url = args.base_url or config.base_url
    if not base_url:
        raise ValueError("reindex needs the server's public FHIR base URL (--base-url or "
                         "PLANBRO_BASE_URL): absolute references under it name resources "
                         "here")
    config = dataclasses.replace(config, base_url=base_url)
    registry = search_registry()
    store = open_store(config, store_indexer(registry))
    try:
        ensure_indexed(store, registry, config, force=True)  # it tells what it did
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
