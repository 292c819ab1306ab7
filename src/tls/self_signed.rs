//! `--tls-self-signed`: an ECDSA P-256 key and a self-signed certificate, generated once into
//! `<data-dir>/tls/` (directory 0700, `server.key` 0600, `server.crt` 0644) and reused on
//! restart. The certificate names `localhost`, `127.0.0.1`, `::1` and any extra names; the
//! names are recorded in `names`, and a start asking for a name the certificate lacks makes a
//! new one. Clients trust it with `--ca-file <data-dir>/tls/server.crt` (or by pinning the
//! logged fingerprint). Validity is rcgen's default (1975 to 4096): nothing rotates a
//! trust-on-first-use certificate, so it must not expire under its users.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::{Error, Result};

/// Names every self-signed certificate carries.
pub const DEFAULT_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// The files of the self-signed certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelfSigned {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    /// The subject alternative names it carries.
    pub names: Vec<String>,
    /// Whether this call generated it.
    pub created: bool,
}

/// Reuses `<data_dir>/tls/server.{crt,key}` when they exist and cover `extra_names`, else
/// generates them.
pub fn ensure(data_dir: &Path, extra_names: &[String]) -> Result<SelfSigned> {
    let dir = data_dir.join("tls");
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir).map_err(|source| Error::Io {
        action: "create",
        path: dir.clone(),
        source,
    })?;
    let (cert_path, key_path, names_path) = (dir.join("server.crt"), dir.join("server.key"), dir.join("names"));
    let mut wanted: Vec<String> = DEFAULT_NAMES.iter().map(|n| n.to_string()).collect();
    for name in extra_names {
        let name = name.trim().to_ascii_lowercase();
        if !name.is_empty() && !wanted.contains(&name) {
            wanted.push(name);
        }
    }
    if cert_path.is_file() && key_path.is_file() {
        let recorded: Vec<String> =
            std::fs::read_to_string(&names_path).map(|t| t.lines().map(str::to_string).collect()).unwrap_or_default();
        if wanted.iter().all(|n| recorded.contains(n)) {
            return Ok(SelfSigned { cert_path, key_path, names: recorded, created: false });
        }
        tracing::info!(names = ?wanted, "the self-signed certificate lacks a requested name; generating a new one");
    }
    let key = rcgen::KeyPair::generate().map_err(|source| Error::Generate { source })?;
    let mut params = rcgen::CertificateParams::new(wanted.clone()).map_err(|source| Error::Generate { source })?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    // A distinct subject per certificate: with one shared name, a client trusting another
    // install's certificate would report a bad signature instead of an unknown issuer.
    let mut tag = [0u8; 6];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut tag)
        .map_err(|_| Error::Generate { source: rcgen::Error::RingUnspecified })?;
    let tag: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    params.distinguished_name.push(rcgen::DnType::CommonName, format!("jac-orc self-signed {tag}"));
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    let cert = params.self_signed(&key).map_err(|source| Error::Generate { source })?;
    // Key first: a certificate without its key is never left behind as "reusable".
    write_replacing(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_replacing(&cert_path, cert.pem().as_bytes(), 0o644)?;
    write_replacing(&names_path, format!("{}\n", wanted.join("\n")).as_bytes(), 0o644)?;
    Ok(SelfSigned { cert_path, key_path, names: wanted, created: true })
}

/// Writes `contents` to a fresh temporary file with `mode`, then renames it over `path`.
fn write_replacing(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let io = |action, source| Error::Io { action, path: path.to_path_buf(), source };
    let _ = std::fs::remove_file(&tmp);
    let mut file =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp).map_err(|e| io("create", e))?;
    file.write_all(contents).and_then(|()| file.sync_all()).map_err(|e| io("write", e))?;
    std::fs::rename(&tmp, path).map_err(|e| io("replace", e))
}
