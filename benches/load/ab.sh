#!/usr/bin/env bash
# Interleaved A/B of two builds of the load fixture against the bare fixture: the three
# servers start once, then wrk runs against them in ORDER (default: bare before after after
# before bare), so background load hits all three alike.
#
#   BEFORE=/path/to/old/load_fixture AFTER=/path/to/new/load_fixture SC=call D=15s C=64 benches/load/ab.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
SC=${SC:-call}; D=${D:-15s}; C=${C:-64}; T=${T:-2}
: "${BEFORE:?set BEFORE to a load_fixture binary}" "${AFTER:?set AFTER to a load_fixture binary}"
work=$(mktemp -d); pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT
start() { # name binary args...
  local name=$1 bin=$2; shift 2; mkfifo "$work/$name.in"
  "$bin" "$@" < "$work/$name.in" > "$work/$name.out" 2>/dev/null & pids+=($!)
  exec {fd}>"$work/$name.in"
  for _ in $(seq 1 300); do grep -q IDGUARD_LOAD_READY "$work/$name.out" 2>/dev/null && break; sleep 0.1; done
  grep '^IDGUARD_LOAD_URL=' "$work/$name.out" | cut -d= -f2 > "$work/$name.url"
  grep '^IDGUARD_LOAD_TOKEN=' "$work/$name.out" | cut -d= -f2- > "$work/$name.tokens"
}
start bare "$AFTER" --bare
start before "$BEFORE"
start after "$AFTER"
for s in ${ORDER:-bare before after after before bare}; do
  SCENARIO=$SC TOKENS_FILE="$work/$s.tokens" \
    wrk -t"$T" -c"$C" -d"$D" --latency -s benches/load/mcp.lua "$(cat "$work/$s.url")" > "$work/o" 2>&1
  echo "$s $(grep Requests/sec "$work/o" | awk '{print $2}') req/s, p50 $(grep ' 50%' "$work/o" | awk '{print $2}'), p99 $(grep ' 99%' "$work/o" | awk '{print $2}'), non-2xx $(grep 'Non-2xx' "$work/o" | awk '{print $NF}')"
done
