"""Token issuance and token check latency (p50/p95/p99), in one process.

Runs the auth module as the server does - keys imported once at start, the embedded storage
engine's key-value part for the replay cache and the revocation list - against a temporary
data folder, and prints the figures beside the targets (issuance <= 5 ms, check <= 1 ms at
p50). Client-side work (making assertions and DPoP proofs) is done before timing.

    python bench/auth_bench.py                 # ES256 signing key, 2000 rounds
    python bench/auth_bench.py --alg RS256 --rounds 500 --json
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flask import Flask, jsonify
from joserfc import jwk, jwt

from server.auth import AuthConfig, init_app
from server.auth.clients import ClientRecord
from server.auth.dpop import access_token_hash
from server.fhir.search.ast import IndexValues
from server.store.embedded import EmbeddedStore

ISSUER = "http://127.0.0.1:8080"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
TARGETS_MS = {"issuance": 5.0, "check": 1.0}


def _no_index(resource: dict[str, Any]) -> IndexValues:
    return IndexValues()


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return {"p50": statistics.median(ordered) * 1000, "p95": at(0.95), "p99": at(0.99),
            "n": len(ordered)}


def _time(fn: Callable[[int], Any], rounds: int, warmup: int = 50) -> dict[str, float]:
    for i in range(warmup):
        fn(i)
    samples = []
    for i in range(rounds):
        start = time.perf_counter()
        fn(i)
        samples.append(time.perf_counter() - start)
    return _percentiles(samples)


def _assertion(key: jwk.Key, now: int) -> str:
    claims = {"iss": "bench", "sub": "bench", "aud": ISSUER + "/oauth/token", "iat": now,
              "exp": now + 120, "jti": secrets.token_hex(12)}
    return jwt.encode({"alg": "ES256", "kid": key.kid, "typ": "JWT"}, claims, key)


def _proof(key: jwk.Key, method: str, url: str, ath: str | None = None) -> str:
    claims: dict[str, Any] = {"jti": secrets.token_hex(12), "htm": method, "htu": url,
                              "iat": int(time.time())}
    if ath:
        claims["ath"] = ath
    header = {"alg": "ES256", "typ": "dpop+jwt", "jwk": key.as_dict(private=False)}
    return jwt.encode(header, claims, key)


def run(rounds: int, alg: str) -> dict[str, dict[str, float]]:
    folder = Path(tempfile.mkdtemp(prefix="planbro-auth-bench-"))
    store = EmbeddedStore(_no_index, folder / "planbro.db")
    config = AuthConfig(issuer=ISSUER, fhir_audience=ISSUER + "/fhir",
                        keys_dir=folder / "keys", signing_alg=alg)
    app = Flask("auth-bench")
    auth = init_app(app, store, config)

    @app.get("/fhir/whoami")
    def whoami() -> Any:
        return jsonify(auth.authenticate().to_json())

    client_key = jwk.import_key(jwk.ECKey.generate_key("P-256").as_dict(private=True),
                                parameters={"kid": "bench-1"})
    public = {**client_key.as_dict(private=False), "kid": "bench-1"}
    record = ClientRecord(client_id="bench", name="Bench", organization="974633574",
                          jwks={"keys": [public]}, scope="system/*.cruds")
    auth.clients.put(record)
    http = app.test_client()
    results: dict[str, dict[str, float]] = {}

    now = int(time.time())
    assertions = iter([_assertion(client_key, now) for _ in range(rounds + 50)])

    def token_endpoint(i: int) -> None:
        resp = http.post("/oauth/token", data={
            "grant_type": "client_credentials", "scope": "system/Task.rs",
            "client_assertion_type": ASSERTION_TYPE, "client_assertion": next(assertions)})
        assert resp.status_code == 200, resp.data

    results["issuance: sign access token"] = _time(
        lambda i: auth.issuer.access_token(record, "system/Task.rs"), rounds)
    results["issuance: POST /oauth/token (client_credentials)"] = _time(
        token_endpoint, rounds)

    token = auth.issuer.access_token(record, "system/Task.rs")[0]
    results["check: verify token (signature, claims, revocation)"] = _time(
        lambda i: auth.resource.check_token(token), rounds)
    ctx = app.test_request_context("/fhir/whoami", headers={"Authorization": f"Bearer {token}"})
    with ctx:
        results["check: authenticate(request) -> Principal"] = _time(
            lambda i: auth.authenticate(), rounds)
    results["check: GET through Flask (test client)"] = _time(
        lambda i: http.get("/fhir/whoami", headers={"Authorization": f"Bearer {token}"}),
        rounds)

    holder = jwk.import_key(jwk.ECKey.generate_key("P-256").as_dict(private=True))
    bound = auth.issuer.access_token(record, "system/Task.rs", jkt=holder.thumbprint())[0]
    proofs = iter([_proof(holder, "GET", ISSUER + "/fhir/whoami", access_token_hash(bound))
                   for _ in range(rounds + 50)])

    def dpop_check() -> float:
        headers = {"Authorization": f"DPoP {bound}", "DPoP": next(proofs)}
        with app.test_request_context("/fhir/whoami", headers=headers):
            start = time.perf_counter()
            auth.authenticate()
            return time.perf_counter() - start

    for _ in range(50):
        dpop_check()
    results["check: authenticate with DPoP proof (+ replay write)"] = _percentiles(
        [dpop_check() for _ in range(rounds)])
    store.close()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--alg", choices=("ES256", "RS256"), default="ES256")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    results = run(args.rounds, args.alg)
    if args.json:
        print(json.dumps({"alg": args.alg, "results": results}, indent=2))
        return 0
    print(f"signing key {args.alg}, {args.rounds} rounds each, embedded store (SQLite)")
    for name, r in results.items():
        target = TARGETS_MS[name.split(":")[0]]
        mark = "ok" if r["p50"] <= target else "OVER"
        print(f"{name:55s} p50 {r['p50']:7.3f} ms  p95 {r['p95']:7.3f}  p99 {r['p99']:7.3f}"
              f"  (target p50 <= {target} ms: {mark})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
