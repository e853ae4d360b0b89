//! Embedding the pool in a program of your own: prime factorisation by trial division, run in
//! worker processes that are this same program started with a `worker` argument.
//!
//! ```text
//! cargo run --example factor -- 600851475143 1000000007 0
//! factoring 3 numbers in a pool of 2 workers (pid 4100)
//! 600851475143 = 71 × 839 × 1471 × 6857 (worker 4102)
//! 1000000007 = 1000000007 (worker 4103)
//! 0: the job failed: 0 has no prime factorisation
//! ```
//!
//! What it takes: a [`Job`] type (input, output and error, all serde), a worker mode that
//! calls [`worker::run`], and a [`WorkerPool`] started with the command line of that mode.
//! Everything else (queue, deadline, killing a worker whose caller gave up, respawning, no
//! orphans) is the pool's. Exit code 0 when every number got an answer (an error answer
//! included), 2 on bad usage.

use std::process::{Command, ExitCode};

use forkpool::pool::worker::{self, TagLog, WorkerSettings};
use forkpool::pool::{Job, PoolConfig, WorkerPool};
use serde::{Deserialize, Serialize};

/// Factor one number.
#[derive(Serialize, Deserialize)]
struct Factor(u64);

/// The prime factors, smallest first, and the worker that found them.
#[derive(Serialize, Deserialize)]
struct Factored {
    /// With multiplicity; empty for 1.
    factors: Vec<u64>,
    /// The worker process that ran the job.
    pid: u32,
}

#[derive(Debug, thiserror::Error, Serialize, Deserialize)]
enum FactorError {
    #[error("0 has no prime factorisation")]
    Zero,
}

impl Job for Factor {
    const KIND: &'static str = "factor";
    type Output = Factored;
    type Error = FactorError;

    fn run(self) -> Result<Factored, FactorError> {
        let Factor(mut n) = self;
        if n == 0 {
            return Err(FactorError::Zero);
        }
        let mut factors = Vec::new();
        let mut p = 2;
        while p <= n / p {
            while n % p == 0 {
                factors.push(p);
                n /= p;
            }
            p += if p == 2 { 1 } else { 2 };
        }
        if n > 1 {
            factors.push(n);
        }
        let pid = std::process::id();
        Ok(Factored { factors, pid })
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [mode, parent] = &args[..] {
        if mode == "worker" {
            return worker_mode(parent);
        }
    }
    let numbers: Result<Vec<u64>, _> = args.iter().map(|a| a.parse::<u64>()).collect();
    match numbers {
        Ok(numbers) if !numbers.is_empty() => factor_all(&numbers),
        _ => {
            eprintln!("usage: factor N... (non-negative integers below 2^64)");
            ExitCode::from(2)
        }
    }
}

/// Started by the pool: serve jobs on stdin/stdout until the pool closes our stdin.
fn worker_mode(parent: &str) -> ExitCode {
    let Ok(parent) = parent.parse() else {
        eprintln!("worker: bad parent pid {parent:?}");
        return ExitCode::from(2);
    };
    match worker::run::<Factor>(&WorkerSettings::new(parent), &TagLog) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("worker: {e}");
            ExitCode::FAILURE
        }
    }
}

fn factor_all(numbers: &[u64]) -> ExitCode {
    let program = std::env::current_exe().expect("the example finds its own executable");
    let parent = std::process::id().to_string();
    let config = PoolConfig::new(2);
    println!(
        "factoring {} numbers in a pool of {} workers (pid {parent})",
        numbers.len(),
        config.workers
    );
    let pool = WorkerPool::<Factor>::start(config, move || {
        let mut command = Command::new(&program);
        command.args(["worker", &parent]);
        command
    });
    let runtime = tokio::runtime::Runtime::new().expect("a Tokio runtime starts");
    // All at once: the pool queues what its two workers cannot take yet.
    let answers = runtime.block_on(futures_util::future::join_all(
        numbers.iter().map(|&n| pool.submit(Factor(n), "")),
    ));
    for (n, answer) in numbers.iter().zip(answers) {
        match answer {
            Ok(done) => println!(
                "{n} = {} (worker {})",
                product(&done.output.factors),
                done.output.pid
            ),
            Err(e) => println!("{n}: {e}"),
        }
    }
    ExitCode::SUCCESS
}

/// `71 × 839`, or `1` for no factors.
fn product(factors: &[u64]) -> String {
    match factors {
        [] => "1".to_owned(),
        _ => factors
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(" × "),
    }
}
