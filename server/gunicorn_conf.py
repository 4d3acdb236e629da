"""gunicorn's settings for Planbro: ``gunicorn -c python:server.gunicorn_conf
'server.app:create_app()'`` (the Docker image and the benchmark start it so, and ``planbro
serve`` applies :func:`limits` itself).

gunicorn answers a request line over 4094 bytes and a header field over 8190 bytes with an
HTML page of its own (414, 431). Planbro has limits of its own (``PLANBRO_MAX_URL_BYTES``,
``PLANBRO_MAX_HEADER_BYTES``, 8 KiB each) and answers a request over them with an
OperationOutcome (:func:`server.api.fhir.check_request_size`), so gunicorn's limits are set
above them: the request line has none of gunicorn's (0: its largest finite limit, 8190,
would be below a request line that carries an 8 KiB URL), header fields may be twice the
application's limit (at least 64 KiB, as Python's own HTTP server). A deployment that faces
the internet keeps a proxy in front with its own limits.
"""

from __future__ import annotations

from .config import Config

MIN_FIELD_BYTES = 64 * 1024
"""The smallest header field limit gunicorn is given (as ``http.server``'s line limit)."""


def limits(config: Config) -> dict[str, int]:
    """gunicorn's request limits for ``config``: above the application's own."""
    return {
        "limit_request_line": 0,  # none: the application refuses a URL over its limit
        # (gunicorn reads 0 here as its default, 8190, not as "no limit")
        "limit_request_field_size": max(MIN_FIELD_BYTES, 2 * config.max_header_bytes),
    }


# gunicorn reads its settings from the names of this module.
_LIMITS = limits(Config.from_env())
limit_request_line = _LIMITS["limit_request_line"]
limit_request_field_size = _LIMITS["limit_request_field_size"]
