#!/usr/bin/env python3
"""Who held the CPU while a thread waited for it: reads `perf sched script` output (from
`perf sched record -a`) and, for every wait of the chosen threads for a CPU (from a wake-up,
or from being preempted, to running again) longer than `--over` ms, names the tasks that ran
on that CPU meanwhile.

Usage:
  perf sched record -a -o sched.data -- forkpool-loadtest --spawn --scenarios tail ...
  perf sched script -i sched.data -F comm,tid,cpu,time,event,trace > sched.txt
  python3 benches/sched_delays.py sched.txt --tids 123,124 [--over 1.0]

Prints the delay distribution per thread (p50, p99, max, count over the threshold) and, for
the delays over it, the CPU time of each task (name[tid]) seen on that CPU during the wait, summed by
task and scheduling priority (prio 120 is nice 0 SCHED_OTHER; SCHED_IDLE tasks show as
their nice's prio, see the thread table of the load tester). A trace, not a benchmark: the
counts hold on a loaded machine, the delays do not.
"""
import argparse
import re
import sys
from collections import defaultdict

LINE = re.compile(r"^\s*(?P<comm>.+?)\s+(?P<tid>\d+)\s+\[(?P<cpu>\d+)\]\s+(?P<time>[\d.]+):\s+sched:(?P<event>\w+):\s+(?P<trace>.*)$")
SWITCH = re.compile(r"prev_comm=(?P<pc>.+?) prev_pid=(?P<pp>\d+) prev_prio=(?P<pprio>\d+) prev_state=\S+ ==> next_comm=(?P<nc>.+?) next_pid=(?P<np>\d+) next_prio=(?P<nprio>\d+)")
WAKE = re.compile(r"comm=(?P<c>.+?) pid=(?P<p>\d+) prio=\d+ target_cpu=(?P<cpu>\d+)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("script")
    ap.add_argument("--tids", required=True, help="comma-separated thread ids to follow")
    ap.add_argument("--over", type=float, default=1.0, help="delay threshold, ms")
    ap.add_argument("--blame", default="", help="comma-separated tids (e.g. the workers): "
                    "count the waits over the threshold during which one of them held the CPU")
    args = ap.parse_args()
    blame = {int(t) for t in args.blame.split(",") if t}
    tids = {int(t) for t in args.tids.split(",")}
    woken = {}  # tid -> (time, cpu)
    running = {}  # cpu -> (comm, prio, since)
    spans = defaultdict(list)  # cpu -> [(start, end, comm, prio)]
    delays = defaultdict(list)  # tid -> [(delay_ms, woke, cpu, ran_at)]
    for line in open(args.script, errors="replace"):
        m = LINE.match(line)
        if not m:
            continue
        t, ev, cpu = float(m["time"]), m["event"], int(m["cpu"])
        if ev in ("sched_waking", "sched_wakeup", "sched_wakeup_new"):
            w = WAKE.search(m["trace"])
            if w and int(w["p"]) in tids:
                woken.setdefault(int(w["p"]), (t, int(w["cpu"])))
        elif ev == "sched_switch":
            s = SWITCH.search(m["trace"])
            if not s:
                continue
            prev = running.get(cpu)
            if prev:
                spans[cpu].append((prev[2], t, prev[0], prev[1]))
            running[cpu] = (f'{s["nc"]}[{s["np"]}]', int(s["nprio"]), t)
            # A thread switched out while runnable (preempted) waits from now; one that went to
            # sleep voids any waking seen before (it raced with the thread still running).
            prv = int(s["pp"])
            if prv in tids:
                if s.group(0).split("prev_state=")[1].startswith("R"):
                    woken[prv] = (t, cpu)
                else:
                    woken.pop(prv, None)
            nxt = int(s["np"])
            if nxt in tids and nxt in woken:
                wt, wcpu = woken.pop(nxt)
                delays[nxt].append(((t - wt) * 1e3, wt, cpu, t))
    report(delays, spans, args.over, blame)


def held_by(spans, cpu, woke, ran):
    """CPU time of each task on `cpu` between `woke` and `ran`, ms, by (task, prio)."""
    held = defaultdict(float)
    for start, end, comm, prio in spans[cpu]:
        lo, hi = max(start, woke), min(end, ran)
        if hi > lo:
            held[(comm, prio)] += (hi - lo) * 1e3
    return held


def report(delays, spans, over, blame):
    for tid, ds in sorted(delays.items()):
        ms = sorted(d[0] for d in ds)
        pick = lambda p: ms[min(len(ms) - 1, int(p / 100 * len(ms)))]
        big = [d for d in ds if d[0] > over]
        print(f"tid {tid}: {len(ms)} waits for a CPU, p50 {pick(50):.3f} p99 {pick(99):.3f} max {ms[-1]:.3f} ms, {len(big)} over {over} ms")
        held = defaultdict(float)
        blamed, blamed_ms, longest = 0, 0.0, 0.0
        for _, woke, cpu, ran in big:
            these = held_by(spans, cpu, woke, ran)
            ours = sum(ms for (comm, _), ms in these.items() if tid_of(comm) in blame)
            blamed, blamed_ms = blamed + (ours > 0), blamed_ms + ours
            longest = max(longest, ours)
            for key, ms in these.items():
                held[key] += ms
        if blame:
            print(f"    {blamed} of them with a --blame task on the CPU meanwhile, for {blamed_ms:.2f} ms in all, at most {longest:.2f} ms in one wait")
        for (comm, prio), total in sorted(held.items(), key=lambda kv: -kv[1])[:8]:
            print(f"    {comm:<28} prio {prio:>3}  {total:9.2f} ms on the CPU during those waits")


def tid_of(task):
    """The tid of a `name[tid]` task label."""
    return int(task.rsplit("[", 1)[1].rstrip("]"))


if __name__ == "__main__":
    sys.exit(main())
