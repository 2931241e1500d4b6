//! Opening a connection to an endpoint: TCP, then TLS when the upstream asks for it.
//!
//! Every connection to an upstream (pooled HTTP/1.1 and HTTP/2, upgrades, health probes) is
//! opened here, so an upstream marked `tls` is never spoken to in clear text by any path.

use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_util::either::Either;

use crate::error::ProxyError;
use crate::pool::Target;
use crate::small_writes::SmallWrites;
use crate::spec::UpstreamProtocol;

/// An upstream's TLS settings: trusted roots, an optional client certificate, the name to
/// verify. Equal when built from the same inputs, so a reload that changes none of them keeps
/// the endpoints' pools.
#[derive(Clone)]
pub struct UpstreamTls {
    config: Arc<ClientConfig>,
    /// The name to send (SNI) and verify; None: each endpoint's host.
    pub server_name: Option<String>,
    fingerprint: u64,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UpstreamTls({:016x})", self.fingerprint)
    }
}

impl PartialEq for UpstreamTls {
    fn eq(&self, other: &Self) -> bool {
        self.fingerprint == other.fingerprint && self.server_name == other.server_name
    }
}

/// Where an upstream's trusted roots and client identity come from, as PEM bytes.
#[derive(Debug, Default)]
pub struct TlsMaterial {
    /// CA certificates to trust; None: the system's roots.
    pub ca: Option<Vec<u8>>,
    /// Client certificate chain and key, for upstreams that require mutual TLS.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl UpstreamTls {
    /// Builds the client config. ALPN offers only the protocol the upstream is configured for,
    /// so a server cannot pick one the pool would not speak.
    pub fn new(
        material: &TlsMaterial,
        server_name: Option<String>,
        protocol: UpstreamProtocol,
    ) -> Result<UpstreamTls, String> {
        if let Some(n) = &server_name {
            ServerName::try_from(n.as_str())
                .map_err(|_| format!("server_name {n:?} is not a DNS name or IP address"))?;
        }
        let mut roots = rustls::RootCertStore::empty();
        match &material.ca {
            Some(pem) => {
                for cert in CertificateDer::pem_slice_iter(pem) {
                    let cert = cert.map_err(|e| format!("ca file is not valid PEM: {e}"))?;
                    roots
                        .add(cert)
                        .map_err(|e| format!("ca file holds an unusable certificate: {e}"))?;
                }
                if roots.is_empty() {
                    return Err("ca file holds no certificate".into());
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(found.certs);
                if roots.is_empty() {
                    return Err(
                        "no CA certificates found on this system; set tls.ca to a PEM file".into(),
                    );
                }
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?
            .with_root_certificates(roots);
        let mut config = match &material.client {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("client certificate is not valid PEM: {e}"))?;
                if chain.is_empty() {
                    return Err("client certificate file holds no certificate".into());
                }
                let key = PrivateKeyDer::from_pem_slice(key)
                    .map_err(|e| format!("client key file holds no usable private key: {e}"))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("client certificate and key do not pair: {e}"))?
            }
        };
        config.alpn_protocols = match protocol {
            UpstreamProtocol::Http1 => vec![b"http/1.1".to_vec()],
            UpstreamProtocol::Http2 => vec![b"h2".to_vec()],
        };
        let mut all = material.ca.clone().unwrap_or_default();
        if let Some((c, k)) = &material.client {
            all.extend_from_slice(c);
            all.extend_from_slice(k);
        }
        all.push(protocol as u8);
        Ok(UpstreamTls {
            config: Arc::new(config),
            server_name,
            fingerprint: scalegate_core::hash::stable_hash(&all),
        })
    }

    /// The connector and verified name for one endpoint (`host:port` as configured).
    pub fn for_endpoint(&self, addr: &str) -> EndpointTls {
        let host = self.server_name.as_deref().unwrap_or_else(|| host_of(addr));
        // Config validation rejects hosts that are not TLS names; should one slip through, its
        // connections fail rather than go out in clear.
        let name = ServerName::try_from(host.to_string()).ok();
        EndpointTls {
            connector: tokio_rustls::TlsConnector::from(self.config.clone()),
            name,
        }
    }
}

/// The host part of `host:port` (`[v6]:port` gives the bare v6 address).
pub fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// TLS towards one endpoint.
#[derive(Clone)]
pub struct EndpointTls {
    connector: tokio_rustls::TlsConnector,
    name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for EndpointTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EndpointTls({:?})", self.name)
    }
}

/// How to reach one endpoint.
#[derive(Clone, Copy, Debug)]
pub struct Dial<'a> {
    /// The address.
    pub target: Target<'a>,
    /// TLS on top, when the upstream is marked so.
    pub tls: Option<&'a EndpointTls>,
}

/// A connection to an upstream: plain TCP (small messages sent with one `send`, see
/// [`crate::small_writes`]) or TLS over TCP.
pub type UpstreamIo = Either<SmallWrites, Box<TlsStream<TcpStream>>>;

/// Connects (and shakes hands, for TLS) within `timeout`.
pub async fn dial(d: &Dial<'_>, timeout: Duration) -> Result<UpstreamIo, ProxyError> {
    let fut = async {
        let stream = match d.target {
            Target::Addr(a) => TcpStream::connect(a).await,
            Target::Name(n) => TcpStream::connect(n).await,
        }
        .map_err(|_| ProxyError::ConnectFailed)?;
        let _ = stream.set_nodelay(true);
        match d.tls {
            None => Ok(Either::Left(SmallWrites(stream))),
            Some(EndpointTls { name: None, .. }) => {
                tracing::warn!("upstream TLS: no server name to verify (set tls.server_name)");
                Err(ProxyError::ConnectFailed)
            }
            Some(EndpointTls {
                connector,
                name: Some(name),
            }) => match connector.connect(name.clone(), stream).await {
                Ok(s) => Ok(Either::Right(Box::new(s))),
                Err(e) => {
                    // At warn, as nginx logs it: a certificate that does not verify (wrong CA,
                    // name, expired) must not read like a host that is down.
                    tracing::warn!(error = %e, ?name, "upstream TLS handshake failed");
                    Err(ProxyError::ConnectFailed)
                }
            },
        }
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| ProxyError::ConnectTimeout)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_of_strips_the_port_and_v6_brackets() {
        assert_eq!(host_of("api.internal:443"), "api.internal");
        assert_eq!(host_of("10.0.0.1:8443"), "10.0.0.1");
        assert_eq!(host_of("[::1]:8443"), "::1");
        assert_eq!(host_of("bare"), "bare");
    }

    #[test]
    fn bad_material_is_refused_with_a_reason() {
        let m = TlsMaterial {
            ca: Some(b"not pem".to_vec()),
            client: None,
        };
        let e = UpstreamTls::new(&m, None, UpstreamProtocol::Http1).expect_err("no certificate");
        assert!(e.contains("ca file"), "{e}");
        let e = UpstreamTls::new(
            &TlsMaterial::default(),
            Some("not a name!".into()),
            UpstreamProtocol::Http1,
        )
        .expect_err("bad name");
        assert!(e.contains("server_name"), "{e}");
    }
}
