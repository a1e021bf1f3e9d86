#!/usr/bin/env bash
# Instructions per request, bare and behind idguard, counted by callgrind: unlike req/s on
# a shared machine, the count is the same from run to run, so small differences show.
# Each server runs under `valgrind --tool=callgrind`; after WARM requests the counters are
# zeroed, N requests are sent one after another on one connection (drive.py), and the
# counters are dumped. Prints instructions per request and the bare/idguard ratio.
#
#   FIXTURE=target/release/examples/load_fixture SC="call list" N=2000 benches/load/cost.sh
#
# The dumps stay in $OUT (default a temporary directory) for callgrind_annotate.
set -euo pipefail
cd "$(dirname "$0")/../.."
FIXTURE=${FIXTURE:-target/release/examples/load_fixture}
SC=${SC:-call list}; N=${N:-2000}; WARM=${WARM:-300}
OUT=${OUT:-$(mktemp -d)}
FIXTURE=$(realpath "$FIXTURE")
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT
count() { # name dump -> total instructions (Ir) of the dump
  grep -m1 '^summary:\|^totals:' "$2" | awk '{print $2}'
}
for mode in bare idguard; do
  args=(); [ "$mode" = bare ] && args=(--bare)
  mkfifo "$OUT/$mode.in"
  (cd "$OUT" && exec valgrind --tool=callgrind --callgrind-out-file="$OUT/$mode.%p" \
      "$FIXTURE" "${args[@]}" < "$OUT/$mode.in" > "$OUT/$mode.out" 2> "$OUT/$mode.err") &
  pids+=($!)
  exec {fd}>"$OUT/$mode.in"
  for _ in $(seq 1 1200); do
    grep -q IDGUARD_LOAD_TOKEN "$OUT/$mode.out" 2>/dev/null && break
    kill -0 "${pids[-1]}" 2>/dev/null || { cat "$OUT/$mode.err" >&2; exit 1; }
    sleep 0.1
  done
  url=$(grep '^IDGUARD_LOAD_URL=' "$OUT/$mode.out" | cut -d= -f2)
  grep '^IDGUARD_LOAD_TOKEN=' "$OUT/$mode.out" | cut -d= -f2- > "$OUT/$mode.tokens"
  pid=$(pgrep -f "callgrind-out-file=$OUT/$mode" | head -1)
  for s in $SC; do
    TOKENS_FILE="$OUT/$mode.tokens" python3 benches/load/drive.py "$url" "$s" "$WARM" > /dev/null
    (cd "$OUT" && callgrind_control -z "$pid" > /dev/null)
    status=$(TOKENS_FILE="$OUT/$mode.tokens" python3 benches/load/drive.py "$url" "$s" "$N")
    (cd "$OUT" && callgrind_control -d "$s" "$pid" > /dev/null)
    dump=$(ls -t "$OUT"/$mode.*.*"$s"* 2>/dev/null | head -1 || true)
    [ -n "$dump" ] || dump=$(ls -t "$OUT/$mode".* | grep -v '\.\(in\|out\|err\|tokens\)$' | head -1)
    total=$(count "$mode" "$dump")
    echo "$mode $s $((total / N)) instructions/request (statuses $status) $dump"
    echo "$mode $s $((total / N))" >> "$OUT/results"
  done
  exec {fd}>&-
done
for s in $SC; do
  b=$(awk -v s="$s" '$1=="bare" && $2==s {print $3}' "$OUT/results")
  g=$(awk -v s="$s" '$1=="idguard" && $2==s {print $3}' "$OUT/results")
  echo "$s: bare $b, idguard $g instructions/request; bare/idguard = $(awk -v b="$b" -v g="$g" 'BEGIN{printf "%.1f %%", 100*b/g}'), idguard adds $((g - b))"
done
