//! Bearer-token authentication of gRPC calls (`--grpc-token-file`): every Cairn service and
//! reflection demand `authorization: Bearer <token>`; the health service stays open so
//! probes need no secret. The token applies on every gRPC listener, the unix socket
//! included, so one client configuration works everywhere.
//!
//! Only a BLAKE3 hash of the token is kept, and a presented token is compared by hash:
//! `blake3::Hash` equality is constant time, and hashing first hides the length too.

use std::path::Path;
use std::sync::Arc;

use cairn_proto::token::{AUTHORIZATION, BEARER_PREFIX, TokenError, read_token};
use tonic::metadata::MetadataMap;
use tonic::service::Interceptor;
use tonic::{Request, Status};

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
        let presented = value.as_bytes().strip_prefix(BEARER_PREFIX.as_bytes()).unwrap_or_default();
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

#[cfg(test)]
mod tests {
    use super::*;

    use tonic::metadata::AsciiMetadataValue;

    fn call(server: &BearerToken, client: Option<&str>) -> Result<(), tonic::Code> {
        let mut req = Request::new(());
        if let Some(t) = client {
            req.metadata_mut().insert(AUTHORIZATION, format!("{BEARER_PREFIX}{t}").parse().unwrap());
        }
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
}
