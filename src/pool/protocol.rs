//! The JSON-lines protocol between the pool and a worker, over the worker's stdin/stdout.
//!
//! ```text
//! worker -> pool  {"hello":{"protocol":1,"version":"0.1.0","pid":4242,"kind":"isprime",
//!                   "release":true}}   once, at start ("release" may be left out: false)
//! pool -> worker  {"id":7,"tag":"<the submitter's tag>","job":{...}}
//! worker -> pool  {"id":7,"ms":0.41,"ok":{...}}   or   {"id":7,"ms":0.02,"err":...}
//! pool -> worker  {"release":true}     (no answer; only to a worker whose hello said
//!                                       "release":true, and only while it has no job)
//! ```
//!
//! The pool may write several job lines before it reads a reply (see [`Weight`]): the worker
//! runs them in the order sent and answers them in that order. It writes its answers once it
//! has run every job it has read so far (its input buffer is empty), all in one write, so
//! that the pool wakes once per batch rather than once per job. A worker holding a single job
//! therefore answers it as soon as it is done, and a crash then is that job's.
//!
//! The release line ([`RELEASE`]) tells an idle worker that its last jobs are some time past:
//! it lets go of the code pages they mapped (README, Performance: memory after a burst). A
//! worker opts in through its hello, so a worker program that predates the line, or is of
//! someone else's making, is never sent it and the protocol version stays the same. A worker
//! that opted in must keep reading its stdin while idle: one whose pipe cannot take the line
//! at once is killed and replaced (`protocol`), since a write waiting on it would hold its
//! driver.
//!
//! Every message is one line of JSON. Lines are capped in both directions: a worker that sends
//! more than `max_line` bytes without a newline is broken (or hostile) and gets replaced, and
//! the reader never buffers more than the cap.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The version of this protocol, which the hello carries and the pool checks: a worker that
/// speaks another (or none, as workers did before it existed) is refused before it gets a job.
///
/// Change it only when the lines themselves change in a way the other side cannot read (a
/// field renamed, removed or made required, a new message a worker must answer), never for a
/// release: the package version is reported in the hello ([`Hello::version`], for `/status`)
/// but never checked, so that a worker of another release that speaks the same lines is
/// accepted, and a rolling restart onto a new binary goes through.
pub const PROTOCOL_VERSION: u32 = 1;

/// Exit code of a worker whose memory allocation failed (see `worker::ExitOnOutOfMemory`). Rust
/// itself would abort with SIGABRT, which the pool could not tell from any other crash. An
/// uncommon number, so that a worker program of someone else's making is unlikely to use it.
pub const EXIT_OUT_OF_MEMORY: i32 = 86;

/// A kind of CPU work that runs in a worker process. The pool is generic over it: a program
/// defines its job types, starts a [`WorkerPool`](super::WorkerPool) per type, and calls
/// [`worker::run`](super::worker::run) with the type in its worker mode.
pub trait Job: Serialize + DeserializeOwned + Send + 'static {
    /// Name the worker says in its hello, so that a worker started for another job type (or
    /// another program) is refused before it gets a job.
    const KIND: &'static str;
    /// What a finished job sends back.
    type Output: Serialize + DeserializeOwned + Send + 'static;
    /// Why a job failed inside the worker; reaches the submitter as
    /// [`PoolError::JobFailed`](super::PoolError::JobFailed).
    type Error: std::error::Error + Serialize + DeserializeOwned + Send + Sync + 'static;
    /// Runs in the worker process. An `Err` is answered to the submitter; a panic kills the
    /// worker (the job fails as a crash and the slot gets a fresh worker).
    fn run(self) -> Result<Self::Output, Self::Error>;

    /// How long this job may take, as far as the submitter can tell before it runs. The
    /// default, [`Weight::Heavy`], is always safe; say [`Weight::Light`] only for jobs known to
    /// take microseconds, which lets the pool hand a worker several at once.
    fn weight(&self) -> Weight {
        Weight::Heavy
    }

    /// An estimate proportional to this job's run time, as far as the submitter can tell
    /// before it runs: a job with twice the hint is expected to run twice as long. The unit is
    /// free (nanoseconds on the machine it was measured on is the natural one), since only the
    /// ratio of two hints is used. The pool predicts run times per class of hints (one class
    /// per half power of two) for admission by deadline
    /// ([`WorkerPool::submit_with_timeout`](super::WorkerPool::submit_with_timeout)), so that
    /// jobs whose hints are orders of magnitude apart are predicted apart; a class that has
    /// not run yet is predicted from the nearest class that has, times the ratio of their
    /// hints. So a hint of the input's size (digits, bytes) is right only for a job linear in
    /// it: for one quadratic in it, square the size. The default, 0, means no hint: every job
    /// of the type is in one class, never scaled, right when they all take about as long.
    /// Asked once per job, in `submit`; a hint that is off only makes the prediction worse
    /// (see the `estimate` module's failure modes), never a job fail.
    fn cost_hint(&self) -> u64 {
        0
    }
}

/// A job's cost hint ([`Job::weight`]), which decides whether it may queue inside a worker.
///
/// Handing a worker several jobs in one write saves a wake-up of each side per job, which is
/// most of what a microsecond job costs; but a job sent to a worker waits behind everything
/// sent before it, even when another worker is free. So only light jobs travel together: a
/// worker holds either one heavy job, or up to [`PoolConfig::max_batch`](super::PoolConfig)
/// light ones, and a light job never waits behind more than `max_batch - 1` other light ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Weight {
    /// Known to take microseconds: may be sent to a worker along with other light jobs.
    Light,
    /// Anything else (or unknown): sent alone, to a worker with nothing else to do.
    Heavy,
}

/// First line a worker writes: proves that it speaks this protocol, serves the expected job
/// type, and is the very process that was started; and says which build it is.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Hello {
    /// The [`PROTOCOL_VERSION`] it speaks; `None` from a worker built before the hello carried
    /// one (it is refused, with a message that says so).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<u32>,
    /// The package version the worker was built with: reported (in `/status`), never checked.
    pub version: String,
    /// The worker's own pid, which the pool compares with the child it started.
    pub pid: u32,
    /// The [`Job::KIND`] it serves.
    pub kind: String,
    /// It understands the [`RELEASE`] line. `false` when the hello does not say (a worker
    /// program that predates the line): such a worker is never sent it.
    #[serde(default)]
    pub release: bool,
}

/// The line (without its newline) by which the pool tells an idle worker whose hello said
/// [`Hello::release`] to let go of the memory its last jobs mapped. Matched byte for byte, so
/// that a job line (which has an `id`) can never be taken for it.
pub const RELEASE: &[u8] = br#"{"release":true}"#;

/// The hello as it travels: `{"hello": {...}}`.
#[derive(Debug, Serialize, Deserialize)]
pub struct HelloLine {
    /// The worker's announcement, under the `hello` key that tells it from a reply.
    pub hello: Hello,
}

/// A job as sent to a worker. The pool sends it borrowed (`Request<&J, &str>`), so that it
/// keeps the job to send again should the worker die before starting it; the worker reads it
/// owned (`Request<J>`).
#[derive(Debug, Serialize, Deserialize)]
pub struct Request<J, T = String> {
    /// The pool's number for this job, echoed in the reply.
    pub id: u64,
    /// The submitter's opaque tag (the server: the HTTP request id), logged by the worker so
    /// that its lines can be matched with the submitter's.
    pub tag: T,
    /// The job itself.
    pub job: J,
}

/// A worker's answer to one [`Request`].
#[derive(Debug, Serialize, Deserialize)]
pub struct Reply<O, E> {
    /// The [`Request::id`] answered.
    pub id: u64,
    /// Compute time measured inside the worker, in milliseconds.
    pub ms: f64,
    /// What the job produced, flattened into the reply as `ok` or `err`.
    #[serde(flatten)]
    pub result: Outcome<O, E>,
}

/// The job's own result, as the worker reports it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome<O, E> {
    /// The job's output ([`Job::Output`]), under `ok`.
    Ok(O),
    /// The job's own error ([`Job::Error`]), under `err`: the job failed, the worker did not.
    Err(E),
}

/// Serializes `message` as one protocol line, newline included.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    let mut line = Vec::new();
    encode_into(&mut line, message);
    line
}

/// Appends `message` to `lines` (a buffer in memory) as one protocol line, newline included.
pub fn encode_into<T: Serialize>(mut lines: impl std::io::Write, message: &T) {
    serde_json::to_writer(&mut lines, message).expect("protocol types always serialize");
    lines.write_all(b"\n").expect("a buffer in memory takes every write");
}

/// Parses one protocol line (without its newline).
pub fn decode<T: DeserializeOwned>(line: &[u8]) -> Result<T, ProtocolError> {
    serde_json::from_slice(line).map_err(|e| ProtocolError::Malformed(e.to_string()))
}

/// What is wrong with what a worker sent.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// A line ran past the limit (the value, in bytes) without a newline; the rest is not read,
    /// so the stream cannot be resynchronised and the worker is killed.
    #[error("line longer than {0} bytes")]
    TooLong(usize),
    /// A line is not the JSON of the expected message; the value is serde's error.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// A well-formed message that is not the one expected (a reply to another job than the one
    /// running, a hello whose kind or pid is not the child's); the value says which.
    #[error("unexpected message: {0}")]
    Unexpected(String),
    /// Reading or writing the pipe failed, or it closed mid-line (the worker died).
    #[error("pipe error: {0}")]
    Io(#[from] std::io::Error),
}

/// Splits an async byte stream into lines of at most `max` bytes.
///
/// Cancel-safe: bytes already read stay in `buf`, so a `next_line` dropped by `select!` loses
/// nothing and the next call carries on where it stopped.
pub struct LineReader<R> {
    inner: R,
    buf: Vec<u8>,
    /// Bytes of `buf` already known to hold no newline, so each byte is scanned once.
    scanned: usize,
    max: usize,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    /// Reads lines from `inner`, refusing any longer than `max` bytes (newline excluded).
    pub fn new(inner: R, max: usize) -> Self {
        LineReader {
            inner,
            buf: Vec::with_capacity(4096),
            scanned: 0,
            max,
        }
    }

    /// The next line without its newline, or `None` at a clean end of stream.
    pub async fn next_line(&mut self) -> Result<Option<Vec<u8>>, ProtocolError> {
        loop {
            if let Some(pos) = self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
                let end = self.scanned + pos;
                // A long line can arrive whole in one read: the cap holds for it too.
                if end > self.max {
                    return Err(ProtocolError::TooLong(self.max));
                }
                let mut line: Vec<u8> = self.buf.drain(..=end).collect();
                line.pop();
                self.scanned = 0;
                return Ok(Some(line));
            }
            self.scanned = self.buf.len();
            if self.buf.len() > self.max {
                return Err(ProtocolError::TooLong(self.max));
            }
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                return match self.buf.is_empty() {
                    true => Ok(None),
                    false => Err(ProtocolError::Malformed("stream ended mid-line".into())),
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn splits_lines_and_caps_length() {
        let data: &[u8] = b"{\"a\":1}\n{\"b\":2}\n";
        let mut reader = LineReader::new(data, 64);
        assert_eq!(reader.next_line().await.unwrap().unwrap(), b"{\"a\":1}");
        assert_eq!(reader.next_line().await.unwrap().unwrap(), b"{\"b\":2}");
        assert!(reader.next_line().await.unwrap().is_none());

        let long = [b'x'; 100];
        let mut reader = LineReader::new(&long[..], 64);
        assert!(matches!(
            reader.next_line().await,
            Err(ProtocolError::TooLong(64))
        ));
        let mut whole_long_line = long.to_vec();
        whole_long_line.push(b'\n');
        let mut reader = LineReader::new(&whole_long_line[..], 64);
        assert!(matches!(
            reader.next_line().await,
            Err(ProtocolError::TooLong(64))
        ));

        let mut reader = LineReader::new(&b"{\"cut"[..], 64);
        assert!(matches!(
            reader.next_line().await,
            Err(ProtocolError::Malformed(_))
        ));
    }

    #[test]
    fn only_a_hello_that_says_so_opts_in_to_the_release_line_which_no_job_line_can_be() {
        let older = br#"{"hello":{"protocol":1,"version":"0.1.0","pid":7,"kind":"k"}}"#;
        assert!(!decode::<HelloLine>(older).unwrap().hello.release);
        let newer = br#"{"hello":{"protocol":1,"version":"0.1.0","pid":7,"kind":"k","release":true}}"#;
        assert!(decode::<HelloLine>(newer).unwrap().hello.release);
        // A job line always has an id, so no job can be taken for the release line.
        assert!(decode::<Request<u32>>(RELEASE).is_err());
        assert!(decode::<serde_json::Value>(RELEASE).is_ok(), "one line of JSON like the rest");
    }

    #[test]
    fn reply_round_trip() {
        let reply: Reply<u32, String> = Reply {
            id: 3,
            ms: 0.5,
            result: Outcome::Ok(9),
        };
        let line = encode(&reply);
        assert_eq!(line, b"{\"id\":3,\"ms\":0.5,\"ok\":9}\n");
        let back: Reply<u32, String> = decode(&line[..line.len() - 1]).unwrap();
        assert!(matches!(back.result, Outcome::Ok(9)));
        let err: Reply<u32, String> = decode(br#"{"id":4,"ms":0.1,"err":"boom"}"#).unwrap();
        assert!(matches!(err.result, Outcome::Err(ref e) if e == "boom"));
    }
}
