//! The server's job types: what runs in a worker process, with no HTTP in sight, so that the
//! worker mode of the binary needs nothing but this module and the pool.
//!
//! `IsPrimeJob` receives a number the handler has already checked and put in canonical form;
//! a worker that gets anything else (only a bug or a hand-fed worker could send it) answers
//! with [`IsPrimeError`], and the submitter sees a 500.

use std::fmt::Display;
use std::str::FromStr;

use malachite_nz::natural::Natural;
use serde::{Deserialize, Serialize};

use crate::pool::worker::JobLog;
use crate::pool::protocol::{self, Request};
use crate::pool::{Job, Weight};
use crate::prime::{self, Method};

/// The job sent to a worker: a canonical decimal number.
#[derive(Debug, Serialize, Deserialize)]
pub struct IsPrimeJob {
    /// Decimal digits, no sign, no leading zeros.
    pub n: String,
}

/// A worker's verdict.
#[derive(Debug, Serialize, Deserialize)]
pub struct IsPrimeOutput {
    /// Whether `n` is prime; under [`Method::Bpsw`], a probable prime (no composite passing BPSW
    /// is known).
    pub is_prime: bool,
    /// Which test decided.
    pub method: Method,
}

/// Why an `IsPrimeJob` failed inside the worker.
#[derive(Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IsPrimeError {
    /// `n` is not decimal digits (the value, as sent): the server checks numbers before they
    /// are sent, so only a job sent by hand or a bug gets this (500 `job_failed`).
    #[error("not a number: {0:?}")]
    NotANumber(String),
}

impl IsPrimeJob {
    /// The longest protocol line, newline included, that a job of at most `digits` digits
    /// tagged with at most `tag_len` bytes makes: what `--max-line` must allow. Digits and
    /// request ids need no JSON escaping, so the line grows byte for byte with both. The other
    /// lines (the hello, a verdict) are shorter than that of a job with a server's request id.
    pub fn max_line_bytes(digits: u32, tag_len: usize) -> u64 {
        let empty = Request {
            id: u64::MAX,
            tag: "",
            job: IsPrimeJob { n: String::new() },
        };
        protocol::encode(&empty).len() as u64 + u64::from(digits) + tag_len as u64
    }
}

impl Job for IsPrimeJob {
    const KIND: &'static str = "isprime";
    type Output = IsPrimeOutput;
    type Error = IsPrimeError;

    fn run(self) -> Result<IsPrimeOutput, IsPrimeError> {
        let n = Natural::from_str(&self.n).map_err(|_| IsPrimeError::NotANumber(self.n))?;
        let verdict = prime::is_prime(&n);
        Ok(IsPrimeOutput {
            is_prime: verdict.is_prime,
            method: verdict.method,
        })
    }

    /// Light below 2^64 (every number of at most 19 digits is): the exact `u64` test takes
    /// microseconds. Anything longer may take seconds, so it runs on a free worker, alone.
    fn weight(&self) -> Weight {
        match self.n.len() <= 19 {
            true => Weight::Light,
            false => Weight::Heavy,
        }
    }

    /// The expected run time in nanoseconds (of a release build on an idle core; only ratios
    /// count, see [`Job::cost_hint`]): `U64_TEST_NS` up to 19 digits, BPSW's power law of
    /// the digit count above, never below the former.
    fn cost_hint(&self) -> u64 {
        let digits = self.n.len();
        if digits <= 19 {
            return U64_TEST_NS;
        }
        let bpsw = BPSW_NS_SCALE * (digits as f64).powf(BPSW_EXPONENT);
        // `as` saturates: a hint past u64::MAX is u64::MAX.
        (bpsw as u64).max(U64_TEST_NS)
    }
}

/// What the pool measures for a number of at most 19 digits, nanoseconds: the exact `u64`
/// test takes about a microsecond, the round trip through the worker's pipes most of the rest.
const U64_TEST_NS: u64 = 10_000;

/// BPSW on n digits takes about `BPSW_NS_SCALE * n^BPSW_EXPONENT` ns: one modular
/// exponentiation of n digits, n squarings of n-digit numbers, each n^1.6 with malachite's
/// Karatsuba and Toom multiplication. Fitted to README's measurements of a prime (CPU time,
/// criterion, release build): 1000 digits 32.1 ms, 10,000 digits 15.15 s (2.67 = log10 of
/// their ratio, 472); 3000 digits, 730 ms measured, comes out at 600 ms. A worker at
/// `SCHED_IDLE` on a busy machine takes longer, but so does every class: only the ratio
/// between two sizes is used.
const BPSW_EXPONENT: f64 = 2.67;

/// See [`BPSW_EXPONENT`]: 32.1 ms / 1000^2.67.
const BPSW_NS_SCALE: f64 = 0.31;

/// How the server's workers log a job: the pool's tag is the HTTP request id, logged as
/// `request_id` like the server's own request lines, so that one search finds both.
pub struct RequestIdLog;

impl JobLog for RequestIdLog {
    fn failed(&self, tag: &str, job: u64, error: &dyn Display) {
        let pid = std::process::id();
        tracing::warn!(request_id = %tag, job, pid, %error, "job failed");
    }

    fn done(&self, tag: &str, job: u64, compute_ms: f64) {
        // Debug, not info: the server already logs every request at info, and a line per job
        // here would cost a quarter of the dispatch throughput for no new information.
        let pid = std::process::id();
        tracing::debug!(request_id = %tag, job, pid, compute_ms, "job done");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::protocol::{Hello, HelloLine, Outcome, Reply};
    use crate::routes::MAX_REQUEST_ID_LEN;

    #[test]
    fn the_cost_hint_follows_the_run_time_measured_in_readme() {
        let hint = |digits: usize| IsPrimeJob { n: "9".repeat(digits) }.cost_hint();
        assert_eq!((hint(1), hint(19), hint(20)), (U64_TEST_NS, U64_TEST_NS, U64_TEST_NS));
        // 32.1 ms at 1000 digits, 15.15 s at 10,000 (a ratio of 472), within 10%.
        let ms = |digits| hint(digits) as f64 / 1e6;
        assert!((ms(1000) - 32.1).abs() < 3.2, "{}", ms(1000));
        assert!((ms(10_000) / ms(1000) - 472.0).abs() < 47.0);
        assert_eq!(hint(100_000_000), u64::MAX, "saturates");
    }

    #[test]
    fn the_longest_job_line_is_as_computed_and_longer_than_any_other_line() {
        let tag = "a".repeat(MAX_REQUEST_ID_LEN);
        for digits in [1, 19, 250, 10_000] {
            let job = IsPrimeJob {
                n: "9".repeat(digits as usize),
            };
            let request = Request {
                id: u64::MAX,
                tag: tag.as_str(),
                job,
            };
            let line = protocol::encode(&request);
            let computed = IsPrimeJob::max_line_bytes(digits, MAX_REQUEST_ID_LEN);
            assert_eq!(line.len() as u64, computed, "{digits} digits");
        }
        let shortest = IsPrimeJob::max_line_bytes(0, MAX_REQUEST_ID_LEN) as usize;
        let hello = HelloLine {
            hello: Hello {
                protocol: Some(u32::MAX),
                version: env!("CARGO_PKG_VERSION").into(),
                pid: u32::MAX,
                kind: IsPrimeJob::KIND.into(),
                release: true,
            },
        };
        let verdict: Reply<IsPrimeOutput, IsPrimeError> = Reply {
            id: u64::MAX,
            ms: f64::MAX,
            result: Outcome::Ok(IsPrimeOutput {
                is_prime: false,
                method: Method::Deterministic,
            }),
        };
        assert!(protocol::encode(&hello).len() < shortest);
        assert!(protocol::encode(&verdict).len() < shortest);
    }
}
