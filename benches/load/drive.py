#!/usr/bin/env python3
"""Sends N JSON-RPC requests, one after another on one keep-alive connection, to a load
fixture (the requests of `mcp.lua`, rotating the tokens of TOKENS_FILE). Used by `cost.sh`
to count the instructions a server spends per request; prints the status counts."""
import http.client, os, sys, urllib.parse
from collections import Counter

url, scenario, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
tokens = []
if os.environ.get("TOKENS_FILE"):
    for line in open(os.environ["TOKENS_FILE"]):
        role, _, token = line.strip().partition(":")
        if token:
            tokens.append((role, token))
allowed = {"reader": 7, "writer": 57, "admin": 91}
u = urllib.parse.urlsplit(url)
conn = http.client.HTTPConnection(u.hostname, u.port)
statuses = Counter()
for i in range(1, n + 1):
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": "2025-06-18",
    }
    role = "reader"
    if tokens:
        role, token = tokens[i % len(tokens)]
        headers["Authorization"] = "Bearer " + token
    if scenario == "call":
        body = '{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"tool_%03d","arguments":{"a":%d}}}' % (i, allowed.get(role, 7), i)
    else:
        body = '{"jsonrpc":"2.0","id":%d,"method":"tools/list"}' % i
    conn.request("POST", u.path or "/", body=body, headers=headers)
    resp = conn.getresponse()
    resp.read()
    statuses[resp.status] += 1
print(" ".join(f"{k}:{v}" for k, v in sorted(statuses.items())))
