"""Our signing keys: one JWK file per key id in the keys folder, imported once.

The newest key that is not retired signs. Rotation makes a new key and retires the others;
a retired key keeps verifying (and stays in the JWKS) until every token it signed has expired
(``verify_window`` seconds after retirement), then it is pruned. A running server notices
rotation done by another process (the CLI) within a few seconds, and at once when a token
names a key id it does not know.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from joserfc import jwk

from .config import SIGNING_ALGS

_SUFFIX = ".jwk.json"


@dataclass(frozen=True)
class SigningKey:
    kid: str
    alg: str
    private: jwk.Key
    public: jwk.Key
    created: int
    retired: int | None = None

    def verifies_at(self, now: float, verify_window: int) -> bool:
        return self.retired is None or now < self.retired + verify_window

    def public_jwk(self) -> dict[str, Any]:
        data = self.public.as_dict(private=False)
        data.update({"kid": self.kid, "alg": self.alg, "use": "sig"})
        return data

    def to_file_json(self) -> dict[str, Any]:
        return {
            "kid": self.kid,
            "alg": self.alg,
            "created": self.created,
            "retired": self.retired,
            "jwk": self.private.as_dict(private=True),
        }


def _new_key(alg: str) -> SigningKey:
    if alg not in SIGNING_ALGS:
        raise ValueError(f"signing algorithm must be one of {SIGNING_ALGS}, not {alg!r}")
    private: jwk.Key
    if alg == "ES256":
        private = jwk.ECKey.generate_key("P-256", private=True)
    else:
        private = jwk.RSAKey.generate_key(3072, private=True)
    kid = private.thumbprint()
    public = jwk.import_key(private.as_dict(private=False))
    return SigningKey(kid, alg, private, public, int(time.time()))


def _read_key(path: Path) -> SigningKey:
    data = json.loads(path.read_text(encoding="utf-8"))
    private = jwk.import_key(data["jwk"])
    if not private.is_private:
        raise ValueError(f"{path}: a signing key file must hold a private key")
    public = jwk.import_key(private.as_dict(private=False))
    return SigningKey(
        kid=str(data["kid"]),
        alg=str(data["alg"]),
        private=private,
        public=public,
        created=int(data["created"]),
        retired=data.get("retired"),
    )


def _write_key(directory: Path, key: SigningKey) -> None:
    path = directory / f"{key.kid}{_SUFFIX}"
    tmp = directory / f".{key.kid}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(key.to_file_json(), fh)
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(directory / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def list_keys(directory: Path) -> list[SigningKey]:
    """Every key on disk, oldest first."""
    if not directory.is_dir():
        return []
    keys = [_read_key(p) for p in sorted(directory.glob(f"*{_SUFFIX}"))]
    return sorted(keys, key=lambda k: (k.created, k.kid))


def _active(keys: list[SigningKey]) -> SigningKey | None:
    live = [k for k in keys if k.retired is None]
    return live[-1] if live else None


def generate(directory: Path, alg: str) -> SigningKey | None:
    """Create the first signing key; None (and nothing written) when one is already active."""
    with _locked(directory):
        if _active(list_keys(directory)) is not None:
            return None
        key = _new_key(alg)
        _write_key(directory, key)
        return key


def rotate(
    directory: Path, alg: str, verify_window: int
) -> tuple[SigningKey, list[SigningKey], list[str]]:
    """Make a new signing key, retire the others, prune keys past their verify window.

    Returns (new key, keys retired now, key ids pruned)."""
    with _locked(directory):
        now = int(time.time())
        new = _new_key(alg)
        _write_key(directory, new)
        retired: list[SigningKey] = []
        pruned: list[str] = []
        for key in list_keys(directory):
            if key.kid == new.kid:
                continue
            if key.retired is None:
                key = replace(key, retired=now)
                _write_key(directory, key)
                retired.append(key)
            elif not key.verifies_at(now, verify_window):
                (directory / f"{key.kid}{_SUFFIX}").unlink(missing_ok=True)
                pruned.append(key.kid)
        return new, retired, pruned


class KeyRing:
    """The keys one process signs and verifies with (imported once, reloaded on change)."""

    def __init__(
        self,
        directory: Path,
        *,
        alg: str,
        verify_window: int,
        reload_interval: float = 5.0,
    ) -> None:
        self.directory = directory
        self.alg = alg
        self.verify_window = verify_window
        self._reload_interval = reload_interval
        self._lock = threading.Lock()
        self._checked = 0.0
        self._mtime = -1
        self._keys: dict[str, SigningKey] = {}
        self._active: SigningKey | None = None
        self._jwks: dict[str, Any] = {"keys": []}
        generate(directory, alg)
        self._load()

    def _dir_mtime(self) -> int:
        try:
            return self.directory.stat().st_mtime_ns
        except FileNotFoundError:
            return -1

    def _load(self) -> None:
        mtime = self._dir_mtime()
        keys = list_keys(self.directory)
        active = _active(keys)
        if active is None:
            raise RuntimeError(f"no active signing key in {self.directory}")
        now = time.time()
        live = {k.kid: k for k in keys if k.verifies_at(now, self.verify_window)}
        self._keys = live
        self._active = active
        self._jwks = {"keys": [k.public_jwk() for k in live.values()]}
        self._mtime = mtime

    def _maybe_reload(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._checked < self._reload_interval:
            return
        with self._lock:
            if not force and now - self._checked < self._reload_interval:
                return
            self._checked = now
            if force or self._dir_mtime() != self._mtime:
                self._load()

    def reload(self) -> None:
        """Read the keys folder again now (e.g. right after a rotation)."""
        self._maybe_reload(force=True)

    @property
    def active(self) -> SigningKey:
        self._maybe_reload()
        assert self._active is not None
        return self._active

    def verifier(self, kid: str) -> SigningKey | None:
        """The key with this id if it still verifies (reloading once if it is unknown)."""
        self._maybe_reload()
        key = self._keys.get(kid)
        if key is None and time.monotonic() - self._checked >= 1.0:
            self._maybe_reload(force=True)
            key = self._keys.get(kid)
        if key is not None and not key.verifies_at(time.time(), self.verify_window):
            return None
        return key

    def jwks(self) -> dict[str, Any]:
        self._maybe_reload()
        return self._jwks
