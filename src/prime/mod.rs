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
//! its size: a 3000-digit prime takes about 0.75 s.
//!
//! # Speed
//!
//! With `Q = 1` the Lucas ladder needs `V` only: `V_2k = V_k² − 2` and
//! `V_{2k+1} = V_k·V_{k+1} − P`, one square, one product and two reductions
//! per bit, where GMP's strong Lucas test (gmpy2 `is_strong_selfridge_prp`)
//! carries `U`, `V` and `Q^k`, four products and four reductions per bit.
//!
//! Both tests run against `Residues`, an interface to arithmetic modulo
//! `n`, in Montgomery form (Montgomery, Math. Comp. 44 (1985)) in one of two
//! implementations chosen by the size of `n`:
//!
//! * up to `SCHOOLBOOK_MAX_LIMBS` limbs, `Montgomery`: schoolbook products
//!   and REDC four limbs per pass into one reused buffer (no allocation per
//!   step);
//! * above it, `ProductRedc`: malachite's Toom or FFT products, and a REDC
//!   made of two products (a low half for the quotient, a whole one for
//!   `q·n`), which beats both the quadratic REDC and malachite's division
//!   there (at 10,000 digits 111 µs per reduction against 129 µs for `%`).
//!
//! The base-2 test is a square-and-double ladder in either: `2^d` needs one
//! square per bit, each multiplication by 2 being a shift and a conditional
//! subtraction. `Plain` (residues reduced by malachite's `%`) is the
//! reference both are tested against.
//!
//! Measured in CPU time against gmpy2's `is_bpsw_prp` (GMP 6.3) on this
//! project's machine: see README, Performance.

mod montgomery;
#[cfg(test)]
mod plain;
mod product_redc;

use malachite_base::num::arithmetic::traits::{CheckedSqrt, JacobiSymbol, PowerOf2, Square};
use malachite_base::num::basic::traits::{One, Zero};
use malachite_base::num::conversion::traits::WrappingFrom;
use malachite_base::num::factorization::traits::IsPrime;
use malachite_base::num::logic::traits::{BitAccess, SignificantBits};
use malachite_nz::natural::Natural;
use montgomery::Montgomery;
#[cfg(test)]
use plain::Plain;
use product_redc::ProductRedc;

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
    /// Whether the number is prime: exact below 2^64, a BPSW probable prime above (no composite
    /// passing BPSW is known).
    pub is_prime: bool,
    /// Which test decided, and so how sure the answer is.
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

/// Above this many limbs [`ProductRedc`]'s subquadratic REDC beats
/// [`Montgomery`]'s schoolbook arithmetic (per reduction, CPU time: 100 limbs
/// 7.1 µs schoolbook; 156 limbs 17.4 µs schoolbook against 16.7 µs by
/// products, and malachite's Toom square 7.9 µs against 9.1 µs schoolbook).
const SCHOOLBOOK_MAX_LIMBS: usize = 100;

/// Arithmetic modulo a fixed odd `n > 1` on residues in some representation.
/// The Baillie–PSW ladders are written once against it; [`Montgomery`] and
/// [`ProductRedc`] implement it, and `Plain`, the reference of the tests.
trait Residues {
    /// A residue modulo `n`, in a canonical form (so `==` is congruence).
    type Residue: Clone + PartialEq;
    /// The residue of `x < n`.
    fn residue(&self, x: &Natural) -> Self::Residue;
    /// `x ← x² mod n`.
    fn square(&mut self, x: &mut Self::Residue);
    /// `out ← x·y mod n`.
    fn mul(&mut self, x: &Self::Residue, y: &Self::Residue, out: &mut Self::Residue);
    /// `x ← x − y mod n`.
    fn sub(&self, x: &mut Self::Residue, y: &Self::Residue);
    /// `x ← 2x mod n`.
    fn double(&self, x: &mut Self::Residue);
}

/// `2^e mod n` for `e ≥ 1` by the left-to-right square-and-double ladder:
/// its multiplications by 2 are doublings (a shift and a conditional
/// subtraction), so one modular square per bit and nothing else.
fn square_and_double<R: Residues + ?Sized>(ring: &mut R, e: &Natural) -> R::Residue {
    let mut x = ring.residue(&Natural::from(2u32)); // the top bit of e
    for i in (0..e.significant_bits() - 1).rev() {
        ring.square(&mut x);
        if e.get_bit(i) {
            ring.double(&mut x);
        }
    }
    x
}

/// Baillie–PSW probable-prime test, valid for every `n` (also below 2^64).
pub fn is_bpsw_probable_prime(n: &Natural) -> bool {
    if let Some(verdict) = trial_division(n) {
        return verdict;
    }
    // Past trial division n is odd, coprime to 2·3·…·251 and ≥ 257².
    if n.significant_bits() <= 64 * SCHOOLBOOK_MAX_LIMBS as u64 {
        bpsw_after_trial_division(&mut Montgomery::new(n), n)
    } else {
        bpsw_after_trial_division(&mut ProductRedc::new(n), n)
    }
}

/// The strong base-2 and Lucas tests, for odd `n ≥ 257²` with no factor below 256.
fn bpsw_after_trial_division<R: Residues>(ring: &mut R, n: &Natural) -> bool {
    strong_probable_prime_base_2(ring, n)
        // No D has (D/n) = −1 when n is a square: the search for P would run
        // until it met a factor of n, so rule squares out first.
        && n.checked_sqrt().is_none()
        && almost_extra_strong_lucas_probable_prime(ring, n)
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
fn strong_probable_prime_base_2<R: Residues>(ring: &mut R, n: &Natural) -> bool {
    let n_minus_1 = n - Natural::ONE;
    let s = n_minus_1.trailing_zeros().unwrap_or(0); // n − 1 > 0
    let d = &n_minus_1 >> s;
    let (one, minus_one) = (ring.residue(&Natural::ONE), ring.residue(&n_minus_1));
    let mut x = square_and_double(ring, &d);
    if x == one || x == minus_one {
        return true;
    }
    for _ in 1..s {
        ring.square(&mut x);
        if x == minus_one {
            return true;
        }
        if x == one {
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
fn almost_extra_strong_lucas_probable_prime<R: Residues>(ring: &mut R, n: &Natural) -> bool {
    let Some(p) = lucas_p(n) else {
        return false;
    };
    let n_plus_1 = n + Natural::ONE;
    let s = n_plus_1.trailing_zeros().unwrap_or(0); // n + 1 > 0
    let mut v = lucas_v(ring, p, &(&n_plus_1 >> s));
    let two = ring.residue(&Natural::from(2u32));
    if v == two || v == ring.residue(&(n - Natural::from(2u32))) {
        return true;
    }
    let zero = ring.residue(&Natural::ZERO);
    for _ in 1..s {
        if v == zero {
            return true;
        }
        // V_2k = V_k² − 2 (Q = 1).
        ring.square(&mut v);
        ring.sub(&mut v, &two);
    }
    false
}

/// `V_k(P, 1) mod n` for `k ≥ 1` by the ladder over the bits of `k` that holds
/// `(V_j, V_{j+1})`: `V_2j = V_j² − 2` and `V_{2j+1} = V_j·V_{j+1} − P` (Q = 1
/// makes both hold without a running `Q^j`). One square and one product per
/// bit, and no U sequence.
///
/// Requires `P² < n`.
fn lucas_v<R: Residues>(ring: &mut R, p: u64, k: &Natural) -> R::Residue {
    let (two, p) = (ring.residue(&Natural::from(2u32)), Natural::from(p));
    let mut high = ring.residue(&((&p).square() - Natural::from(2u32))); // V_2
    let p = ring.residue(&p);
    let mut low = p.clone(); // V_1
    let mut mixed = p.clone(); // scratch for V_{2j+1}
    for i in (0..k.significant_bits() - 1).rev() {
        ring.mul(&low, &high, &mut mixed);
        ring.sub(&mut mixed, &p);
        let (doubled, replaced) = if k.get_bit(i) {
            (&mut high, &mut low)
        } else {
            (&mut low, &mut high)
        };
        std::mem::swap(replaced, &mut mixed);
        ring.square(doubled);
        ring.sub(doubled, &two);
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

#[cfg(test)]
mod tests {
    use super::*;
    use malachite_base::num::arithmetic::traits::{ModPow, Pow};

    #[test]
    fn small_primes_table_is_the_primes_below_256() {
        let expected: Vec<u64> = (0..256).filter(|&n| is_prime_u64(n)).collect();
        assert_eq!(SMALL_PRIMES.to_vec(), expected);
    }

    /// The Lucas test in all three forms, which must agree.
    fn lucas_test(n: &Natural) -> bool {
        let plain = almost_extra_strong_lucas_probable_prime(&mut Plain { n }, n);
        let montgomery = almost_extra_strong_lucas_probable_prime(&mut Montgomery::new(n), n);
        let by_products = almost_extra_strong_lucas_probable_prime(&mut ProductRedc::new(n), n);
        assert_eq!((montgomery, by_products), (plain, plain), "Lucas test of {n}");
        plain
    }

    /// The strong base-2 test in all three forms, which must agree.
    fn base_2_test(n: &Natural) -> bool {
        let plain = strong_probable_prime_base_2(&mut Plain { n }, n);
        let montgomery = strong_probable_prime_base_2(&mut Montgomery::new(n), n);
        let by_products = strong_probable_prime_base_2(&mut ProductRedc::new(n), n);
        assert_eq!((montgomery, by_products), (plain, plain), "base-2 test of {n}");
        plain
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
            assert_eq!(lucas_test(&big), expected, "{n}");
        }
    }

    #[test]
    fn the_base_2_test_alone_passes_strong_pseudoprimes_and_primes_only() {
        // Strong base-2 pseudoprimes with no factor below 256 (OEIS A001262;
        // the last one is strong to every prime base up to 37, A014233),
        // checked with gmpy2's `is_strong_prp(n, 2)`.
        for n in [1_373_653u64, 25_326_001, 3_825_123_056_546_413_051] {
            assert!(base_2_test(&Natural::from(n)), "{n}");
        }
        // Every strong base-2 pseudoprime below 80,000 (A001262, checked with gmpy2).
        let below_80_000 = [
            2047, 3277, 4033, 4681, 8321, 15841, 29341, 42799, 49141, 52633, 65281, 74665,
        ];
        for n in (3u64..80_000).step_by(2) {
            let expected = is_prime_u64(n) || below_80_000.contains(&n);
            assert_eq!(base_2_test(&Natural::from(n)), expected, "{n}");
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
    fn lucas_v_follows_the_recurrence_in_both_forms() {
        // V_0 = 2, V_1 = P, V_{k+1} = P·V_k − V_{k−1} (Q = 1), here P = 5 mod 1_000_003.
        let n = Natural::from(1_000_003u32);
        let (mut montgomery, mut plain) = (Montgomery::new(&n), Plain { n: &n });
        let mut by_products = ProductRedc::new(&n);
        let (mut previous, mut current) = (2u64, 5u64);
        for k in 1u64..200 {
            let k_big = Natural::from(k);
            assert_eq!(lucas_v(&mut plain, 5, &k_big), current, "V_{k}");
            let expected = montgomery.residue(&Natural::from(current));
            assert_eq!(lucas_v(&mut montgomery, 5, &k_big), expected, "V_{k}");
            let expected = by_products.residue(&Natural::from(current));
            assert_eq!(lucas_v(&mut by_products, 5, &k_big), expected, "V_{k}");
            let next = (5 * current + 1_000_003 - previous) % 1_000_003;
            (previous, current) = (current, next);
        }
    }

    /// Odd moduli of 1 to 9 limbs, and of 101 and 157 (where production uses
    /// the REDC by products), at the edges of REDC: all ones (just
    /// under a power of 2^64), just over half a power, and a pseudo-random one.
    fn edge_moduli() -> Vec<Natural> {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut moduli = Vec::new();
        for limbs in (1..=9u64).chain([101, 157]) {
            let bits = 64 * limbs;
            moduli.push(Natural::power_of_2(bits) - Natural::ONE);
            moduli.push(Natural::power_of_2(bits) - Natural::from(0x1_0000_0001u64));
            moduli.push(Natural::power_of_2(bits - 1) + Natural::ONE);
            let random: Vec<u64> = (0..limbs)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state
                })
                .collect();
            moduli.push(Natural::from_limbs_asc(&random) | Natural::ONE);
        }
        moduli.retain(|m| *m > 1u32);
        moduli
    }

    /// Every operation of `ring` (modulo `m`) against [`Plain`]'s, on values
    /// at the edges of the residues.
    fn agrees_with_plain<R: Residues>(ring: &mut R, m: &Natural)
    where
        R::Residue: std::fmt::Debug,
    {
        let mut plain = Plain { n: m };
        let two = Natural::from(2u32);
        let values = [
            Natural::ZERO,
            Natural::ONE,
            m - Natural::ONE,
            m - &two,
            m >> 1u32,
            (m >> 1u32) + Natural::ONE,
            Natural::from(3u32).pow(80) % m,
        ];
        for x in &values {
            for y in &values {
                let (xm, ym) = (ring.residue(x), ring.residue(y));
                let mut product = xm.clone();
                ring.mul(&xm, &ym, &mut product);
                let mut expected = Natural::ZERO;
                plain.mul(x, y, &mut expected);
                assert_eq!(product, ring.residue(&expected), "{x}·{y} mod {m}");
                let mut difference = xm.clone();
                ring.sub(&mut difference, &ym);
                let mut expected = x.clone();
                plain.sub(&mut expected, y);
                assert_eq!(difference, ring.residue(&expected), "{x}−{y} mod {m}");
            }
            let mut square = ring.residue(x);
            ring.square(&mut square);
            let mut expected = x.clone();
            plain.square(&mut expected);
            assert_eq!(square, ring.residue(&expected), "{x}² mod {m}");
            let mut doubled = ring.residue(x);
            ring.double(&mut doubled);
            assert_eq!(doubled, ring.residue(&((x << 1u32) % m)), "2·{x} mod {m}");
        }
    }

    #[test]
    fn montgomery_arithmetic_agrees_with_plain_arithmetic_on_edge_moduli() {
        for m in edge_moduli() {
            agrees_with_plain(&mut Montgomery::new(&m), &m);
        }
    }

    #[test]
    fn redc_by_products_agrees_with_plain_arithmetic_on_edge_moduli() {
        for m in edge_moduli() {
            agrees_with_plain(&mut ProductRedc::new(&m), &m);
        }
    }

    #[test]
    fn powers_of_two_agree_in_every_form_and_size() {
        // Small, schoolbook and Toom-sized moduli: the ladder in each form
        // against malachite's mod_pow.
        let e = Natural::power_of_2(70) + Natural::from(0x1234_5678u32);
        for m in edge_moduli() {
            let expected = Natural::from(2u32).mod_pow(&e, &m);
            assert_eq!(square_and_double(&mut Plain { n: &m }, &e), expected, "mod {m}");
            let mut montgomery = Montgomery::new(&m);
            let in_montgomery_form = montgomery.residue(&expected);
            let ladder = square_and_double(&mut montgomery, &e);
            assert_eq!(ladder, in_montgomery_form, "mod {m}");
            let mut by_products = ProductRedc::new(&m);
            let in_montgomery_form = by_products.residue(&expected);
            let ladder = square_and_double(&mut by_products, &e);
            assert_eq!(ladder, in_montgomery_form, "mod {m}");
        }
    }

    #[test]
    fn every_form_agrees_on_bpsw_across_limb_counts() {
        // 2^b ± k for b around each limb boundary: both tests run to the end
        // on the primes among them and on the base-2 pseudoprimes alike.
        for bits in [64u64, 65, 127, 128, 129, 191, 192, 255, 256, 257, 320, 521, 607] {
            for k in (1u64..400).step_by(2) {
                for n in [Natural::power_of_2(bits) + Natural::from(k), Natural::power_of_2(bits) - Natural::from(k)] {
                    if trial_division(&n).is_none() && (&n).checked_sqrt().is_none() {
                        base_2_test(&n);
                        lucas_test(&n);
                    }
                }
            }
        }
    }
}
