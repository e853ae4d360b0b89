//! The answers hyper writes itself, before any route runs, given the service's JSON error
//! body.
//!
//! hyper answers a request head it cannot parse on its own: 400 for a malformed request line
//! or header (an unknown HTTP version, a header without a colon, two different
//! `Content-Length`s...), 431 for a head over the limit (`MAX_HEAD_BYTES`) or with more than
//! 100 header fields, and in theory 414 for a target over 65534 bytes (never here: such a head
//! is over the limit first). It writes the status line, `connection: close`, `content-length:
//! 0` and `date`, and closes the connection; there is no hook to change that answer. So the
//! connection's writer recognises it on its way out and writes, in its place, the same status
//! and headers with the JSON error of every other answer (and an `x-request-id`).
//!
//! Recognised by three things together: it is written while the connection serves no request
//! (none is with the router; see `connection::Phase`), it starts with a 4xx status line, and it
//! has no `x-request-id`, which every answer of the router carries. A write that begins with
//! the end of an earlier response, still being flushed when a pipelined head turns out bad, is
//! left alone, hyper's answer behind it included (it keeps its empty body): the one case where
//! the JSON is not substituted.
//!
//! What no server code can answer, and is not answered: a connection closed mid-head (nobody
//! to answer), an HTTP/2 client's preface (hyper closes at once: it would not read an
//! HTTP/1.1 answer), a head not complete within `--header-timeout` (closed without an answer,
//! as nginx does: the request was never received, and a client trickling its head gets nothing
//! for it), and a failure after a response has begun (a `/ls` listing broken off: its 200 head
//! is out, so the body is cut short instead, never ending as if complete).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;

use crate::error::{AppError, ErrorCode, HttpError};

/// Largest request head (request line and headers) in bytes; a larger one is answered 431
/// (nginx's default `large_client_header_buffers` allows 32 KiB). It is set twice: as hyper's
/// read buffer cap, which bounds what a connection holds while a head is incomplete, and as
/// hyper's head size limit, because hyper checks the buffer cap only between reads and one read
/// may take the buffer past it (up to about twice), so a head of up to ~128 KiB that arrived in
/// one piece would otherwise be served.
pub(super) const MAX_HEAD_BYTES: usize = 64 * 1024;

/// A request head that hyper refused before routing, by the status it answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
enum HeadRefusal {
    #[error(
        "the request cannot be parsed as HTTP/1.1: a malformed request line or header, an \
         unsupported HTTP version, or conflicting Content-Length and Transfer-Encoding headers"
    )]
    Malformed,
    #[error(
        "the request head (request line and headers) is larger than {} bytes or has more than \
         100 header fields",
        MAX_HEAD_BYTES
    )]
    TooLarge,
}

impl HeadRefusal {
    /// The refusal that hyper answers with `status`, if it is one that gets a JSON body.
    fn from_status(status: u16) -> Option<HeadRefusal> {
        match status {
            400 => Some(HeadRefusal::Malformed),
            431 => Some(HeadRefusal::TooLarge),
            _ => None,
        }
    }
}

impl HttpError for HeadRefusal {
    fn code(&self) -> ErrorCode {
        match self {
            HeadRefusal::Malformed => ErrorCode::MalformedRequest,
            HeadRefusal::TooLarge => ErrorCode::HeadTooLarge,
        }
    }
}

/// hyper's refusal, replaced: what is written instead, and how much of hyper's it stands for.
pub(super) struct Replacement {
    /// The answer with the JSON body, status line to body.
    bytes: Vec<u8>,
    /// How much of `bytes` is written.
    written: usize,
    /// The length of hyper's answer, reported to hyper as written once `bytes` is all out.
    replaces: usize,
}

impl Replacement {
    /// Whether bytes that begin with `first` can be one of hyper's refusals: a quick look
    /// before [`Replacement::of`] reads them all.
    pub(super) fn may_be_one(first: &[u8]) -> bool {
        first.starts_with(b"HTTP/1.1 4")
    }

    /// The replacement for `written`, what hyper writes next on a connection that is serving
    /// no request, if it begins with one of hyper's own refusals.
    pub(super) fn of(written: &[u8]) -> Option<Replacement> {
        let end = written.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
        let head = std::str::from_utf8(&written[..end]).ok()?;
        let mut lines = head.split("\r\n").filter(|line| !line.is_empty());
        let status_line = lines.next()?;
        let status = status_line.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()?;
        let refusal = HeadRefusal::from_status(status)?;
        let header = |line: &str| line.split(':').next().unwrap_or("").to_ascii_lowercase();
        let headers: Vec<&str> = lines.collect();
        if headers.iter().any(|line| header(line) == "x-request-id") {
            return None;
        }
        let request_id = crate::routes::layers::new_request_id();
        let error = AppError::from(refusal);
        tracing::info!(request_id, status, code = error.code.as_str(), "request refused before routing");
        let body = error.body();
        let mut answer = format!("{status_line}\r\n");
        for line in headers.iter().filter(|line| header(line) != "content-length") {
            answer.push_str(&format!("{line}\r\n"));
        }
        answer.push_str(&format!(
            "content-type: application/json\r\ncontent-length: {}\r\nx-request-id: {request_id}\r\n\r\n",
            body.len()
        ));
        let mut bytes = answer.into_bytes();
        bytes.extend_from_slice(&body);
        Some(Replacement {
            bytes,
            written: 0,
            replaces: end,
        })
    }

    /// Writes what is left of the replacement to `io`; once it is all out, says that hyper's
    /// answer was written.
    pub(super) fn poll_write_to(
        &mut self,
        mut io: Pin<&mut impl AsyncWrite>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        while self.written < self.bytes.len() {
            match io.as_mut().poll_write(cx, &self.bytes[self.written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.written += n,
                other => return other,
            }
        }
        Poll::Ready(Ok(self.replaces))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYPER_431: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: \
        close\r\ncontent-length: 0\r\ndate: Sun, 06 Dec 2026 01:53:58 GMT\r\n\r\n";

    fn answer(replacement: &Replacement) -> (String, serde_json::Value) {
        let text = String::from_utf8(replacement.bytes.clone()).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        (head.to_owned(), serde_json::from_str(body).unwrap())
    }

    #[test]
    fn hypers_refusals_get_the_json_error_with_the_same_status_and_headers() {
        let replacement = Replacement::of(HYPER_431).expect("replaced");
        assert_eq!(replacement.replaces, HYPER_431.len());
        let (head, body) = answer(&replacement);
        assert!(head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(head.contains("\r\nconnection: close\r\n") && head.contains("\r\ndate: "));
        assert!(head.contains("\r\ncontent-type: application/json\r\n"));
        assert!(head.contains("\r\nx-request-id: "));
        assert!(!head.contains("content-length: 0"), "{head}");
        let length = format!("content-length: {}", body.to_string().len());
        assert!(head.contains(&length), "{head}");
        assert_eq!(body["code"], "head_too_large");
        assert_eq!(body["status"], 431);

        let malformed = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
        let (_, body) = answer(&Replacement::of(malformed).expect("replaced"));
        assert_eq!((body["code"].as_str(), body["status"].as_u64()), (Some("malformed_request"), Some(400)));
    }

    #[test]
    fn anything_else_is_left_alone() {
        let routed = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n\
            x-request-id: abc\r\ncontent-length: 2\r\n\r\n{}";
        let tail = b"0\r\n\r\nHTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
        let unknown = b"HTTP/1.1 505 HTTP Version Not Supported\r\ncontent-length: 0\r\n\r\n";
        let partial = &HYPER_431[..20];
        for written in [&routed[..], tail, unknown, partial] {
            assert!(Replacement::of(written).is_none(), "{:?}", String::from_utf8_lossy(written));
        }
    }
}
