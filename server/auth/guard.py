"""The FHIR service's guard for SMART scopes: what KIND of access a token gives.

Which PEOPLE a caller may see is decided separately (care team and consent); this guard only
reads scopes. A request without a principal comes from inside the server (demo loading, the
CLI) and is not limited here; every request through the FHIR API has a principal, because the
API authenticates before it calls the service.
"""

from __future__ import annotations

from ..fhir.outcome import FhirError
from ..fhir.service import RequestContext
from ..fhir.types import STORED_TYPES
from .principal import Principal
from .scopes import KIND_CONTEXTS, require


class ScopeGuard:
    def check(self, ctx: RequestContext, interaction: str, type_: str | None) -> None:
        principal: Principal | None = ctx.principal
        if principal is None:
            return
        if type_ is not None:
            require(principal, interaction, type_)
            return
        # System-level interactions (history of everything) need the permission on every type.
        for each in STORED_TYPES:
            require(principal, interaction, each)

    def restriction(self, ctx: RequestContext, type_: str, perm: str) -> list[tuple[str, str]]:
        principal: Principal | None = ctx.principal
        if principal is None:
            return []
        alternatives = principal.scopes.restrictions(
            type_, perm, contexts=KIND_CONTEXTS.get(principal.kind, ()))
        if len(alternatives) > 1:
            # Search criteria are AND-ed; several differently restricted scopes for one type
            # would need an OR across parameters, which a search cannot express.
            raise FhirError.of(
                403, f"The token has several query-restricted scopes for {type_}; "
                "ask for one scope per resource type", code="forbidden")
        return alternatives[0] if alternatives else []
