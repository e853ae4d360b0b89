#!/usr/bin/env bash
# Dispatch: requests/s of /isprime?number=7 over /testrequest (wrk -t1 -c64), and what one
# request costs the server and its workers in system calls, context switches and CPU time.
#
# Usage: benches/dispatch_cost.sh [FORKPOOL] [RUNS]
#   FORKPOOL  the server binary (default: the `cargo dist` build in this worktree's target)
#   RUNS      ratio runs, alternating the two endpoints (default 3)
#
# Starts the server on 127.0.0.1 (a free port), 2 workers, and stops it at the end. Prints
#   - per run: req/s of each endpoint and the ratio, with the load average;
#   - per endpoint: system calls, context switches and CPU ms per 1,000 requests, server and
#     workers apart (perf stat over one 5 s wrk run: counts, robust on a loaded machine where
#     the ratio is not).
# Needs wrk and perf (Debian: wrk, linux-perf); loopback only, bounded in time.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
bin="${1:-$here/target/x86_64-unknown-linux-gnu/release/forkpool}"
runs="${2:-3}"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
url="http://127.0.0.1:$port"
log="$(mktemp)"
"$bin" --listen "127.0.0.1:$port" --workers 2 >"$log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 100); do curl -sf "$url/testrequest" >/dev/null && break; sleep 0.1; done
workers="$(pgrep -P "$server" | paste -sd, -)"

rps() { wrk -t1 -c64 -d5s "$url$1" | awk '/Requests\/sec/ {print $2}'; }

echo "server pid $server, workers $workers, binary $bin"
for run in $(seq "$runs"); do
    is="$(rps '/isprime?number=7')"; tr="$(rps /testrequest)"
    printf 'run %d  isprime %9.0f  testrequest %9.0f  ratio %.3f  load %s\n' \
        "$run" "$is" "$tr" "$(echo "$is / $tr" | bc -l)" "$(cut -d' ' -f1-3 /proc/loadavg)"
done

# Per-request cost: perf counts over one wrk run per endpoint, per process.
cost() {
    local path="$1" out
    out="$(mktemp)"
    perf stat -x, -e raw_syscalls:sys_enter,context-switches,task-clock \
        -p "$server,$workers" --per-thread -o "$out" -- \
        wrk -t1 -c64 -d5s "$url$path" > "$out.wrk"
    local n
    n="$(awk '/requests in/ {print $1}' "$out.wrk")"
    python3 - "$out" "$n" "$path" "$server" <<'PY'
import sys, collections
path, n, server = sys.argv[3], int(sys.argv[2]), sys.argv[4]
sums = collections.defaultdict(float)
for line in open(sys.argv[1]):
    f = line.strip().split(",")
    if len(f) < 4 or not f[1].replace(".", "").isdigit():
        continue
    thread, value, event = f[0], float(f[1]), f[3].split(":")[-1]
    name, tid = thread.rsplit("-", 1)
    try:
        tgid = open(f"/proc/{tid}/status").read().split("Tgid:")[1].split()[0]
    except OSError:
        continue
    who = f"server {name}" if tgid == server else "workers"
    sums[(who, event)] += value
    sums[("server" if tgid == server else "all workers", event)] += value if tgid == server else 0
print(f"{path}: {n} requests; per 1,000 requests:")
for who in sorted({w for w, _ in sums} - {"all workers"}):
    sc, cs, ms = (sums[(who, e)] / n * 1000 for e in ("sys_enter", "context-switches", "task-clock"))
    if sc or cs:
        print(f"  {who:<24} {sc:8.0f} syscalls  {cs:7.0f} context switches  {ms:7.1f} ms CPU")
PY
    rm -f "$out" "$out.wrk"
}
cost '/isprime?number=7'
cost /testrequest
