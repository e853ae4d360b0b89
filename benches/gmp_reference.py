#!/usr/bin/env python3
"""Times GMP's Baillie-PSW test (gmpy2.is_bpsw_prp) on the primes that
benches/prime.rs uses, for comparison with `cargo bench --bench prime`.

Needs gmpy2 (`pip install gmpy2`). Prints the best per-call time of several runs.
`python3 benches/gmp_reference.py 1000 3000` times only those sizes; with no
arguments it times all four (the 10,000-digit one takes about a minute).
With `--cpu`, the time is this process's CPU time (`time.process_time`), to set
against `cargo bench --bench prime -- --cpu ...`.
"""
import sys
import time
import timeit

import gmpy2

# (d, k): 10^(d-1) + k is the smallest prime with d digits, k found once with
# gmpy2.next_prime(10**(d-1)) - 10**(d-1) (slow at 3000 digits, so not redone here).
# 10^9999 + 33603 is the smallest 10,000-digit prime (Prime Curios; gmpy2 confirms
# it is a BPSW probable prime).
PRIMES = [(100, 289), (1000, 7), (3000, 1887), (10000, 33603)]

cpu = "--cpu" in sys.argv[1:]
timer = time.process_time if cpu else time.perf_counter
wanted = {int(arg) for arg in sys.argv[1:] if arg != "--cpu"}
for digits, k in PRIMES:
    if wanted and digits not in wanted:
        continue
    n = gmpy2.mpz(10) ** (digits - 1) + k
    assert gmpy2.is_bpsw_prp(n), (digits, k)
    calls = {100: 2000, 1000: 20}.get(digits, 3 if digits <= 3000 else 1)
    rounds = 5 if digits <= 3000 else 3
    times = timeit.repeat(lambda: gmpy2.is_bpsw_prp(n), number=calls, repeat=rounds, timer=timer)
    best = min(times) / calls
    print(f"is_bpsw_prp({digits}_digits): {best * 1e3:.3f} ms{' CPU' if cpu else ''}")
