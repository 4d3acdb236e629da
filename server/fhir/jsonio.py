"""FHIR JSON in and out, keeping decimals exactly as the client wrote them.

FHIR decimals carry their precision (``1.10`` is not ``1.1``), so numbers with a fraction or
exponent are parsed as :class:`decimal.Decimal` and written back unchanged.

A request body whose object repeats a key (``{"active": true, "active": false}``) is refused
(:func:`loads_request`): JSON leaves it undefined (RFC 8259 4) and FHIR JSON has each
property once, while the parser would keep the last value silently. Telling costs a few
microseconds on the parse of every body (:func:`_repeats_a_key`); only a body that may
repeat one is parsed again, keeping every pair, to name where.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

import msgspec

from .outcome import FhirError

_DECODER = msgspec.json.Decoder(float_hook=Decimal)
_ENCODER = msgspec.json.Encoder(decimal_format="number")
_ESCAPED_COLON = re.compile(rb"\\u003[aA]")


def loads(text: str | bytes) -> Any:
    """Parse JSON; a syntax error becomes a 400 OperationOutcome. For JSON this server wrote
    itself (request bodies: :func:`loads_request`)."""
    try:
        return _DECODER.decode(text)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise FhirError.of(
            400, f"The body is not valid JSON: {exc}", code="structure"
        ) from exc


def loads_request(text: str | bytes) -> Any:
    """Parse a request body as :func:`loads`; an object that repeats a key is 400 naming
    where (``Patient.active``)."""
    data = loads(text)
    if _repeats_a_key(text, data):
        try:
            where = _repeated_key(text)
        except RecursionError as exc:
            raise FhirError.of(400, "The body is nested too deeply", code="structure") from exc
        if where is not None:
            raise FhirError.of(400, f"{where} is given more than once in the same JSON "
                               "object; each property may appear only once",
                               code="structure", expression=where)
    return data


def loads_resource(text: str | bytes) -> dict[str, Any]:
    """Parse a request body that must be a JSON object (a FHIR resource)."""
    if not text or not text.strip():
        raise FhirError.of(400, "The request has no body; a FHIR resource was expected",
                           code="required")
    data = loads_request(text)
    if not isinstance(data, dict):
        raise FhirError.of(400, "The body must be a JSON object (a FHIR resource)",
                           code="structure")
    return data


def dumps(data: Any) -> str:
    return _ENCODER.encode(data).decode()


# -- repeated keys -----------------------------------------------------------------------------


def _repeats_a_key(text: str | bytes, data: Any) -> bool:
    """Whether the JSON ``text``, which parsed to ``data``, may have an object with a repeated
    key; exact when there is no escaped colon (``\\u003a``) in it, else True.

    Outside strings a JSON text has a colon after each key and nowhere else; inside them the
    colons of the parsed strings, unless escaped. ``data`` written out again has a colon
    after each key it kept and the same colons in its strings. So without escaped colons the
    text has more colons than ``data`` written out exactly when the parse dropped a pair: a
    key that came again (with its value)."""
    if isinstance(text, str):
        text = text.encode()
    if b"\\" in text and _ESCAPED_COLON.search(text):
        return True
    return text.count(b":") != _ENCODER.encode(data).count(b":")


class _Pairs(list[tuple[str, Any]]):
    """A JSON object as its (key, value) pairs, a repeated key included."""


def _repeated_key(text: str | bytes) -> str | None:
    """The path (``Patient.contact[0].name``) of the first key an object of ``text``
    repeats, None when none does. The top level is named by its ``resourceType``."""
    tree = json.loads(text, object_pairs_hook=_Pairs, parse_float=str, parse_int=str)
    root = dict(tree).get("resourceType") if isinstance(tree, _Pairs) else None
    return _first_repeat(tree, root if isinstance(root, str) else "")


def _first_repeat(node: Any, path: str) -> str | None:
    if isinstance(node, _Pairs):
        seen: set[str] = set()
        for key, _ in node:
            if key in seen:
                return f"{path}.{key}" if path else key
            seen.add(key)
        children = ((f"{path}.{key}" if path else key, value) for key, value in node)
    elif isinstance(node, list):
        children = ((f"{path}[{i}]", item) for i, item in enumerate(node))
    else:
        return None
    for where, child in children:
        found = _first_repeat(child, where)
        if found is not None:
            return found
    return None
