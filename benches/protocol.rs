//! Protocol microbenchmarks: `encode` and `decode` of a job (a small number and a 3376-digit
//! one) and of a reply, i.e. the per-job framing cost paid on both sides of the pipe.

use std::hint::black_box;

use criterion::{Criterion, Throughput};
use forkpool::jobs::{IsPrimeError, IsPrimeJob, IsPrimeOutput};
use forkpool::pool::protocol::{decode, encode, Outcome, Reply, Request};
use forkpool::prime::{mersenne, Method};

fn job(n: String) -> Request<IsPrimeJob> {
    Request {
        id: 123_456,
        tag: "5f3a9c01-123456".to_owned(),
        job: IsPrimeJob { n },
    }
}

fn protocol(c: &mut Criterion) {
    let mut group = c.benchmark_group("protocol");
    for (name, n) in [("7", "7".to_owned()), ("3376_digits", mersenne(11213))] {
        let request = job(n);
        let line = encode(&request);
        group.throughput(Throughput::Bytes(line.len() as u64));
        group.bench_function(format!("encode_job_{name}"), |b| {
            b.iter(|| encode(black_box(&request)))
        });
        let body = &line[..line.len() - 1];
        group.bench_function(format!("decode_job_{name}"), |b| {
            b.iter(|| decode::<Request<IsPrimeJob>>(black_box(body)).expect("valid line"))
        });
    }

    let reply: Reply<IsPrimeOutput, IsPrimeError> = Reply {
        id: 123_456,
        ms: 812.25,
        result: Outcome::Ok(IsPrimeOutput {
            is_prime: true,
            method: Method::Bpsw,
        }),
    };
    let line = encode(&reply);
    group.throughput(Throughput::Bytes(line.len() as u64));
    group.bench_function("encode_reply", |b| b.iter(|| encode(black_box(&reply))));
    let body = &line[..line.len() - 1];
    group.bench_function("decode_reply", |b| {
        b.iter(|| {
            decode::<Reply<IsPrimeOutput, IsPrimeError>>(black_box(body)).expect("valid line")
        })
    });
    group.finish();
}

/// Runs the benchmarks: `criterion_group!` and `criterion_main!` written out, as their
/// functions have no doc comment for `missing_docs`.
fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    protocol(&mut criterion);
    criterion.final_summary();
}
