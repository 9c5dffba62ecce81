//! Client TLS: the rustls server configuration of the router's TLS ports,
//! rebuilt from the files on disk when they change or on SIGHUP.
//!
//! One configuration serves every TLS listener. A reload builds a new
//! [`ServerConfig`] and swaps the `Arc` new handshakes take; connections
//! already open keep the session they negotiated. A reload also starts a new
//! session cache and ticket key: rustls does not check a client certificate
//! again when a session resumes, so sessions from before a reload (a CA
//! removed, a client certificate replaced) must not resume after it. A
//! reload that fails (a half-written file, a key that does not match its
//! certificate) is logged and the previous configuration stays; it is tried
//! again when the files change again.
//!
//! Client certificates follow Redis's `tls-auth-clients`: `yes` (Redis's
//! default) refuses a client without a certificate signed by the CA,
//! `optional` checks one only when it is offered, `no` asks for none.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use parking_lot::{Mutex, RwLock};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerSessionMemoryCache, WebPkiClientVerifier};
use rustls::{RootCertStore, ServerConfig, SupportedProtocolVersion};
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

/// How long a client has to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Sessions remembered for resumption without tickets (TLS 1.2 clients
/// that send none), shared by every listener until the next reload.
const SESSION_CACHE: usize = 4096;

/// `--tls-auth-clients`, as Redis's `tls-auth-clients`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthClients {
    Yes,
    No,
    Optional,
}

impl FromStr for AuthClients {
    type Err = String;
    fn from_str(s: &str) -> Result<AuthClients, String> {
        match s.to_ascii_lowercase().as_str() {
            "yes" => Ok(AuthClients::Yes),
            "no" => Ok(AuthClients::No),
            "optional" => Ok(AuthClients::Optional),
            _ => Err(format!("'{s}' is not yes, no or optional")),
        }
    }
}

/// A TLS protocol version (`--tls-protocols`, as Redis's `tls-protocols`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Tls12,
    Tls13,
}

impl FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Protocol, String> {
        match s.to_ascii_lowercase().as_str() {
            "tlsv1.2" => Ok(Protocol::Tls12),
            "tlsv1.3" => Ok(Protocol::Tls13),
            _ => Err(format!("'{s}' is not TLSv1.2 or TLSv1.3 (older versions are not offered)")),
        }
    }
}

impl Protocol {
    fn version(self) -> &'static SupportedProtocolVersion {
        match self {
            Protocol::Tls12 => &rustls::version::TLS12,
            Protocol::Tls13 => &rustls::version::TLS13,
        }
    }
}

/// The files and rules of the TLS ports.
#[derive(Clone, Debug)]
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca_cert: Option<PathBuf>,
    pub auth_clients: AuthClients,
    pub protocols: Vec<Protocol>,
    /// How often the files are checked for changes (None: only on SIGHUP).
    pub reload_every: Option<Duration>,
}

impl TlsSettings {
    fn files(&self) -> Vec<&Path> {
        let mut files = vec![self.cert.as_path(), self.key.as_path()];
        files.extend(self.ca_cert.as_deref());
        files
    }
}

/// The live TLS configuration of a router.
pub struct Tls {
    settings: TlsSettings,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<ServerConfig>>,
    stamps: Mutex<Stamps>,
}

/// The files' modification times at the last reload, and at the last
/// failed one (not tried again until they change once more).
#[derive(Default)]
struct Stamps {
    loaded: Vec<Option<SystemTime>>,
    failed: Option<Vec<Option<SystemTime>>>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl Tls {
    /// Loads the files; an error here stops the router from starting.
    pub fn load(settings: TlsSettings) -> anyhow::Result<Tls> {
        if settings.auth_clients != AuthClients::No && settings.ca_cert.is_none() {
            anyhow::bail!(
                "--tls-auth-clients {:?} needs --tls-ca-cert (or --tls-auth-clients no)",
                settings.auth_clients
            );
        }
        if settings.protocols.is_empty() {
            anyhow::bail!("--tls-protocols names no protocol");
        }
        // ring, the tree's one provider (see the workspace Cargo.toml).
        // rustls 0.23.48 deprecates it for lacking post-quantum key
        // exchange, which only aws-lc-rs offers; X25519 and the NIST
        // curves are what Redis clients (OpenSSL) negotiate today.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let loaded = stamps(&settings.files());
        let config = build(&settings, &provider)?;
        let stamps = Mutex::new(Stamps { loaded, failed: None });
        Ok(Tls { settings, provider, current: RwLock::new(Arc::new(config)), stamps })
    }

    /// The acceptor for the next handshake.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.read().clone())
    }

    /// Rebuilds the configuration from the files; on error the previous one stays.
    pub fn reload(&self, why: &str) {
        // Read before the files: a change while they are read is seen by
        // the next check.
        let now = stamps(&self.settings.files());
        match build(&self.settings, &self.provider) {
            Ok(config) => {
                *self.current.write() = Arc::new(config);
                *self.stamps.lock() = Stamps { loaded: now, failed: None };
                info!(why, cert = %self.settings.cert.display(), "TLS certificates reloaded");
            }
            Err(e) => {
                self.stamps.lock().failed = Some(now);
                warn!(why, error = format!("{e:#}"), "TLS reload failed; the previous certificates stay");
            }
        }
    }

    /// Whether the files changed since the last reload and since the last
    /// failed one.
    fn changed_on_disk(&self) -> bool {
        let now = stamps(&self.settings.files());
        let s = self.stamps.lock();
        now != s.loaded && Some(&now) != s.failed.as_ref()
    }

    /// Reloads on SIGHUP and, with `reload_every`, when a file's
    /// modification time changes. Runs until the router stops.
    pub async fn watch(self: Arc<Self>, mut hangup: Option<tokio::signal::unix::Signal>) {
        let mut tick = self.settings.reload_every.map(tokio::time::interval);
        loop {
            tokio::select! {
                Some(()) = async { match &mut hangup { Some(h) => h.recv().await, None => None } } => {
                    self.reload("SIGHUP");
                }
                _ = async { match &mut tick { Some(t) => { t.tick().await; } None => std::future::pending().await } } => {
                    if self.changed_on_disk() {
                        self.reload("files changed");
                    }
                }
            }
        }
    }
}

/// Logs a refused handshake: at most [`REFUSALS_LOGGED_PER_SEC`] a second,
/// so a port scan cannot flood the log (the metric
/// `tessera_router_tls_handshake_failures_total` counts every one).
pub fn log_refused(peer: std::net::SocketAddr, why: &dyn fmt::Display) {
    static SECOND: AtomicU64 = AtomicU64::new(0);
    static LOGGED: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    if SECOND.swap(now, Ordering::Relaxed) != now {
        LOGGED.store(0, Ordering::Relaxed);
    }
    if LOGGED.fetch_add(1, Ordering::Relaxed) < REFUSALS_LOGGED_PER_SEC {
        info!(%peer, error = %why, "TLS handshake refused");
    }
}

const REFUSALS_LOGGED_PER_SEC: u64 = 10;

fn stamps(files: &[&Path]) -> Vec<Option<SystemTime>> {
    files.iter().map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok()).collect()
}

/// A server configuration from the files, with a session cache and ticket
/// key of its own.
fn build(s: &TlsSettings, provider: &Arc<CryptoProvider>) -> anyhow::Result<ServerConfig> {
    let versions: Vec<&'static SupportedProtocolVersion> = s.protocols.iter().map(|p| p.version()).collect();
    let builder = ServerConfig::builder_with_provider(provider.clone()).with_protocol_versions(&versions)?;
    let builder = match (&s.ca_cert, s.auth_clients) {
        (_, AuthClients::No) | (None, _) => builder.with_no_client_auth(),
        (Some(ca), auth) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca).with_context(|| format!("reading {}", ca.display()))? {
                roots.add(cert.with_context(|| format!("a certificate in {}", ca.display()))?)?;
            }
            if roots.is_empty() {
                anyhow::bail!("{} holds no certificate", ca.display());
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            let verifier = match auth {
                AuthClients::Optional => verifier.allow_unauthenticated(),
                _ => verifier,
            };
            builder.with_client_cert_verifier(verifier.build()?)
        }
    };
    let certs = CertificateDer::pem_file_iter(&s.cert)
        .and_then(|c| c.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading {}", s.cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{} holds no certificate", s.cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(&s.key).with_context(|| format!("reading {}", s.key.display()))?;
    let mut config = builder
        .with_single_cert(certs, key)
        .with_context(|| format!("{} and {}", s.cert.display(), s.key.display()))?;
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE);
    // Tickets for TLS 1.2 and 1.3 clients; the key rotates every 6 hours
    // and the previous one is honoured as long again, which bounds how long
    // a session resumes without a full handshake (up to 12 hours).
    config.ticketer = rustls::crypto::ring::Ticketer::new().context("TLS session tickets")?;
    Ok(config)
}
