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
    pub is_prime: bool,
    /// Which test decided.
    pub method: Method,
}

/// Why an `IsPrimeJob` failed inside the worker.
#[derive(Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IsPrimeError {
    #[error("not a number: {0:?}")]
    NotANumber(String),
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
