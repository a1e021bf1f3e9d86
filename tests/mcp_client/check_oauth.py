#!/usr/bin/env python3
"""Sign in to idguard's OAuth proxy with the official MCP Python SDK's OAuth client.

Runs `idguard` in dev mode (the dev Entra emulator, the demo tools, the OAuth proxy) and
lets the SDK's `OAuthClientProvider` do what it does against any MCP server: meet the 401,
discover the protected-resource and authorization-server metadata, register (dynamic
client registration, and in a second run a client-id metadata document served here on
loopback), authorize with PKCE, redeem the code, call `tools/list`, and refresh.

The browser part is headless: the redirect handler fetches the consent page, submits it
(with its CSRF token and cookie, as a browser would), picks alice on the emulator's
account picker, and follows the redirects back to the client's redirect URI.

Usage:
    python3 tests/mcp_client/check_oauth.py -- target/debug/idguard serve --port 0

Prints one line per check, then "N passed, M failed"; exits 0 only if all passed.
"""

from __future__ import annotations

import html
import http.server
import json
import re
import subprocess
import sys
import threading
import time
import traceback
from urllib.parse import parse_qs, urljoin, urlsplit

STARTUP_TIMEOUT_S = 120.0
STEP_TIMEOUT_S = 60.0
ALICE_TOOLS = {"whoami", "list_documents", "read_document", "delete_document", "transfer_funds", "my_profile"}
REDIRECT_URI = "http://127.0.0.1:33418/callback"


class Report:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    def check(self, cond: bool, desc: str, why: str = "") -> bool:
        if cond:
            self.passed += 1
            print(f"ok   {desc}", flush=True)
        else:
            self.failed += 1
            print(f"FAIL {desc}: {' '.join(str(why).split())}", flush=True)
        return cond


def start_server(cmd: list[str]) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    found: dict[str, str] = {}
    done = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            m = re.search(r"^export MCP_URL=(\S+)", line)
            if m:
                found["url"] = m.group(1)
                done.set()
        done.set()

    threading.Thread(target=pump, daemon=True).start()
    done.wait(STARTUP_TIMEOUT_S)
    if "url" not in found:
        proc.kill()
        raise RuntimeError("the server printed no `export MCP_URL=` line")
    return proc, found["url"]


def serve_client_document() -> tuple[http.server.ThreadingHTTPServer, str]:
    """A client-id metadata document on 127.0.0.1 (the proxy's development allowance)."""
    holder: dict[str, str] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (stdlib name)
            body = json.dumps(
                {
                    "client_id": holder["url"],
                    "client_name": "SDK metadata-document client",
                    "redirect_uris": [REDIRECT_URI],
                    "grant_types": ["authorization_code", "refresh_token"],
                    "response_types": ["code"],
                    "token_endpoint_auth_method": "none",
                }
            ).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    holder["url"] = f"http://127.0.0.1:{server.server_address[1]}/oauth/client.json"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, holder["url"]


class Browser:
    """Follows the sign-in like a browser: its own cookie jar, one redirect at a time.

    `__Host-` cookies are `Secure`; over plain http on loopback a browser keeps them
    (localhost is a secure context) while Python's cookie jar does not, hence the jar."""

    def __init__(self, httpx) -> None:
        self.client = httpx.AsyncClient(follow_redirects=False, timeout=STEP_TIMEOUT_S)
        self.cookies: dict[str, str] = {}

    async def request(self, method: str, url: str, **kw):
        headers = {"cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}
        res = await self.client.request(method, url, headers=headers, **kw)
        for raw in res.headers.get_list("set-cookie"):
            name, _, rest = raw.partition("=")
            value = rest.split(";", 1)[0]
            if "Max-Age=0" in raw:
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value
        return res

    async def sign_in(self, authorize_url: str, user: str) -> str:
        """From the client's authorization URL to its redirect URI (with code, state, iss)."""
        res = await self.request("GET", authorize_url)
        if res.status_code != 200 or "csrf" not in res.text:
            raise RuntimeError(f"no consent page: {res.status_code} {res.text[:300]}")
        page = res.text
        form = {
            name: html.unescape(re.search(rf'name="{name}" value="([^"]*)"', page).group(1))
            for name in ("txn", "csrf")
        }
        form["decision"] = "approve"
        res = await self.request("POST", urljoin(authorize_url, "/consent"), data=form)
        url = res.headers.get("location")
        for _ in range(6):
            if url is None:
                raise RuntimeError(f"the sign-in stopped: {res.status_code} {res.text[:300]}")
            if url.startswith(REDIRECT_URI):
                return url
            res = await self.request("GET", url)
            if res.status_code == 200 and "Pick an account" in res.text:
                links = re.findall(r'<a href="([^"]+)">([^<]*)</a>', res.text)
                url = next(html.unescape(href) for href, label in links if user in label.lower())
                continue
            url = res.headers.get("location")
        raise RuntimeError("too many redirects")


class MemoryStorage:
    def __init__(self) -> None:
        self.tokens = None
        self.client_info = None

    async def get_tokens(self):
        return self.tokens

    async def set_tokens(self, tokens) -> None:
        self.tokens = tokens

    async def get_client_info(self):
        return self.client_info

    async def set_client_info(self, client_info) -> None:
        self.client_info = client_info


async def run(label: str, mcp_url: str, report: Report, client_metadata_url: str | None) -> None:
    import httpx2
    from mcp import ClientSession
    from mcp.client.auth import OAuthClientProvider
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client
    from mcp.shared.auth import AuthorizationCodeResult, OAuthClientMetadata

    browser = Browser(httpx2)
    pending: dict[str, str] = {}
    requests: list[str] = []

    async def on_redirect(url: str) -> None:
        pending["authorize"] = url

    async def on_callback() -> AuthorizationCodeResult:
        back = await browser.sign_in(pending.pop("authorize"), "alice")
        q = {k: v[0] for k, v in parse_qs(urlsplit(back).query).items()}
        return AuthorizationCodeResult(code=q["code"], state=q.get("state"), iss=q.get("iss"))

    storage = MemoryStorage()
    provider = OAuthClientProvider(
        server_url=mcp_url,
        client_metadata=OAuthClientMetadata(
            client_name=f"idguard check ({label})",
            redirect_uris=[REDIRECT_URI],
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
            token_endpoint_auth_method="none",
        ),
        storage=storage,
        redirect_handler=on_redirect,
        callback_handler=on_callback,
        client_metadata_url=client_metadata_url,
    )

    async def record(request) -> None:
        requests.append(f"{request.method} {urlsplit(str(request.url)).path}")

    async def list_tools(profile: list[str] | None = None) -> set[str]:
        client = create_mcp_http_client(auth=provider)
        client.event_hooks["request"].append(record)
        async with client:
            async with streamable_http_client(mcp_url, http_client=client) as streams:
                read, write = streams[0], streams[1]
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    result = await session.list_tools()
                    if profile is not None:
                        called = await session.call_tool("my_profile", {})
                        profile.extend(getattr(c, "text", "") for c in called.content)
                    return {t.name for t in result.tools}

    profile: list[str] = []
    tools = await list_tools(profile)
    report.check(tools == ALICE_TOOLS, f"{label}: signed in as alice, tools/list answered", f"got {sorted(tools)}")
    report.check(
        any("alice@" in text.lower() for text in profile),
        f"{label}: my_profile reached Graph on alice's behalf (OBO with the stored Entra token)",
        f"got {profile}",
    )
    report.check(
        "GET /.well-known/oauth-protected-resource/mcp" in requests
        and "GET /.well-known/oauth-authorization-server" in requests,
        f"{label}: discovery started from the 401",
        f"requests: {requests}",
    )
    registered = "POST /register" in requests
    if client_metadata_url:
        report.check(
            not registered and storage.client_info.client_id == client_metadata_url,
            f"{label}: the metadata-document URL is the client id (no registration)",
            f"requests: {requests}",
        )
    else:
        report.check(registered, f"{label}: registered dynamically", f"requests: {requests}")
    issued = storage.tokens
    report.check(
        issued is not None and issued.refresh_token is not None,
        f"{label}: an access and a refresh token were issued",
        f"{issued}",
    )

    # Let the access token lapse (as an hour passing would) and call again: the SDK
    # refreshes with the refresh token, without a new sign-in.
    provider.context.token_expiry_time = time.time() - 1
    requests.clear()
    tools = await list_tools()
    renewed = storage.tokens
    report.check(
        "POST /token" in requests
        and renewed.access_token != issued.access_token
        and renewed.refresh_token != issued.refresh_token
        and tools == ALICE_TOOLS
        and "pending" not in pending,
        f"{label}: refresh rotated both tokens and tools/list still answers",
        f"requests: {requests}",
    )


async def bounded(label: str, mcp_url: str, report: Report, cimd: str | None) -> None:
    import anyio

    with anyio.fail_after(STEP_TIMEOUT_S):
        await run(label, mcp_url, report, cimd)


def main(argv: list[str]) -> int:
    if "--" not in argv:
        print(__doc__)
        return 2
    cmd = argv[argv.index("--") + 1 :]
    report = Report()
    proc, url = start_server(cmd)
    doc_server, doc_url = serve_client_document()
    try:
        import anyio
        import mcp.client.auth.oauth2 as oauth2

        # The SDK accepts only https metadata-document URLs; the proxy's development
        # allowance serves this test's document from http://127.0.0.1. Widen that one
        # check so the SDK's own CIMD path runs against the loopback document.
        strict = oauth2.is_valid_client_metadata_url
        oauth2.is_valid_client_metadata_url = lambda u: strict(u) or (u or "").startswith("http://127.0.0.1:")

        for label, cimd in (("dcr", None), ("cimd", doc_url)):
            try:
                anyio.run(bounded, label, url, report, cimd)
            except BaseException as e:  # noqa: BLE001 (report and go on)
                traceback.print_exc()
                report.check(False, f"{label}: the OAuth flow", repr(e))
    finally:
        doc_server.shutdown()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    print(f"{report.passed} passed, {report.failed} failed")
    return 0 if report.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
