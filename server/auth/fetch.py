"""Small JSON-over-HTTP client for JWKS, discovery documents and the upstream token endpoint.

Uses the standard library only; bounded in time and size."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlencode

MAX_BYTES = 1024 * 1024


class FetchError(Exception):
    """The remote end could not be reached or did not answer with a JSON object."""

    def __init__(self, message: str, status: int | None = None, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


def _read_json(resp: Any, url: str) -> dict[str, Any]:
    raw = resp.read(MAX_BYTES + 1)
    if len(raw) > MAX_BYTES:
        raise FetchError(f"{url}: response larger than {MAX_BYTES} bytes")
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise FetchError(f"{url}: response is not JSON") from exc
    if not isinstance(data, dict):
        raise FetchError(f"{url}: response is not a JSON object")
    return data


def request_json(
    url: str,
    *,
    form: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 5.0,
) -> dict[str, Any]:
    """GET ``url`` (or POST ``form`` url-encoded) and return the JSON object answered."""
    if not url.startswith(("https://", "http://")):
        raise FetchError(f"{url}: only http(s) URLs are fetched")
    body = urlencode(form).encode() if form is not None else None
    req = urllib.request.Request(url, data=body, method="POST" if form is not None else "GET")
    req.add_header("Accept", "application/json")
    if body is not None:
        req.add_header("Content-Type", "application/x-www-form-urlencoded")
    for name, value in (headers or {}).items():
        req.add_header(name, value)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return _read_json(resp, url)
    except urllib.error.HTTPError as exc:
        try:
            detail: Any = _read_json(exc, url)
        except FetchError:
            detail = None
        raise FetchError(f"{url}: HTTP {exc.code}", exc.code, detail) from exc
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise FetchError(f"{url}: {exc}") from exc
