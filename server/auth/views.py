"""HTTP endpoints of the authorisation server that need no browser: token, revocation,
introspection, JWKS and the discovery documents."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask import Blueprint, Response, jsonify, request

from .dpop import DpopError
from .metadata import authorization_server_metadata, openid_configuration, smart_configuration

if TYPE_CHECKING:
    from .server import AuthServer

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def oauth_error(status: int, error: str, description: str,
                headers: dict[str, str] | None = None) -> Response:
    resp = jsonify({"error": error, "error_description": description})
    resp.status_code = status
    resp.headers.update(NO_STORE)
    resp.headers.update(headers or {})
    return resp


def _token_dpop(server: AuthServer) -> str | None:
    """The thumbprint of the DPoP proof sent to the token endpoint (None without one)."""
    proofs = request.headers.getlist("DPoP")
    if not proofs:
        if server.config.dpop_required:
            raise DpopError("this server requires a DPoP proof")
        return None
    if len(proofs) > 1:
        raise DpopError("send exactly one DPoP proof")
    return server.dpop.verify(proofs[0], method="POST", url=server.config.token_endpoint)


def auth_blueprint(server: AuthServer) -> Blueprint:
    bp = Blueprint("planbro_auth", __name__)
    cfg = server.config

    @bp.post("/oauth/token")
    def token() -> Response:
        try:
            jkt = _token_dpop(server)
        except DpopError as exc:
            extra = {}
            if exc.use_nonce and server.dpop.nonces is not None:
                extra["DPoP-Nonce"] = server.dpop.nonces.current()
            error = "use_dpop_nonce" if exc.use_nonce else "invalid_dpop_proof"
            return oauth_error(400, error, exc.description, extra)
        return server.oauth.create_token_response(server.oauth_request(jkt))

    @bp.post("/oauth/revoke")
    def revoke() -> Response:
        return server.oauth.create_endpoint_response("revocation", server.oauth_request())

    @bp.post("/oauth/introspect")
    def introspect() -> Response:
        return server.oauth.create_endpoint_response("introspection", server.oauth_request())

    @bp.get("/oauth/jwks")
    def jwks() -> Response:
        resp = jsonify(server.keys.jwks())
        resp.headers["Cache-Control"] = "public, max-age=60"
        return resp

    @bp.get("/.well-known/oauth-authorization-server")
    def as_metadata() -> Response:
        return jsonify(authorization_server_metadata(cfg))

    @bp.get("/.well-known/openid-configuration")
    def oidc_metadata() -> Response:
        return jsonify(openid_configuration(cfg))

    @bp.get(cfg.fhir_path + "/.well-known/smart-configuration")
    def smart_metadata() -> Response:
        return jsonify(smart_configuration(cfg))

    @bp.after_request
    def cors(resp: Response) -> Response:
        preflight = request.method == "OPTIONS"
        resp.headers.update(server.cors_headers(request.headers.get("Origin"),
                                                preflight=preflight))
        return resp

    return bp
