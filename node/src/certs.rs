//! Throwaway certificates for TLS: a CA and the certificates it signs for
//! servers and clients, in PEM. `tessera-admin certs` writes a set for a
//! local or test cluster; the tests also issue expired ones from the same CA.
//!
//! Keys are ECDSA P-256 (rcgen's default, on ring like the rest of the TLS
//! stack). A production cluster brings certificates from its own CA
//! (cert-manager, Vault, ...): nothing here is needed to run with TLS.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use time::OffsetDateTime;

/// The names every issued certificate holds besides those asked for, so
/// clients that check host names (redis-py does) accept it on loopback.
pub const LOOPBACK_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// What a certificate is for (its extended key usage).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Server,
    Client,
    /// Both ends of a link (nodes dialling each other).
    Peer,
}

/// When a certificate is valid.
#[derive(Clone, Copy, Debug)]
pub struct Validity {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From an hour ago (clocks differ a little) for `days` days.
    pub fn days(days: u32) -> Validity {
        let now = OffsetDateTime::now_utc();
        Validity {
            not_before: now - Duration::from_secs(3600),
            not_after: now + Duration::from_secs(u64::from(days) * 86_400),
        }
    }

    /// A window that ended a day ago (tests of refusal).
    pub fn expired() -> Validity {
        let now = OffsetDateTime::now_utc();
        Validity { not_before: now - Duration::from_secs(30 * 86_400), not_after: now - Duration::from_secs(86_400) }
    }
}

/// A certificate and its private key, in PEM.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A certificate authority held in memory.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl Ca {
    /// A new self-signed CA named `name`.
    pub fn generate(name: &str, valid: Validity) -> anyhow::Result<Ca> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        params.not_before = valid.not_before;
        params.not_after = valid.not_after;
        let cert = params.self_signed(&key)?;
        Ok(Ca { cert_pem: cert.pem(), issuer: Issuer::new(params, key) })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// A certificate for `name` (its common name), valid for `hosts` and
    /// [`LOOPBACK_NAMES`] (IP addresses become IP SANs, the rest DNS SANs).
    pub fn issue(&self, name: &str, hosts: &[String], role: Role, valid: Validity) -> anyhow::Result<Issued> {
        let mut sans: Vec<String> = LOOPBACK_NAMES.iter().map(|s| s.to_string()).collect();
        for h in hosts {
            if !sans.contains(h) {
                sans.push(h.clone());
            }
        }
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(sans)?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = match role {
            Role::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Role::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Role::Peer => vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
        };
        params.use_authority_key_identifier_extension = true;
        params.not_before = valid.not_before;
        params.not_after = valid.not_after;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

/// Writes `ca.crt`/`ca.key`, `server.crt`/`server.key` (servers and peers:
/// both key usages) and `client.crt`/`client.key` into `dir`, keys readable by
/// the owner only; and the cluster's own set for TLS inside the cluster
/// (`cluster-ca.crt`/`cluster-ca.key`, `cluster.crt`/`cluster.key`: a CA of
/// its own, so no client certificate passes for a member). Returns the
/// client-facing CA, to issue more from.
pub fn write_set(dir: &Path, hosts: &[String], days: u32) -> anyhow::Result<Ca> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let valid = Validity::days(days);
    // A name of its own, so a certificate from another set is refused as
    // from an unknown issuer rather than for a bad signature.
    let ca = Ca::generate(&format!("Tessera throwaway CA {:016x}", rand::random::<u64>()), valid)?;
    write(dir, "ca.crt", ca.cert_pem(), false)?;
    write(dir, "ca.key", &ca.key_pem(), true)?;
    let server = ca.issue("tessera", hosts, Role::Peer, valid)?;
    write(dir, "server.crt", &server.cert_pem, false)?;
    write(dir, "server.key", &server.key_pem, true)?;
    let client = ca.issue("tessera-client", &[], Role::Client, valid)?;
    write(dir, "client.crt", &client.cert_pem, false)?;
    write(dir, "client.key", &client.key_pem, true)?;
    let cluster_ca = Ca::generate(&format!("Tessera throwaway cluster CA {:016x}", rand::random::<u64>()), valid)?;
    write(dir, "cluster-ca.crt", cluster_ca.cert_pem(), false)?;
    write(dir, "cluster-ca.key", &cluster_ca.key_pem(), true)?;
    let member =
        cluster_ca.issue("tessera-cluster", &[tessera_proto::tls::SERVER_NAME.to_string()], Role::Peer, valid)?;
    write(dir, "cluster.crt", &member.cert_pem, false)?;
    write(dir, "cluster.key", &member.key_pem, true)?;
    Ok(ca)
}

/// Writes `text` to `dir/name` (mode 0600 for keys), replacing what was there.
pub fn write(dir: &Path, name: &str, text: &str, secret: bool) -> anyhow::Result<()> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    // A fresh file (not one left behind, or a link), so the mode holds.
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    // A rename, so a server reloading on change never reads half a file.
    fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_is_written_in_pem_with_keys_readable_by_the_owner_only() {
        let dir = std::env::temp_dir().join(format!("tessera-certs-{}", std::process::id()));
        write_set(&dir, &["router.example".to_string()], 2).unwrap();
        for f in ["ca.crt", "ca.key", "server.crt", "server.key", "client.crt", "client.key"] {
            let text = fs::read_to_string(dir.join(f)).unwrap();
            assert!(text.starts_with("-----BEGIN "), "{f}");
        }
        let mode = |f: &str| fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777;
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(mode("server.key"), 0o600);
        assert_eq!(mode("server.crt"), 0o644);
        let _ = fs::remove_dir_all(&dir);
    }
}
