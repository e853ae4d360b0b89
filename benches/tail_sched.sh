#!/usr/bin/env bash
# Which thread waits, and behind whom, during the load tester's tail scenario: records every
# context switch (`perf sched record -a`) while `forkpool-loadtest --scenarios tail` runs, then
# prints, for each thread of the server's runtime, its wake-up delays and the waits over 1 ms
# during which one of the server's own workers held that CPU (benches/sched_delays.py); then,
# for each probe slower than 2 ms, which thread (the probe's or one of the server's) queued
# during it and behind whom, and what each CPU ran meanwhile (the trace is recorded on
# CLOCK_MONOTONIC, `-k mono`, the clock of the probes' start times in the JSON).
#
# Usage: benches/tail_sched.sh [LOADTEST] [extra loadtest flags...]
#   LOADTEST  the load tester (default: the `cargo dist` build in this worktree's target); it
#             spawns the `forkpool` next to it.
# Needs perf (Debian: linux-perf) and root or perf_event_paranoid <= 1. The counts hold on a
# loaded machine; the delays themselves do not (other programs' threads show in the list).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
loadtest="${1:-$here/target/x86_64-unknown-linux-gnu/release/forkpool-loadtest}"
shift || true
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
perf sched record -k mono -a -o "$work/sched.data" -- \
    "$loadtest" --spawn --workers 2 --scenarios tail --json "$work/tail.json" "$@" \
    > "$work/table.txt" 2>/dev/null
sed -n '/^tail:/,/^  (cpu/p' "$work/table.txt"
perf sched script -i "$work/sched.data" --ns -F comm,tid,cpu,time,event,trace > "$work/sched.txt" 2>/dev/null
read -r runtime workers < <(python3 - "$work/tail.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
threads = [t for p in r["tail"]["phases"] for t in p["threads"]]
runtime = sorted({t["tid"] for t in threads if t["owner"] == "server" and t["name"] == "tokio-rt-worker"})
print(",".join(map(str, runtime)), ",".join(map(str, r["worker_pids"])))
PY
)
echo "server runtime threads $runtime, workers $workers"
python3 "$here/benches/sched_delays.py" "$work/sched.txt" --tids "$runtime" --blame "$workers" --over 1.0 --probes "$work/tail.json"
