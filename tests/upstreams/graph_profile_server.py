#!/usr/bin/env python3
"""The seed scenario's upstream: a FastMCP-style server that calls Microsoft Graph on behalf
of the signed-in user (tests/upstream_credentials.rs).

Built with the official MCP Python SDK (`mcp` 2.x, where `FastMCP` is now `MCPServer`), the
way the FastMCP Entra guide has it: the server is its own confidential client app
(`$PROFILE_CLIENT_ID`, `$PROFILE_CLIENT_SECRET`, Application ID URI `$WHOAMI_AUDIENCE`). Its
tool `my_profile`:

1. takes the bearer token idguard sent (`credential = "obo"`: an Entra token for this
   app) and verifies it: signature against `$WHOAMI_JWKS_URL` (the emulator's), audience
   `$WHOAMI_AUDIENCE`, expiry;
2. exchanges it on-behalf-of (jwt-bearer, `requested_token_use=on_behalf_of`) at
   `$PROFILE_AUTHORITY/{tid}/oauth2/v2.0/token` for a Graph token (`User.Read`);
3. calls `$PROFILE_GRAPH_URL/v1.0/me` and returns the profile, with the caller's `oid` as
   the verified token names it.

Every bearer token received is recorded (`GET /_probe/bearers`, see whoami_server.py), so
the test can check the caller's own token never arrived.

Usage: python3 tests/upstreams/graph_profile_server.py   (prints `listening on 127.0.0.1:PORT`)
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.types import ToolAnnotations
from whoami_server import FOREIGN, serve, verify

CLIENT_ID = os.environ.get("PROFILE_CLIENT_ID", "")
CLIENT_SECRET = os.environ.get("PROFILE_CLIENT_SECRET", "")
AUTHORITY = os.environ.get("PROFILE_AUTHORITY", "")
GRAPH_URL = os.environ.get("PROFILE_GRAPH_URL", "")
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"

mcp = MCPServer("graph-profile")


@mcp.tool(annotations=ToolAnnotations(read_only_hint=True))
async def my_profile(ctx: Context) -> dict[str, Any]:
    """The signed-in user's Microsoft Graph profile, fetched on their behalf."""
    auth = (ctx.headers or {}).get("authorization", "")
    token = auth.removeprefix("Bearer ").strip()
    checked = verify(token)
    if not checked["valid"]:
        raise ValueError(f"not a token for this API: {checked['error']}")
    claims = checked["claims"]
    form = {
        "grant_type": JWT_BEARER,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "assertion": token,
        "scope": "https://graph.microsoft.com/User.Read",
        "requested_token_use": "on_behalf_of",
    }
    try:
        obo = await anyio.to_thread.run_sync(
            fetch,
            f"{AUTHORITY}/{claims['tid']}/oauth2/v2.0/token",
            urllib.parse.urlencode(form).encode(),
            {},
        )
    except urllib.error.HTTPError as e:
        raise ValueError(f"on-behalf-of failed: {json.loads(e.read()).get('error')}") from e
    me = await anyio.to_thread.run_sync(
        fetch, f"{GRAPH_URL}/v1.0/me", None, {"authorization": f"Bearer {obo['access_token']}"}
    )
    return {"profile": me, "caller_oid": claims.get("oid"), "saw_foreign_token": FOREIGN["seen"]}


def fetch(url: str, data: bytes | None, headers: dict[str, str]) -> Any:
    """GET (or POST a form) on loopback, without proxies; the JSON answer."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(urllib.request.Request(url, data=data, headers=headers), timeout=20) as res:
        return json.loads(res.read())


def main() -> int:
    serve(mcp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
