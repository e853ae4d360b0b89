#!/usr/bin/env python3
"""Resident memory of the server and its workers before, right after and some seconds after
a burst of requests (issue 24: memory back after a burst).

Each run starts its own server on 127.0.0.1 port 0 (`--workers 2` by default), waits for both
workers, lets it settle, and reads VmRSS of every process: *idle*. Then `wrk` (which must be
installed) sends a closed-loop burst (`-t1 -c64 -d5s` on `/isprime?number=7` by default), and
RSS is read again at once (*right after*) and `--after` seconds later (*N s after*). The server
is stopped with SIGTERM at the end of each run. Each run first drops the binary from the
page cache (see `evict`), so that two builds compare alike however their files were written. Prints one table per run, the sums, the ratio
of the late sum to idle, wrk's requests/s and the load average before and after.

Each figure is given twice: VmRSS (every page a process maps, so the binary's code pages,
shared by the server and its workers, count once per process) and PSS (each shared page
split between the processes that map it, so the PSS sum is the tree's memory).

    cargo dist
    python3 benches/memory_after_burst.py                  # 3 runs, the cargo dist build
    python3 benches/memory_after_burst.py --runs 1 --path /testrequest
    python3 benches/memory_after_burst.py --binary /tmp/old/forkpool   # another build

Loopback only; each burst is bounded by wrk's duration.
"""
import argparse
import os
import re
import signal
import subprocess
import time

DEFAULT_BINARY = "target/x86_64-unknown-linux-gnu/release/forkpool"


def field_kib(path, name):
    """The `name:` field of a /proc file in KiB (0 if the process is gone)."""
    try:
        with open(path) as fields:
            for line in fields:
                if line.startswith(name + ":"):
                    return int(line.split()[1])
    except FileNotFoundError:
        pass
    return 0


def rss_kib(pid):
    """VmRSS of `pid` in KiB (0 if it is gone)."""
    return field_kib(f"/proc/{pid}/status", "VmRSS")


def pss_kib(pid):
    """PSS of `pid` in KiB (0 if it is gone)."""
    return field_kib(f"/proc/{pid}/smaps_rollup", "Pss")


def memory(pids):
    """(VmRSS, PSS) of each pid, in KiB."""
    return [(rss_kib(p), pss_kib(p)) for p in pids]


def children(pid):
    """The pids of `pid`'s children, over all its threads."""
    pids = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as kids:
            pids += [int(p) for p in kids.read().split()]
    return sorted(pids)


def evict(binary):
    """Drops `binary`'s pages from the page cache (written back first), so that each run reads
    it in the same way, by the kernel's readahead. How a file got into the page cache changes
    RSS: a binary just written by `cp` sits there in larger folios, and the kernel then maps
    more of it around each fault (measured: 3.1 instead of 2.5 MiB per idle worker for the
    same bytes). No process may map it at that moment (mapped pages stay)."""
    fd = os.open(binary, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def start(binary, workers):
    """Starts a server on port 0; returns (process, base URL) once it prints its address."""
    server = subprocess.Popen(
        [binary, "--listen", "127.0.0.1:0", "--workers", str(workers)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in server.stdout:
        found = re.search(r"listening on (http://\S+)", line)
        if found:
            return server, found.group(1)
    raise SystemExit(f"{binary} exited before listening (code {server.wait()})")


def wait_for_workers(server, workers, limit=10.0):
    """The worker pids, once `workers` of them run."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        pids = children(server.pid)
        if len(pids) >= workers:
            return pids
        time.sleep(0.05)
    raise SystemExit(f"fewer than {workers} workers after {limit} s")


def burst(url, path, connections, seconds):
    """Runs wrk; returns its requests/s."""
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", url + path],
        capture_output=True, text=True, check=True).stdout
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def run_once(args, number):
    evict(args.binary)
    server, url = start(args.binary, args.workers)
    try:
        pids = [server.pid] + wait_for_workers(server, args.workers)
        time.sleep(args.settle)
        idle = memory(pids)
        rate = burst(url, args.path, args.connections, args.duration)
        right_after = memory(pids)
        time.sleep(args.after)
        late = memory(pids)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    names = ["server"] + [f"worker {i + 1}" for i in range(len(pids) - 1)]
    print(f"run {number}: {args.path} at {rate:,.0f} req/s, load average {loadavg()}")
    late_title = f"{args.after:g} s after"
    print(f"  {'MiB (RSS/PSS)':<14}{'idle':>12}{'right after':>14}{late_title:>14}")
    total = lambda col: (sum(r for r, _ in col), sum(p for _, p in col))
    for name, *cols in zip(names + ["sum"], idle + [total(idle)],
                           right_after + [total(right_after)], late + [total(late)]):
        print(f"  {name:<14}" + "".join(
            f"{f'{r / 1024:.1f}/{p / 1024:.1f}':>{w}}" for (r, p), w in zip(cols, (12, 14, 14))))
    print(f"  {args.after:g} s after / idle: RSS {total(late)[0] / total(idle)[0]:.2f}, "
          f"PSS {total(late)[1] / total(idle)[1]:.2f}")
    idle, late = total(idle), total(late)
    return idle, late, rate


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--binary", default=DEFAULT_BINARY)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--path", default="/isprime?number=7")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--duration", type=int, default=5, help="burst length, s")
    parser.add_argument("--settle", type=float, default=2.0, help="wait before idle, s")
    parser.add_argument("--after", type=float, default=5.0, help="wait after the burst, s")
    args = parser.parse_args()
    print(f"{args.binary}, {args.workers} workers, load average {loadavg()}")
    results = [run_once(args, i + 1) for i in range(args.runs)]
    for i, kind in enumerate(["RSS", "PSS"]):
        idle = [r[0][i] / 1024 for r in results]
        late = [r[1][i] / 1024 for r in results]
        print(f"{kind}: idle sum {min(idle):.1f}-{max(idle):.1f} MiB, {args.after:g} s after "
              f"{min(late):.1f}-{max(late):.1f} MiB, ratio "
              + ", ".join(f"{r[1][i] / r[0][i]:.2f}" for r in results))
    print("req/s " + ", ".join(f"{r[2]:,.0f}" for r in results))


if __name__ == "__main__":
    main()
