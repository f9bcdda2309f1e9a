//! TLS for cairnd's TCP listeners (gRPC, HTTP, NBD's STARTTLS): the certificate, key and
//! optional client CA, read and checked once at start, so a missing file, a file that is
//! not PEM or a key that does not match its certificate stops the daemon with a message
//! naming the file, instead of failing every handshake later.
//!
//! rustls with the ring provider only: aws-lc-rs would need cmake and a long C build. The
//! gRPC listener hands the same PEM bytes to tonic (which builds its own rustls config on
//! the process-default provider, installed here); HTTP and NBD use the configs built here.
//! Client certificates, when a client CA is given, are required on gRPC and NBD; HTTP
//! serves only `/metrics` and `/healthz` and never asks for one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
pub use tokio_rustls::TlsAcceptor;

/// The files TLS is configured from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The server's certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// The server's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates (PEM) that client certificates must chain to; none = no client certificates.
    pub client_ca: Option<PathBuf>,
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} {path} holds no PEM certificate")]
    NoCertificate { what: &'static str, path: PathBuf },
    #[error("{what} {path} is not valid PEM: {reason}")]
    BadPem { what: &'static str, path: PathBuf, reason: String },
    #[error("TLS key {path} holds no PEM private key: {reason}")]
    NoKey { path: PathBuf, reason: String },
    #[error("TLS key {key} does not fit certificate {cert}: {reason}")]
    Mismatch { key: PathBuf, cert: PathBuf, reason: String },
    #[error("client CA {path} is unusable: {reason}")]
    BadClientCa { path: PathBuf, reason: String },
}

/// The server side of TLS, checked and ready for every listener.
#[derive(Clone)]
pub struct ServerTls {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    client_ca_pem: Option<Vec<u8>>,
    /// HTTP/1.1, no client certificates.
    http: Arc<rustls::ServerConfig>,
    /// NBD, client certificates when a client CA is configured.
    nbd: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").field("client_auth", &self.client_auth()).finish_non_exhaustive()
    }
}

/// The crypto provider every rustls config here uses. Also installed as the process
/// default, which is what tonic's TLS builds on; a default installed earlier is kept.
pub fn provider() -> Arc<CryptoProvider> {
    let ring = Arc::new(rustls::crypto::ring::default_provider());
    if CryptoProvider::get_default().is_none() {
        let _ = CryptoProvider::install_default(ring.as_ref().clone());
    }
    ring
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { what, path: path.into(), source })
}

/// Every certificate in a PEM file; at least one.
pub fn certificates(what: &'static str, path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>().map_err(|e| TlsError::BadPem {
        what,
        path: path.into(),
        reason: e.to_string(),
    })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { what, path: path.into() });
    }
    Ok(certs)
}

impl ServerTls {
    /// Reads and checks the files; the error names the file at fault.
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        let provider = provider();
        let cert_pem = read("TLS certificate", &files.cert)?;
        let certs = certificates("TLS certificate", &files.cert, &cert_pem)?;
        let key_pem = read("TLS key", &files.key)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| TlsError::NoKey { path: files.key.clone(), reason: e.to_string() })?;
        let mismatch = |e: rustls::Error| TlsError::Mismatch {
            key: files.key.clone(),
            cert: files.cert.clone(),
            reason: e.to_string(),
        };
        let builder =
            || rustls::ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions();

        let mut http = builder()
            .map_err(mismatch)?
            .with_no_client_auth()
            .with_single_cert(certs.clone(), key.clone_key())
            .map_err(mismatch)?;
        http.alpn_protocols = vec![b"http/1.1".to_vec()];

        let (client_ca_pem, nbd) = match &files.client_ca {
            None => (None, builder().map_err(mismatch)?.with_no_client_auth().with_single_cert(certs, key)),
            Some(path) => {
                let pem = read("client CA", path)?;
                let bad = |reason: String| TlsError::BadClientCa { path: path.clone(), reason };
                let mut roots = RootCertStore::empty();
                for ca in certificates("client CA", path, &pem)? {
                    roots.add(ca).map_err(|e| bad(e.to_string()))?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| bad(e.to_string()))?;
                let nbd = builder().map_err(mismatch)?.with_client_cert_verifier(verifier).with_single_cert(certs, key);
                (Some(pem), nbd)
            }
        };
        let nbd = nbd.map_err(mismatch)?;
        Ok(Self { cert_pem, key_pem, client_ca_pem, http: Arc::new(http), nbd: Arc::new(nbd) })
    }

    /// Whether clients must present a certificate (gRPC and NBD).
    pub fn client_auth(&self) -> bool {
        self.client_ca_pem.is_some()
    }

    /// The acceptor of the HTTP listener.
    pub fn http_acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.http.clone())
    }

    /// The acceptor of NBD's STARTTLS.
    pub fn nbd_acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.nbd.clone())
    }

    /// tonic's form of the same configuration (its own rustls config, with ALPN h2).
    pub fn grpc_config(&self) -> tonic::transport::ServerTlsConfig {
        let identity = tonic::transport::Identity::from_pem(&self.cert_pem, &self.key_pem);
        let config = tonic::transport::ServerTlsConfig::new().identity(identity).timeout(HANDSHAKE_TIMEOUT);
        match &self.client_ca_pem {
            Some(ca) => config.client_ca_root(tonic::transport::Certificate::from_pem(ca)),
            None => config,
        }
    }
}

/// How long a TLS handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_test_support::pki::TestPki;

    fn files(dir: &Path, pki: &TestPki, client_ca: bool) -> TlsFiles {
        pki.write_to(dir);
        TlsFiles {
            cert: dir.join("server-cert.pem"),
            key: dir.join("server-key.pem"),
            client_ca: client_ca.then(|| dir.join("ca-cert.pem")),
        }
    }

    #[test]
    fn good_files_load_with_and_without_a_client_ca() {
        let dir = tempfile::tempdir().unwrap();
        let pki = TestPki::generate();
        assert!(!ServerTls::load(&files(dir.path(), &pki, false)).unwrap().client_auth());
        assert!(ServerTls::load(&files(dir.path(), &pki, true)).unwrap().client_auth());
    }

    #[test]
    fn each_bad_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let pki = TestPki::generate();
        let good = files(dir.path(), &pki, true);
        let missing = TlsFiles { cert: dir.path().join("nope.pem"), ..good.clone() };
        let e = ServerTls::load(&missing).unwrap_err().to_string();
        assert!(e.contains("nope.pem"), "{e}");

        std::fs::write(dir.path().join("junk.pem"), "not pem at all\n").unwrap();
        for bad in [
            TlsFiles { cert: dir.path().join("junk.pem"), ..good.clone() },
            TlsFiles { key: dir.path().join("junk.pem"), ..good.clone() },
            TlsFiles { client_ca: Some(dir.path().join("junk.pem")), ..good.clone() },
        ] {
            let e = ServerTls::load(&bad).unwrap_err().to_string();
            assert!(e.contains("junk.pem"), "{e}");
        }

        let mismatched = TlsFiles { key: dir.path().join("client-key.pem"), ..good };
        let e = ServerTls::load(&mismatched).unwrap_err();
        assert!(matches!(e, TlsError::Mismatch { .. }), "{e}");
        assert!(e.to_string().contains("client-key.pem") && e.to_string().contains("server-cert.pem"), "{e}");
    }
}
