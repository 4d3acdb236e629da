"""The ``/fhir`` blueprint: HTTP in, :class:`~server.fhir.service.FhirService` calls, HTTP out.

Nothing FHIR-specific is decided here beyond the wire: content negotiation (JSON only: XML is
406), media types of request bodies (415), the body size limit (413), the ``Prefer``,
``If-Match``, ``If-None-Exist`` and ``If-None-Match`` headers, and rendering results and
errors as ``application/fhir+json``. Every request passes :func:`_begin` first, which builds
the :class:`RequestContext`; the authenticated principal is taken from ``g.principal``, where
an authentication layer running before this blueprint puts it.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import parse_qsl

from flask import Blueprint, Flask, Response, current_app, g, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.routing import BaseConverter

from ..fhir import bundle, jsonio
from ..fhir.outcome import FhirError, issue, outcome
from ..fhir.patch import JSON_PATCH_MEDIA_TYPE
from ..fhir.search.normalize import serving
from ..fhir.service import PREFER_RETURN, FhirService, RequestContext, Result, parse_etags
from ..store.port import ETags, Precondition

log = logging.getLogger(__name__)

bp = Blueprint("fhir", __name__, url_prefix="/fhir")


class ResourceTypeConverter(BaseConverter):
    """A path segment that looks like a resource type (``Patient``), so that lower-case
    segments (``metadata``, ``_history``, ``_search``) never route as types."""

    regex = r"[A-Z][A-Za-z]{0,63}"


bp.record_once(lambda state: state.app.url_map.converters.setdefault(
    "rtype", ResourceTypeConverter))

FHIR_JSON = "application/fhir+json"
CONTENT_TYPE = f"{FHIR_JSON}; charset=utf-8"
RESOURCE_MEDIA_TYPES = (FHIR_JSON, "application/json", "application/json+fhir")
FORM_MEDIA_TYPE = "application/x-www-form-urlencoded"
_JSON_FORMATS = ("json", "application/json", "application/fhir+json", "application/json+fhir",
                 "text/json")
_SKIPPED_PARAMS = ("_format", "_pretty")
_ISSUE_CODES = {400: "invalid", 401: "login", 403: "forbidden", 404: "not-found",
                405: "not-supported", 406: "not-supported", 409: "conflict", 410: "deleted",
                412: "conflict", 413: "too-costly", 415: "not-supported", 422: "processing",
                429: "throttled"}


def service() -> FhirService:
    return current_app.extensions["planbro"].service


def ctx() -> RequestContext:
    context: RequestContext = g.fhir_context
    return context


# -- every request -----------------------------------------------------------------------------


# Open without a token: the CapabilityStatement (discovery documents live on other blueprints).
_PUBLIC_ENDPOINTS = ("fhir.capabilities",)


@bp.before_request
def _begin() -> Response | None:
    """CORS preflight; negotiation and size checks; the caller's token; then the request
    context (with the principal)."""
    auth = current_app.extensions["planbro"].auth
    if request.method == "OPTIONS":
        return Response(status=204, headers=auth.cors_headers(request.headers.get("Origin"),
                                                              preflight=True))
    if request.endpoint not in _PUBLIC_ENDPOINTS:
        g.principal = auth.authenticate(request)
    if request.endpoint != "fhir.search_post":  # whose form may name _format: it checks
        _check_format(request.args.getlist("_format"))
    if (request.content_length or 0) > _max_body():
        raise _too_large()
    prefer = _prefer()
    base_url = _base_url()
    serving(base_url)  # absolute references below it name resources here
    g.fhir_context = RequestContext(
        base_url=base_url,
        principal=g.get("principal"),
        prefer_return=prefer.get("return", "representation"),
        lenient=prefer.get("handling") == "lenient",
    )
    return None


def check_request_size() -> None:
    """414 / 431 for a request target (path and query) or a header field longer than the
    configured limits, before anything else (the caller's token included) is read. Runs for
    every request of the application. Under gunicorn, its header limits are set above these
    and its request line bound is about this URL limit (:mod:`server.gunicorn_conf`); what
    gunicorn refuses itself gets an OperationOutcome too (:mod:`server.gunicorn_worker`)."""
    config = current_app.extensions["planbro"].config
    target = request.environ.get("RAW_URI") or request.full_path
    if len(target) > config.max_url_bytes:
        raise FhirError.of(414, f"The request URL is {len(target)} bytes long; this server "
                           f"takes at most {config.max_url_bytes} (POST a search to "
                           "[type]/_search to send long criteria)", code="too-long")
    for name, value in request.headers.items():
        size = len(name) + 2 + len(value)  # as sent: "Name: value" (WSGI gives latin-1)
        if size > config.max_header_bytes:
            raise FhirError.of(431, f"The {name} header field is {size} bytes long; this "
                               f"server takes at most {config.max_header_bytes}",
                               code="too-long", expression=name)


@bp.after_request
def _cors(response: Response) -> Response:
    """CORS headers for the patient app's origin (nothing for other origins)."""
    auth = current_app.extensions["planbro"].auth
    response.headers.update(auth.cors_headers(request.headers.get("Origin")))
    return response


def _base_url() -> str:
    configured = current_app.extensions["planbro"].config.base_url
    return (configured or request.url_root + "fhir").rstrip("/")


def _check_format(requested: list[str]) -> None:
    """406 unless the answer may be our JSON: the ``_format`` values given (in the URL, or
    in a POST search's form), which override Accept, or else the Accept header."""
    for value in requested:
        media = value.split(";", 1)[0].strip().replace(" ", "+").lower()
        if media not in _JSON_FORMATS:
            raise FhirError.of(406, f"_format={value} is not supported; this server "
                               "speaks application/fhir+json only", code="not-supported")
    if requested:
        return
    accept = request.headers.get("Accept", "").strip()
    if accept and not any(_answerable(media_range) for media_range in accept.split(",")):
        raise FhirError.of(406, f"Cannot answer in {accept}; this server speaks "
                           "application/fhir+json (FHIR 4.0) only", code="not-supported")


_ANSWERABLE = (*(f for f in _JSON_FORMATS if "/" in f), "*/*", "application/*")
_FHIR_VERSIONS = ("4.0", "4.0.1")


def _answerable(media_range: str) -> bool:
    """Whether one range of an Accept header takes our JSON: its parameters may name a
    charset, a quality above 0 and FHIR version 4.0 (R4 http.html: the fhirVersion
    parameter)."""
    media, *params = (part.strip() for part in media_range.split(";"))
    if media.lower() not in _ANSWERABLE:
        return False
    for param in params:
        name, _, value = param.partition("=")
        name, value = name.strip().lower(), value.strip().strip('"')
        if name == "q" and _quality(value) == 0:
            return False  # not acceptable
        if name == "fhirversion" and value not in _FHIR_VERSIONS:
            return False
        if name == "charset" and value.lower() not in ("utf-8", "utf8"):
            return False
    return True


def _quality(value: str) -> float:
    """An Accept quality; an empty one is 0, one that is not a number is ignored (1)."""
    try:
        return float(value)
    except ValueError:
        return 1.0 if value else 0.0


def _prefer() -> dict[str, str]:
    """``Prefer: return=..., handling=...`` (unknown preferences are ignored)."""
    out: dict[str, str] = {}
    for header in request.headers.getlist("Prefer"):
        for part in header.split(","):
            name, _, value = part.strip().partition("=")
            value = value.strip().strip('"')
            if name == "return" and value in PREFER_RETURN:
                out["return"] = value
            elif name == "handling" and value in ("lenient", "strict"):
                out["handling"] = value
    return out


# -- request parts -----------------------------------------------------------------------------


def _params() -> list[tuple[str, str]]:
    return [(k, v) for k, v in request.args.items(multi=True) if k not in _SKIPPED_PARAMS]


def _max_body() -> int:
    limit: int = current_app.extensions["planbro"].config.max_body_bytes
    return limit


def _too_large() -> FhirError:
    return FhirError.of(413, f"The request body is larger than {_max_body()} bytes",
                        code="too-costly")


def _read_body() -> bytes:
    """The request body. The stream yields at most one byte more than the limit (the app's
    MAX_CONTENT_LENGTH), so a streamed (chunked) body that is too large shows here."""
    data = request.get_data(cache=False)
    if len(data) > _max_body():
        raise _too_large()
    return data


def _require_media_type(allowed: tuple[str, ...], hint: str = "") -> None:
    if request.mimetype not in allowed:
        given = request.mimetype or "no Content-Type"
        raise FhirError.of(415, f"Unsupported media type '{given}'; send "
                           f"{' or '.join(allowed)}{hint}", code="not-supported")


def _resource_body() -> dict[str, Any]:
    _require_media_type(RESOURCE_MEDIA_TYPES)
    return jsonio.loads_resource(_read_body())


def _patch_body() -> Any:
    _require_media_type((JSON_PATCH_MEDIA_TYPE,),
                        " (FHIRPath Patch is not supported)" if request.mimetype in
                        RESOURCE_MEDIA_TYPES else "")
    data = _read_body()
    if not data.strip():
        raise FhirError.of(400, "The request has no body; a JSON Patch was expected",
                           code="required")
    return jsonio.loads_request(data)


def _etags(header: str) -> ETags | None:
    """``If-Match`` / ``If-None-Match`` (several fields are one list, RFC 9110 5.3)."""
    values = request.headers.getlist(header)
    return parse_etags(", ".join(values), header) if values else None


def _precondition() -> Precondition | None:
    """The precondition of a write: its If-Match and If-None-Match (RFC 9110 13.1.1-2)."""
    return Precondition.of(_etags("If-Match"), _etags("If-None-Match"))


def _if_none_exist() -> list[tuple[str, str]] | None:
    value = request.headers.get("If-None-Exist")
    if value is None:
        return None
    return parse_qsl(value.split("?", 1)[-1], keep_blank_values=True)


def _respond(result: Result) -> Response:
    if result.body is None:  # no body, so no Content-Type (werkzeug's default is HTML)
        response = Response(status=result.status, headers=result.headers)
        response.headers.pop("Content-Type", None)
        return response
    return Response(jsonio.dumps(result.body), status=result.status, headers=result.headers,
                    content_type=CONTENT_TYPE)


# -- routes ------------------------------------------------------------------------------------


@bp.get("/metadata")
def capabilities() -> Response:
    return _respond(service().capabilities(ctx()))


@bp.post("", strict_slashes=False)
def batch_or_transaction() -> Response:
    return _respond(bundle.process(service(), ctx(), _resource_body()))


@bp.get("/_history")
def system_history() -> Response:
    return _respond(service().history(ctx(), _params()))


_READS = ("GET", "HEAD")
"""Methods that read: a HEAD is a GET whose answer has no body (RFC 9110 9.3.2), never a
write (Flask adds HEAD to every route that has GET)."""


def _require_method(expected: str) -> None:
    """Guard of a route's last branch: it runs for ``expected`` only (otherwise the 405
    every unsupported method gets)."""
    if request.method != expected:
        rule = request.url_rule
        raise MethodNotAllowed(valid_methods=sorted(rule.methods or ()) if rule else None)


@bp.route("/<rtype:rtype>", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
def type_level(rtype: str) -> Response:
    svc, params = service(), _params()
    svc.check_type(rtype)
    if request.method in _READS:
        return _respond(svc.search(ctx(), rtype, params))
    if request.method == "POST":
        return _respond(svc.create(ctx(), rtype, _resource_body(),
                                   if_none_exist=_if_none_exist()))
    if request.method == "PUT":
        return _respond(svc.conditional_update(ctx(), rtype, params, _resource_body(),
                                               if_match=_precondition()))
    if request.method == "PATCH":
        return _respond(svc.conditional_patch(ctx(), rtype, params, _patch_body(),
                                              if_match=_precondition()))
    _require_method("DELETE")
    return _respond(svc.conditional_delete(ctx(), rtype, params, if_match=_precondition()))


@bp.post("/<rtype:rtype>/_search")
def search_post(rtype: str) -> Response:
    service().check_type(rtype)
    _require_media_type((FORM_MEDIA_TYPE,))
    try:
        text = _read_body().decode()
    except UnicodeDecodeError as exc:
        raise FhirError.of(400, "The form is not UTF-8", code="structure") from exc
    form = parse_qsl(text, keep_blank_values=True)
    _check_format(request.args.getlist("_format") + [v for k, v in form if k == "_format"])
    return _respond(service().search(ctx(), rtype, _params() + [
        (k, v) for k, v in form if k not in _SKIPPED_PARAMS]))


@bp.get("/<rtype:rtype>/_history")
def type_history(rtype: str) -> Response:
    return _respond(service().history(ctx(), _params(), rtype))


@bp.post("/<rtype:rtype>/$validate")
def validate_type(rtype: str) -> Response:
    service().check_type(rtype)
    return _respond(service().validate(ctx(), rtype, _resource_body()))


@bp.route("/<rtype:rtype>/<rid>", methods=["GET", "PUT", "PATCH", "DELETE"])
def instance(rtype: str, rid: str) -> Response:
    svc = service()
    svc.check_type(rtype)
    svc.check_id(rid)
    if request.method in _READS:
        # an HTTP date (UTC); one that is not is ignored (None: RFC 9110 13.1.3)
        since = request.if_modified_since
        return _respond(svc.read(ctx(), rtype, rid, if_none_match=_etags("If-None-Match"),
                                 if_modified_since=since.isoformat() if since else None))
    if request.method == "PUT":
        return _respond(svc.update(ctx(), rtype, rid, _resource_body(), if_match=_precondition()))
    if request.method == "PATCH":
        return _respond(svc.patch(ctx(), rtype, rid, _patch_body(), if_match=_precondition()))
    _require_method("DELETE")
    return _respond(svc.delete(ctx(), rtype, rid, if_match=_precondition()))


@bp.post("/<rtype:rtype>/<rid>/$validate")
def validate_instance(rtype: str, rid: str) -> Response:
    service().check_type(rtype)
    return _respond(service().validate(ctx(), rtype, _resource_body(), rid))


@bp.route("/<rtype:rtype>/<rid>/$<name>", methods=["GET", "POST"])
def instance_operation(rtype: str, rid: str, name: str) -> Response:
    return _respond(service().operation(ctx(), rtype, rid, name, _operation_body()))


def _operation_body() -> Any:
    """The Parameters (or resource) POSTed to an operation; None for a GET or no body."""
    if request.method != "POST":
        return None
    data = _read_body()
    if not data.strip():
        return None
    _require_media_type(RESOURCE_MEDIA_TYPES)
    return jsonio.loads_resource(data)


@bp.get("/<rtype:rtype>/<rid>/_history")
def instance_history(rtype: str, rid: str) -> Response:
    return _respond(service().history(ctx(), _params(), rtype, rid))


@bp.get("/<rtype:rtype>/<rid>/_history/<vid>")
def vread(rtype: str, rid: str, vid: str) -> Response:
    return _respond(service().vread(ctx(), rtype, rid, vid))


# -- errors ------------------------------------------------------------------------------------


def register_error_handlers(app: Flask) -> None:
    """Every error leaves the application as an OperationOutcome."""
    app.register_error_handler(FhirError, _fhir_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)


def _outcome_response(status: int, body: dict[str, Any],
                      headers: dict[str, str] | None = None) -> Response:
    return Response(jsonio.dumps(body), status=status, headers=headers or {},
                    content_type=CONTENT_TYPE)


def _fhir_error(exc: FhirError) -> Response:
    return _outcome_response(exc.status, exc.to_outcome(), exc.headers)


def _http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    headers = {k: v for k, v in exc.get_headers() if k.lower() != "content-type"}
    text = exc.description or exc.name
    if status == 404:
        text = f"There is nothing at {request.path}"
    elif status == 405:
        text = f"{request.method} is not supported on {request.path}"
    body = outcome([issue(text, code=_ISSUE_CODES.get(status, "exception"))])
    return _outcome_response(status, body, headers)


def _unexpected(exc: Exception) -> Response:
    log.exception("Unhandled error in %s %s", request.method, request.path, exc_info=exc)
    body = outcome([issue("An internal error occurred; it has been logged",
                          code="exception", severity="fatal")])
    return _outcome_response(500, body)
