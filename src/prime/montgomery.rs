//! Montgomery arithmetic modulo a fixed odd `m` on little-endian `u64` limbs,
//! for the Baillie–PSW ladders in the parent module, up to about 100 limbs
//! (above, [`super::product_redc`]'s subquadratic REDC wins). Safe code only.
//!
//! A residue `x` is held as `x·R mod m` with `R = 2^(64·k)`, `k` the limb
//! count of `m`, always fully reduced (`< m`) and exactly `k` limbs long, so
//! residues compare with `==`. A product is followed by Montgomery's REDC
//! (P. L. Montgomery, "Modular multiplication without trial division", Math.
//! Comp. 44 (1985) 519–521), done four limbs at a time: the four quotient limbs
//! come from a 4×4 triangle, then one pass adds `q·m` (GMP's `mpn_redc_2` does
//! the same with two). The products are schoolbook, the square computing each
//! cross product once (Menezes, van Oorschot & Vanstone, "Handbook of Applied
//! Cryptography", algorithm 14.16), the rows again four at a time, into one
//! reused buffer (no allocation per operation). Four rows per pass matter:
//! at 52 limbs REDC one row at a time took 2.7 µs, two 2.2 µs, four 2.0 µs
//! (malachite's division: 2.7 µs).
//!
//! Failure modes: none at run time; a modulus that is even, zero or one is a
//! caller bug and panics in [`Montgomery::new`].

use super::Residues;
use malachite_base::num::arithmetic::traits::{ModPowerOf2Inverse, Parity};
use malachite_nz::natural::Natural;

/// Multiplication modulo a fixed odd modulus in Montgomery representation.
pub(super) struct Montgomery {
    /// The modulus, little-endian limbs, the last one nonzero.
    modulus: Vec<u64>,
    /// `−modulus⁻¹ mod 2^64`, REDC's per-limb quotient factor.
    inverse: u64,
    /// The double-length product that REDC consumes, reused by every operation.
    product: Vec<u64>,
}

impl Montgomery {
    /// The context for an odd `modulus > 1`.
    ///
    /// # Panics
    /// If `modulus` is even or below 2.
    pub(super) fn new(modulus: &Natural) -> Self {
        assert!(modulus.odd() && *modulus > 1u32, "Montgomery needs an odd modulus > 1");
        let modulus = modulus.to_limbs_asc();
        let inverse = modulus[0]
            .mod_power_of_2_inverse(64)
            .expect("odd limbs are invertible")
            .wrapping_neg();
        let product = vec![0; 2 * modulus.len()];
        Self {
            modulus,
            inverse,
            product,
        }
    }
}

impl Residues for Montgomery {
    type Residue = Vec<u64>;

    /// The Montgomery form `x·R mod m` of `x`.
    fn residue(&self, x: &Natural) -> Self::Residue {
        let k = self.modulus.len();
        let shifted = x << (64 * k as u64);
        let mut limbs = (shifted % Natural::from_limbs_asc(&self.modulus)).to_limbs_asc();
        limbs.resize(k, 0);
        limbs
    }

    /// `x ← x² / R mod m`, the Montgomery square.
    fn square(&mut self, x: &mut Self::Residue) {
        square_schoolbook(&mut self.product, x);
        redc(x, &mut self.product, &self.modulus, self.inverse);
    }

    /// `out ← x·y / R mod m`, the Montgomery product.
    fn mul(&mut self, x: &Self::Residue, y: &Self::Residue, out: &mut Self::Residue) {
        mul_schoolbook(&mut self.product, x, y);
        redc(out, &mut self.product, &self.modulus, self.inverse);
    }

    /// `x ← x − y mod m`.
    fn sub(&self, x: &mut Self::Residue, y: &Self::Residue) {
        if sub_in_place(x, y) {
            add_in_place(x, &self.modulus);
        }
    }

    /// `x ← 2x mod m` (also in Montgomery form: `2·(xR) = (2x)·R`).
    fn double(&self, x: &mut Self::Residue) {
        let carry = shl_1_in_place(x);
        if carry || !less_than(x, &self.modulus) {
            sub_in_place(x, &self.modulus);
        }
    }
}

/// `x += y·z` over `x.len() == y.len()` limbs; returns the carry limb.
fn add_mul_1(x: &mut [u64], y: &[u64], z: u64) -> u64 {
    let mut carry = 0u64;
    for (x, &y) in x.iter_mut().zip(y) {
        // (2^64−1)² + 2·(2^64−1) = 2^128 − 1: no overflow.
        let t = u128::from(y) * u128::from(z) + u128::from(*x) + u128::from(carry);
        *x = t as u64;
        carry = (t >> 64) as u64;
    }
    carry
}

/// `x += y·(z₀ + z₁·2^64 + z₂·2^128 + z₃·2^192)` over `x.len() == y.len()`
/// limbs; returns the four carry limbs (positions `len … len + 3`). One pass
/// over `x` for four rows: a quarter of the loads and stores of `add_mul_1`,
/// and four short carry chains the CPU overlaps.
fn add_mul_4(x: &mut [u64], y: &[u64], z: [u64; 4]) -> [u64; 4] {
    let mut c = [0u64; 4]; // c[r]: pending at position j + r
    let z = z.map(u128::from);
    for (x, &y) in x.iter_mut().zip(y) {
        let y = u128::from(y);
        // Each sum is at most (2^64−1)² + 2·(2^64−1) = 2^128 − 1.
        let t0 = u128::from(*x) + u128::from(c[0]) + y * z[0];
        *x = t0 as u64;
        let t1 = (t0 >> 64) + u128::from(c[1]) + y * z[1];
        let t2 = (t1 >> 64) + u128::from(c[2]) + y * z[2];
        let t3 = (t2 >> 64) + u128::from(c[3]) + y * z[3];
        c = [t1 as u64, t2 as u64, t3 as u64, (t3 >> 64) as u64];
    }
    c
}

/// `x[at..] += y`, the carry propagated to the end of `x` (where the caller
/// guarantees it stops: the running sum never exceeds `x`'s length).
fn add_at(x: &mut [u64], at: usize, y: &[u64]) {
    let mut carry = false;
    for (i, xi) in x[at..].iter_mut().enumerate() {
        let yi = y.get(i).copied().unwrap_or(0);
        if i >= y.len() && !carry {
            return;
        }
        let (s, c1) = xi.overflowing_add(yi);
        let (s, c2) = s.overflowing_add(u64::from(carry));
        *xi = s;
        carry = c1 | c2;
    }
    debug_assert!(!carry, "sum outgrew its buffer");
}

/// `out ← x·y` (`out.len() == 2·x.len()`, `x.len() == y.len()`).
fn mul_schoolbook(out: &mut [u64], x: &[u64], y: &[u64]) {
    let k = x.len();
    out.fill(0);
    let mut i = 0;
    while i + 4 <= k {
        let carries = add_mul_4(&mut out[i..i + k], x, [y[i], y[i + 1], y[i + 2], y[i + 3]]);
        add_at(out, i + k, &carries);
        i += 4;
    }
    for i in i..k {
        let carry = add_mul_1(&mut out[i..i + k], x, y[i]);
        add_at(out, i + k, &[carry]);
    }
}

/// `out ← x²` (`out.len() == 2·x.len()`): the cross products `x_i·x_j`,
/// `i < j`, once, then doubled, then the squares `x_i²` added.
fn square_schoolbook(out: &mut [u64], x: &[u64]) {
    let k = x.len();
    out.fill(0);
    let mut i = 0;
    // Rows i … i+3 against columns i+4 …: a rectangle; the six products
    // inside the 4×4 block go through a small buffer.
    while i + 4 <= k {
        let rows = [x[i], x[i + 1], x[i + 2], x[i + 3]];
        let carries = add_mul_4(&mut out[2 * i + 4..i + k], &x[i + 4..], rows);
        add_at(out, i + k, &carries);
        let mut block = [0u64; 8];
        for s in 0..3 {
            block[s + 4] = add_mul_1(&mut block[2 * s + 1..s + 4], &rows[s + 1..], rows[s]);
        }
        add_at(out, 2 * i, &block);
        i += 4;
    }
    for r in i..k {
        let carry = add_mul_1(&mut out[2 * r + 1..r + k], &x[r + 1..], x[r]);
        add_at(out, r + k, &[carry]);
    }
    double_and_add_squares(out, x);
}

/// `out ← 2·out + Σ x_i²·2^(128·i)`; `out` (the cross products) is below
/// `2^(128·len − 1)`, so nothing is lost.
fn double_and_add_squares(out: &mut [u64], x: &[u64]) {
    let (mut shifted_out, mut carry) = (0u64, 0u64);
    for (pair, &xi) in out.chunks_exact_mut(2).zip(x) {
        let (lo, hi) = (pair[0], pair[1]);
        let doubled_lo = (lo << 1) | shifted_out;
        let doubled_hi = (hi << 1) | (lo >> 63);
        shifted_out = hi >> 63;
        let square = u128::from(xi) * u128::from(xi);
        let sum = u128::from(doubled_lo) + u128::from(square as u64) + u128::from(carry);
        let sum_hi = u128::from(doubled_hi) + (square >> 64) + (sum >> 64);
        pair[0] = sum as u64;
        pair[1] = sum_hi as u64;
        carry = (sum_hi >> 64) as u64;
    }
}

/// Montgomery's REDC: `out ← t / R mod m` for `t < m·R` (`t` is clobbered).
/// Each pass clears the next four low limbs of `t` by adding `q·m`, the
/// pass's carries parked in the limbs it cleared; their sum with the top half
/// is below `2m`, so one conditional subtraction finishes.
fn redc(out: &mut [u64], t: &mut [u64], m: &[u64], inverse: u64) {
    let k = m.len();
    let mut i = 0;
    while i + 4 <= k {
        // q ≡ −t·m⁻¹ (mod 2^256), limb by limb on a copy of t's four low limbs.
        let (mut low, mut q) = ([t[i], t[i + 1], t[i + 2], t[i + 3]], [0u64; 4]);
        for r in 0..4 {
            q[r] = low[r].wrapping_mul(inverse);
            add_mul_1(&mut low[r..], &m[..4 - r], q[r]);
        }
        let carries = add_mul_4(&mut t[i..i + k], m, q);
        t[i..i + 4].copy_from_slice(&carries);
        i += 4;
    }
    for i in i..k {
        let q = t[i].wrapping_mul(inverse);
        t[i] = add_mul_1(&mut t[i..i + k], m, q);
    }
    let (parked, high) = t.split_at(k);
    out.copy_from_slice(high);
    let carry = add_in_place(out, parked);
    if carry || !less_than(out, m) {
        sub_in_place(out, m);
    }
}

/// `x += y` (same length); returns the carry out.
fn add_in_place(x: &mut [u64], y: &[u64]) -> bool {
    let mut carry = false;
    for (x, &y) in x.iter_mut().zip(y) {
        let (s, c1) = x.overflowing_add(y);
        let (s, c2) = s.overflowing_add(u64::from(carry));
        *x = s;
        carry = c1 | c2;
    }
    carry
}

/// `x −= y` (same length); returns the borrow out.
fn sub_in_place(x: &mut [u64], y: &[u64]) -> bool {
    let mut borrow = false;
    for (x, &y) in x.iter_mut().zip(y) {
        let (d, b1) = x.overflowing_sub(y);
        let (d, b2) = d.overflowing_sub(u64::from(borrow));
        *x = d;
        borrow = b1 | b2;
    }
    borrow
}

/// `x ← 2x`; returns the bit shifted out.
fn shl_1_in_place(x: &mut [u64]) -> bool {
    let mut shifted_out = 0;
    for x in x.iter_mut() {
        let top = *x >> 63;
        *x = (*x << 1) | shifted_out;
        shifted_out = top;
    }
    shifted_out == 1
}

/// `x < y` for equal lengths.
fn less_than(x: &[u64], y: &[u64]) -> bool {
    x.iter().rev().cmp(y.iter().rev()).is_lt()
}
