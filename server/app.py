"""The application factory: wiring only.

``gunicorn -c python:server.gunicorn_conf 'server.app:create_app()'`` serves it with
settings from the environment.
"""

from __future__ import annotations

import atexit
import logging
from collections.abc import Callable
from dataclasses import dataclass

from flask import Flask

from . import access, audit, mover
from .api import fhir as fhir_api
from .audit import store_indexer
from .auth import AuthConfig, AuthServer, init_app
from .auth.guard import ScopeGuard
from .auth.metadata import capability_security
from .config import Config
from .fhir.conformance import PROFILES_DIR, Conformance
from .fhir.search.normalize import serving
from .fhir.search.registry import Registry
from .fhir.service import FhirService
from .plans import rules as plan_rules
from .plans import workflow as plan_workflow
from .plans.people import listed_people, patient_by_national_id
from .plans.rules import search_registry
from .plans.workflow import Workflow
from .store import open_store
from .store.port import Store

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Planbro:
    """What one application instance runs on; ``app.extensions["planbro"]``."""

    config: Config
    store: Store
    registry: Registry
    service: FhirService
    auth: AuthServer
    workflow: Workflow

    def close(self) -> None:
        """Stop the background worker, then close the store (in that order: a job must not
        run on a closed store)."""
        self.workflow.stop()
        self.store.close()


def prepare_store(config: Config, log: Callable[[str], None] = print) -> int | None:
    """Before the server's processes start: bring the store's search index up to this
    server's search parameters and rules (after an upgrade that changed them, every resource
    is indexed again, which may take minutes). Returns how many resources were indexed, or
    None when the index was current. Each app checks it again as it starts
    (:func:`create_app`); done here first, the workers find it current."""
    registry = search_registry()
    store = open_store(config, store_indexer(registry))
    try:
        return ensure_indexed(store, registry, config, log=log)
    finally:
        store.close()


def ensure_indexed(store: Store, registry: Registry, config: Config, *, force: bool = False,
                   log: Callable[[str], None] = print) -> int | None:
    """:meth:`Store.ensure_indexed` by ``registry``'s parameters, with absolute references
    below ``config.base_url`` read as references to resources here (as requests read them):
    after the base URL changed, the resources with absolute references are indexed again."""
    serving(config.base_url)
    try:
        count = store.ensure_indexed(registry.fingerprint(),
                                     base=(config.base_url or "").rstrip("/"), force=force,
                                     log=log)
    finally:
        serving(None)
    if count and not config.base_url:
        log("PLANBRO_BASE_URL is not set: absolute references to this server were indexed as "
            "references to another server")
    return count


def create_app(config: Config | None = None) -> Flask:
    """A Flask app serving FHIR at ``/fhir`` (``Config.from_env()`` when no config given)."""
    config = config or Config.from_env()
    config.validate()
    conformance = Conformance.load(PROFILES_DIR)
    registry = search_registry(conformance)
    store = open_store(config, store_indexer(registry), records_process=mover.COMMAND)
    ensure_indexed(store, registry, config, log=_log.warning)

    app = Flask(__name__)
    # One byte more than allowed: a streamed body that is too large is then detectable
    # (server.api.fhir refuses anything over config.max_body_bytes with 413).
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes + 1
    service = FhirService(store, registry, config)
    service.guard = ScopeGuard()
    plan_rules.install(service, conformance)
    app.extensions["planbro.workflow"] = workflow = plan_workflow.install(service)
    auth = init_app(
        app, store,
        AuthConfig.from_env(data_dir=config.data_dir, demo=config.demo, base_url=config.base_url),
        people=lambda: listed_people(service),
        find_patient_by_fnr=lambda number: patient_by_national_id(service, number))
    service.security = capability_security(auth.config)
    app.extensions["planbro.access"] = access_control = access.install(service, auth)
    app.extensions["planbro.audit"] = audit.install(service, access_control)
    app.extensions["planbro"] = planbro = Planbro(config, store, registry, service, auth,
                                                  workflow)
    atexit.register(planbro.close)
    app.before_request(fhir_api.check_request_size)  # before every blueprint's own
    app.register_blueprint(fhir_api.bp)
    fhir_api.register_error_handlers(app)
    return app
