//! Self-signed PKI for development and tests (`konnq-server certs --dir DIR`).
//!
//! [`generate`] writes a fresh CA and two leaves signed by it, all ECDSA P-256:
//!
//! | file | what |
//! |---|---|
//! | `ca.crt`, `ca.key` | the CA (`--ca-cert`, `--cluster-ca-cert`, `--server-ca-cert`) |
//! | `server.crt`, `server.key` | server auth; SANs `localhost`, `127.0.0.1`, `::1` + extras (`--cluster-cert/--cluster-key`) |
//! | `agent.crt`, `agent.key` | client auth, CN `konnq-agent` (`--agent-cert/--agent-key`) |
//!
//! Keys are written mode 0600. Existing files are never overwritten (replacing
//! a live CA would cut every agent off): the call fails before writing anything.
//! The CA is valid for 10 years, the leaves for 5, both from one hour ago (clock skew).

use std::fs::{DirBuilder, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};

/// Paths of the files written by [`generate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedCerts {
    pub dir: PathBuf,
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub agent_cert: PathBuf,
    pub agent_key: PathBuf,
}

impl GeneratedCerts {
    fn in_dir(dir: &Path) -> GeneratedCerts {
        GeneratedCerts {
            dir: dir.to_owned(),
            ca_cert: dir.join("ca.crt"),
            ca_key: dir.join("ca.key"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            agent_cert: dir.join("agent.crt"),
            agent_key: dir.join("agent.key"),
        }
    }

    fn files(&self) -> [&Path; 6] {
        [&self.ca_cert, &self.ca_key, &self.server_cert, &self.server_key, &self.agent_cert, &self.agent_key]
    }
}

/// Why certificates could not be generated; each variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot create directory {}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} already exists; remove it or choose another directory", path.display())]
    Exists { path: PathBuf },
    #[error("invalid subject alternative name {name:?}")]
    InvalidSan {
        name: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("cannot generate {file}")]
    Generate {
        file: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

const CA_DAYS: i64 = 3650;
const LEAF_DAYS: i64 = 5 * 365;

/// Writes a CA, a server and an agent certificate into `dir` (created 0700 if
/// missing). `extra_sans` are added to the server certificate, each as an IP
/// SAN if it parses as an address, else as a DNS name.
pub fn generate(dir: &Path, extra_sans: &[String]) -> Result<GeneratedCerts, CertError> {
    let out = GeneratedCerts::in_dir(dir);
    let mut sans = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    sans.extend(extra_sans.iter().cloned());
    let server_sans = sans.iter().map(|s| san(s)).collect::<Result<Vec<_>, _>>()?;

    if !dir.exists() {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| CertError::CreateDir { path: dir.to_owned(), source })?;
    }
    if let Some(existing) = out.files().into_iter().find(|p| p.exists()) {
        return Err(CertError::Exists { path: existing.to_owned() });
    }

    let ca_key = new_key("ca.key")?;
    let ca = CertifiedIssuer::self_signed(ca_params(), ca_key)
        .map_err(|source| CertError::Generate { file: "ca.crt", source })?;

    let server_params = leaf_params("konnq-server", server_sans, ExtendedKeyUsagePurpose::ServerAuth);
    let server_key = new_key("server.key")?;
    let server = server_params
        .signed_by(&server_key, &ca)
        .map_err(|source| CertError::Generate { file: "server.crt", source })?;

    let agent_params = leaf_params("konnq-agent", Vec::new(), ExtendedKeyUsagePurpose::ClientAuth);
    let agent_key = new_key("agent.key")?;
    let agent =
        agent_params.signed_by(&agent_key, &ca).map_err(|source| CertError::Generate { file: "agent.crt", source })?;

    write_file(&out.ca_key, &ca.key().serialize_pem(), 0o600)?;
    write_file(&out.ca_cert, &ca.pem(), 0o644)?;
    write_file(&out.server_key, &server_key.serialize_pem(), 0o600)?;
    write_file(&out.server_cert, &server.pem(), 0o644)?;
    write_file(&out.agent_key, &agent_key.serialize_pem(), 0o600)?;
    write_file(&out.agent_cert, &agent.pem(), 0o644)?;
    Ok(out)
}

fn san(name: &str) -> Result<SanType, CertError> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let dns = name.try_into().map_err(|source| CertError::InvalidSan { name: name.to_owned(), source })?;
    Ok(SanType::DnsName(dns))
}

fn new_key(file: &'static str) -> Result<KeyPair, CertError> {
    KeyPair::generate().map_err(|source| CertError::Generate { file, source })
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days);
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, "konnq-ca");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    validity(&mut params, CA_DAYS);
    params
}

fn leaf_params(cn: &str, sans: Vec<SanType>, eku: ExtendedKeyUsagePurpose) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![eku];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, LEAF_DAYS);
    params
}

/// Creates `path` (never overwriting) with `mode` and writes `contents`.
fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), CertError> {
    let err = |source| CertError::Write { path: path.to_owned(), source };
    let mut file = OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(err)?;
    // The umask may have cleared bits; make the mode exact.
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode)).map_err(err)?;
    file.write_all(contents.as_bytes()).map_err(err)?;
    file.sync_all().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;
    use rustls::client::WebPkiServerVerifier;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::server::WebPkiClientVerifier;
    use rustls::RootCertStore;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Arc;

    fn cert(path: &Path) -> CertificateDer<'static> {
        CertificateDer::from_pem_file(path).expect("PEM certificate")
    }

    fn roots(ca: &Path) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots.add(cert(ca)).expect("CA accepted as a root");
        Arc::new(roots)
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn verify_server(ca: &Path, leaf: &Path, name: &str) -> Result<(), rustls::Error> {
        let verifier = WebPkiServerVerifier::builder_with_provider(roots(ca), provider()).build().expect("verifier");
        let name = ServerName::try_from(name.to_owned()).expect("server name");
        verifier.verify_server_cert(&cert(leaf), &[], &name, &[], UnixTime::now()).map(|_| ())
    }

    fn verify_client(ca: &Path, leaf: &Path) -> Result<(), rustls::Error> {
        let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca), provider()).build().expect("verifier");
        verifier.verify_client_cert(&cert(leaf), &[], UnixTime::now()).map(|_| ())
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).expect("exists").permissions().mode() & 0o777
    }

    #[test]
    fn writes_every_file_with_key_modes_0600() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("new/pki");
        let certs = generate(&dir, &[]).expect("generated");
        assert_eq!(certs.dir, dir);
        assert_eq!(mode(&dir), 0o700);
        for file in certs.files() {
            assert!(file.is_file(), "{}", file.display());
        }
        for key in [&certs.ca_key, &certs.server_key, &certs.agent_key] {
            assert_eq!(mode(key), 0o600, "{}", key.display());
        }
        assert_eq!(mode(&certs.server_cert), 0o644);
        let key = std::fs::read_to_string(&certs.server_key).unwrap();
        assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "{key}");
    }

    #[test]
    fn server_and_agent_certs_verify_against_the_ca() {
        let tmp = tempfile::tempdir().unwrap();
        let extra = ["konnq.example".to_owned(), "10.1.2.3".to_owned()];
        let c = generate(tmp.path(), &extra).expect("generated");
        for name in ["localhost", "127.0.0.1", "::1", "konnq.example", "10.1.2.3"] {
            verify_server(&c.ca_cert, &c.server_cert, name).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        assert!(verify_server(&c.ca_cert, &c.server_cert, "other.example").is_err());
        verify_client(&c.ca_cert, &c.agent_cert).expect("agent cert accepted as client cert");
        // EKUs keep the roles apart.
        assert!(verify_client(&c.ca_cert, &c.server_cert).is_err());
        assert!(verify_server(&c.ca_cert, &c.agent_cert, "localhost").is_err());
    }

    #[test]
    fn certs_from_another_ca_are_rejected() {
        let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a = generate(one.path(), &[]).unwrap();
        let b = generate(two.path(), &[]).unwrap();
        assert!(verify_server(&a.ca_cert, &b.server_cert, "localhost").is_err());
        assert!(verify_client(&a.ca_cert, &b.agent_cert).is_err());
    }

    #[test]
    fn refuses_to_overwrite() {
        let tmp = tempfile::tempdir().unwrap();
        let first = generate(tmp.path(), &[]).unwrap();
        let before = std::fs::read(&first.ca_key).unwrap();
        let err = generate(tmp.path(), &[]).unwrap_err();
        assert!(matches!(&err, CertError::Exists { path } if path == &first.ca_cert), "{err}");
        assert!(err.to_string().contains("ca.crt already exists"), "{err}");
        assert_eq!(std::fs::read(&first.ca_key).unwrap(), before);
    }

    #[test]
    fn bad_san_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let err = generate(tmp.path(), &["bad name ü".to_owned()]).unwrap_err();
        assert!(err.to_string().contains("bad name ü"), "{err}");
        assert!(!tmp.path().join("ca.crt").exists(), "nothing written on error");
    }
}
