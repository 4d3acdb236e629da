"""Delivering queued notifications to rest-hook endpoints, with bounded retries.

Each due outbox message is claimed (so one worker sends it), sent, and deleted on a 2xx
answer. A failure (connection error, timeout, any other status, a redirect) is retried
after a back-off that doubles from ``delivery_backoff_s``; after ``delivery_attempts``
attempts the message is dropped and its Subscription set to ``error`` with the reason
(``Subscription.error``), which stops further notifications until the subscriber sets it
``requested`` again. A notification carrying the resource shows it as the subscriber may see
it (a partial view by consent stays partial). Delivery is at least once: a worker that dies
after sending but before deleting leaves the message to be sent again when its claim
expires.
"""

from __future__ import annotations

import logging
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..fhir import jsonio
from ..fhir.outcome import FhirError
from ..fhir.service import FhirService, RequestContext
from ..store.port import now_instant
from . import outbox, subscribers
from .outbox import Message

log = logging.getLogger(__name__)
MAX_ANSWER_BYTES = 64 * 1024


@dataclass(frozen=True)
class DeliveryPolicy:
    attempts: int
    backoff_s: float
    timeout_s: float

    def backoff_ms(self, attempts: int) -> int:
        """The wait after the ``attempts``-th failed attempt."""
        return int(self.backoff_s * 1000 * 2 ** max(attempts - 1, 0))


class DeliveryError(Exception):
    pass


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a redirect is an answer that is not 2xx: a failed delivery


_OPENER = urllib.request.build_opener(_NoRedirect)


def deliver_due(service: FhirService, policy: DeliveryPolicy) -> tuple[int, int | None]:
    """Try every due message once. Returns (messages attempted, epoch ms when the next
    pending message is due, or None when none is pending)."""
    store = service.store
    now = now_instant()[1]
    attempted = 0
    for message in outbox.due(store, now):
        claimed = outbox.claim(store, message, now + int(policy.timeout_s * 1000) + 60_000)
        if claimed is None:
            continue
        attempted += 1
        _attempt(service, policy, claimed)
    waiting = [max(m.next_ms, m.lease_until) for m in outbox.pending(store)]
    return attempted, min(waiting) if waiting else None


def _attempt(service: FhirService, policy: DeliveryPolicy, message: Message) -> None:
    store = service.store
    found = store.read("Subscription", message.subscription)
    subscription = found.resource if found is not None and not found.deleted else None
    if subscription is None or subscription.get("status") != "active":
        outbox.done(store, message)  # nobody is listening any more
        return
    try:
        send(service, subscription, message, policy.timeout_s)
    except DeliveryError as exc:
        _failed(service, policy, subscription, message, str(exc))
        return
    outbox.done(store, message)


def _failed(service: FhirService, policy: DeliveryPolicy, subscription: dict[str, Any],
            message: Message, error: str) -> None:
    store = service.store
    if message.attempts < policy.attempts:
        log.info("Notification %s for Subscription/%s failed (attempt %d): %s", message.id,
                 message.subscription, message.attempts, error)
        outbox.retry_later(store, message, now_instant()[1] + policy.backoff_ms(
            message.attempts), error)
        return
    log.warning("Notification %s for Subscription/%s abandoned after %d attempts: %s",
                message.id, message.subscription, message.attempts, error)
    outbox.done(store, message)
    failed = {**subscription, "status": "error",
              "error": f"Delivery failed {message.attempts} times: {error}"[:1000]}
    try:
        service.update(RequestContext(base_url=""), "Subscription", str(subscription["id"]),
                       failed, if_match=int(subscription["meta"]["versionId"]))
    except FhirError as exc:  # changed meanwhile: the subscriber's version stands
        log.info("Subscription/%s not set to error: %s", subscription["id"], exc)


def send(service: FhirService, subscription: Mapping[str, Any], message: Message,
         timeout_s: float) -> None:
    """One rest-hook notification (raises :class:`DeliveryError` unless answered 2xx)."""
    channel = subscription.get("channel") or {}
    endpoint = str(channel.get("endpoint", ""))
    payload = channel.get("payload")
    headers = {"User-Agent": "Planbro notification"}
    for header in channel.get("header", []):
        name, _, value = str(header).partition(":")
        headers[name.strip()] = value.strip()
    if payload:
        version = service.store.vread(message.type, message.resource_id,
                                      message.resource_version)
        if version is None or version.resource is None:
            raise DeliveryError(f"{message.type}/{message.resource_id} version "
                                f"{message.resource_version} is gone")
        listener = subscribers.context(service.store, message.subscription)
        shown = service.access.shown(listener, version.resource)
        url = f"{endpoint.rstrip('/')}/{message.type}/{message.resource_id}"
        request = urllib.request.Request(url, data=jsonio.dumps(shown).encode(),
                                         method="PUT", headers={**headers,
                                                                "Content-Type": str(payload)})
    else:
        request = urllib.request.Request(endpoint, data=b"", method="POST", headers=headers)
    try:
        with _OPENER.open(request, timeout=timeout_s) as answer:
            answer.read(MAX_ANSWER_BYTES)
            status = answer.status
    except urllib.error.HTTPError as exc:
        raise DeliveryError(f"{request.full_url} answered HTTP {exc.code}") from exc
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise DeliveryError(f"{request.full_url}: {exc}") from exc
    if not 200 <= status < 300:
        raise DeliveryError(f"{request.full_url} answered HTTP {status}")
