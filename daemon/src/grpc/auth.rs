//! Bearer-token authentication of gRPC calls (`--grpc-token-file`): every Cairn service and
//! reflection demand `authorization: Bearer <token>`; the health service stays open so
//! probes need no secret. The token applies on every gRPC listener, the unix socket
//! included, so one client configuration works everywhere.
//!
//! Only a BLAKE3 hash of the token is kept, and a presented token is compared by hash:
//! `blake3::Hash` equality is constant time, and hashing first hides the length too.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// The metadata key (HTTP/2 header) that carries the token.
pub const AUTHORIZATION: &str = "authorization";
const SCHEME: &str = "Bearer ";

/// A token file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("reading gRPC token file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("gRPC token file {path} must hold one line of printable ASCII (no spaces), and not be empty")]
    Malformed { path: PathBuf },
}

/// Reads a token file: one line of visible ASCII; surrounding whitespace is dropped.
pub fn read_token(path: &Path) -> Result<String, TokenError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read { path: path.into(), source })?;
    let token = text.trim();
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(TokenError::Malformed { path: path.into() });
    }
    Ok(token.to_owned())
}

/// The token the daemon expects, as a hash.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken(Arc<blake3::Hash>);

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(..)")
    }
}

impl BearerToken {
    pub fn new(token: &str) -> Self {
        Self(Arc::new(blake3::hash(token.as_bytes())))
    }

    /// Reads the token from a file (see [`read_token`]).
    pub fn load(path: &Path) -> Result<Self, TokenError> {
        read_token(path).map(|t| Self::new(&t))
    }

    /// Whether the call's metadata carries this token.
    pub fn check(&self, metadata: &MetadataMap) -> Result<(), Status> {
        let Some(value) = metadata.get(AUTHORIZATION) else {
            return Err(Status::unauthenticated("this daemon requires `authorization: Bearer <token>`"));
        };
        let presented = value.as_bytes().strip_prefix(SCHEME.as_bytes()).unwrap_or_default();
        if blake3::hash(presented) == *self.0 {
            Ok(())
        } else {
            Err(Status::unauthenticated("the bearer token is not the one this daemon expects"))
        }
    }
}

/// The server's interceptor: checks the token when one is configured.
#[derive(Debug, Clone, Default)]
pub struct RequireToken(pub Option<BearerToken>);

impl Interceptor for RequireToken {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        match &self.0 {
            Some(token) => token.check(req.metadata()).map(|()| req),
            None => Ok(req),
        }
    }
}

/// The client's interceptor: sends the token when one is given.
#[derive(Debug, Clone, Default)]
pub struct SendToken(Option<AsciiMetadataValue>);

impl SendToken {
    /// A token to send; `None` when it cannot be a header value.
    pub fn new(token: &str) -> Option<Self> {
        AsciiMetadataValue::try_from(format!("{SCHEME}{token}")).ok().map(|v| Self(Some(v)))
    }
}

impl Interceptor for SendToken {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert(AUTHORIZATION, v.clone());
        }
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(server: &BearerToken, client: Option<&str>) -> Result<(), tonic::Code> {
        let mut send = client.map_or_else(SendToken::default, |t| SendToken::new(t).unwrap());
        let req = send.call(Request::new(())).unwrap();
        RequireToken(Some(server.clone())).call(req).map(|_| ()).map_err(|s| s.code())
    }

    #[test]
    fn only_the_right_token_passes() {
        let token = BearerToken::new("s3cret-token");
        assert_eq!(call(&token, Some("s3cret-token")), Ok(()));
        assert_eq!(call(&token, Some("s3cret-tokem")), Err(tonic::Code::Unauthenticated));
        assert_eq!(call(&token, Some("s3cret")), Err(tonic::Code::Unauthenticated));
        assert_eq!(call(&token, None), Err(tonic::Code::Unauthenticated));
        let mut raw = Request::new(());
        raw.metadata_mut().insert(AUTHORIZATION, AsciiMetadataValue::from_static("s3cret-token"));
        assert!(RequireToken(Some(token)).call(raw).is_err(), "the Bearer scheme is required");
        assert!(RequireToken(None).call(Request::new(())).is_ok());
    }

    #[test]
    fn token_files_are_one_printable_line() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good");
        std::fs::write(&good, "abc123\n").unwrap();
        assert_eq!(read_token(&good).unwrap(), "abc123");
        for (name, text) in [("empty", "\n"), ("spaced", "two words\n")] {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            let e = read_token(&path).unwrap_err().to_string();
            assert!(e.contains(name), "{e}");
        }
        let e = read_token(&dir.path().join("missing")).unwrap_err().to_string();
        assert!(e.contains("missing"), "{e}");
    }
}
