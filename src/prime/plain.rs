//! Residues modulo `n` as plain [`Natural`]s below `n`, each product reduced
//! by malachite's division: the simplest arithmetic, built for the tests only,
//! as the reference that [`super::montgomery`] and [`super::product_redc`] are
//! checked against (it was the production form above 200 limbs until the
//! subquadratic REDC beat its division). No failure modes: every operation is
//! total on residues below `n`.

use super::Residues;
use malachite_base::num::arithmetic::traits::Square;
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

    fn double(&self, x: &mut Natural) {
        *x <<= 1u32;
        if *x >= *self.n {
            *x -= self.n;
        }
    }
}
