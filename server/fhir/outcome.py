"""OperationOutcome errors: one exception type, one response shape.

Every failure that reaches a client is a :class:`FhirError`. It carries the HTTP status and
one or more issues (severity, code, human text, FHIRPath expression of what was wrong), and
renders itself as an R4 OperationOutcome.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Issue:
    """One OperationOutcome.issue."""

    severity: str  # fatal | error | warning | information
    code: str  # IssueType: invalid, structure, required, value, invariant, not-found, ...
    diagnostics: str
    expression: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "severity": self.severity,
            "code": self.code,
            "diagnostics": self.diagnostics,
        }
        if self.expression:
            out["expression"] = list(self.expression)
        return out


def issue(
    diagnostics: str,
    *,
    code: str = "invalid",
    severity: str = "error",
    expression: str | tuple[str, ...] | list[str] | None = None,
) -> Issue:
    if expression is None:
        expr: tuple[str, ...] = ()
    elif isinstance(expression, str):
        expr = (expression,)
    else:
        expr = tuple(expression)
    return Issue(severity, code, diagnostics, expr)


def outcome(issues: list[Issue] | tuple[Issue, ...]) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [i.to_json() for i in issues]}


@dataclass
class FhirError(Exception):
    """A request failed; ``status`` is the HTTP status, ``issues`` say why."""

    status: int
    issues: list[Issue] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    @property
    def message(self) -> str:
        return "; ".join(i.diagnostics for i in self.issues) or f"HTTP {self.status}"

    def to_outcome(self) -> dict[str, Any]:
        return outcome(self.issues)

    @classmethod
    def of(
        cls,
        status: int,
        diagnostics: str,
        *,
        code: str = "invalid",
        severity: str = "error",
        expression: str | tuple[str, ...] | list[str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> FhirError:
        return cls(
            status,
            [issue(diagnostics, code=code, severity=severity, expression=expression)],
            dict(headers or {}),
        )


def not_found(type_: str, id_: str) -> FhirError:
    return FhirError.of(404, f"{type_}/{id_} is not known", code="not-found")


def gone(type_: str, id_: str, version: int) -> FhirError:
    return FhirError.of(
        410, f"{type_}/{id_} was deleted (version {version})", code="deleted"
    )


def conflict(diagnostics: str, expression: str | None = None) -> FhirError:
    return FhirError.of(409, diagnostics, code="conflict", expression=expression)


def precondition_failed(diagnostics: str) -> FhirError:
    return FhirError.of(412, diagnostics, code="conflict")
