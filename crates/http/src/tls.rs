//! TLS for listeners: a rustls server config (ring provider) from PEM, offering h2 and
//! http/1.1 by ALPN.

use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A listener's TLS settings. Equal when built from the same certificate and key bytes, so a
/// reload with a rotated certificate restarts the listener's accept loop with the new one.
#[derive(Clone)]
pub struct TlsSpec {
    /// The rustls config.
    pub config: Arc<ServerConfig>,
    fingerprint: u64,
}

impl std::fmt::Debug for TlsSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TlsSpec({:016x})", self.fingerprint)
    }
}

impl PartialEq for TlsSpec {
    fn eq(&self, other: &Self) -> bool {
        self.fingerprint == other.fingerprint
    }
}

impl TlsSpec {
    /// Builds the server config from a PEM certificate chain and a PEM private key.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<TlsSpec, String> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("certificate file is not valid PEM: {e}"))?;
        if certs.is_empty() {
            return Err("certificate file holds no certificate".into());
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| format!("key file holds no usable private key: {e}"))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| format!("certificate and key do not form a usable pair: {e}"))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let mut all = cert_pem.to_vec();
        all.extend_from_slice(key_pem);
        Ok(TlsSpec {
            config: Arc::new(config),
            fingerprint: scalegate_core::hash::stable_hash(&all),
        })
    }
}
