"""gunicorn's settings for Planbro: ``gunicorn -c python:server.gunicorn_conf
'server.app:create_app()'`` (the Docker image and the benchmark start it so, and ``planbro
serve`` applies :func:`settings` itself).

gunicorn refuses some requests before Planbro sees them: a malformed request line or header,
a request line over its bound, too many header fields or one over its bound. The worker
class (:class:`server.gunicorn_worker.OutcomeWorker`, gunicorn's threaded worker) answers
those with an OperationOutcome too, instead of gunicorn's HTML page.

Planbro has limits of its own (``PLANBRO_MAX_URL_BYTES``, ``PLANBRO_MAX_HEADER_BYTES``, 8 KiB
each) and answers a request over them with an OperationOutcome that names the header field
(:func:`server.api.fhir.check_request_size`). gunicorn's are set at or above them: a request
line may have gunicorn's largest bound, 8,190 bytes (with no bound gunicorn would buffer a
request line of any length); a header field may be twice the application's limit (at least
64 KiB, as Python's own HTTP server); a request may have 100 header fields.
"""

from __future__ import annotations

from gunicorn.http.message import MAX_REQUEST_LINE  # its largest bound (8,190 bytes)

from .config import Config

MIN_FIELD_BYTES = 64 * 1024
"""The smallest header field limit gunicorn is given (as ``http.server``'s line limit)."""


WORKER_CLASS = "server.gunicorn_worker.OutcomeWorker"


def settings(config: Config) -> dict[str, int | str]:
    """gunicorn's worker class and request limits for ``config``."""
    return {
        "worker_class": WORKER_CLASS,
        "limit_request_line": MAX_REQUEST_LINE,
        "limit_request_fields": 100,
        "limit_request_field_size": max(MIN_FIELD_BYTES, 2 * config.max_header_bytes),
    }


# gunicorn reads its settings from the names of this module.
_SETTINGS = settings(Config.from_env())
worker_class = _SETTINGS["worker_class"]
limit_request_line = _SETTINGS["limit_request_line"]
limit_request_fields = _SETTINGS["limit_request_fields"]
limit_request_field_size = _SETTINGS["limit_request_field_size"]
