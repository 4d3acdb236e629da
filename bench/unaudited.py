"""The server WITHOUT its audit layer - for the benchmark only, to measure what auditing
costs per request (``python bench/run.py`` runs the same operations on both). Never serve
this: every access to a person's data must be audited.

    gunicorn 'bench.unaudited:create_app()'
"""

from __future__ import annotations

from flask import Flask

from server.app import create_app as create_audited_app


def create_app() -> Flask:
    """The application as ``server.app.create_app()`` builds it, minus the auditor's hooks
    (AuditEvents and Provenances are not written)."""
    app = create_audited_app()
    auditor = app.extensions["planbro.audit"]
    service = app.extensions["planbro"].service
    service.observers.remove(auditor.observe)
    service.after_write.remove(auditor.after_write)
    return app
