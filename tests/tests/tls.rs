//! Client TLS with redis-rs (rustls, like the router): a single connection
//! and the async cluster client on the TLS ports, refusals with a clear
//! error (another CA, an expired client certificate, an expired server
//! certificate), and a router serving TLS only. redis-cli, redis-py,
//! RedisCluster, redis-benchmark and reloads: tests/python/test_tls.py.

use std::path::{Path, PathBuf};
use std::time::Duration;

use redis::{AsyncCommands, ClientTlsConfig, TlsCertificates};
use tessera_node::certs::{self, Ca, Role, Validity};
use tessera_tests::{key_per_slot, Cluster};

/// One CA's files in a folder: the CA, a server and a client certificate.
struct CertSet {
    dir: PathBuf,
    ca: Ca,
}

impl CertSet {
    fn new(dir: &Path) -> CertSet {
        CertSet { ca: certs::write_set(dir, &[], 1).expect("certificates"), dir: dir.to_path_buf() }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }

    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.dir.join(name)).expect("certificate file")
    }

    /// Writes `name.crt`/`name.key`, issued by this CA.
    fn issue(&self, name: &str, role: Role, valid: Validity) {
        let issued = self.ca.issue(name, &[], role, valid).expect("issue");
        certs::write(&self.dir, &format!("{name}.crt"), &issued.cert_pem, false).unwrap();
        certs::write(&self.dir, &format!("{name}.key"), &issued.key_pem, true).unwrap();
    }

    /// redis-rs's certificates: this CA as the only root, and `client`'s pair.
    fn client(&self, client: &str, ca: &CertSet) -> TlsCertificates {
        TlsCertificates {
            client_tls: Some(ClientTlsConfig {
                client_cert: self.read(&format!("{client}.crt")),
                client_key: self.read(&format!("{client}.key")),
            }),
            root_cert: Some(ca.read("ca.crt")),
        }
    }

    fn router_args(&self, server: &str) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.path(&format!("{server}.crt")),
            "--tls-key".into(),
            self.path(&format!("{server}.key")),
            "--tls-ca-cert".into(),
            self.path("ca.crt"),
        ]
    }
}

async fn connect(addr: &str, certs: TlsCertificates) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let client = redis::Client::build_with_tls(format!("rediss://{addr}/"), certs)?;
    let con = client.get_multiplexed_async_connection();
    match tokio::time::timeout(Duration::from_secs(20), con).await {
        Ok(r) => r,
        Err(_) => Err(redis::RedisError::from((redis::ErrorKind::Io, "connect timed out"))),
    }
}

/// A connection that is refused may fail at the handshake or, with TLS 1.3
/// (where the client finishes first), at its first command.
async fn refused(addr: &str, certs: TlsCertificates) -> String {
    match connect(addr, certs).await {
        Err(e) => e.to_string(),
        Ok(mut con) => match redis::cmd("PING").query_async::<String>(&mut con).await {
            Err(e) => e.to_string(),
            Ok(pong) => panic!("a refused client got {pong}"),
        },
    }
}

/// The log once it holds `needle` (or, after 10 s, as it is, failing).
async fn wait_for_log(path: &Path, needle: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let log = std::fs::read_to_string(path).unwrap_or_default();
        if log.contains(needle) {
            return log;
        }
        assert!(std::time::Instant::now() < deadline, "the router never logged '{needle}':\n{log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_rs_over_tls_and_refusals() {
    let dir = std::env::temp_dir().join(format!("tessera-tls-rs-{}", std::process::id()));
    let good = CertSet::new(&dir.join("good"));
    let other = CertSet::new(&dir.join("other"));
    good.issue("expired-client", Role::Client, Validity::expired());
    good.issue("expired-server", Role::Server, Validity::expired());

    let mut args = vec!["--tls-listen".to_string(), "127.0.0.1:0".into()];
    args.extend(["--tls-cluster-listen".into(), "127.0.0.1:0,127.0.0.1:0".into()]);
    args.extend(good.router_args("server"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut c = Cluster::start_with(3, 2, &args).expect("cluster starts");
    let tls = c.tls.expect("a TLS port").to_string();
    assert_eq!(c.tls_cluster.len(), 2);

    // One connection: strings and a tensor.
    let mut con = connect(&tls, good.client("client", &good)).await.expect("TLS connection");
    let _: () = con.set("tls:rs", "v").await.unwrap();
    let v: String = con.get("tls:rs").await.unwrap();
    assert_eq!(v, "v");
    let _: () = redis::cmd("AI.TENSORSET")
        .arg("{t}rs")
        .arg("FLOAT")
        .arg(2)
        .arg("VALUES")
        .arg(1.5)
        .arg(2.5)
        .query_async(&mut con)
        .await
        .unwrap();
    let t: Vec<f64> = redis::cmd("AI.TENSORGET").arg("{t}rs").arg("VALUES").query_async(&mut con).await.unwrap();
    assert_eq!(t, vec![1.5, 2.5]);

    // The cluster client, started from the TLS cluster ports, stays on TLS.
    let urls: Vec<String> = c.tls_cluster.iter().map(|a| format!("rediss://{a}/")).collect();
    let client = redis::cluster::ClusterClientBuilder::new(urls)
        .certs(good.client("client", &good))
        .response_timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut cc = client.get_async_connection().await.expect("TLS cluster connection");
    let keys: Vec<String> = key_per_slot().into_iter().step_by(64).collect();
    for k in &keys {
        let _: () = cc.set(k, format!("v-{k}")).await.expect("SET over TLS");
    }
    for k in &keys {
        let v: String = cc.get(k).await.expect("GET over TLS");
        assert_eq!(v, format!("v-{k}"));
    }

    // A server certificate from another CA: the client refuses it.
    let e = refused(&tls, good.client("client", &other)).await;
    assert!(e.contains("UnknownIssuer") || e.contains("unknown issuer"), "{e}");
    // A client certificate from another CA, and an expired one: the router refuses them.
    refused(&tls, other.client("client", &good)).await;
    refused(&tls, good.client("expired-client", &good)).await;
    // (The client can see its refusal before the router has logged it.)
    let log = wait_for_log(&c.dir.join("router.log"), "certificate expired").await;
    assert!(log.contains("TLS handshake refused"), "the router logs refused handshakes");

    // A router whose own certificate has expired: clients say so.
    let mut expired = vec!["--tls-listen".to_string(), "127.0.0.1:0".into()];
    expired.extend(good.router_args("expired-server"));
    let expired: Vec<&str> = expired.iter().map(String::as_str).collect();
    let fields = c.add_router("router-expired", &expired).expect("router starts");
    let e = refused(&fields["tls"], good.client("client", &good)).await;
    assert!(e.to_lowercase().contains("expired"), "{e}");

    // TLS only: no plain port, CLUSTER SHARDS lists only tls-port, and the
    // cluster client works through it.
    let mut only = vec!["--tls-only".to_string(), "--tls-listen".into(), "127.0.0.1:0".into()];
    only.extend(["--tls-cluster-listen".into(), "127.0.0.1:0,127.0.0.1:0".into()]);
    only.extend(good.router_args("server"));
    let only: Vec<&str> = only.iter().map(String::as_str).collect();
    let fields = c.add_router("router-tls-only", &only).expect("router starts");
    assert!(!fields.contains_key("plain") && !fields.contains_key("cluster"), "{fields:?}");
    let mut con = connect(&fields["tls"], good.client("client", &good)).await.expect("TLS-only connection");
    let port: Vec<String> = redis::cmd("CONFIG").arg("GET").arg("port").query_async(&mut con).await.unwrap();
    assert_eq!(port, vec!["port", "0"]);
    let shards: redis::Value = redis::cmd("CLUSTER").arg("SHARDS").query_async(&mut con).await.unwrap();
    let text = format!("{shards:?}");
    assert!(text.contains("tls-port") && !text.contains("\"port\""), "{text}");
    let urls: Vec<String> = fields["tls-cluster"].split(',').map(|a| format!("rediss://{a}/")).collect();
    let client = redis::cluster::ClusterClientBuilder::new(urls)
        .certs(good.client("client", &good))
        .response_timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut cc = client.get_async_connection().await.expect("TLS-only cluster connection");
    for k in &keys {
        let v: String = cc.get(k).await.expect("GET through the TLS-only router");
        assert_eq!(v, format!("v-{k}"));
    }
    drop(cc);
    drop(con);
    let _ = std::fs::remove_dir_all(&dir);
    drop(c);
}
