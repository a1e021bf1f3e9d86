#!/usr/bin/env python3
"""An upstream MCP server that checks the credential idguard sends it (tests/upstream_credentials.rs).

Built with the official MCP Python SDK (`mcp` 2.x: `MCPServer`, FastMCP's new name) and
PyJWT. Its one tool, `whoami`, answers what the upstream knows about the caller:

- `bearer`: the `Authorization: Bearer` token, verified: signature against the JWKS at
  `$WHOAMI_JWKS_URL` (the Entra emulator's for `obo`, idguard's for `identity_assertion`),
  audience `$WHOAMI_AUDIENCE`, expiry. `{"valid": true, "claims": {...}, "alg": ...}` or
  `{"valid": false, "error": "..."}`; `null` without the header.
- `static`: the value of header `$WHOAMI_STATIC_HEADER` (when set), else `null`.
- `saw_foreign_token`: whether any request so far carried a bearer token that does not
  verify for this upstream's audience (the caller's own token would not).

`GET /_probe/bearers` (outside MCP) lists every raw bearer token received, so the test can
check the caller's original token never arrived.

Usage: python3 tests/upstreams/whoami_server.py   (prints `listening on 127.0.0.1:PORT`)
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from typing import Any

import jwt
from lifecycle import exit_on_stdin_eof
import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from mcp.types import ToolAnnotations

AUDIENCE = os.environ.get("WHOAMI_AUDIENCE", "")
JWKS_URL = os.environ.get("WHOAMI_JWKS_URL", "")
STATIC_HEADER = os.environ.get("WHOAMI_STATIC_HEADER", "").lower()

BEARERS: list[str] = []
FOREIGN = {"seen": False}
_jwks = jwt.PyJWKClient(JWKS_URL, cache_keys=False) if JWKS_URL else None


def verify(token: str) -> dict[str, Any]:
    if _jwks is None:
        return {"valid": False, "error": "no JWKS configured"}
    try:
        header = jwt.get_unverified_header(token)
        key = _jwks.get_signing_key_from_jwt(token)
        claims = jwt.decode(
            token,
            key.key,
            algorithms=["RS256", "ES256"],
            audience=AUDIENCE,
            options={"require": ["exp", "aud", "iss"]},
        )
        return {"valid": True, "alg": header.get("alg"), "claims": claims}
    except Exception as e:  # noqa: BLE001 - the test reads the reason
        return {"valid": False, "error": f"{type(e).__name__}: {e}"}


mcp = MCPServer("whoami")


@mcp.tool(annotations=ToolAnnotations(read_only_hint=True))
def whoami(ctx: Context) -> dict[str, Any]:
    """Who idguard says is calling: the verified bearer token and the static header."""
    headers = ctx.headers or {}
    auth = headers.get("authorization")
    bearer = None
    if auth is not None:
        token = auth.removeprefix("Bearer ").strip()
        bearer = verify(token)
    static = headers.get(STATIC_HEADER) if STATIC_HEADER else None
    return {"bearer": bearer, "static": static, "saw_foreign_token": FOREIGN["seen"]}


class Probe:
    """Records every bearer token; answers `GET /_probe/bearers`."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            if scope["path"] == "/_probe/bearers":
                body = json.dumps({"bearers": BEARERS}).encode()
                await send({"type": "http.response.start", "status": 200,
                            "headers": [(b"content-type", b"application/json")]})
                await send({"type": "http.response.body", "body": body})
                return
            for k, v in scope.get("headers", []):
                if k == b"authorization":
                    token = v.decode("latin-1").removeprefix("Bearer ").strip()
                    BEARERS.append(token)
                    if not verify(token)["valid"]:
                        FOREIGN["seen"] = True
        await self.app(scope, receive, send)


class AnnouncingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, port: int) -> None:
        super().__init__(config)
        self._port = port

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            print(f"listening on 127.0.0.1:{self._port}", flush=True)


def serve(server: MCPServer) -> None:
    """Serves `server` at `/mcp` behind [`Probe`] on a free loopback port, announced on
    stdout as `listening on 127.0.0.1:PORT`."""
    exit_on_stdin_eof()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    app = server.streamable_http_app(
        streamable_http_path="/mcp",
        stateless_http=True,
        json_response=True,
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )
    config = uvicorn.Config(Probe(app), log_level="warning", lifespan="on")
    announcing = AnnouncingServer(config, sock.getsockname()[1])
    asyncio.run(announcing.serve(sockets=[sock]))


def main() -> int:
    serve(mcp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
