"""A WSGI application that answers every request at once with a small FHIR resource - for
the benchmark only: served by the same gunicorn and measured with the same clients as the
server, it shows what the HTTP server, the clients and the machine cost per request before
any of Planbro's work (the floor under every figure).

    gunicorn 'bench.floor:app'
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

_BODY = b'{"resourceType":"Basic","id":"floor","code":{"text":"answered at once"}}'
_HEADERS = [("Content-Type", "application/fhir+json"), ("Content-Length", str(len(_BODY)))]


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    environ["wsgi.input"].read()  # a request body is read, as a server reads it
    start_response("200 OK", _HEADERS)
    return [_BODY]
