"""Who may see a person's data: care team and consent, enforced inside the storage query.

A valid token with the right scope is not enough to see a person's data (the resources of
their Patient compartment and of their plan). An organisation - its systems and its health
workers - sees a person's data only while it is a current participant of the person's care
team AND an active consent of the person permits it, and then only the content classes the
consent allows (:mod:`.labels`, :mod:`.views`); while a notification is open, the hospital
that sent it and the coordinating unit it is addressed to see it and what it carries (once it
is answered, the Task with its outcome and the reminders about it). The person sees all of
their own data. A health worker may read a person's data without consent by stating a reason
(emergency access: time-limited, audited, shown to the person). Identity resolution by a
national person number in a conditional write finds any Patient, showing an unseen one as a
stub (:meth:`.policy.AccessControl.matches`). Subscriptions are their creator's. Everything
else is "not found".

How: at write time the person, content class and responsible party of every resource are
indexed (:mod:`.index`) and who may see whom is materialised as grants (:mod:`.grants`) in the
same unit of work; at read time the caller's view is compiled into the search as conditions
(:mod:`.policy`) through the FHIR service's read seams, so that totals, paging, includes,
chains, ``_has``, history, vread and bundle entries all respect it. Writes follow
:mod:`.writes`.

Callers: no principal (inside the server) and administrative systems (scope
:data:`~.caller.ADMIN_SCOPE` from our own issuer) are unrestricted; AuditEvents are read only
by their person and by auditors (:data:`~.caller.AUDIT_SCOPE`).
"""

from __future__ import annotations

import os

from ..auth.server import AuthServer
from ..fhir.service import FhirService
from .caller import ADMIN_SCOPE, AUDIT_SCOPE, Caller
from .index import AccessIndexer
from .policy import AccessControl
from .writes import WriteRules

EMERGENCY_SECONDS = 4 * 60 * 60
"""How long emergency access to a person lasts after a reason was stated (default)."""

__all__ = ["ADMIN_SCOPE", "AUDIT_SCOPE", "AccessControl", "Caller", "install"]


def emergency_seconds(env: dict[str, str] | None = None) -> int:
    """``PLANBRO_EMERGENCY_SECONDS``: how long emergency access lasts (positive seconds)."""
    value = (os.environ if env is None else env).get("PLANBRO_EMERGENCY_SECONDS")
    if not value:
        return EMERGENCY_SECONDS
    if not value.isdigit() or int(value) <= 0:
        raise ValueError("PLANBRO_EMERGENCY_SECONDS must be a positive number of seconds")
    return int(value)


def install(service: FhirService, auth: AuthServer) -> AccessControl:
    """Put access control on ``service``: the read seams' view, the write rules (run
    before any other write hook) and the emergency grants. Its store must index with
    :func:`server.audit.store_indexer`."""
    if not isinstance(service.store.indexer, AccessIndexer):
        raise ValueError("the store must index with server.audit.store_indexer")
    control = AccessControl(service, auth.config.issuer)
    service.access = control
    rules = WriteRules(service, control, emergency_seconds() * 1000)
    service.before_write.insert(0, rules.before_write)
    service.shapers.append(rules.shape)
    service.after_write.append(rules.after_write)
    service.before_commit.append(rules.before_commit)
    service.observers.append(rules.observe)
    return control
