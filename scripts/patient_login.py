#!/usr/bin/env python3
"""Sign in as the patient app does (authorization code + PKCE S256), for trying the server.

    python scripts/patient_login.py [--server http://127.0.0.1:8080]

Prints the authorisation URL: open it in a browser, pick a demo person on the demo sign-in
page, approve, and paste the address the browser ends on (the redirect carries the code).
Prints the token response: an access token with ``patient`` (the person's Patient id) and
``fhirUser``, and a refresh token.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import secrets
import urllib.parse
import urllib.request

CLIENT_ID = "planbro-patient-app"
SCOPE = "openid fhirUser launch/patient offline_access patient/*.rs patient/Goal.cu"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--server", default="http://127.0.0.1:8080")
    parser.add_argument("--redirect-uri", help="default: <server>/app/callback")
    args = parser.parse_args()
    redirect = args.redirect_uri or f"{args.server}/app/callback"
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(
        hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    state = secrets.token_urlsafe(12)
    query = urllib.parse.urlencode({
        "response_type": "code", "client_id": CLIENT_ID, "redirect_uri": redirect,
        "scope": SCOPE, "state": state, "aud": f"{args.server}/fhir",
        "code_challenge": challenge, "code_challenge_method": "S256"})
    print(f"Open in a browser:\n\n  {args.server}/oauth/authorize?{query}\n")
    landed = input("Paste the address the browser ended on: ").strip()
    answer = urllib.parse.parse_qs(urllib.parse.urlsplit(landed).query)
    if answer.get("state", [""])[0] != state or "code" not in answer:
        raise SystemExit(f"no code for this sign-in in {landed!r}")
    form = urllib.parse.urlencode({
        "grant_type": "authorization_code", "code": answer["code"][0],
        "redirect_uri": redirect, "client_id": CLIENT_ID, "code_verifier": verifier}).encode()
    with urllib.request.urlopen(f"{args.server}/oauth/token", form, timeout=30) as response:
        print(json.dumps(json.loads(response.read()), indent=2))


if __name__ == "__main__":
    main()
