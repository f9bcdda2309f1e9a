//! Throwaway X.509 certificates for tests: a CA, a server certificate for 127.0.0.1 and
//! localhost, and a client certificate, for the daemon's unit tests and the end-to-end
//! tests. The key usages are what QEMU's and GnuTLS's checks demand of real deployments, so
//! the same files serve qemu and libnbd clients.

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

/// PEM texts of one test PKI.
#[derive(Debug, Clone)]
pub struct TestPki {
    pub ca: String,
    pub server_cert: String,
    pub server_key: String,
    pub client_cert: String,
    pub client_key: String,
}

impl TestPki {
    pub fn generate() -> Self {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.distinguished_name.push(DnType::CommonName, "cairn test CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let leaf = |name: &str, purpose: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
            p.distinguished_name.push(DnType::CommonName, name);
            p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
            p.extended_key_usages = vec![purpose];
            (p.signed_by(&key, &issuer).unwrap().pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = leaf("cairn test server", ExtendedKeyUsagePurpose::ServerAuth);
        let (client_cert, client_key) = leaf("cairn test client", ExtendedKeyUsagePurpose::ClientAuth);
        Self { ca: ca_cert.pem(), server_cert, server_key, client_cert, client_key }
    }

    /// Writes the files under the names QEMU's `tls-creds-x509` and libnbd's
    /// `tls-certificates` directories use: `ca-cert.pem`, `server-cert.pem`,
    /// `server-key.pem`, `client-cert.pem`, `client-key.pem`.
    pub fn write_to(&self, dir: &Path) {
        for (name, text) in [
            ("ca-cert.pem", &self.ca),
            ("server-cert.pem", &self.server_cert),
            ("server-key.pem", &self.server_key),
            ("client-cert.pem", &self.client_cert),
            ("client-key.pem", &self.client_key),
        ] {
            std::fs::write(dir.join(name), text).unwrap();
        }
    }
}
