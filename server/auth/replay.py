"""One-time-use checks (client assertion ``jti``, DPoP proof ``jti``): one store call each."""

from __future__ import annotations

import time

from ..store.port import Store


class ReplayCache:
    """Remembers values until they could no longer be accepted anyway.

    Backed by the store's key-value part with an atomic insert-if-absent, so it holds across
    processes that share the store."""

    def __init__(self, store: Store, namespace: str = "auth_replay") -> None:
        self._store = store
        self._ns = namespace

    def first_use(self, scope: str, value: str, until: float) -> bool:
        """Record ``value`` within ``scope`` until epoch second ``until``; False if it was
        already recorded (a replay)."""
        expires_ms = int(max(until, time.time() + 1) * 1000)
        return self._store.kv_put(
            self._ns, f"{scope}:{value}", {"until": int(until)},
            expires_ms=expires_ms, only_if_absent=True,
        )
