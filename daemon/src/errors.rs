//! The one table of how an engine error reaches a client: each [`ErrorKind`] has one gRPC
//! code, one NBD errno and one HTTP status, in [`mapping`], and the three protocols read
//! only that. The `match` there has no wildcard arm, so a new kind does not compile until it
//! has a row.
//!
//! Some rows need a reason, because the protocols' vocabularies are not the engine's:
//! - NBD allows only eight errnos (EPERM, EIO, ENOMEM, EINVAL, ENOSPC, EOVERFLOW, ENOTSUP,
//!   ESHUTDOWN). Where the table says EIO, an operating system error of ENOSPC, EDQUOT or
//!   EFBIG under the engine error answers ENOSPC instead, as the spec asks.
//! - NotFound and AlreadyExists are EIO over NBD, not EINVAL. A transmission request names
//!   nothing but a range of the export the client opened, and the server has checked that
//!   range (and the flags) before the export sees it: EINVAL would blame an argument the
//!   client got right. Either kind there means the server failed a valid request (the
//!   restore point behind an export, or behind a dirty bitmap the client selected, was
//!   deleted since), which is what EIO says.
//! - Work is canceled when the daemon shuts down; NBD's answer for that is ESHUTDOWN, and
//!   HTTP's is 503 (temporary: the daemon comes back), not 410 Gone, which says the
//!   resource is gone for good.
//! - FailedPrecondition over HTTP is 409 Conflict ("a conflict with the current state of
//!   the target resource", RFC 9110), not 412, which is about the request's own
//!   conditional header fields (If-Match and the like).
//! - Poisoned (an earlier fsync failed, so the disk refuses all I/O) is permanent until an
//!   operator fixes the storage and restarts the daemon. gRPC's status code guide says: use
//!   UNAVAILABLE if the client can retry just the failing call, FAILED_PRECONDITION if it
//!   should not retry until the system state has been explicitly fixed; so it is
//!   FAILED_PRECONDITION. Not INTERNAL, which is reserved for broken invariants (a failed
//!   fsync is the storage's failure, not the daemon's), and not DATA_LOSS, which is for
//!   Corrupt (stored data failed a check): a poisoned disk lost nothing it had
//!   acknowledged as durable, since the failed flush was never acknowledged. Over HTTP it is
//!   500, the server's own failure, not 503, which announces a temporary condition.

use axum::http::StatusCode;
use cairn_engine::{Error, ErrorKind};
use tonic::{Code, Status};

use crate::nbd::codec::Errno;

/// How one kind of engine error appears on each protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    pub grpc: Code,
    pub nbd: Errno,
    pub http: StatusCode,
}

/// The table: one row per engine error kind.
pub fn mapping(kind: ErrorKind) -> Mapping {
    let (grpc, nbd, http) = match kind {
        ErrorKind::NotFound => (Code::NotFound, Errno::Io, StatusCode::NOT_FOUND),
        ErrorKind::AlreadyExists => (Code::AlreadyExists, Errno::Io, StatusCode::CONFLICT),
        ErrorKind::InvalidArgument => (Code::InvalidArgument, Errno::Inval, StatusCode::BAD_REQUEST),
        ErrorKind::FailedPrecondition => (Code::FailedPrecondition, Errno::Perm, StatusCode::CONFLICT),
        ErrorKind::Busy => (Code::Unavailable, Errno::Io, StatusCode::SERVICE_UNAVAILABLE),
        ErrorKind::LimitReached => (Code::ResourceExhausted, Errno::NoSpc, StatusCode::TOO_MANY_REQUESTS),
        ErrorKind::Corrupt => (Code::DataLoss, Errno::Io, StatusCode::INTERNAL_SERVER_ERROR),
        ErrorKind::Canceled => (Code::Cancelled, Errno::Shutdown, StatusCode::SERVICE_UNAVAILABLE),
        ErrorKind::Io => (Code::Internal, Errno::Io, StatusCode::INTERNAL_SERVER_ERROR),
        ErrorKind::Poisoned => (Code::FailedPrecondition, Errno::Io, StatusCode::INTERNAL_SERVER_ERROR),
    };
    Mapping { grpc, nbd, http }
}

/// An engine error as a gRPC status; the message is the engine's (it names the field of an
/// invalid argument). Internal errors are logged, since the client is told little.
pub fn grpc_status(e: Error) -> Status {
    let code = mapping(e.kind()).grpc;
    if code == Code::Internal {
        tracing::error!(error = %e, "request failed with an internal error");
    }
    Status::new(code, e.to_string())
}

/// INVALID_ARGUMENT naming the request field (the daemon's own checks of a request).
pub fn invalid(field: &str, reason: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("invalid {field}: {reason}"))
}

/// An engine error as an NBD errno. Corrupt data and I/O failures are logged with their
/// reason, since the errno alone tells the client nothing.
pub fn nbd_errno(e: &Error) -> Errno {
    let errno = mapping(e.kind()).nbd;
    if errno != Errno::Io {
        return errno;
    }
    if os_error(e).is_some_and(is_space_errno) {
        return Errno::NoSpc;
    }
    match e.kind() {
        ErrorKind::Corrupt => tracing::error!(error = %e, "corrupt data; answering EIO"),
        _ => tracing::warn!(error = %e, "I/O failure; answering EIO"),
    }
    errno
}

fn os_error(err: &Error) -> Option<i32> {
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return io.raw_os_error();
        }
        source = s.source();
    }
    None
}

/// ENOSPC, EDQUOT and EFBIG all mean "no room" to an NBD client, as the spec asks.
fn is_space_errno(code: i32) -> bool {
    use rustix::io::Errno as E;
    [E::NOSPC, E::DQUOT, E::FBIG].iter().any(|e| e.raw_os_error() == code)
}

/// An engine error as an HTTP status and a one-line body. Internal server errors are logged.
pub fn http_error(e: &Error) -> (StatusCode, String) {
    let code = mapping(e.kind()).http;
    if code == StatusCode::INTERNAL_SERVER_ERROR {
        tracing::error!(error = %e, "HTTP request failed with an internal error");
    }
    (code, format!("{e}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every row, written out: a change to the table shows up here.
    const TABLE: [(ErrorKind, Code, Errno, u16); 10] = [
        (ErrorKind::NotFound, Code::NotFound, Errno::Io, 404),
        (ErrorKind::AlreadyExists, Code::AlreadyExists, Errno::Io, 409),
        (ErrorKind::InvalidArgument, Code::InvalidArgument, Errno::Inval, 400),
        (ErrorKind::FailedPrecondition, Code::FailedPrecondition, Errno::Perm, 409),
        (ErrorKind::Busy, Code::Unavailable, Errno::Io, 503),
        (ErrorKind::LimitReached, Code::ResourceExhausted, Errno::NoSpc, 429),
        (ErrorKind::Corrupt, Code::DataLoss, Errno::Io, 500),
        (ErrorKind::Canceled, Code::Cancelled, Errno::Shutdown, 503),
        (ErrorKind::Io, Code::Internal, Errno::Io, 500),
        (ErrorKind::Poisoned, Code::FailedPrecondition, Errno::Io, 500),
    ];

    #[test]
    fn every_kind_maps_to_its_documented_code_errno_and_status() {
        // Every wrong row at once, as (kind, got, wanted).
        let wrong: Vec<_> = TABLE
            .iter()
            .map(|&(kind, grpc, nbd, http)| {
                let m = mapping(kind);
                (kind, (m.grpc, m.nbd, m.http.as_u16()), (grpc, nbd, http))
            })
            .filter(|(_, got, want)| got != want)
            .collect();
        assert_eq!(wrong, vec![]);
    }

    fn io_error(code: rustix::io::Errno) -> Error {
        Error::Io {
            context: "write disk",
            path: "/x".into(),
            source: std::io::Error::from_raw_os_error(code.raw_os_error()),
        }
    }

    #[test]
    fn engine_errors_map_to_the_nbd_specs_errnos() {
        assert_eq!(nbd_errno(&io_error(rustix::io::Errno::NOSPC)), Errno::NoSpc);
        assert_eq!(nbd_errno(&io_error(rustix::io::Errno::FBIG)), Errno::NoSpc);
        assert_eq!(nbd_errno(&io_error(rustix::io::Errno::IO)), Errno::Io);
        let corrupt = Error::Corrupt { path: "/x".into(), reason: "bad crc".into() };
        assert_eq!(nbd_errno(&corrupt), Errno::Io);
        let invalid = Error::InvalidArgument { field: "offset", reason: "past the end".into() };
        assert_eq!(nbd_errno(&invalid), Errno::Inval);
        let poisoned = Error::Poisoned { disk: "d".into() };
        assert_eq!(nbd_errno(&poisoned), Errno::Io);
    }

    #[test]
    fn space_errors_map_to_enospc() {
        assert!(is_space_errno(rustix::io::Errno::NOSPC.raw_os_error()));
        assert!(is_space_errno(rustix::io::Errno::DQUOT.raw_os_error()));
        assert!(!is_space_errno(rustix::io::Errno::IO.raw_os_error()));
    }

    #[test]
    fn statuses_carry_the_engine_message() {
        let s = grpc_status(Error::NotFound { what: "disk d".into() });
        assert_eq!((s.code(), s.message()), (Code::NotFound, "disk d not found"));
        assert_eq!(invalid("name", "too long").message(), "invalid name: too long");
        let (code, body) = http_error(&Error::NotFound { what: "disk d".into() });
        assert_eq!((code.as_u16(), body.as_str()), (404, "disk d not found\n"));
    }
}
