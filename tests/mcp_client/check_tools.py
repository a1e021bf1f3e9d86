#!/usr/bin/env python3
"""Drive idguard's example MCP server with the official MCP Python SDK client.

Proves that a real third-party MCP client (PyPI package `mcp`, version pinned in
requirements.txt next to this file) sees per-user tool lists and a refused call.

Usage:
    python3 tests/mcp_client/check_tools.py -- target/debug/examples/rmcp_server [args...]

The server command is started as a subprocess; it must print (any order, other
lines ignored; a leading `export ` is allowed):
    export MCP_URL=http://127.0.0.1:<port>/mcp
    export ALICE=<jwt>
    export BOB=<jwt>

Prints one line per check, then "N passed, M failed"; exits 0 only if all passed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import traceback
from typing import Any
from urllib.parse import urlsplit

STARTUP_TIMEOUT_S = 120.0
STEP_TIMEOUT_S = 30.0
USER_TIMEOUT_S = 100.0

ALICE_OID = "a11ce000-0000-4000-8000-00000000a11c"
ALICE_TOOLS = {"whoami", "list_documents", "read_document", "delete_document", "transfer_funds", "my_profile"}
BOB_TOOLS = {"whoami", "list_documents", "read_document", "my_profile"}

REQUIRED_KEYS = ("MCP_URL", "ALICE", "BOB")


# --------------------------------------------------------------------------- reporting

class Report:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    def ok(self, desc: str) -> None:
        self.passed += 1
        desc = " ".join(str(desc).split())  # keep it on one line
        print(f"ok   {desc}", flush=True)

    def fail(self, desc: str, why: str) -> None:
        self.failed += 1
        why = " ".join(str(why).split())  # keep it on one line
        print(f"FAIL {desc}: {why}", flush=True)

    def check(self, cond: bool, desc: str, why: str) -> bool:
        if cond:
            self.ok(desc)
        else:
            self.fail(desc, why)
        return cond


def describe_exc(exc: BaseException) -> str:
    """One-line description, unwrapping exception groups raised by anyio task groups."""
    subs = getattr(exc, "exceptions", None)
    if subs:
        return f"{type(exc).__name__}[" + "; ".join(describe_exc(e) for e in subs) + "]"
    code = getattr(getattr(exc, "error", None), "code", None)
    code_s = f" (code {code})" if code is not None else ""
    text = str(exc) or ("timed out" if isinstance(exc, TimeoutError) else "(no message)")
    return f"{type(exc).__name__}{code_s}: {text}"


def find_exc(exc: BaseException, exc_type: type) -> BaseException | None:
    """Return the `exc_type` exception inside `exc` (possibly nested in exception groups), if any."""
    if isinstance(exc, exc_type):
        return exc
    for sub in getattr(exc, "exceptions", None) or ():
        found = find_exc(sub, exc_type)
        if found is not None:
            return found
    return None


# --------------------------------------------------------------------------- server process

def start_server(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        cmd,
        stdin=subprocess.PIPE,  # kept open: some servers exit on stdin EOF
        stdout=subprocess.PIPE,
        stderr=None,  # inherited
        bufsize=0,
    )


def read_startup_lines(proc: subprocess.Popen, timeout: float) -> dict[str, str]:
    """Read the server's stdout line by line until the three lines are seen.

    A background thread does the reading (so the timeout holds even if the server
    prints nothing) and keeps draining stdout afterwards so the pipe never fills.
    """
    found: dict[str, str] = {}
    cond = threading.Condition()
    eof = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        try:
            for raw in iter(proc.stdout.readline, b""):
                line = raw.decode("utf-8", "replace").strip()
                if not line:
                    continue
                key, sep, value = line.removeprefix("export ").partition("=")
                if sep and key in REQUIRED_KEYS:
                    with cond:
                        found.setdefault(key, value.strip())
                        cond.notify_all()
                    shown = value.strip() if key == "MCP_URL" else f"<{len(value.strip())} chars>"
                    print(f"# server: {key}={shown}", flush=True)
                else:
                    print(f"# server: {line}", flush=True)
        except (OSError, ValueError):
            pass
        finally:
            eof.set()
            with cond:
                cond.notify_all()

    threading.Thread(target=pump, name="server-stdout", daemon=True).start()

    deadline = time.monotonic() + timeout
    with cond:
        while not all(k in found for k in REQUIRED_KEYS):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                missing = [k for k in REQUIRED_KEYS if k not in found]
                raise RuntimeError(f"server did not print {missing} within {timeout:.0f}s")
            if eof.is_set():
                missing = [k for k in REQUIRED_KEYS if k not in found]
                raise RuntimeError(f"server stdout closed (exit code {proc.poll()}) before printing {missing}")
            cond.wait(min(remaining, 0.5))
    return dict(found)


def stop_server(proc: subprocess.Popen) -> None:
    try:
        if proc.stdin is not None:
            proc.stdin.close()
    except OSError:
        pass
    if proc.poll() is None:
        try:
            proc.terminate()
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                print("# warning: server process did not exit after SIGKILL", flush=True)
        except OSError:
            pass


# --------------------------------------------------------------------------- MCP client

def load_sdk() -> dict[str, Any]:
    """Import the SDK pieces, tolerating the renames between mcp 1.x and 2.x."""
    from mcp import ClientSession

    sdk: dict[str, Any] = {"ClientSession": ClientSession}
    try:  # mcp >= 2
        from mcp.shared.exceptions import MCPError as mcp_error
    except ImportError:  # mcp 1.x
        from mcp.shared.exceptions import McpError as mcp_error
    sdk["MCPError"] = mcp_error

    from mcp.client import streamable_http as sh

    if hasattr(sh, "streamable_http_client"):  # mcp >= 1.24 / 2.x: headers go on an httpx client
        from mcp.shared._httpx_utils import create_mcp_http_client

        def connect(url: str, headers: dict[str, str] | None, statuses: list[int] | None = None):
            return _Connect2(sh.streamable_http_client, create_mcp_http_client, url, headers, statuses)

        sdk["records_statuses"] = True

    else:  # older 1.x
        def connect(url: str, headers: dict[str, str] | None, statuses: list[int] | None = None):
            return sh.streamablehttp_client(url, headers=headers)

        sdk["records_statuses"] = False

    sdk["connect"] = connect
    return sdk


class _Connect2:
    """async context manager: own an httpx client carrying our headers + the SDK transport."""

    def __init__(self, transport_cm, make_client, url, headers, statuses: list[int] | None) -> None:
        self._transport_cm = transport_cm
        self._make_client = make_client
        self._url = url
        self._headers = headers
        self._statuses = statuses
        self._stack = None

    async def __aenter__(self):
        from contextlib import AsyncExitStack

        self._stack = AsyncExitStack()
        await self._stack.__aenter__()
        try:
            client = await self._stack.enter_async_context(self._make_client(headers=self._headers))
            if self._statuses is not None:
                statuses = self._statuses

                async def record(response) -> None:
                    statuses.append(response.status_code)

                client.event_hooks = {**client.event_hooks, "response": [*client.event_hooks["response"], record]}
            streams = await self._stack.enter_async_context(self._transport_cm(self._url, http_client=client))
        except BaseException:
            await self._stack.__aexit__(*sys.exc_info())
            raise
        return streams[0], streams[1]

    async def __aexit__(self, *exc):
        return await self._stack.__aexit__(*exc)


def tool_names(result: Any) -> set[str]:
    return {t.name for t in result.tools}


def is_error(result: Any) -> bool:
    val = getattr(result, "is_error", None)
    if val is None:
        val = getattr(result, "isError", False)
    return bool(val)


def text_of(result: Any) -> str:
    parts = []
    for block in getattr(result, "content", None) or []:
        text = getattr(block, "text", None)
        if text is not None:
            parts.append(text)
    structured = getattr(result, "structured_content", None) or getattr(result, "structuredContent", None)
    if structured is not None:
        parts.append(str(structured))
    return "\n".join(parts)


async def run_checks(env: dict[str, str], report: Report) -> None:
    import anyio

    sdk = load_sdk()
    ClientSession = sdk["ClientSession"]
    MCPError = sdk["MCPError"]
    connect = sdk["connect"]

    url = env["MCP_URL"]
    if urlsplit(url).hostname not in ("127.0.0.1", "localhost", "::1"):
        report.fail("server URL is loopback", f"refusing to connect to non-loopback URL {url}")
        return

    def headers_for(token: str | None) -> dict[str, str] | None:
        return {"Authorization": f"Bearer {token}"} if token is not None else None

    async def as_user(user: str, token: str, body) -> None:
        """Connect as `user`, initialize, list tools, then run `body(session, tools, step)`.

        `body` keeps `step[0]` set to the step it is on, so that an exception or a
        timeout anywhere becomes one FAIL line naming that step.
        """
        step = [f"{user}: initialize + list_tools"]
        try:
            # Outer bound: connect, all steps and session teardown (DELETE) together.
            with anyio.fail_after(USER_TIMEOUT_S):
                async with connect(url, headers_for(token)) as (read, write):
                    async with ClientSession(read, write) as session:
                        with anyio.fail_after(STEP_TIMEOUT_S):
                            await session.initialize()
                        with anyio.fail_after(STEP_TIMEOUT_S):
                            tools = tool_names(await session.list_tools())
                        report.ok(step[0])
                        await body(session, tools, step)
                        step[0] = f"{user}: session closed cleanly"
            report.ok(step[0])
        except Exception as exc:  # noqa: BLE001  (incl. TimeoutError and ExceptionGroup)
            report.fail(step[0], describe_exc(exc))

    # ---- alice: full tool list, whoami works and names her
    async def alice_body(session, tools: set[str], step: list[str]) -> None:
        report.check(
            tools == ALICE_TOOLS,
            f"alice sees exactly {sorted(ALICE_TOOLS)}",
            f"got {sorted(tools)}; missing {sorted(ALICE_TOOLS - tools)}, extra {sorted(tools - ALICE_TOOLS)}",
        )
        step[0] = desc = "alice: call whoami succeeds and names alice's object id"
        with anyio.fail_after(STEP_TIMEOUT_S):
            res = await session.call_tool("whoami", {})
        text = text_of(res)
        if is_error(res):
            report.fail(desc, f"result isError=true: {text!r}")
        else:
            report.check(ALICE_OID in text, desc, f"{ALICE_OID} not in result text {text!r}")

    # ---- bob: reduced tool list, delete_document refused
    async def bob_body(session, tools: set[str], step: list[str]) -> None:
        report.check(
            tools == BOB_TOOLS,
            f"bob sees exactly {sorted(BOB_TOOLS)}",
            f"got {sorted(tools)}; missing {sorted(BOB_TOOLS - tools)}, extra {sorted(tools - BOB_TOOLS)}",
        )
        step[0] = desc = "bob: call delete_document is refused"
        try:
            with anyio.fail_after(STEP_TIMEOUT_S):
                res = await session.call_tool("delete_document", {"id": "doc-1"})
        except MCPError as err:
            report.ok(f"{desc}: refused with MCP error (JSON-RPC error {err.error.code}: {err.error.message})")
        else:
            if is_error(res):
                report.ok(f"{desc}: refused with isError result: {text_of(res)!r}")
            else:
                report.fail(desc, f"call SUCCEEDED: {text_of(res)!r}")

    await as_user("alice", env["ALICE"], alice_body)
    await as_user("bob", env["BOB"], bob_body)

    # ---- no token: the server answers 401, the SDK must raise during connect/initialize
    desc = "no token: connect/initialize fails"
    tools: set[str] | None = None
    statuses: list[int] = []
    try:
        with anyio.fail_after(STEP_TIMEOUT_S):
            async with connect(url, None, statuses) as (read, write):
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    tools = tool_names(await session.list_tools())
    except Exception as exc:  # noqa: BLE001
        if find_exc(exc, TimeoutError) is not None:
            report.fail(desc, f"no answer within {STEP_TIMEOUT_S:.0f}s (client hung instead of failing)")
        elif sdk["records_statuses"] and 401 not in statuses:
            report.fail(desc, f"failed, but not with HTTP 401 (HTTP statuses seen: {statuses}): {describe_exc(exc)}")
        else:
            seen = f"HTTP {statuses}, " if statuses else ""
            report.ok(f"{desc}: {seen}{describe_exc(exc)}")
    else:
        report.fail(desc, f"initialize succeeded without a token (tools: {sorted(tools or ())})")


# --------------------------------------------------------------------------- main

def main(argv: list[str]) -> int:
    if "--" in argv:
        cmd = argv[argv.index("--") + 1:]
    else:
        cmd = argv[1:]
    if not cmd:
        print(f"usage: {os.path.basename(argv[0])} -- SERVER_COMMAND [ARGS...]", file=sys.stderr)
        return 2

    report = Report()
    proc: subprocess.Popen | None = None
    try:
        try:
            proc = start_server(cmd)
            env = read_startup_lines(proc, STARTUP_TIMEOUT_S)
            report.ok("server started and printed URL and tokens")
        except Exception as exc:  # noqa: BLE001
            report.fail("server started and printed URL and tokens", describe_exc(exc))
            env = None
        if env is not None:
            try:
                import anyio

                anyio.run(run_checks, env, report)
            except Exception as exc:  # noqa: BLE001
                traceback.print_exc()
                report.fail("client checks ran to completion", describe_exc(exc))
    except KeyboardInterrupt:
        report.fail("run", "interrupted")
    finally:
        if proc is not None:
            stop_server(proc)
    print(f"{report.passed} passed, {report.failed} failed", flush=True)
    return 0 if report.failed == 0 and report.passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
