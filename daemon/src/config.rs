//! The optional TOML config file of `cairnd` (`--config FILE`). Every key is optional and a
//! command-line flag wins over it; an unknown key fails at start, naming the key.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// `cairnd`'s config file.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Root of all state (default `./cairn-data`).
    pub data_dir: Option<PathBuf>,
    /// `auto`, `uring` or `blocking`.
    pub io_backend: Option<String>,
    /// gRPC listen address: `unix:PATH` or `HOST:PORT` (default `unix:<data-dir>/cairn.sock`).
    pub grpc: Option<String>,
    /// NBD listen address (default `unix:<data-dir>/nbd.sock`).
    pub nbd: Option<String>,
    /// HTTP listen address for `/metrics` and `/healthz`: `HOST:PORT` (default `127.0.0.1:9633`).
    pub http: Option<String>,
    /// This daemon's region name (default `local`).
    pub region: Option<String>,
    /// Serve TCP on non-loopback addresses without TLS or client authentication.
    pub allow_plaintext: Option<bool>,
    /// Server certificate chain (PEM): with `tls_key`, TLS on every TCP listener.
    pub tls_cert: Option<PathBuf>,
    /// Server private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// CA (PEM) that gRPC and NBD client certificates must chain to; makes them required.
    pub tls_client_ca: Option<PathBuf>,
    /// File holding the bearer token gRPC clients must send.
    pub grpc_token_file: Option<PathBuf>,
}

/// Why the config file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
}

impl Config {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Self::parse(&text).map_err(|message| ConfigError::Parse { path: path.into(), message })
    }

    /// Parses config text; the error names the offending key.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim().replace('\n', " "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_config_parses() {
        let c = Config::parse("data_dir = \"/d\"\ngrpc = \"unix:/s\"\nregion = \"west\"\nallow_plaintext = true\n")
            .unwrap();
        assert_eq!(c.region.as_deref(), Some("west"));
        assert_eq!(c.allow_plaintext, Some(true));
    }

    #[test]
    fn tls_keys_parse_and_a_misspelt_one_is_named() {
        let c = Config::parse(
            "tls_cert = \"/c.pem\"\ntls_key = \"/k.pem\"\ntls_client_ca = \"/ca.pem\"\ngrpc_token_file = \"/t\"\n",
        )
        .unwrap();
        assert_eq!(c.tls_cert.as_deref(), Some(Path::new("/c.pem")));
        assert_eq!(c.tls_key.as_deref(), Some(Path::new("/k.pem")));
        assert_eq!(c.tls_client_ca.as_deref(), Some(Path::new("/ca.pem")));
        assert_eq!(c.grpc_token_file.as_deref(), Some(Path::new("/t")));
        let e = Config::parse("tls_certificate = \"/c.pem\"\n").unwrap_err();
        assert!(e.contains("tls_certificate"), "{e}");
    }

    #[test]
    fn an_unknown_key_is_named() {
        let e = Config::parse("regoin = \"west\"\n").unwrap_err();
        assert!(e.contains("regoin"), "{e}");
    }

    #[test]
    fn a_bad_value_names_its_key() {
        let e = Config::parse("allow_plaintext = \"yes\"\n").unwrap_err();
        assert!(e.contains("allow_plaintext"), "{e}");
    }
}
