//! Montgomery arithmetic for large moduli, with a REDC made of two whole products instead of
//! a pass per limb, for the Baillie–PSW ladders in the parent module. Safe code only.
//!
//! A residue `x` is held as the [`Natural`] `x·R mod m`, `R = 2^(64·k)` for a modulus of `k`
//! limbs, always fully reduced (`< m`), so residues compare with `==`. Montgomery's REDC
//! (P. L. Montgomery, "Modular multiplication without trial division", Math. Comp. 44 (1985)
//! 519–521) of a product `t < m·R` is `(t + q·m) / R` with `q = t·(−m⁻¹) mod R`: here `q` is
//! one low-half product (malachite's `mod_power_of_2_mul`, a short product) and `q·m`
//! one whole product (Toom, or malachite's FFT past about 390 limbs), so a reduction costs
//! about two products, as in GMP's `mpn_redc_n` (which saves more with a wrap-around product
//! that malachite does not expose). Measured per reduction (CPU time, best of 5 rounds): at 156 limbs (3000
//! digits) 16.7 µs against 17.4 µs for [`super::montgomery`]'s schoolbook REDC and 19.2 µs for
//! malachite's `%`; at 519 limbs (10,000 digits) 111 µs against 185 µs and 129 µs.
//!
//! Failure modes: none at run time; a modulus that is even or below 3 is a caller bug and
//! panics in [`ProductRedc::new`].

use super::Residues;
use malachite_base::num::arithmetic::traits::{
    ModPowerOf2, ModPowerOf2Inverse, ModPowerOf2Mul, ModPowerOf2Neg, Parity, Square,
};
use malachite_nz::natural::Natural;

/// Multiplication modulo a fixed odd modulus in Montgomery form, reduced by products.
pub(super) struct ProductRedc<'a> {
    /// The modulus (odd, > 1).
    modulus: &'a Natural,
    /// `64·k`, `R = 2^bits`.
    bits: u64,
    /// `−modulus⁻¹ mod R`, REDC's quotient factor.
    inverse: Natural,
}

impl<'a> ProductRedc<'a> {
    /// The context for an odd `modulus > 1`.
    ///
    /// # Panics
    /// If `modulus` is even or below 2.
    pub(super) fn new(modulus: &'a Natural) -> Self {
        assert!(modulus.odd() && *modulus > 1u32, "REDC needs an odd modulus > 1");
        let bits = 64 * modulus.limb_count();
        let inverse = modulus
            .mod_power_of_2(bits)
            .mod_power_of_2_inverse(bits)
            .expect("an odd number is invertible modulo a power of 2")
            .mod_power_of_2_neg(bits);
        Self {
            modulus,
            bits,
            inverse,
        }
    }

    /// Montgomery's REDC: `t / R mod m` for `t < m·R`. `t + q·m` is a multiple of `R` below
    /// `2·m·R`, so the quotient is below `2m` and one conditional subtraction finishes.
    fn redc(&self, t: Natural) -> Natural {
        let q = (&t)
            .mod_power_of_2(self.bits)
            .mod_power_of_2_mul(&self.inverse, self.bits);
        let mut sum = q * self.modulus;
        sum += t;
        sum >>= self.bits;
        if sum >= *self.modulus {
            sum -= self.modulus;
        }
        sum
    }
}

impl Residues for ProductRedc<'_> {
    type Residue = Natural;

    /// The Montgomery form `x·R mod m` of `x`.
    fn residue(&self, x: &Natural) -> Natural {
        (x << self.bits) % self.modulus
    }

    /// `x ← x² / R mod m`.
    fn square(&mut self, x: &mut Natural) {
        *x = self.redc((&*x).square());
    }

    /// `out ← x·y / R mod m`.
    fn mul(&mut self, x: &Natural, y: &Natural, out: &mut Natural) {
        *out = self.redc(x * y);
    }

    /// `x ← x − y mod m`.
    fn sub(&self, x: &mut Natural, y: &Natural) {
        if *x < *y {
            *x += self.modulus;
        }
        *x -= y;
    }

    /// `x ← 2x mod m` (also in Montgomery form: `2·(xR) = (2x)·R`).
    fn double(&self, x: &mut Natural) {
        *x <<= 1u32;
        if *x >= *self.modulus {
            *x -= self.modulus;
        }
    }
}
