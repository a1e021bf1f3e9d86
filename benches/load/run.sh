#!/usr/bin/env bash
# End-to-end load: the fixture MCP server bare, behind idguard in process, and behind the
# `idguard` binary in gateway mode (a second process in front of the bare fixture), side by
# side in one run, driven by wrk over loopback. Bounded: DURATION per scenario (default
# 20s), CONNECTIONS (default 64).
#
# The servers are pinned to one core (SERVER_CPU, default 0) and wrk to the other
# (LOAD_CPU, default 1) with taskset: the gateway and the fixture behind it share that core,
# as the bare and in-process servers have it alone, so the ratios compare the CPU each
# setup needs per request. PIN=0 leaves scheduling to the kernel.
#
# Each row: req/s, p50/p99, non-2xx, socket errors, the server's peak RSS and its CPU time
# (user + system, from /proc) per request; for a gateway row, the gateway process's own
# CPU per request (the fixture behind it is printed on its own line). The last lines are
# the ratios to bare, from this run.
#
#   benches/load/run.sh            # needs wrk (Debian: apt-get install wrk)
#   SCENARIOS="call list" CONNECTIONS=1 THREADS=1 benches/load/run.sh   # a subset, latency-bound
# The fixture and the `idguard` binary are taken from $CARGO_TARGET_DIR (default target/);
# FIXTURE and IDGUARD name prebuilt ones (skipping the build); BASELINE another `idguard`
# binary run beside the gateway (rows `baseline`), to compare two builds in one run.
# FLOOR=1 (the default) also runs examples/hop_floor.rs, a proxy that only forwards, in
# front of the same fixture (rows `floor`): what any hop costs before idguard does anything.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
DURATION=${DURATION:-20s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 1; }
FIXTURE=${FIXTURE:-}   # a prebuilt fixture binary (skips the build)
IDGUARD=${IDGUARD:-}   # a prebuilt idguard binary (skips the build)
if [ -z "$FIXTURE" ]; then
  cargo build --release --quiet --example load_fixture
  FIXTURE="${CARGO_TARGET_DIR:-target}/release/examples/load_fixture"
fi
FLOOR_BIN=${FLOOR_BIN:-}   # a prebuilt hop_floor example (skips the build)
if [ "${FLOOR:-1}" = 1 ] && [ -z "$FLOOR_BIN" ]; then
  cargo build --release --quiet --example hop_floor
  FLOOR_BIN="${CARGO_TARGET_DIR:-target}/release/examples/hop_floor"
fi
if [ -z "$IDGUARD" ]; then
  cargo build --release --quiet -p idguard-cli --bin idguard
  IDGUARD="${CARGO_TARGET_DIR:-target}/release/idguard"
fi
IDGUARD=$(realpath "$IDGUARD")
server=(); load=()
if [ "${PIN:-1}" = 1 ] && command -v taskset >/dev/null; then
  server=(taskset -c "$SERVER_CPU"); load=(taskset -c "$LOAD_CPU")
fi
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

wait_for() { # file pattern pid
  for _ in $(seq 1 600); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    kill -0 "$3" 2>/dev/null || { echo "a server exited: $(cat "$1")" >&2; exit 1; }
    sleep 0.1
  done
  echo "no '$2' in $1" >&2; exit 1
}
value() { grep "^IDGUARD_LOAD_$2=" "$work/$1.out" | head -1 | cut -d= -f2-; }

start() { # name args...
  local name=$1; shift
  start_bin "$name" "$FIXTURE" "$@"
}
start_bin() { # name binary args...
  local name=$1 bin=$2; shift 2
  mkfifo "$work/$name.in"
  "${server[@]}" "$bin" "$@" < "$work/$name.in" > "$work/$name.out" 2>/dev/null &
  pids+=($!); echo $! > "$work/$name.pid"
  exec {fd}>"$work/$name.in"   # keep stdin open
  wait_for "$work/$name.out" IDGUARD_LOAD_READY "$(cat "$work/$name.pid")"
  value "$name" URL > "$work/$name.url"
}

# The bare fixture's emulator is the authority of every scenario: its tokens drive all.
start bare --bare --users 6
grep '^IDGUARD_LOAD_TOKEN=' "$work/bare.out" | cut -d= -f2- > "$work/bare.tokens"
authority=$(value bare AUTHORITY) tenant=$(value bare TENANT) client_id=$(value bare CLIENT_ID)
start idguard --authority "$authority" --tenant "$tenant" --client-id "$client_id"

# The gateway: `idguard serve` in front of the bare fixture, with the fixture's policies.
# BASELINE names a second `idguard` binary (another build), run beside it as `baseline`.
start_gateway() { # name binary
  local name=$1 bin=$2
  cat > "$work/$name.toml" <<TOML
[token]
authority = "$authority"
tenant = "$tenant"
client_id = "$client_id"
resource = "http://127.0.0.1/mcp"

[server]
upstream = "$(cat "$work/bare.url")"
policies = "$root/benches/load/policies"
TOML
  (cd "$work" && exec "${server[@]}" "$bin" serve --config "$work/$name.toml" --port 0 \
    > "$work/$name.out" 2>/dev/null) &
  pids+=($!); echo $! > "$work/$name.pid"
  wait_for "$work/$name.out" "idguard: gateway " "$(cat "$work/$name.pid")"
  sed -n 's/^idguard: gateway \([^ ]*\) -> .*/\1/p' "$work/$name.out" > "$work/$name.url"
  cp "$work/bare.tokens" "$work/$name.tokens"
}
start_gateway gateway "$IDGUARD"
[ -n "${BASELINE:-}" ] && start_gateway baseline "$(realpath "$BASELINE")"
# The floor: a proxy that only forwards (examples/hop_floor.rs), in front of the same fixture.
if [ "${FLOOR:-1}" = 1 ]; then
  start_bin floor "$FLOOR_BIN" --upstream "$(cat "$work/bare.url")"
  cp "$work/bare.tokens" "$work/floor.tokens"
fi
cp "$work/bare.tokens" "$work/idguard.tokens"
: > "$work/none.tokens"
sed 's/:.*/:eyJhbGciOiJSUzI1NiJ9.eyJ4IjoxfQ.aW52YWxpZA/' "$work/bare.tokens" > "$work/invalid.tokens"

run() { # label server scenario tokens
  local label=$1 server=$2 scenario=$3 tokens=$4
  local url; url=$(cat "$work/$server.url")
  local out; out="$work/$(echo "$label" | tr ' /()' '____').wrk"
  local pid; pid=$(cat "$work/$server.pid")
  local upstream; upstream=$(cat "$work/bare.pid")
  local before; before=$(cpu_ticks "$pid")
  local up_before; up_before=$(cpu_ticks "$upstream")
  SCENARIO=$scenario TOKENS_FILE="$work/$tokens.tokens" \
    "${load[@]}" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s benches/load/mcp.lua "$url" \
    > "$out" 2>&1
  local ticks=$(( $(cpu_ticks "$pid") - before ))
  local up_ticks=$(( $(cpu_ticks "$upstream") - up_before ))
  local rss; rss=$(grep VmHWM "/proc/$pid/status" | awk '{print $2}')
  python3 benches/load/summarize.py "$label" "$out" "$rss" "$ticks" "$(getconf CLK_TCK)" | tee -a "$work/rows"
  if [ "$server" = gateway ] || [ "$server" = baseline ] || [ "$server" = floor ]; then
    python3 benches/load/summarize.py "  (the bare fixture behind it)" "$out" \
      "$(grep VmHWM "/proc/$upstream/status" | awk '{print $2}')" "$up_ticks" "$(getconf CLK_TCK)"
  fi
}

# The server's CPU time so far (user + system, in clock ticks): per request, it is the
# server's own cost, whatever wrk and the rest of the machine take.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

echo "scenario | req/s | p50 | p99 | non-2xx | socket errors | peak RSS (KiB) | server CPU per request"
for s in ${SCENARIOS:-call list invalid none}; do
  case $s in
    call) run "bare tools/call"          bare    call bare
          run "idguard tools/call"       idguard call idguard
          [ -n "${BASELINE:-}" ] && run "baseline tools/call" baseline call baseline
          run "gateway tools/call"       gateway call gateway
          [ "${FLOOR:-1}" = 1 ] && run "floor tools/call" floor call floor ;;
    list) run "bare tools/list (100)"    bare    list bare
          run "idguard tools/list (100)" idguard list idguard
          [ -n "${BASELINE:-}" ] && run "baseline tools/list (100)" baseline list baseline
          run "gateway tools/list (100)" gateway list gateway
          [ "${FLOOR:-1}" = 1 ] && run "floor tools/list (100)" floor list floor ;;
    invalid) run "idguard invalid token" idguard list invalid ;;
    none) run "idguard no token"         idguard list none ;;
  esac
done
python3 - "$work/rows" <<'PY'
import sys
rows = {}
for line in open(sys.argv[1]):
    cells = [c.strip() for c in line.split("|")]
    try:
        rows[cells[0]] = float(cells[1])
    except ValueError:
        pass
for what in ("tools/call", "tools/list (100)"):
    bare = rows.get(f"bare {what}")
    for who in ("idguard", "baseline", "gateway", "floor"):
        got = rows.get(f"{who} {what}")
        if bare and got is not None:
            print(f"{who}/bare {what}: {100 * got / bare:.0f} %")
    floor, gateway = rows.get(f"floor {what}"), rows.get(f"gateway {what}")
    if floor and gateway:
        print(f"gateway/floor {what}: {100 * gateway / floor:.0f} %")
PY
