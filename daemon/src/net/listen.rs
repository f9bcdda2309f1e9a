//! Listen addresses and binding, shared by the gRPC, NBD and HTTP listeners.
//!
//! An address is `unix:PATH` or `HOST:PORT`. A unix socket is bound under a temporary name,
//! restricted to mode 0600 and renamed into place, so it is never reachable with wider
//! permissions (it serves disks read-write); a stale socket file is replaced, anything else
//! in the way is an error. A TCP address must pass the listener's [`Protection`] (the rules
//! are in [`super::security`]).

use std::fmt;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use tokio::net::{TcpListener, UnixListener};

use super::security::{Protection, Refused};

/// A listen address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Unix(PathBuf),
    Tcp(String),
}

/// A listen address that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("bad listen address {addr:?}: {reason}")]
pub struct AddrError {
    pub addr: String,
    pub reason: &'static str,
}

impl FromStr for ListenAddr {
    type Err = AddrError;
    fn from_str(s: &str) -> Result<Self, AddrError> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(AddrError { addr: s.into(), reason: "empty socket path" });
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        match s.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(ListenAddr::Tcp(s.into())),
            _ => Err(AddrError { addr: s.into(), reason: "expected unix:PATH or HOST:PORT" }),
        }
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            ListenAddr::Tcp(a) => f.write_str(a),
        }
    }
}

/// Why a listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("bad {protocol} address {addr:?}: {reason}")]
    BadAddress { protocol: &'static str, addr: String, reason: &'static str },
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error("{path} is in use by another process")]
    InUse { path: PathBuf },
    #[error("{context} {addr}")]
    Io {
        context: &'static str,
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

impl ListenError {
    /// A parse error, for `protocol`'s listener.
    pub fn bad_address(protocol: &'static str, e: AddrError) -> Self {
        ListenError::BadAddress { protocol, addr: e.addr, reason: e.reason }
    }
}

/// A bound listener, not serving yet.
#[derive(Debug)]
pub enum Bound {
    Unix(UnixListener, PathBuf),
    Tcp(TcpListener),
}

fn io(context: &'static str, addr: impl fmt::Display) -> impl FnOnce(std::io::Error) -> ListenError {
    let addr = addr.to_string();
    move |source| ListenError::Io { context, addr, source }
}

/// Removes a stale socket file at `path`; refuses when something still listens there or the
/// file is not a socket.
fn clear_stale_socket(path: &Path) -> Result<(), ListenError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ListenError::InUse { path: path.into() });
            }
            std::fs::remove_file(path).map_err(io("removing stale socket", path.display()))
        }
        Ok(_) => Err(ListenError::InUse { path: path.into() }),
        Err(_) => Ok(()),
    }
}

/// Binds `addr` for `protocol` (named in errors); a TCP address must pass `protection`.
pub async fn bind(protocol: &'static str, addr: &ListenAddr, protection: &Protection) -> Result<Bound, ListenError> {
    match addr {
        ListenAddr::Unix(path) => {
            clear_stale_socket(path)?;
            let file = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let tmp = path.with_file_name(format!(".{file}.{}.tmp", std::process::id()));
            let _ = std::fs::remove_file(&tmp);
            let listener = UnixListener::bind(&tmp).map_err(io("binding", tmp.display()))?;
            let restrict = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
                .and_then(|()| std::fs::rename(&tmp, path));
            if let Err(e) = restrict {
                let _ = std::fs::remove_file(&tmp);
                return Err(io("creating socket", path.display())(e));
            }
            Ok(Bound::Unix(listener, path.clone()))
        }
        ListenAddr::Tcp(a) => {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host(a.as_str()).await.map_err(io("resolving", a))?.collect();
            for a in &addrs {
                protection.check(protocol, *a)?;
            }
            Ok(Bound::Tcp(TcpListener::bind(addrs.as_slice()).await.map_err(io("binding", a))?))
        }
    }
}

impl Bound {
    /// The address actually bound (with the port chosen when 0 was asked).
    pub fn local_addr(&self) -> String {
        match self {
            Bound::Unix(_, p) => format!("unix:{}", p.display()),
            Bound::Tcp(l) => l.local_addr().map_or_else(|_| "?".into(), |a| a.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::security::ClientAuth;

    #[test]
    fn addresses_parse() {
        assert_eq!("unix:/run/x.sock".parse::<ListenAddr>().unwrap(), ListenAddr::Unix("/run/x.sock".into()));
        assert_eq!("127.0.0.1:10809".parse::<ListenAddr>().unwrap(), ListenAddr::Tcp("127.0.0.1:10809".into()));
        assert_eq!("[::1]:10809".parse::<ListenAddr>().unwrap(), ListenAddr::Tcp("[::1]:10809".into()));
        for bad in ["unix:", "nonsense", ":80", "host:port"] {
            assert!(bad.parse::<ListenAddr>().is_err(), "{bad}");
        }
    }

    const PLAIN: Protection = Protection { tls: false, client_auth: ClientAuth::NotNeeded, allow_plaintext: false };

    #[tokio::test]
    async fn plaintext_on_a_public_address_is_refused_and_loopback_is_not() {
        let e = bind("NBD", &ListenAddr::Tcp("0.0.0.0:0".into()), &PLAIN).await.unwrap_err();
        assert!(matches!(e, ListenError::Refused(Refused::Plaintext { protocol: "NBD", .. })), "{e}");
        assert!(e.to_string().contains("--tls-cert") && e.to_string().contains("--allow-plaintext"), "{e}");
        assert!(bind("NBD", &ListenAddr::Tcp("127.0.0.1:0".into()), &PLAIN).await.is_ok());
        let allowed = Protection { allow_plaintext: true, ..PLAIN };
        assert!(bind("NBD", &ListenAddr::Tcp("0.0.0.0:0".into()), &allowed).await.is_ok());
    }

    #[tokio::test]
    async fn unix_sockets_are_private_and_never_replace_a_live_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let first = bind("gRPC", &ListenAddr::Unix(path.clone()), &PLAIN).await.unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let e = bind("gRPC", &ListenAddr::Unix(path.clone()), &PLAIN).await.unwrap_err();
        assert!(matches!(e, ListenError::InUse { .. }), "{e}");
        drop(first);
        // A stale socket (nothing listening) is replaced.
        assert!(bind("gRPC", &ListenAddr::Unix(path.clone()), &PLAIN).await.is_ok());
        let plain = dir.path().join("file");
        std::fs::write(&plain, b"x").unwrap();
        assert!(bind("gRPC", &ListenAddr::Unix(plain), &PLAIN).await.is_err());
    }
}
