"""R4 Subscriptions: who wants to hear about which changes.

A Subscription's ``criteria`` is a search of one resource type
(``Task?owner=Organization/k&status=requested``). After every create and update (R4: not on
deletes) the new version is checked against each active subscription's criteria - the same
search, restricted to that one resource, inside the same unit of work, run as the subscriber
(:mod:`server.notify.subscribers`: its scopes and what access control lets it see) - and a
match queues a notification in the outbox (:mod:`server.notify.outbox`), committed or rolled
back with the change. Matching happens when all writes of the unit of work are done (so a
subscriber sees what the whole transaction grants it), against the resources as they are then;
the audit records the server writes are never announced.

What is accepted: channel type ``rest-hook``; an ``https`` endpoint (``http`` to a loopback
address only when the settings allow it); ``payload`` absent (an empty POST to the endpoint)
or ``application/fhir+json`` (the resource is PUT to ``<endpoint>/<type>/<id>``); criteria
with search parameters only (no ``_include``, ``_sort``, ``_summary`` ...). A Subscription
posted ``requested`` becomes ``active``; ``off`` stops notifications; the server sets
``error`` (with ``Subscription.error``) when deliveries keep failing. A subscription whose
``end`` has passed notifies no more.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import threading
import weakref
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from ..fhir.outcome import FhirError
from ..fhir.search.normalize import date_range
from ..fhir.search.parse import ParsedSearch, parse_search
from ..fhir.service import FhirService, RequestContext, WriteContext
from ..fhir.types import STORED_TYPES
from ..store.port import HistoryQuery, UnitOfWork, Version, now_instant
from . import outbox, subscribers

FHIR_JSON = "application/fhir+json"
_NOT_FILTERS = ("_include", "_revinclude", "_sort", "_count", "_offset", "_page", "_summary",
                "_elements", "_total", "_contained", "_containedType")


@dataclasses.dataclass(frozen=True)
class Criteria:
    type: str
    params: list[tuple[str, str]]


def install(service: FhirService, *, allow_loopback: bool,
            queued: Callable[[], None]) -> None:
    """Check Subscriptions when written, and queue notifications for every matching write;
    ``queued`` is called after a notification was queued (to wake the delivery)."""
    matcher = _Matcher(service, queued)
    service.before_write.append(lambda w: _check_subscription(service, w, allow_loopback))
    service.after_write.append(matcher.written)
    service.before_commit.append(matcher.match)
    subscribers.install(service)


# -- checking a Subscription ------------------------------------------------------------------


def parse_criteria(service: FhirService, criteria: Any) -> Criteria:
    where = "Subscription.criteria"
    if not isinstance(criteria, str) or not criteria.strip():
        raise _invalid("The criteria is a search such as Task?owner=Organization/1", where)
    type_, _, query = criteria.strip().partition("?")
    if type_ not in STORED_TYPES or type_ == "Bundle":
        raise _invalid(f"'{type_}' is not a resource type this server stores", where)
    params = parse_qsl(query, keep_blank_values=True)
    bad = [name for name, _ in params if name.split(":")[0] in _NOT_FILTERS]
    if bad:
        raise _invalid(f"The criteria may only filter; not {', '.join(bad)}", where)
    try:
        _parse(service, type_, params)
    except FhirError as exc:
        raise FhirError(422, [dataclasses.replace(i, expression=(where,))
                              for i in exc.issues]) from exc
    return Criteria(type_, params)


def _parse(service: FhirService, type_: str, params: list[tuple[str, str]]) -> ParsedSearch:
    return parse_search(service.registry, type_, params, max_count=service.config.max_count)


def endpoint_problem(endpoint: Any, allow_loopback: bool) -> str | None:
    """Why ``endpoint`` may not be notified (None: it may)."""
    if not isinstance(endpoint, str):
        return "a rest-hook subscription needs channel.endpoint"
    parts = urlsplit(endpoint)
    if parts.scheme == "https" and parts.hostname:
        return None
    if parts.scheme == "http" and allow_loopback and _loopback(parts.hostname or ""):
        return None
    return ("the endpoint must be an https URL" + (" (or http to a loopback address)"
                                                  if allow_loopback else ""))


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_subscription(service: FhirService, write: WriteContext, allow_loopback: bool) -> None:
    subscription = write.resource
    if write.type != "Subscription" or subscription is None:
        return
    criteria = parse_criteria(service, subscription.get("criteria"))
    service.guard.check(write.ctx, "search-type", criteria.type)  # 403 naming the scope
    channel = subscription.get("channel") or {}
    if channel.get("type") != "rest-hook":
        raise FhirError.of(422, f"Channel type {channel.get('type')!r} is not supported; "
                           "use rest-hook", code="not-supported",
                           expression="Subscription.channel.type")
    problem = endpoint_problem(channel.get("endpoint"), allow_loopback)
    if problem:
        raise _invalid(f"Subscription.channel.endpoint: {problem}",
                       "Subscription.channel.endpoint")
    payload = channel.get("payload")
    if payload not in (None, FHIR_JSON, "application/json"):
        raise FhirError.of(422, f"Payload {payload!r} is not supported; leave it out or use "
                           f"{FHIR_JSON}", code="not-supported",
                           expression="Subscription.channel.payload")
    for index, header in enumerate(channel.get("header", [])):
        if ":" not in str(header):
            raise _invalid("A channel header is 'Name: value'",
                           f"Subscription.channel.header[{index}]")
    if subscription.get("status") == "requested":
        subscription["status"] = "active"


def _invalid(text: str, where: str) -> FhirError:
    return FhirError.of(422, text, code="invalid", expression=where)


# -- matching writes --------------------------------------------------------------------------


class _Matcher:
    """Collects what a unit of work writes, and matches it when all its writes - and the
    access grants they change - are done, just before it commits."""

    def __init__(self, service: FhirService, queued: Callable[[], None]) -> None:
        self.service = service
        self.queued = queued
        self._written: weakref.WeakKeyDictionary[UnitOfWork, dict[tuple[str, str], int]] = (
            weakref.WeakKeyDictionary())
        self._changing: weakref.WeakSet[UnitOfWork] = weakref.WeakSet()  # wrote a Subscription
        self._known: tuple[int, dict[str, list[dict[str, Any]]]] = (-1, {})
        self._lock = threading.Lock()

    def written(self, write: WriteContext, version: Version) -> None:
        if write.type == "Subscription":
            with self._lock:
                self._changing.add(write.uow)
        if (version.deleted or version.resource is None or write.type not in STORED_TYPES
                or write.type in self.service.server_records):
            return
        with self._lock:
            self._written.setdefault(write.uow, {})[(version.type, version.id)] = (
                version.version)

    def match(self, ctx: RequestContext, uow: UnitOfWork) -> None:
        with self._lock:
            written = self._written.pop(uow, {})
            changing = uow in self._changing
            self._changing.discard(uow)
        if not written:
            return
        now = now_instant()[1]
        found = 0
        by_type = self._subscriptions(uow, remember=not changing)
        for (type_, id_), version in written.items():
            if type_ not in by_type:
                by_type[type_] = of_type(self.service, uow, type_)
            for subscription in by_type[type_]:
                if not _not_ended(subscription, now):
                    continue
                criteria = parse_criteria(self.service, subscription.get("criteria"))
                listener = subscribers.context(uow, str(subscription["id"]), ctx.base_url)
                if matches(self.service, uow, criteria, id_, listener):
                    outbox.enqueue(uow, str(subscription["id"]), type_, id_, version, now)
                    found += 1
        if found:
            self.queued()

    def _subscriptions(self, uow: UnitOfWork, *, remember: bool
                       ) -> dict[str, list[dict[str, Any]]]:
        """Where :meth:`match` keeps the active subscriptions of each type it looks up
        (:func:`of_type`), for ``uow``. Every write looks for them, so this process keeps
        them while no Subscription changes: each change, in any process, adds a version to
        their history, whose length is read here. A unit of work that changed one itself
        (``remember`` False) gets a fresh dict: what it sees may yet be rolled back."""
        if not remember:
            return {}
        _, versions = uow.history(HistoryQuery(type="Subscription", count=0))
        with self._lock:
            if self._known[0] != versions:
                self._known = (versions, {})
            return self._known[1]


def of_type(service: FhirService, uow: UnitOfWork, type_: str) -> list[dict[str, Any]]:
    """The active subscriptions whose criteria search ``type_`` (ended ones included)."""
    found = service.lookup(uow, "Subscription", {"status": "active", "criteria": type_},
                           limit=service.config.max_count)
    return [s for s in found if str(s.get("criteria", "")).partition("?")[0] == type_]


def _not_ended(subscription: Mapping[str, Any], now: int) -> bool:
    end = subscription.get("end")
    if not end:
        return True
    try:
        return date_range(str(end))[1] >= now
    except ValueError:
        return False


def matches(service: FhirService, uow: UnitOfWork, criteria: Criteria, id_: str,
            listener: RequestContext) -> bool:
    """Whether the resource ``criteria.type/id_`` (as ``uow`` sees it) matches, as the
    ``listener`` may see it (its scopes and access control's view)."""
    try:
        service.guard.check(listener, "search-type", criteria.type)
    except FhirError:
        return False  # the subscriber may no longer search the type
    parsed = _parse(service, criteria.type, [*criteria.params, ("_id", id_)])
    query = dataclasses.replace(parsed.query, count=1, offset=0, total=False)
    return bool(uow.search(service.access.restrict(listener, query)).resources)
