//! Placeholder until the real module lands.
use malachite_nz::natural::Natural;
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method { Deterministic, Bpsw }
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict { pub is_prime: bool, pub method: Method }
pub fn is_prime(n: &Natural) -> Verdict {
    let n = u64::try_from(n).unwrap_or(4);
    Verdict { is_prime: n > 1 && (2..n).take_while(|d| d * d <= n).all(|d| n % d != 0), method: Method::Deterministic }
}
