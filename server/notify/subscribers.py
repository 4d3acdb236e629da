"""Who a Subscription listens for: the caller that wrote it.

A notification must never tell a subscriber more than it could read itself. So when a
Subscription is created by a caller, who that caller is (kind, client, organisation, health
worker, person, scopes - never a reason for emergency access) is kept beside it as a
server-internal record (:data:`SUBSCRIBER`, not a FHIR type, never served), in the same unit
of work. Matching a write against the subscription's criteria and showing the resource in a
notification then run as that caller: its scopes, and access control's view of what it may
see (``FhirService.access``). Updates keep the subscriber (only its creator - or an
administrative system - may change a Subscription: :mod:`server.access`). A subscription
written inside the server listens for everything.
"""

from __future__ import annotations

from typing import Any

from ..auth.principal import Principal
from ..auth.scopes import ScopeSet
from ..fhir.service import FhirService, Reader, RequestContext, WriteContext
from ..store.port import UnitOfWork, Version

SUBSCRIBER = "PlanbroSubscriber"
_FIELDS = ("kind", "client_id", "issuer", "subject", "organization", "practitioner", "patient",
           "fhir_user")


def install(service: FhirService) -> None:
    service.after_write.append(_remember)


def _remember(write: WriteContext, version: Version) -> None:
    if write.type != "Subscription":
        return
    if version.deleted:
        write.uow.delete(SUBSCRIBER, write.id)
    elif write.ctx.principal is not None and write.previous is None:
        remember(write.uow, write.id, write.ctx.principal)


def remember(uow: UnitOfWork, subscription_id: str, principal: Principal) -> None:
    record: dict[str, Any] = {name: getattr(principal, name) for name in _FIELDS}
    record["scopes"] = str(principal.scopes)
    uow.update(SUBSCRIBER, subscription_id, record)


def context(reader: Reader, subscription_id: str, base_url: str = "") -> RequestContext:
    """The context in which ``subscription_id``'s notifications are matched and shown."""
    found = reader.read(SUBSCRIBER, subscription_id)
    if found is None or found.deleted or found.resource is None:
        return RequestContext(base_url=base_url)
    record = found.resource
    principal = Principal(**{name: record.get(name) for name in _FIELDS},
                          scopes=ScopeSet.parse(record.get("scopes"), strict=False))
    return RequestContext(base_url=base_url, principal=principal)
