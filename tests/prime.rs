//! Test vectors for `forkpool::prime`.
//!
//! Every literal below was double-checked with gmpy2 2.3.2 (GMP's
//! `is_prime`, `next_prime`, `prev_prime`, `is_strong_prp`,
//! `is_strong_selfridge_prp`, `is_selfridge_prp`, `is_extra_strong_lucas_prp`);
//! the comments say which sequence it comes from.

use forkpool::prime::{is_bpsw_probable_prime, is_prime, is_prime_u64, Method, Verdict};
use malachite_base::num::arithmetic::traits::{ModPow, Pow, PowerOf2};
use malachite_nz::natural::Natural;

fn nat(n: u128) -> Natural {
    Natural::from(n)
}

fn two_pow(e: u64) -> Natural {
    Natural::power_of_2(e)
}

/// 10^e + k.
fn ten_pow_plus(e: u64, k: u64) -> Natural {
    Natural::from(10u32).pow(e) + Natural::from(k)
}

/// Asserts the verdict of `is_prime` and agreement with BPSW.
fn check(n: &Natural, prime: bool) {
    let expected_method = if *n < two_pow(64) {
        Method::Deterministic
    } else {
        Method::Bpsw
    };
    assert_eq!(
        is_prime(n),
        Verdict {
            is_prime: prime,
            method: expected_method
        },
        "is_prime({n})"
    );
    assert_eq!(
        is_bpsw_probable_prime(n),
        prime,
        "is_bpsw_probable_prime({n})"
    );
}

/// SplitMix64 (Steele, Lea & Flood 2014): a tiny deterministic PRNG.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[test]
fn tiny_numbers() {
    for (n, prime) in [
        (0, false),
        (1, false),
        (2, true),
        (3, true),
        (4, false),
        (5, true),
    ] {
        assert_eq!(is_prime_u64(n), prime, "{n}");
        check(&nat(n.into()), prime);
    }
}

#[test]
fn squares() {
    // Small and mid-sized squares, including squares of primes.
    for p in [3u64, 5, 7, 11, 251, 257, 65_521, 4_294_967_291] {
        check(&nat(u128::from(p) * u128::from(p)), false);
    }
    // 1093² and 3511² (Wieferich primes) are strong pseudoprimes to base 2
    // (OEIS A001262): only BPSW's perfect-square check stops them.
    check(&nat(1093 * 1093), false);
    check(&nat(3511 * 3511), false);
    // Squares of primes above 2^64 and of a Mersenne prime.
    for p in [
        two_pow(64) - nat(59),
        two_pow(64) + nat(13),
        two_pow(127) - nat(1),
    ] {
        check(&(&p * &p), false);
    }
}

#[test]
fn carmichael_numbers() {
    for n in [561u128, 1105, 1729, 2465, 2821, 6601, 8911] {
        check(&nat(n), false);
    }
    // Chernick's form (6k+1)(12k+1)(18k+1) is a Carmichael number whenever
    // the three factors are prime. The first ones (OEIS A033502):
    let chernick = |k: u128| [6 * k + 1, 12 * k + 1, 18 * k + 1];
    let is_prime_u128 = |x: u128| is_prime_u64(u64::try_from(x).expect("factor below 2^64"));
    let found: Vec<u128> = (1..=100)
        .map(chernick)
        .filter(|f| f.iter().all(|&x| is_prime_u128(x)))
        .map(|f| f.iter().product())
        .collect();
    assert_eq!(
        found,
        [
            1729,
            294_409,
            56_052_361,
            118_901_521,
            172_947_529,
            216_821_881,
            228_842_209,
            1_299_963_601
        ]
    );
    for &n in &found {
        check(&nat(n), false);
    }
    // Two above 2^64: k = 10000146 and 10000336 are the first k ≥ 10^7 with
    // all three factors prime (found with gmpy2; re-derived here).
    let big: Vec<u128> = (10_000_000..)
        .map(chernick)
        .filter(|f| f.iter().all(|&x| is_prime_u128(x)))
        .map(|f| f.iter().product())
        .take(2)
        .collect();
    assert_eq!(
        big,
        [
            1_296_056_805_229_926_801_774_649,
            1_296_130_680_792_107_165_959_489
        ]
    );
    for &n in &big {
        check(&nat(n), false);
    }
}

#[test]
fn pseudoprimes() {
    // Strong pseudoprimes to base 2 (OEIS A001262).
    for n in [2047u128, 3277, 4033, 4681, 8321] {
        check(&nat(n), false);
    }
    // ψ₉ = ψ₁₀ = ψ₁₁: the least strong pseudoprime to all of 2, 3, …, 31
    // (OEIS A014233; Jiang & Deng 2014). Below 2^64, so the 37 base counts.
    assert!(!is_prime_u64(3_825_123_056_546_413_051));
    check(&nat(3_825_123_056_546_413_051), false);
    // ψ₁₂: strong pseudoprime to all of 2, 3, …, 37 (OEIS A014233;
    // Sorenson & Webster 2015). Above 2^64, so BPSW decides.
    check(&nat(318_665_857_834_031_151_167_461), false);
    // ψ₁₃ (same sources), strong pseudoprime to the first 13 primes.
    check(&nat(3_317_044_064_679_887_385_961_981), false);
    // Strong Lucas pseudoprimes with Selfridge parameters (OEIS A217255).
    for n in [5459u128, 5777, 10877, 16109, 18971] {
        check(&nat(n), false);
    }
    // Lucas pseudoprimes with Selfridge parameters (OEIS A217120).
    for n in [323u128, 377, 1159, 1829, 3827, 9071, 9179] {
        check(&nat(n), false);
    }
    // Almost extra strong Lucas pseudoprimes with Baillie's method C
    // parameters, the Lucas test BPSW uses here: the extra strong ones (OEIS
    // A217719) and 10469 (Jacobsen's AESLSP table); gmpy2
    // `is_extra_strong_lucas_prp` agrees on the former.
    for n in [
        989u128, 3239, 5777, 10469, 10877, 27971, 29681, 30739, 31631, 39059, 72389, 73919, 75077,
    ] {
        check(&nat(n), false);
    }
}

#[test]
fn around_powers_of_two() {
    let primes = [
        two_pow(32) - nat(5),    // largest prime below 2^32
        two_pow(32) + nat(15),   // smallest prime above 2^32
        two_pow(63) - nat(25),   // largest prime below 2^63
        two_pow(63) + nat(29),   // smallest prime above 2^63
        two_pow(64) - nat(59),   // largest prime below 2^64
        two_pow(64) + nat(13),   // smallest prime above 2^64
        two_pow(64) + nat(37),   // the next one
        two_pow(128) - nat(159), // largest prime below 2^128
    ];
    for p in &primes {
        check(p, true);
    }
    // All odd numbers strictly between these neighbours are composite.
    let gaps: [(u64, i32, i32); 4] = [(32, -5, 15), (63, -25, 29), (64, -59, 13), (64, 13, 37)];
    for (e, lo, hi) in gaps {
        for off in (lo + 2..hi).step_by(2) {
            let n = if off < 0 {
                two_pow(e) - nat(off.unsigned_abs().into())
            } else {
                two_pow(e) + nat(off.unsigned_abs().into())
            };
            check(&n, false);
        }
    }
    for e in [32, 63, 64, 128] {
        check(&two_pow(e), false);
        check(&(two_pow(e) - nat(1)), false); // 2^e − 1 with e composite
    }
}

#[test]
fn method_switches_at_two_to_the_64() {
    assert_eq!(
        is_prime(&nat(u128::from(u64::MAX))).method,
        Method::Deterministic
    );
    assert_eq!(is_prime(&two_pow(64)).method, Method::Bpsw);
    assert_eq!(is_prime(&nat(0)).method, Method::Deterministic);
}

#[test]
fn mersenne_numbers() {
    for e in [2u64, 3, 5, 7, 13, 17, 19, 31, 61, 89, 107, 127, 521, 4423] {
        check(&(two_pow(e) - nat(1)), true);
    }
    // 2^67 − 1 = 193707721 × 761838257287 (Cole 1903).
    let m67 = two_pow(67) - nat(1);
    assert_eq!(m67, nat(193_707_721) * nat(761_838_257_287));
    assert!(is_prime_u64(193_707_721));
    assert!(is_prime_u64(761_838_257_287));
    check(&m67, false);
}

#[test]
fn products_of_large_primes() {
    // 10^50 + 151 and 10^50 + 447 are the two smallest primes above 10^50,
    // 10^60 + 7 the smallest above 10^60 (gmpy2.next_prime).
    let p = ten_pow_plus(50, 151);
    let q = ten_pow_plus(50, 447);
    let r = ten_pow_plus(60, 7);
    for x in [&p, &q, &r] {
        check(x, true);
    }
    for k in (153..447).step_by(2) {
        check(&ten_pow_plus(50, k), false);
    }
    check(&(&p * &q), false);
    check(&(&p * &r), false);
    check(&(&p * &q * &r), false);
}

#[test]
fn u64_agrees_with_sieve() {
    const LIMIT: usize = 1_000_000;
    let mut composite = vec![false; LIMIT];
    composite[0] = true;
    composite[1] = true;
    for i in 2..LIMIT {
        if !composite[i] {
            for j in (i * i..LIMIT).step_by(i) {
                composite[j] = true;
            }
        }
    }
    for (n, &c) in composite.iter().enumerate() {
        assert_eq!(is_prime_u64(n as u64), !c, "{n}");
    }
    // BPSW on its own is valid at any size; check it on a sparser sample.
    for n in (0..LIMIT).step_by(7) {
        assert_eq!(
            is_bpsw_probable_prime(&nat(n as u128)),
            !composite[n],
            "{n}"
        );
    }
}

#[test]
fn bpsw_agrees_with_deterministic_u64() {
    let mut rng = SplitMix64(0x5EED);
    for _ in 0..3000 {
        // Walk the odd numbers up to the next prime: composites and a prime.
        let mut n = rng.next() | 1;
        loop {
            let prime = is_prime_u64(n);
            assert_eq!(prime, reference_below_psi13(n.into()), "{n}");
            assert_eq!(is_bpsw_probable_prime(&nat(n.into())), prime, "{n}");
            if prime || n >= u64::MAX - 2 {
                break;
            }
            n += 2;
        }
    }
}

/// Miller–Rabin to the first 13 primes, proven exact below
/// ψ₁₃ = 3317044064679887385961981 (Sorenson & Webster 2015, OEIS A014233):
/// an independent reference for 65- to 81-bit numbers.
fn reference_below_psi13(n: u128) -> bool {
    const BASES: [u32; 13] = [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41];
    if BASES.iter().any(|&b| n.is_multiple_of(u128::from(b))) {
        return BASES.iter().any(|&b| n == u128::from(b));
    }
    let s = (n - 1).trailing_zeros();
    let (d, n_minus_1, n) = (nat((n - 1) >> s), nat(n - 1), nat(n));
    BASES.iter().all(|&b| {
        let mut x = Natural::from(b).mod_pow(&d, &n);
        if x == 1u32 || x == n_minus_1 {
            return true;
        }
        (1..s).any(|_| {
            x = &x * &x % &n;
            x == n_minus_1
        })
    })
}

#[test]
fn bpsw_agrees_with_reference_above_2_to_the_64() {
    const PSI_13: u128 = 3_317_044_064_679_887_385_961_981;
    let mut rng = SplitMix64(0xB95);
    let mut primes = Vec::new();
    for _ in 0..1000 {
        let wide = (u128::from(rng.next()) << 64) | u128::from(rng.next());
        let mut n = ((1u128 << 64) + wide % (PSI_13 - (1u128 << 64) - 1_000_000)) | 1;
        loop {
            let prime = reference_below_psi13(n);
            let verdict = is_prime(&nat(n));
            assert_eq!(verdict.is_prime, prime, "{n}");
            assert_eq!(verdict.method, Method::Bpsw);
            if prime {
                primes.push(n);
                break;
            }
            n += 2;
        }
    }
    // 128-bit semiprimes made of random 64-bit primes.
    for _ in 0..300 {
        let mut next_prime = || {
            let mut p = rng.next() | 1;
            while !is_prime_u64(p) {
                p = p.wrapping_add(2) | 1;
            }
            p
        };
        let (p, q) = (next_prime(), next_prime());
        check(&(nat(p.into()) * nat(q.into())), false);
    }
    // Products of the primes found above (~160 bits).
    for pair in primes.chunks_exact(2) {
        check(&(nat(pair[0]) * nat(pair[1])), false);
    }
}
