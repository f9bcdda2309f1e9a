//! The security rules every listener binds under, in one place: what protects each
//! listener's TCP connections ([`Security::protection`]) and when an address is refused
//! ([`Protection::check`]).
//!
//! The rules of [`Security`], the same for every listener:
//! - with a certificate and key configured, every TCP listener speaks TLS, loopback
//!   included (NBD through STARTTLS, required before any other option); unix sockets stay
//!   plain, their mode 0600 is their protection;
//! - a TCP address that is not loopback is refused without TLS;
//! - a listener that serves data (gRPC, NBD) on such an address is refused unless it also
//!   authenticates its clients: client certificates (`--tls-client-ca`) or, for gRPC, a
//!   bearer token (`--grpc-token-file`). HTTP serves only metrics and health;
//! - `--allow-plaintext` lifts both refusals: the operator takes the risk (a private
//!   network, a tunnel).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use cairn_proto::token::TokenError;

use super::tls::{ServerTls, TlsError, TlsFiles};
use super::token::BearerToken;

/// The daemon's TLS and client authentication settings, under which every listener binds.
#[derive(Debug, Clone, Default)]
pub struct Security {
    /// Certificate and key (and client CA): TLS on every TCP listener.
    pub tls: Option<ServerTls>,
    /// The bearer token gRPC clients must send.
    pub grpc_token: Option<BearerToken>,
    /// Serve non-loopback TCP without TLS or client authentication.
    pub allow_plaintext: bool,
}

/// Why the security settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("--tls-client-ca needs --tls-cert and --tls-key")]
    ClientCaWithoutCert,
    #[error("--tls-cert and --tls-key go together")]
    CertWithoutKey,
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Token(#[from] TokenError),
}

/// The listeners cairnd runs; each authenticates its clients its own way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// By client certificate or bearer token.
    Grpc,
    /// By client certificate.
    Nbd,
    /// Not at all: it serves only metrics and health.
    Http,
}

impl Security {
    /// TLS and client authentication from the files named by flags and config, every file
    /// read and checked now.
    pub fn load(
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        client_ca: Option<PathBuf>,
        token_file: Option<&Path>,
        allow_plaintext: bool,
    ) -> Result<Self, SecurityError> {
        let tls = match (cert, key) {
            (Some(cert), Some(key)) => Some(ServerTls::load(&TlsFiles { cert, key, client_ca })?),
            (None, None) if client_ca.is_none() => None,
            (None, None) => return Err(SecurityError::ClientCaWithoutCert),
            _ => return Err(SecurityError::CertWithoutKey),
        };
        let grpc_token = token_file.map(BearerToken::load).transpose()?;
        Ok(Self { tls, grpc_token, allow_plaintext })
    }

    /// What protects `listener`'s TCP connections under these settings.
    pub fn protection(&self, listener: Listener) -> Protection {
        let client_certs = self.tls.as_ref().is_some_and(ServerTls::client_auth);
        let client_auth = match listener {
            Listener::Http => ClientAuth::NotNeeded,
            Listener::Grpc if client_certs || self.grpc_token.is_some() => ClientAuth::Configured,
            Listener::Grpc => ClientAuth::Missing("--tls-client-ca or --grpc-token-file"),
            Listener::Nbd if client_certs => ClientAuth::Configured,
            Listener::Nbd => ClientAuth::Missing("--tls-client-ca"),
        };
        Protection { tls: self.tls.is_some(), client_auth, allow_plaintext: self.allow_plaintext }
    }
}

/// How a listener authenticates its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// It serves nothing that needs it (HTTP metrics and health).
    NotNeeded,
    /// It does (client certificates or a token).
    Configured,
    /// It should but cannot; the flags that would fix it.
    Missing(&'static str),
}

/// What protects one listener's TCP connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Protection {
    pub tls: bool,
    pub client_auth: ClientAuth,
    pub allow_plaintext: bool,
}

/// An address the rules refuse.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error(
        "refusing to serve {protocol} in plaintext on non-loopback address {addr}: configure TLS with \
         --tls-cert and --tls-key, listen on a unix socket or loopback, or pass --allow-plaintext to accept the risk"
    )]
    Plaintext { protocol: &'static str, addr: SocketAddr },
    #[error(
        "refusing to serve {protocol} on non-loopback address {addr} without authenticating clients: \
         give {give}, or pass --allow-plaintext to accept the risk"
    )]
    Unauthenticated { protocol: &'static str, addr: SocketAddr, give: &'static str },
}

impl Protection {
    /// Whether `addr` may be served under this protection.
    pub fn check(&self, protocol: &'static str, addr: SocketAddr) -> Result<(), Refused> {
        if addr.ip().is_loopback() || self.allow_plaintext {
            return Ok(());
        }
        if !self.tls {
            return Err(Refused::Plaintext { protocol, addr });
        }
        match self.client_auth {
            ClientAuth::Missing(give) => Err(Refused::Unauthenticated { protocol, addr, give }),
            ClientAuth::NotNeeded | ClientAuth::Configured => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAIN: Protection = Protection { tls: false, client_auth: ClientAuth::NotNeeded, allow_plaintext: false };

    #[test]
    fn a_public_data_listener_needs_tls_and_client_authentication() {
        let public: SocketAddr = "192.0.2.1:10809".parse().unwrap();
        let loopback: SocketAddr = "127.0.0.1:10809".parse().unwrap();
        let tls_no_auth = Protection { tls: true, client_auth: ClientAuth::Missing("--tls-client-ca"), ..PLAIN };
        let e = tls_no_auth.check("NBD", public).unwrap_err();
        assert!(matches!(e, Refused::Unauthenticated { .. }), "{e}");
        assert!(e.to_string().contains("--tls-client-ca"), "{e}");
        assert!(tls_no_auth.check("NBD", loopback).is_ok());
        assert!(Protection { allow_plaintext: true, ..tls_no_auth }.check("NBD", public).is_ok());
        assert!(Protection { client_auth: ClientAuth::Configured, ..tls_no_auth }.check("NBD", public).is_ok());
        assert!(Protection { client_auth: ClientAuth::NotNeeded, ..tls_no_auth }.check("HTTP", public).is_ok());
    }

    #[test]
    fn each_listener_asks_for_its_own_client_authentication() {
        let token = Security { grpc_token: Some(BearerToken::new("t")), ..Security::default() };
        assert_eq!(token.protection(Listener::Grpc).client_auth, ClientAuth::Configured);
        assert_eq!(token.protection(Listener::Nbd).client_auth, ClientAuth::Missing("--tls-client-ca"));
        assert_eq!(token.protection(Listener::Http).client_auth, ClientAuth::NotNeeded);
        let none = Security::default().protection(Listener::Grpc);
        assert_eq!(
            none,
            Protection { client_auth: ClientAuth::Missing("--tls-client-ca or --grpc-token-file"), ..PLAIN }
        );
    }
}
