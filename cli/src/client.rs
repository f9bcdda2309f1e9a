//! Connecting to a daemon's gRPC endpoint (`unix:PATH`, `HOST:PORT`, or an `http://` or
//! `https://` URL), shared by the `cairn` CLI and the tests. An `https://` endpoint is
//! verified against a given CA (no system roots: a daemon's CA is the operator's own) and
//! may present a client certificate; a bearer token goes on every call.

use std::path::{Path, PathBuf};

use cairn_proto::token::{AUTHORIZATION, BEARER_PREFIX, read_token};
use tonic::metadata::AsciiMetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Status};

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("bad endpoint {0:?}: {1}")]
    BadEndpoint(String, String),
    #[error("cannot reach the daemon at {0}: {1}")]
    Unreachable(String, String),
    #[error("{0}")]
    Credentials(String),
}

/// What a client proves itself with: TLS files for `https://` endpoints and a token.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// CA certificate (PEM) the daemon's certificate must chain to.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM), for daemons that require one.
    pub tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// Bearer token sent on every call.
    pub token: Option<String>,
}

impl Credentials {
    /// The token from a token file (see [`read_token`]).
    pub fn with_token_file(self, path: &Path) -> Result<Self, ConnectError> {
        let token = read_token(path).map_err(|e| ConnectError::Credentials(e.to_string()))?;
        Ok(Self { token: Some(token), ..self })
    }
}

/// The interceptor that sends the token, when one is given, on every call.
#[derive(Debug, Clone, Default)]
pub struct SendToken(Option<AsciiMetadataValue>);

impl SendToken {
    /// A token to send; `None` when it cannot be a header value.
    pub fn new(token: &str) -> Option<Self> {
        AsciiMetadataValue::try_from(format!("{BEARER_PREFIX}{token}")).ok().map(|v| Self(Some(v)))
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

/// A channel that sends the token (if any) on every call.
pub type AuthChannel = InterceptedService<Channel, SendToken>;

/// The endpoint as tonic takes it.
pub fn endpoint(s: &str) -> Result<Endpoint, ConnectError> {
    let url = if s.starts_with("unix:") || s.starts_with("http://") || s.starts_with("https://") {
        s.to_owned()
    } else if s.starts_with('/') || s.starts_with('.') {
        format!("unix:{s}")
    } else {
        format!("http://{s}")
    };
    Endpoint::from_shared(url).map_err(|e| ConnectError::BadEndpoint(s.into(), e.to_string()))
}

fn read_pem(what: &str, path: &Path) -> Result<Vec<u8>, ConnectError> {
    std::fs::read(path).map_err(|e| ConnectError::Credentials(format!("reading {what} {}: {e}", path.display())))
}

/// The TLS settings for an `https://` endpoint.
fn tls_config(s: &str, creds: &Credentials) -> Result<ClientTlsConfig, ConnectError> {
    let Some(ca) = &creds.tls_ca else {
        return Err(ConnectError::BadEndpoint(
            s.into(),
            "an https:// endpoint needs its CA certificate (--tls-ca)".into(),
        ));
    };
    let config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read_pem("TLS CA", ca)?));
    match (&creds.tls_cert, &creds.tls_key) {
        (Some(cert), Some(key)) => {
            Ok(config.identity(Identity::from_pem(read_pem("TLS certificate", cert)?, read_pem("TLS key", key)?)))
        }
        (None, None) => Ok(config),
        _ => Err(ConnectError::Credentials("--tls-cert and --tls-key go together".into())),
    }
}

async fn open(s: &str, ep: Endpoint) -> Result<Channel, ConnectError> {
    ep.connect_timeout(std::time::Duration::from_secs(10)).connect().await.map_err(|e| {
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg = format!("{msg}: {s}");
            src = s.source();
        }
        ConnectError::Unreachable(s.into(), msg)
    })
}

/// A connected channel, without credentials.
pub async fn connect(s: &str) -> Result<Channel, ConnectError> {
    open(s, endpoint(s)?).await
}

/// A connected channel that uses `creds`: TLS for `https://` (TLS files on any other
/// endpoint are an error, so a typo never silently drops TLS), and the token.
pub async fn connect_with(s: &str, creds: &Credentials) -> Result<AuthChannel, ConnectError> {
    let mut ep = endpoint(s)?;
    if ep.uri().scheme_str() == Some("https") {
        ep = ep.tls_config(tls_config(s, creds)?).map_err(|e| ConnectError::BadEndpoint(s.into(), e.to_string()))?;
    } else if creds.tls_ca.is_some() || creds.tls_cert.is_some() || creds.tls_key.is_some() {
        return Err(ConnectError::BadEndpoint(s.into(), "TLS files are given but the endpoint is not https://".into()));
    }
    let token = match &creds.token {
        Some(t) => {
            SendToken::new(t).ok_or_else(|| ConnectError::Credentials("the token must be printable ASCII".into()))?
        }
        None => SendToken::default(),
    };
    Ok(InterceptedService::new(open(s, ep).await?, token))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(mut token: SendToken) -> Option<String> {
        let req = token.call(Request::new(())).unwrap();
        req.metadata().get(AUTHORIZATION).map(|v| v.to_str().unwrap().to_owned())
    }

    #[test]
    fn the_token_goes_out_as_a_bearer_header() {
        assert_eq!(sent(SendToken::new("s3cret-token").unwrap()), Some("Bearer s3cret-token".into()));
        assert_eq!(sent(SendToken::default()), None);
        assert!(SendToken::new("two\nlines").is_none(), "a header value is one line");
    }
}
