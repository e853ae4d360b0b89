#!/usr/bin/env python3
"""Who held the CPU while a thread waited for it: reads `perf sched script` output (from
`perf sched record -a`) and, for every wait of the chosen threads for a CPU (from a wake-up,
or from being preempted, to running again) longer than `--over` ms, names the tasks that ran
on that CPU meanwhile.

Usage:
  perf sched record -k mono -a -o sched.data -- forkpool-loadtest --spawn --scenarios tail --json tail.json ...
  perf sched script -i sched.data --ns -F comm,tid,cpu,time,event,trace > sched.txt
  python3 benches/sched_delays.py sched.txt --tids 123,124 [--over 1.0] [--probes tail.json]

Prints the delay distribution per thread (p50, p99, max, count over the threshold) and, for
the delays over it, the CPU time of each task (name[tid]) seen on that CPU during the wait, summed by
task and scheduling priority (prio 120 is nice 0 SCHED_OTHER; SCHED_IDLE tasks show as
their nice's prio, see the thread table of the load tester). A trace, not a benchmark: the
counts hold on a loaded machine, the delays do not.

With `--probes tail.json` (the load tester's JSON, recorded with `-k mono` so that the trace
and the probes share CLOCK_MONOTONIC), it then takes each probe slower than 2 ms (the JSON's
`slow` list) and prints, for that probe's time window: every wait for a CPU of the probe
thread (`probe_tid`) and of the `--tids` threads that overlaps it, with who held the CPU
meanwhile, and what ran on each CPU during the window. A probe's slowness is then named:
the probe thread queued (behind whom), a server runtime thread queued (behind whom), or no
wait at all (the time went elsewhere: the loopback, a thread asleep, the server's own work).
"""
import argparse
import bisect
import re
import sys
from collections import defaultdict

LINE = re.compile(r"^\s*(?P<comm>.+?)\s+(?P<tid>\d+)\s+\[(?P<cpu>\d+)\]\s+(?P<time>[\d.]+):\s+sched:(?P<event>\w+):\s+(?P<trace>.*)$")
SWITCH = re.compile(r"prev_comm=(?P<pc>.+?) prev_pid=(?P<pp>\d+) prev_prio=(?P<pprio>\d+) prev_state=\S+ ==> next_comm=(?P<nc>.+?) next_pid=(?P<np>\d+) next_prio=(?P<nprio>\d+)")
RUNTIME = re.compile(r"pid=(?P<p>\d+) runtime=(?P<ns>\d+)")
WAKE = re.compile(r"comm=(?P<c>.+?) pid=(?P<p>\d+) prio=\d+ target_cpu=(?P<cpu>\d+)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("script")
    ap.add_argument("--tids", required=True, help="comma-separated thread ids to follow")
    ap.add_argument("--over", type=float, default=1.0, help="delay threshold, ms")
    ap.add_argument("--blame", default="", help="comma-separated tids (e.g. the workers): "
                    "count the waits over the threshold during which one of them held the CPU")
    ap.add_argument("--probes", help="the load tester's --json file: name the waits during each slow probe")
    args = ap.parse_args()
    blame = {int(t) for t in args.blame.split(",") if t}
    tids = {int(t) for t in args.tids.split(",")}
    phases = probe_phases(args.probes) if args.probes else []
    probe_tids = {p["probe_tid"] for p in phases}
    runtime = set(tids)
    tids |= probe_tids
    woken = {}  # tid -> (time, cpu)
    running = {}  # cpu -> (comm, prio, since)
    ran = defaultdict(int)  # cpu -> run time the kernel accounted to the running task so far, ns
    spans = defaultdict(list)  # cpu -> [(start, end, comm, prio, accounted_ns)]
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
        elif ev == "sched_stat_runtime":
            r = RUNTIME.search(m["trace"])
            if r and cpu in running and tid_of(running[cpu][0]) == int(r["p"]):
                ran[cpu] += int(r["ns"])
        elif ev == "sched_switch":
            s = SWITCH.search(m["trace"])
            if not s:
                continue
            prev = running.get(cpu)
            if prev:
                spans[cpu].append((prev[2], t, prev[0], prev[1], ran[cpu]))
            running[cpu], ran[cpu] = (f'{s["nc"]}[{s["np"]}]', int(s["nprio"]), t), 0
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
    report({t: d for t, d in delays.items() if t in runtime}, spans, args.over, blame)
    for phase in phases:
        report_probes(phase, delays, spans, blame)


ENDS = {}  # cpu -> the end times of spans[cpu], for bisection


def held_by(spans, cpu, woke, ran):
    """CPU time of each task on `cpu` between `woke` and `ran`, ms, by (task, prio). A CPU's
    spans follow each other in time, so the first one that matters is found by bisection."""
    held = defaultdict(float)
    these = spans[cpu]
    if len(ENDS.get(cpu, ())) != len(these):
        ENDS[cpu] = [span[1] for span in these]
    for start, end, comm, prio, _ in these[bisect.bisect_right(ENDS[cpu], woke):]:
        if start >= ran:
            break
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


def stolen(spans, cpu, lo, hi):
    """Time `cpu` seemed busy between `lo` and `hi` but its virtual CPU was not running, ms:
    for each task's span there, the part of its wall time the kernel did not account to it as
    run time (with CONFIG_PARAVIRT_TIME_ACCOUNTING the scheduler's clock leaves steal out of
    `sched_stat_runtime`), spread evenly over the span. Idle (swapper) spans are left out."""
    held_by(spans, cpu, lo, hi)  # builds ENDS[cpu]
    total = 0.0
    for start, end, comm, _, accounted in spans[cpu][bisect.bisect_right(ENDS[cpu], lo):]:
        if start >= hi:
            break
        if comm.startswith("swapper") or end <= start:
            continue
        share = max(0.0, 1.0 - accounted / 1e9 / (end - start))
        total += (min(end, hi) - max(start, lo)) * 1e3 * share
    return total


def probe_phases(path):
    """The phases of the load tester's tail JSON that name their probe thread."""
    import json
    tail = json.load(open(path))["tail"]
    alone = [tail["probe_alone"]] if tail.get("probe_alone") else []
    return [p for p in alone + tail["phases"] if "probe_tid" in p]


def report_probes(phase, delays, spans, blame):
    """For each slow probe of `phase`: the waits that overlap it and what ran on each CPU."""
    slow = phase["slow"]
    probe = phase["probe_tid"]
    print(f"\n{phase['label']}: {len(slow)} probes over 2 ms (probe thread {probe})")
    summary = defaultdict(int)
    for p in slow:
        lo = p["start_ns"] / 1e9
        hi = lo + p["total_ms"] / 1e3
        print(f"  probe {p['index']}: total {p['total_ms']:.2f} ms (connect {p['connect_ms']:.2f}, "
              f"first byte {p['first_byte_ms']:.2f}), own wait {p['own_wait_ms']:.2f} ms")
        worst = None
        for tid, ds in sorted(delays.items()):
            for ms, woke, cpu, ran in ds:
                inside = (min(ran, hi) - max(woke, lo)) * 1e3
                if inside <= 0.05:
                    continue
                who = "probe" if tid == probe else "server"
                these = held_by(spans, cpu, max(woke, lo), min(ran, hi))
                top = ", ".join(f"{c} prio {pr} {t:.2f}" for (c, pr), t in
                                sorted(these.items(), key=lambda kv: -kv[1])[:3])
                print(f"    {who} thread {tid} queued {inside:.2f} ms of it on CPU {cpu} ({ms:.2f} ms in all), behind: {top}")
                ours = sum(t for (c, _), t in these.items() if tid_of(c) in blame)
                gone = stolen(spans, cpu, max(woke, lo), min(ran, hi))
                if gone > 0.05:
                    print(f"      of which {gone:.2f} ms the virtual CPU was not running (steal)")
                if worst is None or inside > worst[0]:
                    worst = (inside, who, ours > inside / 2, gone > inside / 2)
        for cpu in sorted(spans):
            ran = held_by(spans, cpu, lo, hi)
            top = ", ".join(f"{c} prio {pr} {t:.2f}" for (c, pr), t in
                            sorted(ran.items(), key=lambda kv: -kv[1])[:4])
            gone = stolen(spans, cpu, lo, hi)
            print(f"    CPU {cpu} ran: {top}" + (f"; steal {gone:.2f}" if gone > 0.05 else ""))
        if worst is None:
            verdict = "no wait over 0.05 ms"
        else:
            behind = " behind a worker" if worst[2] else " behind others"
            verdict = f"{worst[1]} thread queued{behind}" + (", mostly steal" if worst[3] else "")
        summary[verdict] += 1
    for verdict, n in sorted(summary.items(), key=lambda kv: -kv[1]):
        print(f"  {n:4} slow probes: longest wait in them: {verdict}")


def tid_of(task):
    """The tid of a `name[tid]` task label."""
    return int(task.rsplit("[", 1)[1].rstrip("]"))


if __name__ == "__main__":
    sys.exit(main())
