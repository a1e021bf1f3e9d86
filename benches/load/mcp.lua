-- wrk script: JSON-RPC POSTs to an MCP endpoint, rotating the bearer tokens in
-- $TOKENS_FILE (one `role:token` per line; empty file = no Authorization header).
-- $SCENARIO: "list" (tools/list) or "call" (tools/call of a tool the caller's role allows).
local scenario = os.getenv("SCENARIO") or "list"
local tokens = {}
local file = os.getenv("TOKENS_FILE")
if file then
  for line in io.lines(file) do
    local role, token = line:match("^(%w+):(.+)$")
    if token then table.insert(tokens, { role = role, token = token }) end
  end
end
local allowed = { reader = 7, writer = 57, admin = 91 }
local n = 0

request = function()
  n = n + 1
  local headers = {
    ["Content-Type"] = "application/json",
    ["Accept"] = "application/json, text/event-stream",
    ["MCP-Protocol-Version"] = "2025-06-18",
  }
  local role = "reader"
  if #tokens > 0 then
    local t = tokens[(n % #tokens) + 1]
    headers["Authorization"] = "Bearer " .. t.token
    role = t.role
  end
  local body
  if scenario == "call" then
    body = string.format(
      '{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"tool_%03d","arguments":{"a":%d}}}',
      n, allowed[role] or 7, n)
  else
    body = string.format('{"jsonrpc":"2.0","id":%d,"method":"tools/list"}', n)
  end
  return wrk.format("POST", nil, headers, body)
end
