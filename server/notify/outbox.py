"""The notification outbox: messages waiting to be delivered, stored as a server-internal
record type in the same unit of work as the change they announce (so a notification exists
if and only if the change was committed).

The record type :data:`OUTBOX` is not a FHIR resource type: the FHIR API refuses it (it is
not in ``STORED_TYPES``), so outbox records are never served. A record holds which
Subscription to notify about which resource version, the attempts made, when to try next,
and a claim (``lease_until``) that keeps two workers - threads or processes - from sending it
at the same time. A delivered or abandoned record is deleted.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from ..fhir.search.ast import SearchQuery
from ..store.port import Store, UnitOfWork, VersionConflict

OUTBOX = "PlanbroOutbox"


@dataclass(frozen=True)
class Message:
    """One pending notification (a stored outbox record and its version)."""

    id: str
    version: int
    subscription: str  # Subscription id
    type: str  # the resource that matched
    resource_id: str
    resource_version: int
    attempts: int
    next_ms: int
    lease_until: int
    last_error: str | None

    @classmethod
    def of(cls, record: dict[str, Any]) -> Message:
        return cls(str(record["id"]), int(record["meta"]["versionId"]),
                   str(record["subscription"]), str(record["target"]["type"]),
                   str(record["target"]["id"]), int(record["target"]["version"]),
                   int(record.get("attempts", 0)), int(record.get("nextMs", 0)),
                   int(record.get("leaseUntil", 0)), record.get("lastError"))

    def record(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "subscription": self.subscription,
            "target": {"type": self.type, "id": self.resource_id,
                       "version": self.resource_version},
            "attempts": self.attempts, "nextMs": self.next_ms, "leaseUntil": self.lease_until,
        }
        if self.last_error:
            out["lastError"] = self.last_error
        return out


def enqueue(uow: UnitOfWork, subscription: str, type_: str, id_: str, version: int,
            now: int) -> None:
    """Queue a notification of ``type_/id_`` version ``version`` for ``subscription``."""
    record = Message("", 0, subscription, type_, id_, version, 0, now, 0, None).record()
    uow.create(OUTBOX, record)


def due(store: Store, now: int, limit: int = 1000) -> list[Message]:
    """Pending messages whose time has come and that no one holds, oldest first."""
    found = store.search(SearchQuery(type=OUTBOX, count=limit))
    messages = [Message.of(r) for r in found.resources]
    return [m for m in messages if m.next_ms <= now and m.lease_until <= now]


def pending(store: Store, limit: int = 1000) -> list[Message]:
    """Every pending message (for inspection and tests)."""
    return [Message.of(r) for r in store.search(SearchQuery(type=OUTBOX, count=limit)).resources]


def claim(store: Store, message: Message, until: int) -> Message | None:
    """Hold ``message`` until ``until`` (epoch ms) for one attempt; None when another worker
    got it first."""
    held = replace(message, attempts=message.attempts + 1, lease_until=until)
    try:
        with store.unit_of_work() as uow:
            version, _ = uow.update(OUTBOX, message.id, held.record(), if_match=message.version)
    except VersionConflict:
        return None
    return replace(held, version=version.version)


def done(store: Store, message: Message) -> None:
    with store.unit_of_work() as uow:
        uow.delete(OUTBOX, message.id)


def retry_later(store: Store, message: Message, next_ms: int, error: str) -> None:
    later = replace(message, next_ms=next_ms, lease_until=0, last_error=error[:500])
    with store.unit_of_work() as uow:
        uow.update(OUTBOX, message.id, later.record(), if_match=message.version)
