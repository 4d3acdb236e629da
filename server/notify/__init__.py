"""Notifications: R4 Subscriptions (rest-hook), an outbox written in the same unit of work as
the change, and delivery with bounded retries by a background worker.

:func:`install` wires the subscription checks and matching into a
:class:`~server.fhir.service.FhirService` and returns the :class:`Notifier`, whose
:meth:`Notifier.deliver` the worker runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..fhir.service import FhirService
from ..store.port import now_instant
from . import subscriptions
from .delivery import DeliveryPolicy, deliver_due


@dataclass
class Notifier:
    service: FhirService
    policy: DeliveryPolicy
    on_queued: list[Callable[[], None]] = field(default_factory=list)

    def queued(self) -> None:
        for callback in self.on_queued:
            callback()

    def deliver(self) -> float | None:
        """Try the due notifications; seconds until the next pending one is due (None: none
        is pending)."""
        _, next_ms = deliver_due(self.service, self.policy)
        if next_ms is None:
            return None
        return max(0.0, (next_ms - now_instant()[1]) / 1000)


def install(service: FhirService, policy: DeliveryPolicy, *,
            allow_loopback: bool) -> Notifier:
    notifier = Notifier(service, policy)
    subscriptions.install(service, allow_loopback=allow_loopback, queued=notifier.queued)
    return notifier
