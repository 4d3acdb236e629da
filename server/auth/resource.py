"""Token checks for the FHIR API: Bearer or DPoP access tokens from our own issuer and from
trusted external issuers, turned into a :class:`Principal`.

Every failure is a 401 FhirError (OperationOutcome, code ``login``) carrying a
``WWW-Authenticate`` challenge (RFC 6750 / RFC 9449).
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from flask import Request

from ..fhir.outcome import FhirError, issue
from .config import AuthConfig, TrustedIssuer
from .dpop import DPOP_ALGS, DpopError, DpopVerifier
from .jwtutil import (
    JwksSource,
    ParsedJwt,
    TokenInvalid,
    check_audience,
    check_times,
    parse,
    registry_for,
    verify,
)
from .keys import KeyRing
from .principal import Kind, Principal
from .scopes import ScopeSet
from .tokens import RevocationList

EMERGENCY_HEADER = "X-Planbro-Emergency-Reason"
_MAX_REASON = 500
_AUTH_RE = re.compile(r"^(Bearer|DPoP) +([A-Za-z0-9\-._~+/]+=*)$", re.IGNORECASE)
_UNSAFE = re.compile(r'["\\\x00-\x1f\x7f]')

FindPatient = Callable[[str], str | None]


@dataclass(frozen=True)
class _Checked:
    """A verified token: who issued it, its claims and the key its signature was checked
    with."""

    issuer: str
    own: bool
    claims: dict[str, Any]
    mapping: Mapping[str, tuple[str, ...]] | None = None
    kid: str | None = None
    key: object = None


class _VerifiedTokens:
    """The tokens whose signature and fixed claims were checked recently, so that a client
    sending the same token again is not verified again (an ECDSA check is most of the cost of
    a token). Expiry and revocation are checked on every use; an entry counts only while its
    issuer still offers the same key."""

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._entries: OrderedDict[str, _Checked] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, token: str) -> _Checked | None:
        with self._lock:
            checked = self._entries.get(token)
            if checked is not None:
                self._entries.move_to_end(token)
            return checked

    def put(self, token: str, checked: _Checked) -> None:
        with self._lock:
            self._entries[token] = checked
            self._entries.move_to_end(token)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)


class _External:
    """Verification settings and keys of one trusted external issuer."""

    def __init__(self, trusted: TrustedIssuer) -> None:
        self.trusted = trusted
        self.registry = registry_for(trusted.algorithms, strict_header=False)
        self.keys = JwksSource(jwks=trusted.jwks, file=trusted.jwks_file, url=trusted.jwks_uri,
                               refresh_interval=trusted.jwks_refresh_seconds)

    def check(self, parsed: ParsedJwt) -> _Checked:
        """Signature, type and audience (the times are checked on every use)."""
        t = self.trusted
        typ = parsed.header.get("typ", "JWT")
        if typ not in t.token_types and f"application/{typ}" not in t.token_types:
            raise TokenInvalid(f"token type {typ!r} is not accepted from this issuer")
        key = self.keys.key(parsed.header.get("kid"))
        verify(parsed, key, self.registry)
        check_audience(parsed.claims, t.audience)
        return _Checked(t.issuer, False, parsed.claims, t.claims, parsed.header.get("kid"), key)

    def offers(self, checked: _Checked) -> bool:
        """Whether the key ``checked`` was verified with is still this issuer's."""
        return self.keys.lookup(checked.kid) is checked.key


def _first(claims: Mapping[str, Any], names: tuple[str, ...]) -> str | None:
    for name in names:
        value = claims.get(name)
        if isinstance(value, list) and len(value) == 1:
            value = value[0]
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value):
            return str(value)
    return None


def clean_reason(value: object) -> str | None:
    """An emergency-access reason as free text: trimmed, control characters removed."""
    if not isinstance(value, str):
        return None
    text = re.sub(r"[\x00-\x1f\x7f]+", " ", value).strip()
    return text[:_MAX_REASON] or None


class ResourceServer:
    def __init__(
        self,
        config: AuthConfig,
        keys: KeyRing,
        revoked: RevocationList,
        dpop: DpopVerifier,
        find_patient_by_fnr: FindPatient | None = None,
    ) -> None:
        self.config = config
        self.keys = keys
        self.revoked = revoked
        self.dpop = dpop
        self.find_patient_by_fnr = find_patient_by_fnr
        self._own_registries = {alg: registry_for([alg]) for alg in ("ES256", "RS256")}
        self._external = {t.issuer: _External(t) for t in config.trusted_issuers}
        self._verified = _VerifiedTokens()

    # -- token verification --------------------------------------------------------------

    def check_own(self, token: str, *, check_expiry: bool = True) -> dict[str, Any]:
        """Verify one of our own access tokens; returns its claims."""
        parsed = parse(token)
        if parsed.claims.get("iss") != self.config.issuer:
            raise TokenInvalid("token was not issued by this server")
        claims = self._check_own(parsed).claims
        if check_expiry:
            check_times(claims, skew=self.config.clock_skew)
        return claims

    def _check_own(self, parsed: ParsedJwt) -> _Checked:
        """Signature, type, audience and the claims we require (not the times)."""
        header, claims = parsed.header, parsed.claims
        if header.get("typ") not in ("at+jwt", "application/at+jwt"):
            raise TokenInvalid("token typ must be at+jwt")
        kid = header.get("kid")
        key = self.keys.verifier(kid) if isinstance(kid, str) else None
        if key is None:
            raise TokenInvalid(f"unknown key id {kid!r}")
        if header.get("alg") != key.alg:
            raise TokenInvalid("token algorithm does not match its key")
        verify(parsed, key.public, self._own_registries[key.alg])
        check_audience(claims, self.config.fhir_audience)
        if not isinstance(claims.get("jti"), str) or not isinstance(claims.get("client_id"), str):
            raise TokenInvalid("token lacks jti or client_id")
        return _Checked(self.config.issuer, True, claims, kid=kid, key=key)

    def _still_valid(self, checked: _Checked) -> bool:
        """Whether a token checked earlier may be taken without a new signature check: its
        issuer still offers the key it was verified with."""
        if checked.own:
            return checked.kid is not None and self.keys.verifier(checked.kid) is checked.key
        external = self._external.get(checked.issuer)
        return external is not None and external.offers(checked)

    def check_token(self, token: str) -> _Checked:
        """Verify an access token from our issuer or a trusted one (signature, typ, iss, aud,
        times, revocation)."""
        checked = self._verified.get(token)
        if checked is None or not self._still_valid(checked):
            parsed = parse(token)
            iss = parsed.claims.get("iss")
            if iss == self.config.issuer:
                checked = self._check_own(parsed)
            elif isinstance(iss, str) and iss in self._external:
                checked = self._external[iss].check(parsed)
            else:
                raise TokenInvalid("token issuer is not trusted")
            self._verified.put(token, checked)
        check_times(checked.claims, skew=self.config.clock_skew)
        jti = checked.claims.get("jti")
        if isinstance(jti, str) and self.revoked.contains(checked.issuer, jti):
            raise TokenInvalid("token has been revoked")
        return checked

    # -- the request ---------------------------------------------------------------------

    def authenticate(self, request: Request) -> Principal:
        """The caller of ``request``; raises a 401 FhirError when the token is missing or
        fails any check."""
        header = request.headers.get("Authorization")
        if not header:
            raise self._unauthorized("an access token is required", error=None)
        m = _AUTH_RE.match(header.strip())
        if m is None:
            raise self._unauthorized("Authorization must be 'Bearer <token>' or 'DPoP <token>'",
                                     error="invalid_request")
        scheme, token = m.group(1).lower(), m.group(2)
        try:
            checked = self.check_token(token)
        except TokenInvalid as exc:
            raise self._unauthorized(exc.description, scheme=scheme) from exc
        jkt = self._check_binding(request, scheme, token, checked.claims)
        return self._principal(request, checked, jkt)

    def _check_binding(
        self, request: Request, scheme: str, token: str, claims: dict[str, Any]
    ) -> str | None:
        cnf = claims.get("cnf")
        jkt = cnf.get("jkt") if isinstance(cnf, dict) else None
        if jkt is None:
            if scheme == "dpop":
                raise self._unauthorized("the token is not DPoP-bound; use Bearer",
                                         scheme=scheme)
            if self.config.dpop_required:
                raise self._unauthorized("this server requires DPoP-bound tokens", scheme="dpop")
            return None
        if scheme != "dpop":
            raise self._unauthorized("a DPoP-bound token must be sent as 'DPoP <token>'",
                                     scheme="bearer")
        proofs = request.headers.getlist("DPoP")
        if len(proofs) != 1:
            raise self._unauthorized("exactly one DPoP proof header is required",
                                     scheme="dpop", error="invalid_dpop_proof")
        url = self.config.fhir_origin + request.script_root + request.path
        try:
            proof_jkt = self.dpop.verify(proofs[0], method=request.method, url=url,
                                         access_token=token)
        except DpopError as exc:
            raise self._unauthorized(
                exc.description, scheme="dpop",
                error="use_dpop_nonce" if exc.use_nonce else "invalid_dpop_proof",
                nonce=exc.use_nonce,
            ) from exc
        if proof_jkt != jkt:
            raise self._unauthorized("the DPoP proof key is not the key the token is bound to",
                                     scheme="dpop", error="invalid_dpop_proof")
        return jkt

    def _principal(self, request: Request, checked: _Checked, jkt: str | None) -> Principal:
        claims = checked.claims
        if checked.own:
            client_id = claims["client_id"]
            organization = _first(claims, ("organization",))
            hpr = _first(claims, ("hpr",))
            patient = _first(claims, ("patient",))
            fhir_user = _first(claims, ("fhirUser",))
            scope = claims.get("scope")
            reason = claims.get(self.config.emergency_claim)
        else:
            mapping = checked.mapping or {}
            client_id = _first(claims, mapping["client_id"]) or _first(claims, ("sub",)) or ""
            organization = _first(claims, mapping["organization"])
            hpr = _first(claims, mapping["hpr"])
            patient = self._patient_for(_first(claims, mapping["fnr"]))
            fhir_user = _first(claims, mapping["fhir_user"])
            scope = next((claims[n] for n in mapping["scope"] if n in claims), None)
            reason = _first(claims, mapping["emergency_reason"])
        kind: Kind = "patient" if patient else "practitioner" if hpr else "system"
        header_reason = request.headers.get(EMERGENCY_HEADER)
        exp = claims.get("exp")
        return Principal(
            kind=kind,
            client_id=client_id,
            scopes=ScopeSet.parse(scope, strict=False),
            issuer=checked.issuer,
            subject=str(claims.get("sub") or client_id),
            token_id=claims.get("jti") if isinstance(claims.get("jti"), str) else None,
            organization=organization,
            practitioner=hpr,
            patient=patient,
            fhir_user=fhir_user,
            emergency_reason=clean_reason(header_reason) or clean_reason(reason),
            dpop_jkt=jkt,
            expires_at=int(exp) if isinstance(exp, int | float) else None,
            claims=claims,
        )

    def _patient_for(self, fnr: str | None) -> str | None:
        if fnr is None:
            return None
        patient = self.find_patient_by_fnr(fnr) if self.find_patient_by_fnr else None
        if patient is None:
            raise FhirError.of(403, "the signed-in person has no patient record on this server",
                               code="forbidden")
        return patient

    # -- challenges ----------------------------------------------------------------------

    def challenge(
        self, *, scheme: str | None = None, error: str | None = None, description: str = ""
    ) -> str:
        """A ``WWW-Authenticate`` value offering Bearer (unless DPoP is required) and DPoP;
        the error attributes go on the scheme the client used."""
        text = _UNSAFE.sub(" ", description)[:200]
        offered = ("DPoP",) if self.config.dpop_required else ("Bearer", "DPoP")
        target = (scheme or "bearer").lower()
        if target not in (name.lower() for name in offered):
            target = "dpop"
        challenges = []
        for name in offered:
            params = ['realm="planbro"']
            if name == "DPoP":
                params.append(f'algs="{" ".join(DPOP_ALGS)}"')
            if error and target == name.lower():
                params.append(f'error="{error}"')
                if text:
                    params.append(f'error_description="{text}"')
            challenges.append(f"{name} {', '.join(params)}")
        return ", ".join(challenges)

    def _unauthorized(
        self,
        description: str,
        *,
        scheme: str | None = None,
        error: str | None = "invalid_token",
        nonce: bool = False,
    ) -> FhirError:
        headers = {"WWW-Authenticate": self.challenge(scheme=scheme, error=error,
                                                      description=description)}
        if nonce and self.dpop.nonces is not None:
            headers["DPoP-Nonce"] = self.dpop.nonces.current()
        return FhirError(401, [issue(description, code="login")], headers)
