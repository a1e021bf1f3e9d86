"""One table row from wrk --latency output: req/s, p50, p99, non-2xx, errors, peak RSS, and
the server's CPU time per request (from its CPU ticks during the run and CLK_TCK)."""
import re
import sys

label, path, rss, ticks, hz = sys.argv[1:6]
text = open(path).read()


def find(pattern, default="-"):
    m = re.search(pattern, text)
    return m.group(1) if m else default


rps = find(r"Requests/sec:\s+([\d.]+)")
p50 = find(r"\s50%\s+([\d.]+\w+)")
p99 = find(r"\s99%\s+([\d.]+\w+)")
non2xx = find(r"Non-2xx or 3xx responses:\s+(\d+)", "0")
errors = find(r"Socket errors: (.+)", "0")
total = int(find(r"(\d+) requests in", "0"))
cpu = f"{int(ticks) / int(hz) * 1e6 / total:.1f} µs" if total else "-"
print(f"{label} | {rps} | {p50} | {p99} | {non2xx} | {errors} | {rss} | {cpu}")
