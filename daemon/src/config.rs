//! The optional TOML config file of `cairnd` (`--config FILE`). Every key is optional and a
//! command-line flag wins over it; an unknown key fails at start, naming the key.

use std::path::{Path, PathBuf};

use cairn_engine::{BackgroundPriority, EngineConfig};
use cairn_proto::size::parse_size;
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
    /// NBD listen address, or a list of them (default `unix:<data-dir>/nbd.sock`).
    pub nbd: Option<OneOrMany>,
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
    /// zstd level of stored chunks, 1 to 19 (default 3).
    pub zstd_level: Option<i32>,
    /// `idle` (default: capture threads run under SCHED_IDLE, guest I/O first) or `low`
    /// (nice 10: captures keep a share of a saturated host's CPUs).
    pub capture_priority: Option<CapturePriority>,
    /// Background jobs (capture, hydration) pause while the data dir has less free space
    /// than this, e.g. `1G` (the default).
    pub free_space_watermark: Option<String>,
    /// Memory for recently read chunk contents, e.g. `64M` (the default).
    pub chunk_cache: Option<String>,
    /// Copy-before-write memory per capture before spilling to a file, e.g. `256M` (the
    /// default).
    pub copy_before_write_memory: Option<String>,
    /// Days an ended operation stays listed (default 7); the newest `operations_kept` stay
    /// whatever their age.
    pub operation_retention_days: Option<u32>,
    /// Ended operations always kept, newest first (default 100).
    pub operations_kept: Option<u32>,
    /// Where peers reach this daemon's replication service: `HOST:PORT`, always TLS (needs
    /// `tls_cert` and `tls_key`).
    pub replication_listen: Option<String>,
    /// Other daemons: where to copy from and what they may copy from here.
    #[serde(default)]
    pub peers: Vec<crate::replication::PeerConfig>,
}

/// A key that takes one value or a list of them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl From<OneOrMany> for Vec<String> {
    fn from(v: OneOrMany) -> Self {
        match v {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// `capture_priority`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CapturePriority {
    Idle,
    Low,
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

    /// `engine` with this file's engine settings applied; the error names the key.
    pub fn apply_engine(&self, mut engine: EngineConfig) -> Result<EngineConfig, String> {
        if let Some(level) = self.zstd_level {
            if !(1..=19).contains(&level) {
                return Err(format!("zstd_level: {level} is not between 1 and 19"));
            }
            engine.zstd_level = level;
        }
        if let Some(p) = self.capture_priority {
            engine.background_priority = match p {
                CapturePriority::Idle => BackgroundPriority::Idle,
                CapturePriority::Low => BackgroundPriority::Low,
            };
        }
        let size = |key: &str, v: &Option<String>| -> Result<Option<u64>, String> {
            v.as_deref().map(|s| parse_size(s).map_err(|e| format!("{key}: {e}"))).transpose()
        };
        if let Some(n) = size("free_space_watermark", &self.free_space_watermark)? {
            engine.free_space_watermark_bytes = n;
        }
        if let Some(n) = size("chunk_cache", &self.chunk_cache)? {
            engine.chunk_cache_bytes = n;
        }
        if let Some(days) = self.operation_retention_days {
            engine.operation_retention = std::time::Duration::from_secs(u64::from(days) * 24 * 3600);
        }
        if let Some(n) = self.operations_kept {
            engine.operations_kept = usize::try_from(n).map_err(|_| format!("operations_kept: {n} is too large"))?;
        }
        if let Some(n) = size("copy_before_write_memory", &self.copy_before_write_memory)? {
            engine.preserve_mem_bytes =
                usize::try_from(n).map_err(|_| format!("copy_before_write_memory: {n} is too large"))?;
        }
        Ok(engine)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_keys_apply_and_bad_values_name_their_key() {
        let c = Config::parse(
            "zstd_level = 5\ncapture_priority = \"low\"\nfree_space_watermark = \"2G\"\nchunk_cache = \"16M\"\n\
             copy_before_write_memory = \"1G\"\noperation_retention_days = 2\noperations_kept = 10\n",
        )
        .unwrap();
        let e = c.apply_engine(EngineConfig::new("/d")).unwrap();
        assert_eq!(e.zstd_level, 5);
        assert_eq!(e.background_priority, BackgroundPriority::Low);
        assert_eq!(e.free_space_watermark_bytes, 2 << 30);
        assert_eq!(e.chunk_cache_bytes, 16 << 20);
        assert_eq!(e.preserve_mem_bytes, 1 << 30);
        assert_eq!(e.operation_retention, std::time::Duration::from_secs(2 * 24 * 3600));
        assert_eq!(e.operations_kept, 10);
        let err = Config::parse("capture_priority = \"urgent\"\n").unwrap_err();
        assert!(err.contains("urgent") && err.contains("idle"), "{err}");
        let err = Config::parse("zstd_level = 40\n").unwrap().apply_engine(EngineConfig::new("/d")).unwrap_err();
        assert!(err.starts_with("zstd_level"), "{err}");
        let err = Config::parse("chunk_cache = \"lots\"\n").unwrap().apply_engine(EngineConfig::new("/d")).unwrap_err();
        assert!(err.starts_with("chunk_cache"), "{err}");
    }

    #[test]
    fn a_full_config_parses() {
        let c = Config::parse("data_dir = \"/d\"\ngrpc = \"unix:/s\"\nregion = \"west\"\nallow_plaintext = true\n")
            .unwrap();
        assert_eq!(c.region.as_deref(), Some("west"));
        assert_eq!(c.allow_plaintext, Some(true));
    }

    #[test]
    fn nbd_takes_one_address_or_a_list() {
        let one = Config::parse("nbd = \"unix:/s\"\n").unwrap();
        assert_eq!(Vec::<String>::from(one.nbd.unwrap()), vec!["unix:/s".to_owned()]);
        let many = Config::parse("nbd = [\"unix:/s\", \"127.0.0.1:10809\"]\n").unwrap();
        assert_eq!(Vec::<String>::from(many.nbd.unwrap()), vec!["unix:/s".to_owned(), "127.0.0.1:10809".to_owned()]);
        assert!(Config::parse("nbd = 5\n").is_err());
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
    fn peers_parse_and_a_misspelt_peer_key_is_named() {
        let c = Config::parse(
            "replication_listen = \"127.0.0.1:7443\"\n[[peers]]\nname = \"west\"\nendpoint = \"https://h:1\"\n\
             ca = \"/ca.pem\"\ntoken_file = \"/t\"\naccept_token_file = \"/a\"\ncollections = [\"vm\"]\n",
        )
        .unwrap();
        assert_eq!(c.replication_listen.as_deref(), Some("127.0.0.1:7443"));
        assert_eq!(c.peers.len(), 1);
        assert_eq!(c.peers[0].collections, vec!["vm".to_owned()]);
        let e = Config::parse("[[peers]]\nname = \"w\"\nendpont = \"x\"\n").unwrap_err();
        assert!(e.contains("endpont"), "{e}");
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
