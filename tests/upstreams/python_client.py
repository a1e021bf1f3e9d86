#!/usr/bin/env python3
"""A real MCP client (the official Python SDK, `mcp` pinned in tests/mcp_client/requirements.txt)
for tests/gateway.rs.

Connects to URL with `Authorization: Bearer $IDGUARD_TOKEN` (the token comes from the
environment so it never shows in a process list or a log) using `mcp.client.Client` in its
default mode (`auto`: `server/discover` at 2026-07-28, else the `initialize` handshake) or
`--mode legacy`. With `--call TOOL` it calls that tool (arguments from `--args JSON`, default none) FIRST, before any
tools/list, then lists the tools. Prints one JSON object on stdout:

    {"protocol": "...", "call": {"ok": true, "is_error": false, "text": "..."} | {"ok": false, "error": "..."},
     "tools": ["..."]}

Exit code 0 when connecting and listing worked (a failed call is reported, not fatal),
1 otherwise (the error on stderr).

Usage: IDGUARD_TOKEN=... python3 tests/upstreams/python_client.py URL [--mode auto|legacy] [--call TOOL [--args JSON]]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any
from urllib.parse import urlsplit

import anyio
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

TIMEOUT_S = 30.0


def describe(exc: BaseException) -> str:
    subs = getattr(exc, "exceptions", None)
    if subs:
        return f"{type(exc).__name__}[" + "; ".join(describe(e) for e in subs) + "]"
    code = getattr(getattr(exc, "error", None), "code", None)
    code_s = f" (code {code})" if code is not None else ""
    return " ".join(f"{type(exc).__name__}{code_s}: {exc}".split())


def text_of(result: Any) -> str:
    parts = [getattr(b, "text", "") for b in (getattr(result, "content", None) or [])]
    structured = getattr(result, "structured_content", None)
    if structured is not None:
        parts.append(json.dumps(structured))
    return "\n".join(p for p in parts if p)


async def run(url: str, token: str, mode: str, call: str | None, args: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
    with anyio.fail_after(TIMEOUT_S):
        async with http:
            async with Client(streamable_http_client(url, http_client=http), mode=mode) as client:  # type: ignore[arg-type]
                out["protocol"] = client.protocol_version
                if call is not None:
                    try:
                        res = await client.call_tool(call, args)
                        out["call"] = {"ok": True, "is_error": bool(res.is_error), "text": text_of(res)}
                    except Exception as exc:  # noqa: BLE001
                        out["call"] = {"ok": False, "error": describe(exc)}
                tools: list[str] = []
                cursor = None
                while True:
                    page = await client.list_tools(cursor=cursor)
                    tools.extend(t.name for t in page.tools)
                    cursor = page.next_cursor
                    if not cursor:
                        break
                out["tools"] = tools
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("--mode", default="auto", choices=["auto", "legacy"])
    p.add_argument("--call")
    p.add_argument("--args", default="{}", help="the call's arguments, a JSON object")
    a = p.parse_args()
    if urlsplit(a.url).hostname not in ("127.0.0.1", "localhost", "::1"):
        print(f"refusing a non-loopback URL: {a.url}", file=sys.stderr)
        return 2
    token = os.environ.get("IDGUARD_TOKEN")
    if not token:
        print("IDGUARD_TOKEN is not set", file=sys.stderr)
        return 2
    try:
        out = anyio.run(run, a.url, token, a.mode, a.call, json.loads(a.args))
    except BaseException as exc:  # noqa: BLE001
        print(f"client error: {describe(exc)}", file=sys.stderr)
        return 1
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
