//! Residues modulo `n` as plain [`Natural`]s below `n`, each product reduced
//! by malachite's division (Toom products, divide-and-conquer division). Above
//! about 100 limbs this beats the schoolbook Montgomery arithmetic of
//! [`super::montgomery`], and it is the reference the Montgomery code is tested
//! against. No failure modes: every operation is total on residues below `n`.

use super::Residues;
use malachite_base::num::arithmetic::traits::{ModPow, Square};
use malachite_nz::natural::Natural;

/// Arithmetic modulo `n` on reduced [`Natural`]s.
pub(super) struct Plain<'a> {
    /// The modulus (odd, > 1).
    pub(super) n: &'a Natural,
}

impl Residues for Plain<'_> {
    type Residue = Natural;

    fn residue(&self, x: &Natural) -> Natural {
        x % self.n
    }

    fn square(&mut self, x: &mut Natural) {
        *x = (&*x).square() % self.n;
    }

    fn mul(&mut self, x: &Natural, y: &Natural, out: &mut Natural) {
        *out = (x * y) % self.n;
    }

    fn sub(&self, x: &mut Natural, y: &Natural) {
        if *x < *y {
            *x += self.n;
        }
        *x -= y;
    }

    /// malachite's `mod_pow` (Montgomery form inside, sliding windows): at
    /// 10,000 digits it beats the square-and-double ladder over `%` (15.15 s
    /// against 16.04 s for the whole BPSW test, one run each).
    fn power_of_2(&mut self, e: &Natural) -> Natural {
        Natural::from(2u32).mod_pow(e, self.n)
    }

    fn double(&self, x: &mut Natural) {
        *x <<= 1u32;
        if *x >= *self.n {
            *x -= self.n;
        }
    }
}
