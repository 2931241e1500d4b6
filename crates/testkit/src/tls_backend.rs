//! An HTTPS backend that requires a client certificate (mutual TLS), for testing the gateway's
//! TLS towards upstreams. It answers every request with the subject-less text "mtls-ok".

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;

/// A running mutual-TLS backend; stops when dropped.
#[derive(Debug)]
pub struct MtlsBackend {
    /// Where it listens.
    pub addr: SocketAddr,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for MtlsBackend {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

fn certs(pem: &[u8]) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("certificate PEM: {e}"))
}

impl MtlsBackend {
    /// Serves with `cert`/`key` (PEM) and accepts only clients whose certificate chains to
    /// `client_ca` (PEM).
    pub async fn start(cert: &[u8], key: &[u8], client_ca: &[u8]) -> MtlsBackend {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in certs(client_ca) {
            roots.add(c).unwrap_or_else(|e| panic!("client CA: {e}"));
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .unwrap_or_else(|e| panic!("client verifier: {e}"));
        let key = PrivateKeyDer::from_pem_slice(key).unwrap_or_else(|e| panic!("key PEM: {e}"));
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap_or_else(|e| panic!("versions: {e}"))
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs(cert), key)
            .unwrap_or_else(|e| panic!("server cert: {e}"));
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("addr: {e}"));
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    // A client without an acceptable certificate fails here.
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let svc = service_fn(|_req| async {
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                            b"mtls-ok",
                        ))))
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        MtlsBackend { addr, accept }
    }
}
