//! The one place engine errors become gRPC statuses.

use cairn_engine::ErrorKind;
use tonic::{Code, Status};

/// The gRPC code of an engine error kind.
pub fn code(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::AlreadyExists => Code::AlreadyExists,
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::FailedPrecondition => Code::FailedPrecondition,
        ErrorKind::Busy => Code::Unavailable,
        ErrorKind::LimitReached => Code::ResourceExhausted,
        ErrorKind::Corrupt => Code::DataLoss,
        ErrorKind::Canceled => Code::Cancelled,
        ErrorKind::Io => Code::Internal,
        ErrorKind::Poisoned => Code::Unavailable,
    }
}

/// An engine error as a status; the message is the engine's (it names the field of an
/// invalid argument).
pub fn status(e: cairn_engine::Error) -> Status {
    let code = code(e.kind());
    if code == Code::Internal {
        tracing::error!(error = %e, "request failed with an internal error");
    }
    Status::new(code, e.to_string())
}

/// INVALID_ARGUMENT naming the request field.
pub fn invalid(field: &str, reason: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("invalid {field}: {reason}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_maps_to_its_documented_code() {
        let table = [
            (ErrorKind::NotFound, Code::NotFound),
            (ErrorKind::AlreadyExists, Code::AlreadyExists),
            (ErrorKind::InvalidArgument, Code::InvalidArgument),
            (ErrorKind::FailedPrecondition, Code::FailedPrecondition),
            (ErrorKind::Busy, Code::Unavailable),
            (ErrorKind::LimitReached, Code::ResourceExhausted),
            (ErrorKind::Corrupt, Code::DataLoss),
            (ErrorKind::Canceled, Code::Cancelled),
            (ErrorKind::Io, Code::Internal),
            (ErrorKind::Poisoned, Code::Unavailable),
        ];
        for (kind, want) in table {
            assert_eq!(code(kind), want, "{kind:?}");
        }
    }
}
