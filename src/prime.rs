//! Primality testing for arbitrary-size naturals. Pure functions, no I/O.
//!
//! # Algorithms
//!
//! * `n < 2^64`: malachite-base's `u64` test ([`is_prime_u64`]; FLINT's
//!   `n_is_prime`), exact on all of `u64` because its BPSW was checked against
//!   Feitsma & Galway's list of every base-2 pseudoprime below 2^64. Reported as
//!   [`Method::Deterministic`].
//! * `n ≥ 2^64`: Baillie–PSW ([`is_bpsw_probable_prime`]): trial division by
//!   the primes below 256, a strong probable-prime test to base 2, a
//!   perfect-square check, and an *almost extra strong* Lucas probable-prime
//!   test with Baillie's method C parameters (`P` = 3, 4, 5, … until
//!   `((P² − 4)/n) = −1`, `Q = 1`). Reported as [`Method::Bpsw`].
//!
//! The Lucas variant: the extra strong Lucas test is Mo & Jones's (Z. Mo and
//! J. P. Jones, "A new primality test using Lucas sequences", 1997), as stated
//! by Grantham ("Frobenius pseudoprimes", Math. Comp. 70 (2001) 873–891) and
//! with Baillie's parameter choice in OEIS A217719; the "almost extra strong"
//! test drops its `U_d ≡ 0` condition, so it needs the `V` sequence only
//! (D. Jacobsen, "Pseudoprime Statistics, Tables, and Data", and his
//! Math::Prime::Util; PARI/GP's `ispseudoprime` uses the same kind of V-only
//! test with `Q = 1`). Its pseudoprimes are a different set from the strong
//! (Selfridge) Lucas pseudoprimes that GMP's BPSW uses (OEIS A217255), and
//! none below 2^64 is a strong base-2 pseudoprime, so BPSW with either Lucas
//! test is exact below 2^64 (Jacobsen's checks against Feitsma & Galway).
//!
//! # Failure modes
//!
//! BPSW is a *probable*-prime test: it never calls a prime composite, and no
//! composite that passes it is known, but none has been proven impossible
//! either. A "prime" verdict above 2^64 is therefore "prime with overwhelming
//! evidence", not a certificate.
//!
//! The functions never panic for any input (0 and 1 included). Cost grows
//! roughly cubically with the size of `n` in practice (≈ 3 modular
//! multiplications per bit); callers that accept untrusted input should bound
//! its size: a 3000-digit prime takes about a second.
//!
//! # Speed
//!
//! The base-2 test uses malachite's `ModPow` (Montgomery for odd moduli). With
//! `Q = 1` the Lucas ladder needs `V` only: `V_2k = V_k² − 2` and
//! `V_{2k+1} = V_k·V_{k+1} − P`, one square, one product and two reductions
//! per bit, where GMP's strong Lucas test (gmpy2 `is_strong_selfridge_prp`)
//! carries `U`, `V` and `Q^k`, four products and four reductions per bit.
//! That halving is what brings the whole test level with GMP even though each
//! of malachite's modular products costs more than GMP's.

use malachite_base::num::arithmetic::traits::{
    CheckedSqrt, JacobiSymbol, ModPow, PowerOf2, Square,
};
use malachite_base::num::basic::traits::One;
use malachite_base::num::conversion::traits::WrappingFrom;
use malachite_base::num::factorization::traits::IsPrime;
use malachite_base::num::logic::traits::{BitAccess, SignificantBits};
use malachite_nz::natural::Natural;

/// How a verdict was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// `n < 2^64`: exact answer (Miller–Rabin with a proven base set).
    Deterministic,
    /// `n ≥ 2^64`: Baillie–PSW probable-prime test.
    Bpsw,
}

/// The answer of [`is_prime`], with the method that produced it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub is_prime: bool,
    pub method: Method,
}

/// Tests `n` for primality: exactly below 2^64, with Baillie–PSW above.
pub fn is_prime(n: &Natural) -> Verdict {
    match u64::try_from(n) {
        Ok(small) => Verdict {
            is_prime: is_prime_u64(small),
            method: Method::Deterministic,
        },
        Err(_) => Verdict {
            is_prime: is_bpsw_probable_prime(n),
            method: Method::Bpsw,
        },
    }
}

/// 2^p - 1 in decimal: a prime when p is a Mersenne exponent (e.g. 4423, 9689, 11213, 19937,
/// 21701), whose test then runs to the end instead of stopping at a witness. The heavy job of
/// the load tester, the tests and the benchmarks.
pub fn mersenne(p: u32) -> String {
    (Natural::power_of_2(u64::from(p)) - Natural::from(1u32)).to_string()
}

/// Exact primality test for 64-bit integers: malachite-base's `u64::is_prime`,
/// a port of FLINT's `n_is_prime` (trial division, then one or two strong
/// tests to bases chosen for the range below 1 050 535 501, BPSW above it).
/// Its BPSW was checked against Feitsma & Galway's database of every base-2
/// pseudoprime below 2^64 (by Dana Jacobsen, per malachite's source), so the
/// answer is exact on all of `u64`. It replaced a hand-written Miller–Rabin
/// to the twelve prime bases 2…37 (Sorenson & Webster 2017) because it is
/// faster: 1.1 against 5.7 µs per 64-bit prime, 0.13 against 0.39 µs per
/// random odd 64-bit number (CPU time, this machine).
pub fn is_prime_u64(n: u64) -> bool {
    n.is_prime()
}

/// The primes below 256, for trial division.
const SMALL_PRIMES: [u64; 54] = [
    2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73, 79, 83, 89, 97,
    101, 103, 107, 109, 113, 127, 131, 137, 139, 149, 151, 157, 163, 167, 173, 179, 181, 191, 193,
    197, 199, 211, 223, 227, 229, 233, 239, 241, 251,
];

/// 257², the square of the first prime not in `SMALL_PRIMES`: a number below
/// it with no factor in `SMALL_PRIMES` is prime.
const TRIAL_DIVISION_LIMIT: u64 = 257 * 257;

/// Baillie–PSW probable-prime test, valid for every `n` (also below 2^64).
pub fn is_bpsw_probable_prime(n: &Natural) -> bool {
    if let Some(verdict) = trial_division(n) {
        return verdict;
    }
    // Past trial division n is odd, coprime to 2·3·…·251 and ≥ 257².
    strong_probable_prime_base_2(n)
        // No D has (D/n) = −1 when n is a square: the search for P would run
        // until it met a factor of n, so rule squares out first.
        && n.checked_sqrt().is_none()
        && almost_extra_strong_lucas_probable_prime(n)
}

/// Decides `n` if it is below 2, has a factor below 256, or is below 257².
fn trial_division(n: &Natural) -> Option<bool> {
    if *n < 2u64 {
        return Some(false);
    }
    let mut rest = &SMALL_PRIMES[..];
    while !rest.is_empty() {
        // One long division by the product of as many primes as fit in a u64
        // serves all of them; the word-size remainders are then cheap.
        let mut product = 1u64;
        let mut count = 0;
        while let Some(next) = rest.get(count).and_then(|&p| product.checked_mul(p)) {
            product = next;
            count += 1;
        }
        let (chunk, tail) = rest.split_at(count);
        // The remainder is below `product`, so it fits in a u64 exactly.
        let r = u64::wrapping_from(&(n % Natural::from(product)));
        if let Some(&p) = chunk.iter().find(|&&p| r.is_multiple_of(p)) {
            return Some(*n == p);
        }
        rest = tail;
    }
    (*n < TRIAL_DIVISION_LIMIT).then_some(true)
}

/// Strong probable-prime (Miller–Rabin) test to base 2 for odd `n > 2`.
fn strong_probable_prime_base_2(n: &Natural) -> bool {
    let n_minus_1 = n - Natural::ONE;
    let s = n_minus_1.trailing_zeros().unwrap_or(0); // n − 1 > 0
    let d = &n_minus_1 >> s;
    let mut x = Natural::from(2u32).mod_pow(&d, n);
    if x == 1u32 || x == n_minus_1 {
        return true;
    }
    for _ in 1..s {
        x = x.square() % n;
        if x == n_minus_1 {
            return true;
        }
        if x == 1u32 {
            // 1 reached without passing −1: a non-trivial square root of 1.
            return false;
        }
    }
    false
}

/// Almost extra strong Lucas probable-prime test (the "AESLSP" of Jacobsen's
/// tables; Baillie's method C parameters, OEIS A217719): `P` is the first of
/// 3, 4, 5, … with Jacobi `((P² − 4)/n) = −1`, `Q = 1`. With `n + 1 = d·2^s`,
/// `d` odd, `n` passes if `V_d ≡ ±2` or `V_{d·2^r} ≡ 0 (mod n)` for some
/// `0 ≤ r < s − 1`.
///
/// Requires odd `n ≥ 257²` with no factor below 256 that is not a square.
fn almost_extra_strong_lucas_probable_prime(n: &Natural) -> bool {
    let Some(p) = lucas_p(n) else {
        return false;
    };
    let n_plus_1 = n + Natural::ONE;
    let s = n_plus_1.trailing_zeros().unwrap_or(0); // n + 1 > 0
    let mut v = lucas_v(p, &(&n_plus_1 >> s), n);
    let two = Natural::from(2u32);
    if v == two || v == n - &two {
        return true;
    }
    for _ in 1..s {
        if v == 0u32 {
            return true;
        }
        // V_2k = V_k² − 2 (Q = 1).
        v = sub_mod(v.square() % n, &two, n);
    }
    false
}

/// `V_k(P, 1) mod n` for `k ≥ 1` by the ladder over the bits of `k` that holds
/// `(V_j, V_{j+1})`: `V_2j = V_j² − 2` and `V_{2j+1} = V_j·V_{j+1} − P` (Q = 1
/// makes both hold without a running `Q^j`). One square, one product and two
/// reductions per bit, and no U sequence.
///
/// Requires `P² < n`.
fn lucas_v(p: u64, k: &Natural, n: &Natural) -> Natural {
    let (p, two) = (Natural::from(p), Natural::from(2u32));
    let mut low = p.clone(); // V_1
    let mut high = (&p).square() - &two; // V_2, below n
    for i in (0..k.significant_bits() - 1).rev() {
        let mixed = sub_mod((&low * &high) % n, &p, n);
        if k.get_bit(i) {
            low = mixed;
            high = sub_mod(high.square() % n, &two, n);
        } else {
            high = mixed;
            low = sub_mod(low.square() % n, &two, n);
        }
    }
    low
}

/// Baillie's method C: the first `P` in 3, 4, 5, … with Jacobi
/// `((P² − 4)/n) = −1`, or `None` if a `P² − 4` shares a factor with `n`
/// (then `n` is composite). For a non-square `n` the search is short: `P`
/// stays tiny in practice.
fn lucas_p(n: &Natural) -> Option<u64> {
    (3u64..).find_map(|p| {
        let d = Natural::from(p * p - 4) % n;
        match (&d).jacobi_symbol(n) {
            -1 => Some(Some(p)),
            // gcd(P² − 4, n) > 1 with P² − 4 < n (n ≥ 257², P tiny): composite.
            0 if d != 0u32 => Some(None),
            _ => None,
        }
    })?
}

/// `(x − c) mod n` for `x, c < n`.
fn sub_mod(x: Natural, c: &Natural, n: &Natural) -> Natural {
    if x >= *c {
        x - c
    } else {
        x + n - c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use malachite_base::num::arithmetic::traits::Pow;

    #[test]
    fn small_primes_table_is_the_primes_below_256() {
        let expected: Vec<u64> = (0..256).filter(|&n| is_prime_u64(n)).collect();
        assert_eq!(SMALL_PRIMES.to_vec(), expected);
    }

    /// Composites below 80,000 that pass the almost extra strong Lucas test
    /// with method C parameters: the extra strong Lucas pseudoprimes (OEIS
    /// A217719: 989, 3239, 5777, 10877, …) plus 10469, which passes only the
    /// "almost" test (Jacobsen, "Pseudoprime Statistics, Tables, and Data",
    /// AESLSP list). Cross-checked with gmpy2's `is_extra_strong_lucas_prp`.
    const AES_LUCAS_PSEUDOPRIMES: [u64; 13] = [
        989, 3239, 5777, 10469, 10877, 27971, 29681, 30739, 31631, 39059, 72389, 73919, 75077,
    ];

    #[test]
    fn the_lucas_test_alone_passes_exactly_the_primes_and_the_known_pseudoprimes() {
        for n in (11u64..80_000).step_by(2) {
            let big = Natural::from(n);
            if (&big).checked_sqrt().is_some() {
                continue;
            }
            let expected = is_prime_u64(n) || AES_LUCAS_PSEUDOPRIMES.contains(&n);
            assert_eq!(
                almost_extra_strong_lucas_probable_prime(&big),
                expected,
                "{n}"
            );
        }
    }

    #[test]
    fn mersenne_numbers_in_decimal() {
        assert_eq!(mersenne(7), "127");
        assert_eq!(mersenne(61), "2305843009213693951");
        assert_eq!(mersenne(11213).len(), 3376);
    }

    #[test]
    fn lucas_p_is_the_first_p_with_jacobi_minus_one() {
        // (5/989) = 1, (12/989) = −1 (checked with gmpy2.jacobi).
        assert_eq!(lucas_p(&Natural::from(989u32)), Some(4));
        assert_eq!(lucas_p(&Natural::from(5777u32)), Some(3));
        // 10^50 + 151 (prime): P = 9.
        let n = Natural::from(10u32).pow(50) + Natural::from(151u32);
        assert_eq!(lucas_p(&n), Some(9));
        // 105 = 3·5·7: P = 3 meets D = 5, a factor of 105.
        assert_eq!(lucas_p(&Natural::from(105u32)), None);
    }

    #[test]
    fn lucas_v_follows_the_recurrence() {
        // V_0 = 2, V_1 = P, V_{k+1} = P·V_k − V_{k−1} (Q = 1), here P = 5 mod 1_000_003.
        let n = 1_000_003u64;
        let (mut previous, mut current) = (2u64, 5u64);
        for k in 1u64..200 {
            assert_eq!(
                lucas_v(5, &Natural::from(k), &Natural::from(n)),
                current,
                "V_{k}"
            );
            let next = (5 * current + n - previous) % n;
            (previous, current) = (current, next);
        }
    }

    #[test]
    fn subtraction_wraps_modulo_n() {
        let n = Natural::from(11u32);
        assert_eq!(sub_mod(Natural::from(3u32), &Natural::from(5u32), &n), 9u32);
        assert_eq!(sub_mod(Natural::from(5u32), &Natural::from(3u32), &n), 2u32);
    }
}
