"""The application factory: wiring only.

``gunicorn -c python:server.gunicorn_conf 'server.app:create_app()'`` serves it with
settings from the environment.
"""

from __future__ import annotations

import atexit
from dataclasses import dataclass

from flask import Flask

from . import access, audit, mover
from .api import fhir as fhir_api
from .audit import store_indexer
from .auth import AuthConfig, AuthServer, init_app
from .auth.guard import ScopeGuard
from .auth.metadata import capability_security
from .config import Config
from .fhir.search.registry import Registry
from .fhir.service import FhirService
from .plans import rules as plan_rules
from .plans import workflow as plan_workflow
from .plans.people import listed_people, patient_by_national_id
from .plans.workflow import Workflow
from .store import open_store
from .store.port import Store


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


def create_app(config: Config | None = None) -> Flask:
    """A Flask app serving FHIR at ``/fhir`` (``Config.from_env()`` when no config given)."""
    config = config or Config.from_env()
    config.validate()
    registry = Registry.load_default()
    store = open_store(config, store_indexer(registry), records_process=mover.COMMAND)

    app = Flask(__name__)
    # One byte more than allowed: a streamed body that is too large is then detectable
    # (server.api.fhir refuses anything over config.max_body_bytes with 413).
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes + 1
    service = FhirService(store, registry, config)
    service.guard = ScopeGuard()
    plan_rules.install(service)
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
