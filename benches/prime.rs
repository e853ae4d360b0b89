//! `cargo bench --bench prime`: `is_prime` on primes of 100, 1000 and 3000
//! digits, by criterion (wall time). `benches/gmp_reference.py` times GMP's
//! BPSW (gmpy2.is_bpsw_prp) on the very same numbers for comparison.
//! `cargo bench --bench prime -- '/(1000|3000)_digits'` runs some sizes only.
//!
//! `cargo bench --bench prime -- --cpu 1000 3000 10000` prints the best thread
//! CPU time per call instead, to set against `gmp_reference.py --cpu`: on a
//! shared machine wall time moves with the neighbours' load, CPU time much
//! less. (The 10,000-digit prime takes about 15 s per call.)

use criterion::{BenchmarkId, Criterion, SamplingMode};
use forkpool::prime::is_prime;
use malachite_base::num::arithmetic::traits::Pow;
use malachite_nz::natural::Natural;
use std::hint::black_box;
use std::time::Duration;

/// (d, k): 10^(d−1) + k is the smallest prime with d digits, k found with
/// `gmpy2.next_prime(10**(d-1)) - 10**(d-1)`.
const PRIMES: [(u64, u64); 3] = [(100, 289), (1000, 7), (3000, 1887)];
/// The smallest 10,000-digit prime (Prime Curios; gmpy2 confirms it is a BPSW
/// probable prime): CPU mode only, criterion would take minutes.
const TEN_THOUSAND_DIGITS: (u64, u64) = (10000, 33603);

/// 10^(digits−1) + k.
fn prime(digits: u64, k: u64) -> Natural {
    Natural::from(10u32).pow(digits - 1) + Natural::from(k)
}

fn bench_is_prime(c: &mut Criterion) {
    let mut group = c.benchmark_group("is_prime");
    for (digits, k) in PRIMES {
        let n = prime(digits, k);
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

/// This thread's CPU time.
fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec that outlives the call.
    let done = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    assert_eq!(done, 0, "the thread CPU clock is always there on Linux");
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// `--cpu D...`: the best of five rounds (one for 10,000 digits) of the thread
/// CPU time per call, for each size D asked for.
fn cpu_times(sizes: &[u64]) {
    for (digits, k) in PRIMES.into_iter().chain([TEN_THOUSAND_DIGITS]) {
        if !sizes.contains(&digits) {
            continue;
        }
        let n = prime(digits, k);
        assert!(
            is_prime(&n).is_prime,
            "10^{} + {k} must be prime",
            digits - 1
        );
        let (calls, rounds) = match digits {
            ..1000 => (2000, 5),
            1000 => (20, 5),
            3000 => (3, 5),
            _ => (1, 1),
        };
        let best = (0..rounds)
            .map(|_| {
                let started = thread_cpu_time();
                (0..calls).for_each(|_| {
                    black_box(is_prime(black_box(&n)));
                });
                (thread_cpu_time() - started) / calls
            })
            .min()
            .expect("at least one round");
        println!(
            "is_prime({digits}_digits): {:.3} ms CPU",
            best.as_secs_f64() * 1e3
        );
    }
}

/// Runs criterion's benchmarks, or with `--cpu D...` prints the CPU time per call instead.
fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--cpu") {
        let sizes: Vec<u64> = args[at + 1..]
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect();
        return cpu_times(&sizes);
    }
    // `criterion_group!` and `criterion_main!` written out: their functions have no doc comment
    // for `missing_docs`.
    let mut criterion = Criterion::default().configure_from_args();
    bench_is_prime(&mut criterion);
    criterion.final_summary();
}
