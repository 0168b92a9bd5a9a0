//! HTTPS served by the binary itself. Phones open the camera only on a secure origin, so a
//! deployment without a TLS-terminating proxy needs it: a certificate from files
//! (`--tls-cert`/`--tls-key`), or a self-signed one for trying it over a LAN (`--tls-self-signed`),
//! made once into the data dir and reused so that a phone which accepted it keeps accepting it.
//!
//! rustls runs on aws-lc-rs, the backend reqwest already compiles in: no second crypto library.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, anyhow, bail};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::crypto::aws_lc_rs;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::Settings;

/// The self-signed certificate's folder in the data dir.
pub const DIR: &str = "tls";
pub const CERT_FILE: &str = "cert.pem";
pub const KEY_FILE: &str = "key.pem";
/// What the self-signed certificate was made for (names, expiry): read to decide on reuse.
const META_FILE: &str = "self-signed.txt";
/// Lifetime of a self-signed certificate. Apple's platforms refuse server certificates valid
/// longer than 825 days, even ones a user trusts by hand.
const SELF_SIGNED_DAYS: i64 = 825;
/// A self-signed certificate this close to its end is replaced at start.
const RENEW_DAYS: i64 = 30;

/// Whether the settings ask for HTTPS.
pub fn enabled(settings: &Settings) -> bool {
    settings.tls_self_signed || settings.tls_cert.is_some()
}

/// The server side of TLS, ready for the accept loop, and what to tell the operator about it.
pub struct Tls {
    pub acceptor: TlsAcceptor,
    pub info: TlsInfo,
}

#[derive(Debug, Clone)]
pub struct TlsInfo {
    /// The certificate file served (the leaf first).
    pub cert_file: PathBuf,
    /// SHA-256 of the leaf certificate (DER), colon-separated hex as browsers show it.
    pub fingerprint: String,
    pub source: Source,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `--tls-cert`/`--tls-key`.
    Files,
    /// `--tls-self-signed`: the names it is valid for, and whether this start made it.
    SelfSigned { names: Vec<String>, created: bool },
}

/// Loads (or, for `--tls-self-signed`, makes or reuses) the certificate. None when TLS is off.
pub fn load(
    settings: &Settings,
    listen: SocketAddr,
    public_url: &str,
) -> anyhow::Result<Option<Tls>> {
    let (cert_file, key_file, source) = match (&settings.tls_cert, &settings.tls_key) {
        (Some(cert), Some(key)) => (cert.clone(), key.clone(), Source::Files),
        (None, None) if settings.tls_self_signed => {
            let names = self_signed_names(listen, public_url);
            let dir = settings.data_dir.join(DIR);
            let created = ensure_self_signed(&dir, &names)?;
            (
                dir.join(CERT_FILE),
                dir.join(KEY_FILE),
                Source::SelfSigned { names, created },
            )
        }
        (None, None) => return Ok(None),
        _ => bail!("--tls-cert and --tls-key go together"),
    };
    let certs = CertificateDer::pem_file_iter(&cert_file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow!("reading the certificate {}: {e}", cert_file.display()))?;
    let Some(leaf) = certs.first() else {
        bail!("no certificate in {}", cert_file.display());
    };
    let fingerprint = fingerprint(leaf);
    let key = PrivateKeyDer::from_pem_file(&key_file)
        .map_err(|e| anyhow!("reading the private key {}: {e}", key_file.display()))?;
    let config = server_config(certs, key).with_context(|| {
        format!(
            "using the certificate {} with the key {}",
            cert_file.display(),
            key_file.display()
        )
    })?;
    Ok(Some(Tls {
        acceptor: TlsAcceptor::from(Arc::new(config)),
        info: TlsInfo {
            cert_file,
            fingerprint,
            source,
        },
    }))
}

/// What the operator is told at start: which certificate, its fingerprint, and for a self-signed
/// one the warning every browser will show.
pub fn print_banner(info: &TlsInfo) {
    match &info.source {
        Source::Files => println!("TLS certificate: {}", info.cert_file.display()),
        Source::SelfSigned { names, created } => {
            println!(
                "TLS certificate: self-signed, {} {} for {}",
                if *created { "made into" } else { "reused from" },
                info.cert_file.display(),
                names.join(", ")
            );
            println!(
                "warning: browsers will show a certificate warning for it (it is signed by no \
                 authority they trust); check the fingerprint below, then accept it on each device"
            );
        }
    }
    println!("TLS certificate SHA-256 fingerprint: {}", info.fingerprint);
}

fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> anyhow::Result<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        // Also checks that the key belongs to the certificate.
        .with_single_cert(certs, key)?;
    // HTTP/1.1 only, as over plain HTTP: the header timeout and WebSocket upgrades are HTTP/1.1's.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// SHA-256 of a certificate's DER, as `AB:CD:…` (what browsers show in the certificate viewer).
pub fn fingerprint(cert_der: &[u8]) -> String {
    let digest = Sha256::digest(cert_der);
    let mut out = String::with_capacity(digest.len() * 3);
    for (i, b) in digest.iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        let _ = write!(out, "{b:02X}");
    }
    out
}

/// What a self-signed certificate must be valid for: localhost and loopback, the listen address
/// unless it is a wildcard, and the public URL's host (where a LAN IP or name is given).
pub fn self_signed_names(listen: SocketAddr, public_url: &str) -> Vec<String> {
    let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    if !listen.ip().is_unspecified() {
        names.push(listen.ip().to_string());
    }
    if let Some(host) = reqwest::Url::parse(public_url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
    {
        // An IPv6 host comes bracketed; the URL parser has lowercased names already.
        names.push(
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
        );
    }
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
    names
}

/// Makes the self-signed certificate in `dir` unless one is there that covers `names` and is not
/// about to expire. Returns whether it made one.
fn ensure_self_signed(dir: &Path, names: &[String]) -> anyhow::Result<bool> {
    let (cert, key, meta) = (dir.join(CERT_FILE), dir.join(KEY_FILE), dir.join(META_FILE));
    if cert.exists() && key.exists() {
        match std::fs::read_to_string(&meta) {
            // Files put there by hand, without our notes: used as they are.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e).with_context(|| format!("reading {}", meta.display())),
            Ok(text) => {
                let (made_for, not_after) = parse_meta(&text);
                let renew_at = OffsetDateTime::now_utc() + time::Duration::days(RENEW_DAYS);
                let missing: Vec<&String> =
                    names.iter().filter(|n| !made_for.contains(n)).collect();
                match not_after {
                    Some(t) if t > renew_at.unix_timestamp() && missing.is_empty() => {
                        return Ok(false);
                    }
                    Some(t) if t > renew_at.unix_timestamp() => tracing::warn!(
                        ?missing,
                        "the self-signed certificate does not cover every name; making a new one \
                         (its fingerprint changes: devices must accept it again)"
                    ),
                    _ => tracing::warn!(
                        "the self-signed certificate expires soon; making a new one (its \
                         fingerprint changes: devices must accept it again)"
                    ),
                }
            }
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let not_before = OffsetDateTime::now_utc() - time::Duration::days(1);
    let not_after = not_before + time::Duration::days(SELF_SIGNED_DAYS);
    let mut params = rcgen::CertificateParams::new(names.to_vec())
        .context("a name of the self-signed certificate")?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "CaptureLink (self-signed)");
    params.not_before = not_before;
    params.not_after = not_after;
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key_pair = rcgen::KeyPair::generate().context("generating a key")?;
    let certificate = params
        .self_signed(&key_pair)
        .context("signing the certificate")?;

    // Key first, certificate next, notes last: a start interrupted half-way makes a new pair.
    write_atomically(dir, &key, key_pair.serialize_pem().as_bytes())?;
    write_atomically(dir, &cert, certificate.pem().as_bytes())?;
    let mut text = String::from(
        "# Written by capturelink --tls-self-signed: what cert.pem was made for.\n\
         # Delete this folder to have a new certificate made at the next start.\n",
    );
    let _ = writeln!(text, "not_after {}", not_after.unix_timestamp());
    for n in names {
        let _ = writeln!(text, "name {n}");
    }
    write_atomically(dir, &meta, text.as_bytes())?;
    Ok(true)
}

fn parse_meta(text: &str) -> (Vec<String>, Option<i64>) {
    let mut names = Vec::new();
    let mut not_after = None;
    for line in text.lines() {
        if let Some(n) = line.strip_prefix("name ") {
            names.push(n.trim().to_owned());
        } else if let Some(t) = line.strip_prefix("not_after ") {
            not_after = t.trim().parse().ok();
        }
    }
    (names, not_after)
}

/// Writes `path` through a temporary file in `dir` (created readable by the owner only).
fn write_atomically(dir: &Path, path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a file in {}", dir.display()))?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cover_loopback_the_listen_address_and_the_public_host() {
        let n = self_signed_names("0.0.0.0:8443".parse().unwrap(), "https://192.168.1.20:8443");
        assert_eq!(n, ["localhost", "127.0.0.1", "::1", "192.168.1.20"]);
        let n = self_signed_names(
            "10.0.0.5:443".parse().unwrap(),
            "https://Claims.Example:443/",
        );
        assert_eq!(
            n,
            [
                "localhost",
                "127.0.0.1",
                "::1",
                "10.0.0.5",
                "claims.example"
            ]
        );
        let n = self_signed_names("127.0.0.1:0".parse().unwrap(), "https://127.0.0.1:4000");
        assert_eq!(n, ["localhost", "127.0.0.1", "::1"]);
        let n = self_signed_names("[::]:8443".parse().unwrap(), "https://[fd00::7]:8443");
        assert_eq!(n, ["localhost", "127.0.0.1", "::1", "fd00::7"]);
    }

    #[test]
    fn fingerprints_look_like_the_browsers() {
        let f = fingerprint(b"abc");
        assert_eq!(f.len(), 32 * 3 - 1);
        assert!(f.starts_with("BA:78:16:BF:"), "{f}");
    }

    #[test]
    fn a_self_signed_certificate_is_reused_until_a_name_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        assert!(ensure_self_signed(dir.path(), &names).unwrap(), "made");
        let first = std::fs::read(dir.path().join(CERT_FILE)).unwrap();
        assert!(
            !ensure_self_signed(dir.path(), &names[..1]).unwrap(),
            "reused"
        );
        assert_eq!(std::fs::read(dir.path().join(CERT_FILE)).unwrap(), first);
        let more = vec!["localhost".to_owned(), "192.168.1.9".to_owned()];
        assert!(ensure_self_signed(dir.path(), &more).unwrap(), "remade");
        assert_ne!(std::fs::read(dir.path().join(CERT_FILE)).unwrap(), first);
        let meta = std::fs::read_to_string(dir.path().join(META_FILE)).unwrap();
        assert!(meta.contains("name 192.168.1.9"), "{meta}");
    }
}
