#!/usr/bin/env bash
# Instructions per request, bare, behind idguard in process and behind the `idguard` gateway,
# counted by callgrind: unlike req/s on a shared machine, the count is the same from run to
# run, so small differences show. Each server runs under `valgrind --tool=callgrind`; after
# WARM requests the counters are zeroed, N requests are sent one after another on one
# connection (drive.py), and the counters are dumped. Prints instructions per request and
# the ratios to bare.
#
#   FIXTURE=target/release/examples/load_fixture SC="call list" N=2000 benches/load/cost.sh
#   MODES="bare gateway" IDGUARD=target/release/idguard benches/load/cost.sh
#
# In `gateway` mode the `idguard` binary runs under callgrind in front of a bare fixture
# that runs natively: the count is the gateway's alone. The dumps stay in $OUT (default a
# temporary directory) for callgrind_annotate.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
FIXTURE=${FIXTURE:-target/release/examples/load_fixture}
IDGUARD=${IDGUARD:-target/release/idguard}
SC=${SC:-call list}; N=${N:-2000}; WARM=${WARM:-300}; MODES=${MODES:-bare idguard}
OUT=${OUT:-$(mktemp -d)}
FIXTURE=$(realpath "$FIXTURE")
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT
count() { # dump -> total instructions (Ir) of the dump
  grep -m1 '^summary:\|^totals:' "$1" | awk '{print $2}'
}
ready() { # file pattern pid
  for _ in $(seq 1 1200); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    kill -0 "$3" 2>/dev/null || { cat "${1%.out}.err" >&2; exit 1; }
    sleep 0.1
  done
  echo "no '$2' in $1" >&2; exit 1
}
for mode in $MODES; do
  mkfifo "$OUT/$mode.in"
  exec {fd}<>"$OUT/$mode.in"   # the server's standard input: open until the mode ends
  if [ "$mode" = gateway ]; then
    # The upstream runs natively; the tokens are its emulator's.
    "$FIXTURE" --bare < "$OUT/$mode.in" > "$OUT/upstream.out" 2> "$OUT/upstream.err" &
    pids+=($!)
    ready "$OUT/upstream.out" IDGUARD_LOAD_READY "${pids[-1]}"
    v() { grep "^IDGUARD_LOAD_$1=" "$OUT/upstream.out" | head -1 | cut -d= -f2-; }
    printf '[token]\nauthority = "%s"\ntenant = "%s"\nclient_id = "%s"\nresource = "http://127.0.0.1/mcp"\n\n[server]\nupstream = "%s"\npolicies = "%s"\n' \
      "$(v AUTHORITY)" "$(v TENANT)" "$(v CLIENT_ID)" "$(v URL)" "$root/benches/load/policies" > "$OUT/gateway.toml"
    grep '^IDGUARD_LOAD_TOKEN=' "$OUT/upstream.out" | cut -d= -f2- > "$OUT/$mode.tokens"
    (cd "$OUT" && exec valgrind --tool=callgrind --callgrind-out-file="$OUT/$mode.%p" \
        "$(realpath "$root/$IDGUARD" 2>/dev/null || realpath "$IDGUARD")" serve \
        --config "$OUT/gateway.toml" --port 0 > "$OUT/$mode.out" 2> "$OUT/$mode.err") &
    pids+=($!)
    ready "$OUT/$mode.out" "idguard: gateway " "${pids[-1]}"
    url=$(sed -n 's/^idguard: gateway \([^ ]*\) -> .*/\1/p' "$OUT/$mode.out")
  else
    args=(); [ "$mode" = bare ] && args=(--bare)
    (cd "$OUT" && exec valgrind --tool=callgrind --callgrind-out-file="$OUT/$mode.%p" \
        "$FIXTURE" "${args[@]}" < "$OUT/$mode.in" > "$OUT/$mode.out" 2> "$OUT/$mode.err") &
    pids+=($!)
    ready "$OUT/$mode.out" IDGUARD_LOAD_READY "${pids[-1]}"
    url=$(grep '^IDGUARD_LOAD_URL=' "$OUT/$mode.out" | cut -d= -f2)
    grep '^IDGUARD_LOAD_TOKEN=' "$OUT/$mode.out" | cut -d= -f2- > "$OUT/$mode.tokens"
  fi
  pid=$(pgrep -f "callgrind-out-file=$OUT/$mode" | head -1)
  for s in $SC; do
    TOKENS_FILE="$OUT/$mode.tokens" python3 benches/load/drive.py "$url" "$s" "$WARM" > /dev/null
    (cd "$OUT" && callgrind_control -z "$pid" > /dev/null)
    status=$(TOKENS_FILE="$OUT/$mode.tokens" python3 benches/load/drive.py "$url" "$s" "$N")
    (cd "$OUT" && callgrind_control -d "$s" "$pid" > /dev/null)
    dump=$(ls -t "$OUT"/$mode.*.*"$s"* 2>/dev/null | head -1 || true)
    [ -n "$dump" ] || dump=$(ls -t "$OUT/$mode".* | grep -v '\.\(in\|out\|err\|tokens\|toml\)$' | head -1)
    total=$(count "$dump")
    echo "$mode $s $((total / N)) instructions/request (statuses $status) $dump"
    echo "$mode $s $((total / N))" >> "$OUT/results"
  done
  [ "$mode" = gateway ] && kill "${pids[-1]}" 2>/dev/null || true
  exec {fd}>&-
done
for s in $SC; do
  b=$(awk -v s="$s" '$1=="bare" && $2==s {print $3}' "$OUT/results")
  for m in $MODES; do
    [ "$m" = bare ] && continue
    g=$(awk -v m="$m" -v s="$s" '$1==m && $2==s {print $3}' "$OUT/results")
    if [ "$m" = gateway ]; then
      echo "$s: the gateway process spends $g instructions/request${b:+ (the bare server behind it: $b)}"
    elif [ -n "$b" ]; then
      echo "$s: bare $b, $m $g instructions/request; bare/$m = $(awk -v b="$b" -v g="$g" 'BEGIN{printf "%.1f %%", 100*b/g}'), $m adds $((g - b))"
    fi
  done
done
