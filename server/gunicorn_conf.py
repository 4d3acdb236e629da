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

Workers: two processes per CPU (``WEB_CONCURRENCY`` sets another number), one request thread
each. Python runs one thread of a process at a time, so threads of one worker share a CPU, and
a thread that holds the database's write lock waits for the others' turns whenever it returns
from SQLite: processes keep writes short. On two CPUs with four clients, four single-thread
workers gave 11% more CarePlan creates per second than two workers of four threads (median of
seven alternating pairs); reads and searches moved both ways, within the machine's variation
from run to run.

Before the workers start, the main process brings the search index up to this server's rules
(:func:`on_starting`).
"""

from __future__ import annotations

import os
import sys

from gunicorn.http.message import MAX_REQUEST_LINE  # its largest bound (8,190 bytes)

from .config import Config

MIN_FIELD_BYTES = 64 * 1024
"""The smallest header field limit gunicorn is given (as ``http.server``'s line limit)."""


WORKER_CLASS = "server.gunicorn_worker.OutcomeWorker"
THREADS = 1
"""Request threads per worker (see the module doc)."""


def default_workers() -> int:
    """``WEB_CONCURRENCY`` when set (gunicorn's own convention), else two per CPU this
    process may use."""
    configured = os.environ.get("WEB_CONCURRENCY", "").strip()
    if configured:
        return int(configured)
    return 2 * len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
        else 2 * (os.cpu_count() or 1)


def settings(config: Config) -> dict[str, int | str]:
    """gunicorn's worker class and request limits for ``config``."""
    return {
        "worker_class": WORKER_CLASS,
        "limit_request_line": MAX_REQUEST_LINE,
        "limit_request_fields": 100,
        "limit_request_field_size": max(MIN_FIELD_BYTES, 2 * config.max_header_bytes),
    }


def on_starting(_server: object) -> None:
    """gunicorn's hook, in its main process before the workers start: the search index is
    brought up to this server's rules first (:func:`server.app.prepare_store`), so that no
    worker spends its start on it (gunicorn would take a long start for a hung worker)."""
    from .app import prepare_store

    prepare_store(Config.from_env(), log=lambda text: print(text, file=sys.stderr, flush=True))


# gunicorn reads its settings from the names of this module.
_SETTINGS = settings(Config.from_env())
worker_class = _SETTINGS["worker_class"]
workers = default_workers()
threads = THREADS
limit_request_line = _SETTINGS["limit_request_line"]
limit_request_fields = _SETTINGS["limit_request_fields"]
limit_request_field_size = _SETTINGS["limit_request_field_size"]
