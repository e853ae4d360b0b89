#!/usr/bin/env python3
"""New-connection /testrequest latency while 32 clients list a 100,000-file directory.

Usage: benches/ls_priority_probe.py [BINARY] [--clients-idle]

Starts BINARY (default target/x86_64-unknown-linux-gnu/release/forkpool, from `cargo dist`) on 127.0.0.1 port 0 with 2 workers and
--ls-root at a temporary directory holding big/ (100,000 empty files), runs 32 `curl` loops
that list big/ for 12 s, and meanwhile opens a new connection for one GET /testrequest every
5 ms for 10 s. Prints p50, p99 and max of the probes, also without listings for reference.

The `curl` clients run at nice 19, or with --clients-idle under SCHED_IDLE (`chrt --idle 0`):
on a machine whose cores the clients share with the server, that keeps the load generator
from taking CPU the server would have, as remote clients would not.
"""
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LISTERS, FILES, PROBE_SECONDS = 32, 100_000, 10


def probe(host, port):
    latencies = []
    end = time.time() + PROBE_SECONDS
    while time.time() < end:
        started = time.perf_counter()
        with socket.create_connection((host, port)) as s:
            s.sendall(b"GET /testrequest HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            while s.recv(4096):
                pass
        latencies.append((time.perf_counter() - started) * 1000)
        time.sleep(0.005)
    latencies.sort()
    return latencies


def run(binary, root, listing, clients_idle):
    server = subprocess.Popen(
        [binary, "--listen", "127.0.0.1:0", "--workers", "2", "--ls-root", root],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    addr = server.stdout.readline().decode().strip().split("http://")[1]
    host, port = addr.split(":")
    time.sleep(1)
    low = "chrt --idle 0" if clients_idle else "nice -n 19"
    loop = (f"end=$((SECONDS+{PROBE_SECONDS + 2})); while [ $SECONDS -lt $end ]; do "
            f"{low} curl -s -o /dev/null 'http://{addr}/ls?directory=big'; done")
    listers = [subprocess.Popen(["bash", "-c", loop]) for _ in range(LISTERS if listing else 0)]
    time.sleep(1 if listing else 0)
    latencies = probe(host, int(port))
    for lister in listers:
        lister.wait()
    server.terminate()
    server.wait()
    n = len(latencies)
    what = f"{LISTERS} listings" if listing else "no listings"
    print(f"{what:>12}: n={n} p50={latencies[n // 2]:.2f} p99={latencies[int(n * 0.99)]:.2f} "
          f"max={latencies[-1]:.2f} ms")


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    binary = args[0] if args else "target/x86_64-unknown-linux-gnu/release/forkpool"
    clients_idle = "--clients-idle" in sys.argv
    with tempfile.TemporaryDirectory() as root:
        big = Path(root, "big")
        big.mkdir()
        for i in range(FILES):
            (big / f"file-{i:07d}").touch()
        run(binary, root, False, clients_idle)
        run(binary, root, True, clients_idle)


if __name__ == "__main__":
    main()
