//! Engine errors: one enum with a small matchable [`ErrorKind`].
//!
//! The daemon maps kinds to gRPC codes, NBD errnos and HTTP statuses, each in exactly one
//! place. Messages are sentence case and do not repeat their source.

use std::io;
use std::path::PathBuf;

/// What kind of failure an [`Error`] is, for callers that branch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The named resource does not exist.
    NotFound,
    /// A resource with that name or id exists already.
    AlreadyExists,
    /// An argument is malformed or out of range.
    InvalidArgument,
    /// The resource is in a state that does not allow the call (e.g. a disk still in a group).
    FailedPrecondition,
    /// Someone else holds the resource right now (a second daemon on the same data dir).
    Busy,
    /// A configured limit was reached.
    LimitReached,
    /// Stored data failed a check (CRC, hash, header): it is never returned as good.
    Corrupt,
    /// The operating system reported an I/O error.
    Io,
    /// The operation was canceled.
    Canceled,
    /// An earlier fsync failed: the disk or store refuses further I/O instead of pretending.
    Poisoned,
}

/// An engine error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} not found")]
    NotFound { what: String },

    #[error("{what} already exists")]
    AlreadyExists { what: String },

    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },

    #[error("{0}")]
    FailedPrecondition(String),

    #[error("{0}")]
    Busy(String),

    #[error("{0}")]
    LimitReached(String),

    #[error("corrupt data in {path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },

    #[error("{context} ({path})")]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("catalog: {context}")]
    Catalog {
        context: &'static str,
        #[source]
        source: rocksdb::Error,
    },

    #[error("canceled")]
    Canceled,

    #[error("failpoint {0} fired")]
    Injected(&'static str),

    #[error("disk {disk} is poisoned by an earlier failed flush; reopen the engine after fixing storage")]
    Poisoned { disk: String },
}

impl Error {
    /// The matchable kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::NotFound { .. } => ErrorKind::NotFound,
            Error::AlreadyExists { .. } => ErrorKind::AlreadyExists,
            Error::InvalidArgument { .. } => ErrorKind::InvalidArgument,
            Error::FailedPrecondition(_) => ErrorKind::FailedPrecondition,
            Error::Busy(_) => ErrorKind::Busy,
            Error::LimitReached(_) => ErrorKind::LimitReached,
            Error::Corrupt { .. } => ErrorKind::Corrupt,
            Error::Io { .. } | Error::Catalog { .. } | Error::Injected(_) => ErrorKind::Io,
            Error::Poisoned { .. } => ErrorKind::Poisoned,
            Error::Canceled => ErrorKind::Canceled,
        }
    }

    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidArgument { field, reason: reason.into() }
    }

    pub(crate) fn not_found(what: impl Into<String>) -> Self {
        Error::NotFound { what: what.into() }
    }

    pub(crate) fn already_exists(what: impl Into<String>) -> Self {
        Error::AlreadyExists { what: what.into() }
    }

    pub(crate) fn io(context: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io { context, path: path.into(), source }
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Corrupt { path: path.into(), reason: reason.into() }
    }
}

/// Engine result.
pub type Result<T, E = Error> = std::result::Result<T, E>;
