//! Mutual TLS inside the cluster: every connection between Tessera
//! processes (router sessions, Raft links, gRPC: shard discovery, large Raft
//! messages and snapshots, admin calls) when the cluster is given its
//! certificates.
//!
//! One flag set turns it on, the same for nodes, routers and
//! `tessera-admin`: `--cluster-tls-cert`, `--cluster-tls-key` and
//! `--cluster-tls-ca`. Each process presents its certificate and accepts a
//! peer only with a certificate the cluster CA signed, both ways; every
//! cluster certificate names [`SERVER_NAME`] (what a peer is checked
//! against: any process the CA vouches for is a member). The CA must be the
//! cluster's own, not the one that signs client certificates for the
//! routers' client ports, or a client's certificate would pass for a member.
//!
//! A node serves links and gRPC on one port: with TLS, ALPN tells them apart
//! ([`ALPN_LINK`], or `h2` for gRPC) and the link's magic follows inside the
//! TLS session. The settings are process-wide ([`install`], once at start):
//! every place that connects reads them from here.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The name every cluster certificate carries (a DNS subject alternative
/// name), checked on every connection inside the cluster.
pub const SERVER_NAME: &str = "tessera.cluster";
/// ALPN of a link (its magic follows); gRPC negotiates `h2`.
pub const ALPN_LINK: &[u8] = b"tessera-link";
pub const ALPN_H2: &[u8] = b"h2";

/// The flags that turn cluster TLS on, the same in every Tessera program.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ClusterTlsArgs {
    /// This process's cluster certificate (PEM, its chain after it): it
    /// must name `tessera.cluster` and serve both server and client
    /// authentication. With --cluster-tls-key and --cluster-tls-ca, every
    /// connection inside the cluster is mutual TLS.
    #[arg(long, env = "TESSERA_CLUSTER_TLS_CERT", requires_all = ["cluster_tls_key", "cluster_tls_ca"])]
    pub cluster_tls_cert: Option<std::path::PathBuf>,
    /// The cluster certificate's private key (PEM).
    #[arg(long, env = "TESSERA_CLUSTER_TLS_KEY", requires_all = ["cluster_tls_cert", "cluster_tls_ca"])]
    pub cluster_tls_key: Option<std::path::PathBuf>,
    /// The cluster CA (PEM): peers must present a certificate it signed.
    #[arg(long, env = "TESSERA_CLUSTER_TLS_CA", requires_all = ["cluster_tls_cert", "cluster_tls_key"])]
    pub cluster_tls_ca: Option<std::path::PathBuf>,
}

impl ClusterTlsArgs {
    /// Reads the files and sets this process's cluster TLS ([`install`]);
    /// without the flags, plain TCP.
    pub fn install(&self) -> Result<(), String> {
        let tls = match (&self.cluster_tls_cert, &self.cluster_tls_key, &self.cluster_tls_ca) {
            (Some(cert), Some(key), Some(ca)) => Some(ClusterTls::load(cert, key, ca)?),
            (None, None, None) => None,
            _ => return Err("--cluster-tls-cert, --cluster-tls-key and --cluster-tls-ca go together".into()),
        };
        install(tls)
    }
}

/// How long a TLS handshake inside the cluster may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The cluster's TLS settings: one certificate and key for both ends of
/// every connection, and the CA peers must be signed by.
pub struct ClusterTls {
    server: Arc<ServerConfig>,
    link_client: Arc<ClientConfig>,
    grpc_client: Arc<ClientConfig>,
}

impl std::fmt::Debug for ClusterTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterTls")
    }
}

static CLUSTER_TLS: OnceLock<Option<Arc<ClusterTls>>> = OnceLock::new();

/// Sets this process's cluster TLS (none: plain TCP), once, before it
/// connects or serves. A second call is refused.
pub fn install(tls: Option<ClusterTls>) -> Result<(), String> {
    CLUSTER_TLS.set(tls.map(Arc::new)).map_err(|_| "cluster TLS is already set".to_string())
}

/// This process's cluster TLS, if it has one.
pub fn get() -> Option<&'static Arc<ClusterTls>> {
    CLUSTER_TLS.get().and_then(Option::as_ref)
}

fn provider() -> Arc<CryptoProvider> {
    // ring, the tree's one provider (see the workspace Cargo.toml).
    #[allow(deprecated)]
    Arc::new(rustls::crypto::ring::default_provider())
}

impl ClusterTls {
    /// Reads the certificate (chain), its key and the cluster CA (PEM).
    pub fn load(cert: &Path, key: &Path, ca: &Path) -> Result<ClusterTls, String> {
        let read = |p: &Path, e: &dyn std::fmt::Display| format!("{}: {e}", p.display());
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .and_then(|c| c.collect::<Result<Vec<_>, _>>())
            .map_err(|e| read(cert, &e))?;
        if certs.is_empty() {
            return Err(format!("{} holds no certificate", cert.display()));
        }
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| read(key, &e))?;
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca).map_err(|e| read(ca, &e))? {
            roots.add(c.map_err(|e| read(ca, &e))?).map_err(|e| read(ca, &e))?;
        }
        if roots.is_empty() {
            return Err(format!("{} holds no certificate", ca.display()));
        }
        Self::from_parts(certs, key, roots)
    }

    fn from_parts(
        certs: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        roots: RootCertStore,
    ) -> Result<ClusterTls, String> {
        let provider = provider();
        let roots = Arc::new(roots);
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| e.to_string())?;
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs.clone(), key.clone_key())
            .map_err(|e| format!("the cluster certificate and key: {e}"))?;
        server.alpn_protocols = vec![ALPN_LINK.to_vec(), ALPN_H2.to_vec()];
        // Links live long and gRPC channels reconnect rarely: no tickets,
        // so nothing is written after the handshake unasked.
        server.send_tls13_tickets = 0;
        let client = |alpn: &[u8]| -> Result<Arc<ClientConfig>, String> {
            let mut c = ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots.clone())
                .with_client_auth_cert(certs.clone(), key.clone_key())
                .map_err(|e| format!("the cluster certificate and key: {e}"))?;
            c.alpn_protocols = vec![alpn.to_vec()];
            Ok(Arc::new(c))
        };
        Ok(ClusterTls { server: Arc::new(server), link_client: client(ALPN_LINK)?, grpc_client: client(ALPN_H2)? })
    }

    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.server.clone())
    }

    /// Opens TLS on a new link to a peer (ALPN [`ALPN_LINK`]).
    pub async fn connect_link(&self, stream: TcpStream) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        handshake(TlsConnector::from(self.link_client.clone()), stream).await
    }

    /// A connector for tonic channels (ALPN `h2`).
    pub fn grpc_connector(self: &Arc<Self>) -> GrpcConnector {
        GrpcConnector { config: self.grpc_client.clone() }
    }
}

async fn handshake(
    connector: TlsConnector,
    stream: TcpStream,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let name = ServerName::try_from(SERVER_NAME).expect("a valid name");
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, stream)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")),
    }
}

/// Connects tonic channels over the cluster's TLS (see
/// [`tonic::transport::Endpoint::connect_with_connector_lazy`]).
#[derive(Clone)]
pub struct GrpcConnector {
    config: Arc<ClientConfig>,
}

type Io = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<http::Uri> for GrpcConnector {
    type Response = Io;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Io, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let config = self.config.clone();
        Box::pin(async move {
            let host = uri.host().ok_or("no host in the address")?;
            let addr = format!("{host}:{}", uri.port_u16().ok_or("no port in the address")?);
            let stream = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(&addr))
                .await
                .map_err(|_| format!("connecting to {addr} timed out"))??;
            let _ = stream.set_nodelay(true);
            let tls = handshake(TlsConnector::from(config), stream).await?;
            Ok(hyper_util::rt::TokioIo::new(tls))
        })
    }
}

/// A channel to `endpoint`: over the cluster's TLS when it has one.
pub fn lazy_channel(endpoint: tonic::transport::Endpoint) -> tonic::transport::Channel {
    match get() {
        Some(tls) => endpoint.connect_with_connector_lazy(tls.grpc_connector()),
        None => endpoint.connect_lazy(),
    }
}

/// [`lazy_channel`], connected now.
pub async fn channel(
    endpoint: tonic::transport::Endpoint,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    match get() {
        Some(tls) => endpoint.connect_with_connector(tls.grpc_connector()).await,
        None => endpoint.connect().await,
    }
}
