"""FHIR JSON in and out, keeping decimals exactly as the client wrote them.

FHIR decimals carry their precision (``1.10`` is not ``1.1``), so numbers with a fraction or
exponent are parsed as :class:`decimal.Decimal` and written back unchanged.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec

from .outcome import FhirError

_DECODER = msgspec.json.Decoder(float_hook=Decimal)
_ENCODER = msgspec.json.Encoder(decimal_format="number")


def loads(text: str | bytes) -> Any:
    """Parse JSON; a syntax error becomes a 400 OperationOutcome."""
    try:
        return _DECODER.decode(text)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise FhirError.of(
            400, f"The body is not valid JSON: {exc}", code="structure"
        ) from exc


def loads_resource(text: str | bytes) -> dict[str, Any]:
    """Parse a request body that must be a JSON object (a FHIR resource)."""
    if not text or not text.strip():
        raise FhirError.of(400, "The request has no body; a FHIR resource was expected",
                           code="required")
    data = loads(text)
    if not isinstance(data, dict):
        raise FhirError.of(400, "The body must be a JSON object (a FHIR resource)",
                           code="structure")
    return data


def dumps(data: Any) -> str:
    return _ENCODER.encode(data).decode()
