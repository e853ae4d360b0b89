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

    /// The digit count: the test's run time grows with it by orders of magnitude (a 10-digit
    /// number takes microseconds, one of 3000 digits about a second), so that admission by
    /// deadline predicts short and long numbers apart.
    fn cost_hint(&self) -> u64 {
        self.n.len() as u64
    }
}

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
