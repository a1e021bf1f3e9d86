#!/usr/bin/env bash
# End-to-end load: the fixture MCP server bare and behind idguard, side by side, driven by
# wrk over loopback. Bounded: DURATION per scenario (default 20s), CONNECTIONS (default 64).
# Each row: req/s, p50/p99, non-2xx, socket errors, the server's peak RSS and its CPU time
# (user + system) per request.
#
#   benches/load/run.sh            # needs wrk (Debian: apt-get install wrk)
#   SCENARIOS="call list" CONNECTIONS=1 THREADS=1 benches/load/run.sh   # a subset, latency-bound
# The fixture binary is taken from $CARGO_TARGET_DIR (default target/).
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${DURATION:-20s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 1; }
FIXTURE=${FIXTURE:-}   # a prebuilt fixture binary (skips the build)
if [ -z "$FIXTURE" ]; then
  cargo build --release --quiet --example load_fixture
  FIXTURE="${CARGO_TARGET_DIR:-target}/release/examples/load_fixture"
fi
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

start() { # name args...
  local name=$1; shift
  mkfifo "$work/$name.in"
  "$FIXTURE" "$@" < "$work/$name.in" > "$work/$name.out" 2>/dev/null &
  pids+=($!); echo $! > "$work/$name.pid"
  exec {fd}>"$work/$name.in"   # keep stdin open
  for _ in $(seq 1 600); do grep -q IDGUARD_LOAD_TOKEN "$work/$name.out" 2>/dev/null && break; sleep 0.1; done
  grep '^IDGUARD_LOAD_URL=' "$work/$name.out" | cut -d= -f2 > "$work/$name.url"
  grep '^IDGUARD_LOAD_TOKEN=' "$work/$name.out" | cut -d= -f2- > "$work/$name.tokens"
}

start bare --bare --users 6
start idguard --users 6
: > "$work/none.tokens"
sed 's/:.*/:eyJhbGciOiJSUzI1NiJ9.eyJ4IjoxfQ.aW52YWxpZA/' "$work/idguard.tokens" > "$work/invalid.tokens"

run() { # label server scenario tokens
  local label=$1 server=$2 scenario=$3 tokens=$4
  local url; url=$(cat "$work/$server.url")
  local out; out="$work/$(echo "$label" | tr ' /()' '____').wrk"
  local pid; pid=$(cat "$work/$server.pid")
  local before; before=$(cpu_ticks "$pid")
  SCENARIO=$scenario TOKENS_FILE="$work/$tokens.tokens" \
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s benches/load/mcp.lua "$url" \
    > "$out" 2>&1
  local ticks=$(( $(cpu_ticks "$pid") - before ))
  local rss; rss=$(grep VmHWM "/proc/$pid/status" | awk '{print $2}')
  python3 benches/load/summarize.py "$label" "$out" "$rss" "$ticks" "$(getconf CLK_TCK)"
}

# The server's CPU time so far (user + system, in clock ticks): per request, it is the
# server's own cost, whatever wrk and the rest of the machine take.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

echo "scenario | req/s | p50 | p99 | non-2xx | socket errors | peak RSS (KiB) | server CPU per request"
for s in ${SCENARIOS:-call list invalid none}; do
  case $s in
    call) run "bare tools/call"          bare    call bare
          run "idguard tools/call"       idguard call idguard ;;
    list) run "bare tools/list (100)"    bare    list bare
          run "idguard tools/list (100)" idguard list idguard ;;
    invalid) run "idguard invalid token" idguard list invalid ;;
    none) run "idguard no token"         idguard list none ;;
  esac
done
