#!/usr/bin/env python3
"""Times GMP's Baillie-PSW test (gmpy2.is_bpsw_prp) on the primes that
benches/prime.rs uses, for comparison with `cargo bench --bench prime`.

Needs gmpy2 (`pip install gmpy2`). Prints the best per-call time of several runs.
"""
import timeit

import gmpy2

# (d, k): 10^(d-1) + k is the smallest prime with d digits, k found once with
# gmpy2.next_prime(10**(d-1)) - 10**(d-1) (slow at 3000 digits, so not redone here).
PRIMES = [(100, 289), (1000, 7), (3000, 1887)]

for digits, k in PRIMES:
    n = gmpy2.mpz(10) ** (digits - 1) + k
    assert gmpy2.is_bpsw_prp(n), (digits, k)
    calls = {100: 2000, 1000: 20}.get(digits, 3)
    best = min(timeit.repeat(lambda: gmpy2.is_bpsw_prp(n), number=calls, repeat=5)) / calls
    print(f"is_bpsw_prp({digits}_digits): {best * 1e3:.3f} ms")
