// A real MCP client (the official TypeScript SDK: Client + StreamableHTTPClientTransport)
// for tests/gateway.rs: connects to URL with `Authorization: Bearer TOKEN`, lists the
// tools (all pages) and prints their names as one JSON array on stdout.
// With a third argument TOOL it then calls that tool (arguments: the fourth argument, a
// JSON object; default none) and prints the result as a second JSON line.
//
// Usage: node client.mjs URL TOKEN|- [TOOL [ARGS_JSON]]   (TOKEN "-": read $IDGUARD_TOKEN)
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const [url, tokenArg, tool, argsJson] = process.argv.slice(2);
const token = tokenArg && tokenArg !== "-" ? tokenArg : process.env.IDGUARD_TOKEN;
if (!url || !token) {
  console.error("usage: node client.mjs URL TOKEN|- [TOOL [ARGS_JSON]]");
  process.exit(2);
}
if (!["127.0.0.1", "localhost", "[::1]"].includes(new URL(url).hostname)) {
  console.error(`refusing a non-loopback URL: ${url}`);
  process.exit(2);
}

const client = new Client({ name: "idguard-gateway-tests", version: "1.0.0" });
const transport = new StreamableHTTPClientTransport(new URL(url), {
  requestInit: { headers: { Authorization: `Bearer ${token}` } },
});
const timer = setTimeout(() => {
  console.error("timed out after 30 s");
  process.exit(3);
}, 30_000);
try {
  await client.connect(transport);
  const names = [];
  let cursor;
  do {
    const page = await client.listTools(cursor ? { cursor } : {});
    names.push(...page.tools.map((t) => t.name));
    cursor = page.nextCursor;
  } while (cursor);
  console.log(JSON.stringify(names));
  if (tool) {
    const result = await client.callTool({ name: tool, arguments: JSON.parse(argsJson ?? "{}") });
    console.log(JSON.stringify(result));
  }
  await transport.terminateSession().catch(() => {});
  await client.close();
} catch (err) {
  console.error(`client error: ${err?.code ?? ""} ${err?.message ?? err}`);
  process.exitCode = 1;
} finally {
  clearTimeout(timer);
}
