//! `cargo bench --bench prime`: `is_prime` on primes of 100, 1000, 3000 and
//! 10,000 digits. `benches/gmp_reference.py` times GMP's BPSW
//! (gmpy2.is_bpsw_prp) on the very same numbers for comparison.
//! `cargo bench --bench prime -- '/(1000|3000)_digits'` runs some sizes only
//! (the 10,000-digit one takes about five minutes).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode};
use forkpool::prime::is_prime;
use malachite_base::num::arithmetic::traits::Pow;
use malachite_nz::natural::Natural;
use std::hint::black_box;
use std::time::Duration;

/// (d, k): 10^(d−1) + k is the smallest prime with d digits, k found with
/// `gmpy2.next_prime(10**(d-1)) - 10**(d-1)`.
const PRIMES: [(u64, u64); 3] = [(100, 289), (1000, 7), (3000, 1887)];

fn bench_is_prime(c: &mut Criterion) {
    let mut group = c.benchmark_group("is_prime");
    for (digits, k) in PRIMES {
        let n = Natural::from(10u32).pow(digits - 1) + Natural::from(k);
        if digits >= 1000 {
            // Up to a second per call: few samples, one call per iteration.
            group
                .sampling_mode(SamplingMode::Flat)
                .sample_size(10)
                .measurement_time(Duration::from_secs(match digits {
                    ..3000 => 5,
                    3000..10000 => 15,
                    _ => 150,
                }));
        }
        group.bench_with_input(
            BenchmarkId::from_parameter(format!("{digits}_digits")),
            &n,
            |b, n| {
                // Here, not above, so that a filtered-out size costs nothing.
                assert!(
                    is_prime(n).is_prime,
                    "10^{} + {k} must be prime",
                    digits - 1
                );
                b.iter(|| is_prime(black_box(n)))
            },
        );
    }
    group.finish();
}

criterion_group!(benches, bench_is_prime);
criterion_main!(benches);
