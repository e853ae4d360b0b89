//! Primality testing for arbitrary-size naturals. Pure functions, no I/O.
//!
//! # Algorithms
//!
//! * `n < 2^64`: deterministic Miller–Rabin ([`is_prime_u64`]). Strong
//!   probable-prime tests to the twelve bases 2, 3, …, 37 are *proven* to
//!   admit no composite below ψ₁₂ = 318 665 857 834 031 151 167 461 ≈ 3.2·10²³
//!   (Sorenson & Webster, "Strong pseudoprimes to twelve prime bases",
//!   Math. Comp. 86 (2017) 985–1003; OEIS A014233), which covers all of `u64`.
//!   The answer is exact, reported as [`Method::Deterministic`].
//! * `n ≥ 2^64`: Baillie–PSW ([`is_bpsw_probable_prime`]): trial division by
//!   the primes below 256, a strong probable-prime test to base 2, a
//!   perfect-square check, and a strong Lucas probable-prime test with
//!   Selfridge's method A parameters. Reported as [`Method::Bpsw`].
//!
//! # Failure modes
//!
//! BPSW is a *probable*-prime test: it never calls a prime composite, and no
//! composite that passes it is known (none exists below 2^64, Feitsma & Galway),
//! but none has been proven impossible either. A "prime" verdict above 2^64 is
//! therefore "prime with overwhelming evidence", not a certificate.
//!
//! The functions never panic for any input (0 and 1 included). Cost grows
//! roughly cubically with the size of `n` in practice (≈ 4 modular
//! multiplications per bit); callers that accept untrusted input should bound
//! its size: a 3000-digit prime takes about a second.
//!
//! # Speed
//!
//! The base-2 test uses malachite's `ModPow` (Montgomery for odd moduli). The
//! Lucas step doubles with `U_2k = U_k·V_k` and `V_2k = (V_k² + D·U_k²)/2`,
//! which needs no running `Q^k`: three big products and two reductions per bit,
//! while every other operation is a multiplication by a small constant, an
//! addition or a halving.

use malachite_base::num::arithmetic::traits::{
    CheckedSqrt, JacobiSymbol, ModPow, Parity, PowerOf2, Square,
};
use malachite_base::num::basic::traits::One;
use malachite_base::num::conversion::traits::WrappingFrom;
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

/// Bases of the deterministic test: the first twelve primes. Proven to have no
/// common strong pseudoprime below ψ₁₂ ≈ 3.2·10²³ > 2^64 (Sorenson & Webster
/// 2015/2017, OEIS A014233). The first nine would not do: ψ₉ =
/// 3 825 123 056 546 413 051 < 2^64 fools them.
const MR_BASES: [u64; 12] = [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37];

/// Exact primality test for 64-bit integers (deterministic Miller–Rabin).
pub fn is_prime_u64(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    // Also the trial division that makes every base coprime to n (and n odd).
    for p in MR_BASES {
        if n.is_multiple_of(p) {
            return n == p;
        }
    }
    let s = (n - 1).trailing_zeros();
    let d = (n - 1) >> s;
    MR_BASES.iter().all(|&a| {
        let mut x = pow_mod_u64(a, d, n);
        if x == 1 || x == n - 1 {
            return true;
        }
        for _ in 1..s {
            x = mul_mod_u64(x, x, n);
            if x == n - 1 {
                return true;
            }
        }
        false
    })
}

/// `a·b mod n` through a 128-bit product, which cannot overflow.
fn mul_mod_u64(a: u64, b: u64, n: u64) -> u64 {
    // The remainder is < n, so the narrowing is lossless.
    ((u128::from(a) * u128::from(b)) % u128::from(n)) as u64
}

fn pow_mod_u64(mut base: u64, mut exp: u64, n: u64) -> u64 {
    let mut acc = 1;
    base %= n;
    while exp > 0 {
        if exp & 1 == 1 {
            acc = mul_mod_u64(acc, base, n);
        }
        base = mul_mod_u64(base, base, n);
        exp >>= 1;
    }
    acc
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
        // No D has (D/n) = −1 when n is a square: Selfridge's search would run
        // until it met a factor of n, so rule squares out first.
        && n.checked_sqrt().is_none()
        && strong_lucas_probable_prime(n)
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

/// Strong Lucas probable-prime test (Baillie & Wagstaff 1980) with Selfridge's
/// method A: `D` is the first of 5, −7, 9, −11, … with Jacobi `(D/n) = −1`,
/// `P = 1`, `Q = (1 − D)/4`. With `n + 1 = d·2^s`, `d` odd, `n` passes if
/// `U_d ≡ 0` or `V_{d·2^r} ≡ 0 (mod n)` for some `0 ≤ r < s`.
///
/// Requires odd `n ≥ 257²` with no factor below 256 that is not a square.
/// `gcd(n, Q) = 1` is not checked: a prime `p | gcd(n, Q)` makes the sequences
/// constant 1 mod `p` (roots 0 and 1), so such an `n` fails, as it should.
fn strong_lucas_probable_prime(n: &Natural) -> bool {
    let Some(d) = selfridge_d(n) else {
        return false;
    };
    let n_plus_1 = n + Natural::ONE;
    let s = n_plus_1.trailing_zeros().unwrap_or(0); // n + 1 > 0
    let odd_part = &n_plus_1 >> s;
    let n_squared = n.square();

    // Ladder over the bits of odd_part, holding (U_k, V_k) mod n; k = 1 first.
    let mut u = Natural::ONE;
    let mut v = Natural::ONE; // V_1 = P
    for i in (0..odd_part.significant_bits() - 1).rev() {
        // k → 2k. From V_k² − D·U_k² = 4Q^k: V_2k = V_k² − 2Q^k = (V_k² + D·U_k²)/2.
        let uv = &u * &v;
        let vv = (&v).square();
        let uu = u.square();
        v = half_mod(add_scaled_mod(vv, d, &uu, &n_squared, n), n);
        u = uv % n;
        if odd_part.get_bit(i) {
            // k → k + 1 with P = 1: U_{k+1} = (U_k + V_k)/2, V_{k+1} = (D·U_k + V_k)/2.
            let u_next = half_mod(add_scaled_mod(v.clone(), 1, &u, n, n), n);
            v = half_mod(add_scaled_mod(v, d, &u, n, n), n);
            u = u_next;
        }
    }
    if u == 0u32 || v == 0u32 {
        return true;
    }
    // Q^d from 4Q^d = V_d² − D·U_d², then V_2k = V_k² − 2Q^k, Q^2k = (Q^k)².
    let uu = u.square();
    let mut q_k = half_mod(
        half_mod(add_scaled_mod((&v).square(), -d, &uu, &n_squared, n), n),
        n,
    );
    for r in 1..s {
        v = add_scaled_mod(v.square(), -2, &q_k, n, n);
        if v == 0u32 {
            return true;
        }
        if r + 1 < s {
            q_k = q_k.square() % n;
        }
    }
    false
}

/// Selfridge's method A: the first `D` in 5, −7, 9, −11, … with `(D/n) = −1`,
/// or `None` if a `D` shares a factor with `n` (then `n` is composite).
/// For a non-square `n` the search is short: `|D|` stays tiny in practice.
fn selfridge_d(n: &Natural) -> Option<i64> {
    let mut d: i64 = 5;
    loop {
        // (D/n) depends only on D mod n.
        let magnitude = Natural::from(d.unsigned_abs()) % n;
        let residue = if d > 0 || magnitude == 0u32 {
            magnitude
        } else {
            n - magnitude
        };
        match residue.jacobi_symbol(n) {
            -1 => return Some(d),
            // gcd(|D|, n) > 1 with |D| < n (n ≥ 257² and |D| is tiny): composite.
            0 => return None,
            _ => d = if d > 0 { -(d + 2) } else { -d + 2 },
        }
    }
}

/// `(a + c·b) mod n` for a small signed `c`, where `b < bound` and `bound` is a
/// multiple of `n`. A negative `c` adds `|c|·(bound − b)` instead, which is
/// congruent and keeps everything non-negative.
fn add_scaled_mod(a: Natural, c: i64, b: &Natural, bound: &Natural, n: &Natural) -> Natural {
    let scale = Natural::from(c.unsigned_abs());
    let scaled = if c >= 0 {
        b * scale
    } else {
        (bound - b) * scale
    };
    (a + scaled) % n
}

/// `x / 2 mod n` for odd `n` and `x < n`: if `x` is odd, `x + n` is even.
fn half_mod(x: Natural, n: &Natural) -> Natural {
    if x.odd() {
        (x + n) >> 1u32
    } else {
        x >> 1u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_primes_table_is_the_primes_below_256() {
        let expected: Vec<u64> = (0..256).filter(|&n| is_prime_u64(n)).collect();
        assert_eq!(SMALL_PRIMES.to_vec(), expected);
    }

    #[test]
    fn selfridge_parameters() {
        // Known first D values (Baillie & Wagstaff 1980, table of method A).
        assert_eq!(selfridge_d(&Natural::from(5459u32)), Some(-7));
        assert_eq!(selfridge_d(&Natural::from(5777u32)), Some(5));
        // 21 = 3·7 meets D = −7 with Jacobi symbol 0 first.
        assert_eq!(selfridge_d(&Natural::from(21u32)), None);
    }

    #[test]
    fn mersenne_numbers_in_decimal() {
        assert_eq!(mersenne(7), "127");
        assert_eq!(mersenne(61), "2305843009213693951");
        assert_eq!(mersenne(11213).len(), 3376);
    }

    #[test]
    fn halving_and_scaling() {
        let n = Natural::from(11u32);
        assert_eq!(half_mod(Natural::from(3u32), &n), 7u32); // 2·7 = 14 ≡ 3
        let b = Natural::from(4u32);
        assert_eq!(add_scaled_mod(Natural::from(1u32), -3, &b, &n, &n), 0u32); // 1 − 12 ≡ 0
        assert_eq!(add_scaled_mod(Natural::from(1u32), 3, &b, &n, &n), 2u32); // 13 ≡ 2
    }
}
