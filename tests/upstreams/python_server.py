#!/usr/bin/env python3
"""A real upstream MCP server for idguard's gateway tests (tests/gateway.rs).

Built with the official MCP Python SDK (`mcp`, pinned in tests/mcp_client/requirements.txt).
It is deliberately a *naive* upstream: no authorization of its own, no DNS-rebinding
protection, one task store shared by every session. Whatever the tests prove, idguard
proves it, not this server.

Serves, on one Starlette app:
- `/mcp`: Streamable HTTP, stateful (sessions), with an in-memory EventStore so SSE streams
  can be resumed with `Last-Event-ID`. Both protocol eras of the SDK: the 2025 handshake
  (`initialize`) and 2026-07-28 (`server/discover`, per-request envelope).
- `/sse` + `/messages/`: the SDK's legacy HTTP+SSE transport (an attack target for paths
  below the MCP endpoint: `/mcp/../sse`).

Tools: whoami (read-only), delete_document (destructive), get_document (read-only; also
runnable as a 2025-11-25 task), echo_headers (read-only; the HTTP headers it received).
Resources docs://public/readme, docs://secret/plan and the template docs://secret/{name};
prompts public_prompt and secret_prompt (argument `topic`, with completions);
resources/subscribe (with PY_ANNOUNCE_UPDATES set, each subscription is followed by a
notifications/resources/updated for its URI on the session's standalone GET stream).

Test probe: `GET /_probe/requests` (answered outside MCP, not logged) returns
`{"http": [[method, raw path?query], ...], "rpc": [[method, id], ...]}`: every HTTP request
and every JSON-RPC message this server received, so tests can assert that idguard never
let a request through.

Usage: python3 tests/upstreams/python_server.py [PORT]   (default 0: any free port)
Prints `listening on 127.0.0.1:PORT` once it accepts connections.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import json
import os
import socket
import sys
import uuid
from collections import deque
from datetime import datetime, timezone
from typing import Any

import uvicorn
from lifecycle import exit_on_stdin_eof
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.streamable_http import EventCallback, EventId, EventMessage, EventStore, StreamId
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError
from mcp.types import (
    Completion,
    JSONRPCMessage,
    PromptReference,
    ResourceTemplateReference,
    SubscribeRequestParams,
    ToolAnnotations,
    UnsubscribeRequestParams,
)

DOCUMENT = {"id": "d1", "title": "Plan", "owner_email": "owner@contoso.com"}
RELATED_TASK = "io.modelcontextprotocol/related-task"


# --------------------------------------------------------------------------- event store


class InMemoryEventStore(EventStore):
    """Every event of every stream, in order; replay is per stream.

    Like the SDK's example store: an event id names one stored event; replaying after it
    sends the later events *of the same stream* (a POST's reply stream, or the standalone
    GET stream) and returns that stream's id, so the transport keeps the resumed
    connection registered for it. Priming events (no message) are stored, never replayed.
    """

    def __init__(self, max_events: int = 10_000) -> None:
        self._events: deque[tuple[EventId, StreamId, JSONRPCMessage | None]] = deque(maxlen=max_events)
        self._streams: dict[EventId, StreamId] = {}

    async def store_event(self, stream_id: StreamId, message: JSONRPCMessage | None) -> EventId:
        event_id = uuid.uuid4().hex
        if len(self._events) == self._events.maxlen:
            old_id, _, _ = self._events[0]
            self._streams.pop(old_id, None)
        self._events.append((event_id, stream_id, message))
        self._streams[event_id] = stream_id
        return event_id

    async def replay_events_after(self, last_event_id: EventId, send_callback: EventCallback) -> StreamId | None:
        stream_id = self._streams.get(last_event_id)
        if stream_id is None:
            return None
        seen = False
        for event_id, sid, message in list(self._events):
            if seen and sid == stream_id and message is not None:
                await send_callback(EventMessage(message, event_id))
            if event_id == last_event_id:
                seen = True
        return stream_id


# --------------------------------------------------------------------------- probe

HTTP_LOG: list[list[str]] = []
RPC_LOG: list[list[Any]] = []


class Probe:
    """ASGI wrapper: logs every HTTP request and answers `GET /_probe/requests`."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            if scope["path"] == "/_probe/requests":
                body = json.dumps({"http": HTTP_LOG, "rpc": RPC_LOG}).encode()
                await send(
                    {
                        "type": "http.response.start",
                        "status": 200,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
            raw = scope.get("raw_path") or scope["path"].encode()
            query = scope.get("query_string") or b""
            target = raw.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")
            HTTP_LOG.append([scope["method"], target])
        await self.app(scope, receive, send)


async def recording_middleware(ctx: Any, call_next: Any) -> Any:
    RPC_LOG.append([ctx.method, ctx.request_id])
    return await call_next(ctx)


# --------------------------------------------------------------------------- server

mcp = MCPServer(
    name="idguard-test-upstream",
    version="1.0.0",
    instructions="Test upstream for idguard's gateway tests.",
    log_level="WARNING",
)


@mcp.tool(annotations=ToolAnnotations(read_only_hint=True))
def whoami() -> str:
    """Who is calling (this upstream has no identity of its own: it says so)."""
    return "upstream: anonymous caller (authorization is idguard's job)"


@mcp.tool(annotations=ToolAnnotations(destructive_hint=True))
def delete_document(id: str) -> str:
    """Delete a document (pretends to)."""
    return f"deleted {id}"


@mcp.tool(annotations=ToolAnnotations(read_only_hint=True))
async def get_document(id: str = "d1", delay_ms: int = 0) -> dict[str, Any]:
    """Read a document: structuredContent and the same JSON as text (after delay_ms)."""
    if delay_ms > 0:
        await asyncio.sleep(min(delay_ms, 60_000) / 1000)
    return dict(DOCUMENT)


@mcp.tool(annotations=ToolAnnotations(read_only_hint=True))
def echo_headers(ctx: Context) -> dict[str, Any]:
    """The HTTP headers of the request that carried this call, as received."""
    headers = ctx.headers
    pairs: list[list[str]] = []
    if headers is not None:
        items = headers.items() if hasattr(headers, "items") else []
        # Starlette's Headers.items() keeps repeated headers; keep them all.
        raw = getattr(headers, "raw", None)
        if raw is not None:
            pairs = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in raw]
        else:
            pairs = [[k, v] for k, v in items]
    return {"headers": pairs}


@mcp.resource("docs://public/readme", mime_type="text/plain")
def public_readme() -> str:
    return "public readme"


@mcp.resource("docs://secret/plan", mime_type="text/plain")
def secret_plan() -> str:
    return "SECRET PLAN: acquire Fabrikam"


@mcp.resource("docs://secret/{name}", mime_type="text/plain")
def secret_doc(name: str) -> str:
    return f"SECRET DOCUMENT {name}"


@mcp.prompt()
def public_prompt(topic: str) -> str:
    """A prompt anyone may use."""
    return f"Summarize the public notes on {topic}."


@mcp.prompt()
def secret_prompt(topic: str) -> str:
    """A prompt only admins may use."""
    return f"Draft the confidential memo on {topic}."


@mcp.completion()
async def complete(ref: PromptReference | ResourceTemplateReference, argument: Any, context: Any) -> Completion | None:
    if isinstance(ref, PromptReference) and ref.name == "secret_prompt":
        return Completion(values=["secret-merger", "secret-layoffs"], total=2, has_more=False)
    if isinstance(ref, PromptReference) and ref.name == "public_prompt":
        return Completion(values=["public-roadmap"], total=1, has_more=False)
    if isinstance(ref, ResourceTemplateReference):
        return Completion(values=["plan", "payroll"], total=2, has_more=False)
    return None


SUBSCRIPTIONS: set[str] = set()


async def on_subscribe(ctx: Any, params: SubscribeRequestParams) -> dict[str, Any]:
    SUBSCRIPTIONS.add(str(params.uri))
    if os.environ.get("PY_ANNOUNCE_UPDATES"):
        # With PY_ANNOUNCE_UPDATES set: once subscribed, the resource "changes" at once, and
        # the update goes out on the session's standalone (GET) stream.
        session = ctx.session
        uri = str(params.uri)

        async def announce() -> None:
            await session.send_resource_updated(uri)

        asyncio.get_running_loop().create_task(announce(), context=contextvars.Context())
    return {}


async def on_unsubscribe(ctx: Any, params: UnsubscribeRequestParams) -> dict[str, Any]:
    SUBSCRIPTIONS.discard(str(params.uri))
    return {}


# The SDK serves resources/subscribe on the 2025 handshake era once a handler is registered
# (and then advertises `resources.subscribe`); MCPServer has no decorator for it.
mcp._lowlevel_server.add_request_handler("resources/subscribe", SubscribeRequestParams, on_subscribe)  # noqa: SLF001
mcp._lowlevel_server.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, on_unsubscribe)  # noqa: SLF001


# --------------------------------------------------------------------------- tasks (2025-11-25)
#
# mcp 2.3.0 ships the 2025-11-25 task *types* (CallToolRequestParams.task, CreateTaskResult,
# tasks/get, ...) but no server support: tools/call results are validated as CallToolResult
# and tasks/* are "deliberately absent" from its method tables. This middleware adds them
# the way a server author on this SDK would. ONE store for every session and caller, keyed
# by task id only: a naive server, so that task ownership is idguard's to enforce.

TASKS: dict[str, dict[str, Any]] = {}
TASK_RESULTS: dict[str, dict[str, Any]] = {}
TASK_DONE: dict[str, asyncio.Event] = {}
TASK_TOOLS = {"get_document"}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _task_view(task_id: str) -> dict[str, Any]:
    return dict(TASKS[task_id])


def _missing(task_id: Any) -> MCPError:
    return MCPError(code=-32602, message=f"Task not found: {task_id}")


async def tasks_middleware(ctx: Any, call_next: Any) -> Any:
    method, params = ctx.method, dict(ctx.params or {})
    if ctx.request_id is None:
        return await call_next(ctx)

    if method == "initialize":
        result = await call_next(ctx)
        caps = result.setdefault("capabilities", {})
        caps["tasks"] = {"list": {}, "cancel": {}, "requests": {"tools": {"call": {}}}}
        return result

    if method == "tools/list":
        result = await call_next(ctx)
        if ctx.protocol_version == "2025-11-25":
            for tool in result.get("tools", []):
                if tool.get("name") in TASK_TOOLS:
                    tool["execution"] = {"taskSupport": "optional"}
        return result

    if method == "tools/call" and params.get("task") is not None and ctx.protocol_version == "2025-11-25":
        if params.get("name") not in TASK_TOOLS:
            raise MCPError(code=-32601, message=f"tool {params.get('name')!r} does not support tasks")
        ttl = (params.get("task") or {}).get("ttl")
        plain = {k: v for k, v in params.items() if k != "task"}
        task_id = uuid.uuid4().hex
        now = _now()
        TASKS[task_id] = {
            "taskId": task_id,
            "status": "working",
            "ttl": ttl if isinstance(ttl, int) else 60_000,
            "createdAt": now,
            "lastUpdatedAt": now,
            "pollInterval": 100,
        }
        TASK_DONE[task_id] = asyncio.Event()
        created = {"task": _task_view(task_id)}
        session = ctx.session
        inner = dataclasses.replace(ctx, params=plain)

        async def run() -> None:
            try:
                result = await call_next(inner)
                TASK_RESULTS[task_id] = result
                status = "failed" if result.get("isError") else "completed"
            except Exception as exc:  # noqa: BLE001
                TASK_RESULTS[task_id] = {"error": {"code": getattr(exc, "code", -32603), "message": str(exc)}}
                status = "failed"
            if TASKS[task_id]["status"] != "cancelled":
                TASKS[task_id].update(status=status, lastUpdatedAt=_now())
            TASK_DONE[task_id].set()
            try:  # notifications/tasks/status on the session's standalone (GET) stream
                await session._connection.outbound.notify("notifications/tasks/status", _task_view(task_id))  # noqa: SLF001
            except Exception:  # noqa: BLE001
                pass

        asyncio.get_running_loop().create_task(run())
        return created

    if method == "tasks/get":
        task_id = params.get("taskId")
        if task_id not in TASKS:
            raise _missing(task_id)
        return _task_view(task_id)

    if method == "tasks/result":
        task_id = params.get("taskId")
        if task_id not in TASKS:
            raise _missing(task_id)
        await TASK_DONE[task_id].wait()
        stored = TASK_RESULTS.get(task_id, {})
        if "error" in stored and "content" not in stored:
            raise MCPError(code=stored["error"]["code"], message=stored["error"]["message"])
        result = dict(stored)
        meta = dict(result.get("_meta") or {})
        meta[RELATED_TASK] = {"taskId": task_id}
        result["_meta"] = meta
        return result

    if method == "tasks/cancel":
        task_id = params.get("taskId")
        if task_id not in TASKS:
            raise _missing(task_id)
        if TASKS[task_id]["status"] in ("completed", "failed", "cancelled"):
            raise MCPError(code=-32602, message=f"Task {task_id} is already {TASKS[task_id]['status']}")
        TASKS[task_id].update(status="cancelled", lastUpdatedAt=_now())
        TASK_DONE[task_id].set()
        return _task_view(task_id)

    if method == "tasks/list":
        return {"tasks": [_task_view(t) for t in TASKS]}

    return await call_next(ctx)


mcp.middleware.append(recording_middleware)
mcp.middleware.append(tasks_middleware)


# --------------------------------------------------------------------------- app


def build_app() -> Any:
    # No DNS-rebinding protection: a naive upstream, so Host/Origin checks are idguard's.
    open_doors = TransportSecuritySettings(enable_dns_rebinding_protection=False)
    app = mcp.streamable_http_app(
        streamable_http_path="/mcp",
        event_store=InMemoryEventStore(),
        transport_security=open_doors,
    )
    legacy = mcp.sse_app(sse_path="/sse", message_path="/messages/", transport_security=open_doors)
    # The legacy transport's routes on the same app (the streamable app owns the lifespan).
    app.router.routes.extend(legacy.routes)
    return Probe(app)


class AnnouncingServer(uvicorn.Server):
    """Prints the readiness line once startup (lifespan included) is done."""

    def __init__(self, config: uvicorn.Config, port: int) -> None:
        super().__init__(config)
        self._port = port

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            print(f"listening on 127.0.0.1:{self._port}", flush=True)


def main(argv: list[str]) -> int:
    exit_on_stdin_eof()
    port = int(argv[1]) if len(argv) > 1 else 0
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    sock.set_inheritable(True)
    config = uvicorn.Config(build_app(), log_level="warning", lifespan="on")
    server = AnnouncingServer(config, sock.getsockname()[1])
    asyncio.run(server.serve(sockets=[sock]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
