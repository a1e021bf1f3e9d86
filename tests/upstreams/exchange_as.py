#!/usr/bin/env python3
"""An RFC 8693 token-exchange authorization server for tests/upstream_credentials.rs.

Standard library `http.server` plus PyJWT (with `cryptography`). `POST /token` checks what
idguard sends and answers as RFC 8693 §2.2 says:

- client authentication: HTTP Basic (RFC 6749 §2.3.1) with `$EXCHANGE_CLIENT_ID` /
  `$EXCHANGE_CLIENT_SECRET`, else `401 invalid_client`;
- `grant_type=urn:ietf:params:oauth:grant-type:token-exchange`,
  `subject_token_type` and `requested_token_type` = `…:access_token`, else
  `400 unsupported_grant_type` / `invalid_request`;
- the `subject_token`: a JWT signed by a key of `$EXCHANGE_SUBJECT_JWKS` (the Entra
  emulator's JWKS), issuer `$EXCHANGE_SUBJECT_ISSUER`, audience one of
  `$EXCHANGE_SUBJECT_AUDIENCES` (comma-separated), not expired; else `400 invalid_grant`;
- `audience` = `$EXCHANGE_AUDIENCE`, else `400 invalid_target`;
- with `$EXCHANGE_ACTOR_JWKS` (idguard's JWKS; or set later by `POST /_probe/actor` with
  `{"jwks": URL}`): an `actor_token` of type
  `urn:ietf:params:oauth:token-type:jwt`, ES256 by that JWKS, `aud` = this token endpoint,
  `sub` = `iss`; else `400 invalid_request`. The issued token then carries `act: {sub}`.

It issues an ES256 JWT of its own (`iss` = its URL, `aud` = `$EXCHANGE_AUDIENCE`, `sub`,
`oid`, `tid`, `name`, `preferred_username` from the subject token, `exp` = now +
`$EXCHANGE_EXPIRES_IN` (default 600)), `token_type` `N_A` when `$EXCHANGE_TOKEN_TYPE_NA=1`
else `Bearer`. Its public key is at `GET /jwks.json`.

`GET /_probe/stats` → `{"requests": N, "issued": N, "subjects": [...], "actors": [...]}`
(every `/token` request, the tokens issued, the subject tokens received, the actor `sub`s).
`POST /_probe/fail` with `{"status": 400, "error": "invalid_target"}` makes every following
`/token` request fail so; with `"answer": {...}` and/or `"retry_after": N` it answers that
body (and `Retry-After`) with that status instead; `{}` clears it.

Usage: python3 tests/upstreams/exchange_as.py   (prints `listening on 127.0.0.1:PORT`)
"""

from __future__ import annotations

import base64
import json
import os
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote_plus

import jwt
from lifecycle import exit_on_stdin_eof
from cryptography.hazmat.primitives.asymmetric import ec

GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"

CLIENT_ID = os.environ.get("EXCHANGE_CLIENT_ID", "")
CLIENT_SECRET = os.environ.get("EXCHANGE_CLIENT_SECRET", "")
SUBJECT_ISSUER = os.environ.get("EXCHANGE_SUBJECT_ISSUER", "")
SUBJECT_AUDIENCES = [a for a in os.environ.get("EXCHANGE_SUBJECT_AUDIENCES", "").split(",") if a]
AUDIENCE = os.environ.get("EXCHANGE_AUDIENCE", "")
EXPIRES_IN = int(os.environ.get("EXCHANGE_EXPIRES_IN", "600"))
TOKEN_TYPE = "N_A" if os.environ.get("EXCHANGE_TOKEN_TYPE_NA") == "1" else "Bearer"
SUBJECT_JWKS = jwt.PyJWKClient(os.environ["EXCHANGE_SUBJECT_JWKS"], cache_keys=False)
ACTOR = {"jwks": os.environ.get("EXCHANGE_ACTOR_JWKS", "")}

KEY = ec.generate_private_key(ec.SECP256R1())
KID = uuid.uuid4().hex
PUBLIC_JWK = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(KEY.public_key()))
PUBLIC_JWK.update({"kid": KID, "use": "sig", "alg": "ES256"})

LOCK = threading.Lock()
STATS: dict[str, Any] = {"requests": 0, "issued": 0, "subjects": [], "actors": []}
FAIL: dict[str, Any] = {}
BASE = {"url": ""}


class Refusal(Exception):
    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status, self.error, self.description = status, error, description


def check_client(header: str | None) -> None:
    if not header or not header.startswith("Basic "):
        raise Refusal(401, "invalid_client", "no client authentication")
    raw = base64.b64decode(header[6:]).decode()
    cid, _, secret = raw.partition(":")
    if unquote_plus(cid) != CLIENT_ID or unquote_plus(secret) != CLIENT_SECRET:
        raise Refusal(401, "invalid_client", "client authentication failed")


def verify_subject(token: str) -> dict[str, Any]:
    try:
        key = SUBJECT_JWKS.get_signing_key_from_jwt(token)
        return jwt.decode(
            token,
            key.key,
            algorithms=["RS256"],
            audience=SUBJECT_AUDIENCES,
            issuer=SUBJECT_ISSUER,
            options={"require": ["exp", "aud", "iss"]},
        )
    except Exception as e:  # noqa: BLE001
        raise Refusal(400, "invalid_grant", f"subject token: {type(e).__name__}") from e


def verify_actor(form: dict[str, str]) -> dict[str, Any] | None:
    if not ACTOR["jwks"]:
        return None
    token = form.get("actor_token")
    if not token or form.get("actor_token_type") != JWT_TYPE:
        raise Refusal(400, "invalid_request", "an actor_token of type jwt is required")
    try:
        key = jwt.PyJWKClient(ACTOR["jwks"], cache_keys=False).get_signing_key_from_jwt(token)
        claims = jwt.decode(
            token,
            key.key,
            algorithms=["ES256"],
            audience=f"{BASE['url']}/token",
            options={"require": ["exp", "aud", "iss", "sub"]},
        )
    except Exception as e:  # noqa: BLE001
        raise Refusal(400, "invalid_request", f"actor token: {type(e).__name__}") from e
    if claims["sub"] != claims["iss"]:
        raise Refusal(400, "invalid_request", "actor token: sub is not iss")
    return claims


def exchange(form: dict[str, str], auth: str | None) -> dict[str, Any]:
    if FAIL:
        raise Refusal(FAIL["status"], FAIL.get("error", ""), "configured failure")
    check_client(auth)
    if form.get("grant_type") != GRANT:
        raise Refusal(400, "unsupported_grant_type", "not a token exchange")
    if form.get("subject_token_type") != ACCESS_TOKEN or form.get("requested_token_type") != ACCESS_TOKEN:
        raise Refusal(400, "invalid_request", "token types")
    subject = verify_subject(form.get("subject_token", ""))
    with LOCK:
        STATS["subjects"].append(form.get("subject_token", ""))
    if form.get("audience") != AUDIENCE:
        raise Refusal(400, "invalid_target", "unknown audience")
    actor = verify_actor(form)
    now = int(time.time())
    claims = {
        "iss": BASE["url"],
        "aud": AUDIENCE,
        "sub": subject.get("oid") or subject.get("sub"),
        "oid": subject.get("oid"),
        "tid": subject.get("tid"),
        "name": subject.get("name"),
        "preferred_username": subject.get("preferred_username"),
        "scope": form.get("scope", ""),
        "iat": now,
        "exp": now + EXPIRES_IN,
        "jti": uuid.uuid4().hex,
    }
    if actor is not None:
        claims["act"] = {"sub": actor["sub"]}
        with LOCK:
            STATS["actors"].append(actor["sub"])
    token = jwt.encode(claims, KEY, algorithm="ES256", headers={"kid": KID})
    with LOCK:
        STATS["issued"] += 1
    return {
        "access_token": token,
        "issued_token_type": ACCESS_TOKEN,
        "token_type": TOKEN_TYPE,
        "expires_in": EXPIRES_IN,
    }


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def answer(self, status: int, body: Any, retry_after: int | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        if retry_after is not None:
            self.send_header("retry-after", str(retry_after))
        self.send_header("content-type", "application/json")
        self.send_header("cache-control", "no-store")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/jwks.json":
            self.answer(200, {"keys": [PUBLIC_JWK]})
        elif self.path == "/_probe/stats":
            with LOCK:
                self.answer(200, STATS)
        else:
            self.answer(404, {"error": "not_found"})

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length).decode()
        if self.path == "/_probe/actor":
            ACTOR["jwks"] = json.loads(raw or "{}").get("jwks", "")
            self.answer(200, {})
            return
        if self.path == "/_probe/fail":
            FAIL.clear()
            FAIL.update(json.loads(raw or "{}"))
            self.answer(200, {})
            return
        if self.path != "/token":
            self.answer(404, {"error": "not_found"})
            return
        with LOCK:
            STATS["requests"] += 1
        form = {k: v[0] for k, v in parse_qs(raw, keep_blank_values=True).items()}
        if "answer" in FAIL or "retry_after" in FAIL:
            self.answer(FAIL["status"], FAIL.get("answer", {}), FAIL.get("retry_after"))
            return
        try:
            self.answer(200, exchange(form, self.headers.get("authorization")))
        except Refusal as r:
            self.answer(r.status, {"error": r.error, "error_description": r.description})


def main() -> int:
    exit_on_stdin_eof()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port = server.server_address[1]
    BASE["url"] = f"http://127.0.0.1:{port}"
    print(f"listening on 127.0.0.1:{port}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
