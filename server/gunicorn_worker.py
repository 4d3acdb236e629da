"""gunicorn's threaded worker, answering the requests gunicorn refuses itself with an
OperationOutcome (``worker_class`` in :mod:`server.gunicorn_conf`).

gunicorn refuses a request it cannot parse, or one over its limits, before the application
sees it: a malformed request line or header, a request line over its bound (414), too many or
too long header fields (431), a transfer coding it does not know (501). It answers with an
HTML page of its own (``gunicorn.util.write_error``). A FHIR client expects an
OperationOutcome for every error, so this worker has gunicorn write one instead: the same
status, reason and message that gunicorn chose, as ``application/fhir+json``. gunicorn still
decides which errors there are, logs them and closes the connection after them.
"""

from __future__ import annotations

import socket
from typing import Any

from gunicorn import util
from gunicorn.workers.gthread import ThreadWorker

from .fhir import jsonio
from .fhir.outcome import issue, outcome

_CODES = {400: "structure", 403: "forbidden", 414: "too-long", 417: "not-supported",
          431: "too-long", 501: "not-supported"}
"""The IssueType of each status gunicorn refuses a request with (others: ``exception``)."""

_HINTS = {414: "; POST a search to [type]/_search to send long criteria"}


def outcome_page(status: int, reason: str, message: str) -> bytes:
    """The HTTP response gunicorn's refusal ``status`` gets: an OperationOutcome that says
    ``message`` (or ``reason`` when gunicorn gives no message, as for its own 500)."""
    text = (message or reason) + _HINTS.get(status, "")
    body = jsonio.dumps(outcome([issue(text, code=_CODES.get(status, "exception"))])).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\n"
            f"Content-Type: application/fhir+json; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode("latin-1") + body


def write_outcome(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
    """``gunicorn.util.write_error`` with an OperationOutcome for a body."""
    util.write_nonblock(sock, outcome_page(status_int, reason, mesg))


class OutcomeWorker(ThreadWorker):
    """gunicorn's ``gthread`` worker whose error pages are OperationOutcomes, and which
    quits once however many quit signals it gets."""

    _quitting = False

    def init_process(self) -> Any:
        # Set in the worker process only (after the fork), before it serves a request.
        util.write_error = write_outcome
        return super().init_process()

    def handle_quit(self, sig: int, frame: Any) -> None:
        """SIGINT / SIGQUIT: quit now. Ctrl+C reaches the workers as well as the master,
        which passes SIGQUIT on, so a second signal may come while the first one's handler
        shuts the thread pool down under the pool's lock; handled again, it would wait for
        that lock forever (until the master kills the worker, after its graceful timeout).
        The worker is quitting already: the second is let be."""
        if self._quitting:
            return
        self._quitting = True
        super().handle_quit(sig, frame)
