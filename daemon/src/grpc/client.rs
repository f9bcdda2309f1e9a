//! Connecting to a daemon's gRPC endpoint (`unix:PATH`, `HOST:PORT` or an `http://` URL),
//! shared by the `cairn` CLI and the tests.

use tonic::transport::{Channel, Endpoint};

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("bad endpoint {0:?}: {1}")]
    BadEndpoint(String, String),
    #[error("cannot reach the daemon at {0}: {1}")]
    Unreachable(String, String),
}

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

/// A connected channel.
pub async fn connect(s: &str) -> Result<Channel, ConnectError> {
    let ep = endpoint(s)?.connect_timeout(std::time::Duration::from_secs(10));
    ep.connect().await.map_err(|e| {
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg = format!("{msg}: {s}");
            src = s.source();
        }
        ConnectError::Unreachable(s.into(), msg)
    })
}
