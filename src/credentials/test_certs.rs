//! A test CA with a server and a client certificate, made in memory with rcgen; compiled only
//! with the `test-certs` feature (on by default), which the command line's `certs` and `demo`
//! and the test rigs need.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};

use super::PemIdentity;
use crate::proto::error::{Error, Result};

/// Common name of the generated test CA.
const CA_COMMON_NAME: &str = "coap-keepalive test CA";
/// Common name of the generated server certificate.
const SERVER_COMMON_NAME: &str = "coap-keepalive server";
/// Common name of the generated client certificate.
const CLIENT_COMMON_NAME: &str = "coap-keepalive client";
/// How long generated certificates stay valid (about ten years).
const VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);
/// How far generated certificates are back-dated, so that a peer whose clock is a little behind
/// still accepts them.
const BACKDATE: Duration = Duration::from_secs(24 * 60 * 60);

/// A freshly generated CA with a server and a client certificate it signed, all in PEM.
///
/// Meant for tests and for trying the secured transports out: the server certificate names
/// `localhost`, `127.0.0.1` and `::1`. Only with the `test-certs` feature (on by default).
#[derive(Clone)]
pub struct CertificateSet {
    /// The self-signed CA certificate.
    pub ca_cert_pem: String,
    /// The CA's private key (PKCS#8).
    pub ca_key_pem: String,
    /// The server certificate (serverAuth; SANs `localhost`, `127.0.0.1`, `::1`).
    pub server_cert_pem: String,
    /// The server's private key (PKCS#8).
    pub server_key_pem: String,
    /// The client certificate (clientAuth; CN `coap-keepalive client`).
    pub client_cert_pem: String,
    /// The client's private key (PKCS#8).
    pub client_key_pem: String,
}

impl CertificateSet {
    /// Generates a CA and a server and a client certificate signed by it, each with its own
    /// ECDSA P-256 key, valid from a day ago for about ten years.
    pub fn generate() -> Result<CertificateSet> {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|e| Error::Certificate(format!("system clock before 1970: {e}")))?;

        let ca_key = generate_key()?;
        let mut ca_params = CertificateParams::default();
        ca_params.distinguished_name = common_name(CA_COMMON_NAME);
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut ca_params, since_epoch);
        let ca_cert = ca_params.self_signed(&ca_key).map_err(certificate_error)?;
        let ca_cert_pem = ca_cert.pem();
        let ca_key_pem = ca_key.serialize_pem();
        let issuer = Issuer::new(ca_params, ca_key);

        let server_key = generate_key()?;
        let mut server_params = leaf_params(SERVER_COMMON_NAME, since_epoch);
        server_params.subject_alt_names = vec![
            SanType::DnsName("localhost".try_into().map_err(certificate_error)?),
            SanType::IpAddress([127, 0, 0, 1].into()),
            SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()),
        ];
        server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_cert = server_params
            .signed_by(&server_key, &issuer)
            .map_err(certificate_error)?;

        let client_key = generate_key()?;
        let mut client_params = leaf_params(CLIENT_COMMON_NAME, since_epoch);
        client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_cert = client_params
            .signed_by(&client_key, &issuer)
            .map_err(certificate_error)?;

        Ok(CertificateSet {
            ca_cert_pem,
            ca_key_pem,
            server_cert_pem: server_cert.pem(),
            server_key_pem: server_key.serialize_pem(),
            client_cert_pem: client_cert.pem(),
            client_key_pem: client_key.serialize_pem(),
        })
    }

    /// Writes `ca.pem`, `ca.key`, `server.pem`, `server.key`, `client.pem` and `client.key`
    /// into `dir` (which must exist), replacing files of those names, and returns their paths.
    /// On Unix the key files are readable by their owner only (mode 0600).
    pub fn write_to(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        let files = [
            ("ca.pem", &self.ca_cert_pem, false),
            ("ca.key", &self.ca_key_pem, true),
            ("server.pem", &self.server_cert_pem, false),
            ("server.key", &self.server_key_pem, true),
            ("client.pem", &self.client_cert_pem, false),
            ("client.key", &self.client_key_pem, true),
        ];
        let mut written = Vec::with_capacity(files.len());
        for (name, contents, secret) in files {
            let path = dir.join(name);
            write_file(&path, contents, secret)
                .map_err(|e| Error::Certificate(format!("cannot write {}: {e}", path.display())))?;
            written.push(path);
        }
        Ok(written)
    }

    /// The server's certificate and key as an identity.
    pub fn server_identity(&self) -> PemIdentity {
        PemIdentity {
            cert_chain_pem: self.server_cert_pem.clone(),
            key_pem: self.server_key_pem.clone(),
        }
    }

    /// The client's certificate and key as an identity.
    pub fn client_identity(&self) -> PemIdentity {
        PemIdentity {
            cert_chain_pem: self.client_cert_pem.clone(),
            key_pem: self.client_key_pem.clone(),
        }
    }
}

impl fmt::Debug for CertificateSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateSet")
            .field("ca_cert_pem", &self.ca_cert_pem)
            .field("server_cert_pem", &self.server_cert_pem)
            .field("client_cert_pem", &self.client_cert_pem)
            .finish_non_exhaustive()
    }
}

/// A fresh ECDSA P-256 key pair.
fn generate_key() -> Result<KeyPair> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(certificate_error)
}

/// Parameters shared by the server and client certificates.
fn leaf_params(name: &str, since_epoch: Duration) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name(name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, since_epoch);
    params
}

/// A distinguished name made of a common name only.
fn common_name(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}

/// Makes a certificate valid from a day before `now` (time since the Unix epoch) for about ten
/// years.
fn set_validity(params: &mut CertificateParams, now: Duration) {
    // rcgen takes `time::OffsetDateTime`, from a crate this one does not depend on: rcgen's own
    // constructor gives the epoch, and std durations add to it.
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + now.saturating_sub(BACKDATE);
    params.not_after = params.not_before + VALIDITY;
}

/// Maps an rcgen error.
fn certificate_error(error: rcgen::Error) -> Error {
    Error::Certificate(format!("cannot generate a certificate: {error}"))
}

/// Writes `contents` to `path`, owner-only on Unix when `secret`.
fn write_file(path: &Path, contents: &str, secret: bool) -> std::io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    #[cfg(unix)]
    if secret {
        // `mode` applies only to a file that did not exist yet.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
    }
    #[cfg(not(unix))]
    let _ = secret;
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::client::danger::ServerCertVerifier;
    use rustls::client::WebPkiServerVerifier;
    use rustls::server::WebPkiClientVerifier;
    use rustls_pki_types::{ServerName, UnixTime};

    use super::*;
    use crate::credentials::rustls::{ring_provider, root_store};

    fn now() -> Duration {
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap()
    }

    fn server_verifier(set: &CertificateSet) -> Arc<WebPkiServerVerifier> {
        WebPkiServerVerifier::builder_with_provider(
            Arc::new(root_store(&set.ca_cert_pem).unwrap()),
            ring_provider(),
        )
        .build()
        .unwrap()
    }

    fn verify_server_at(
        set: &CertificateSet,
        name: &str,
        at: Duration,
    ) -> std::result::Result<(), rustls::Error> {
        let chain = set.server_identity().cert_chain_der().unwrap();
        server_verifier(set)
            .verify_server_cert(
                &chain[0],
                &chain[1..],
                &ServerName::try_from(name).unwrap(),
                &[],
                UnixTime::since_unix_epoch(at),
            )
            .map(|_| ())
    }

    fn verify_client(set: &CertificateSet, identity: &PemIdentity) -> bool {
        let verifier = WebPkiClientVerifier::builder_with_provider(
            Arc::new(root_store(&set.ca_cert_pem).unwrap()),
            ring_provider(),
        )
        .build()
        .unwrap();
        let chain = identity.cert_chain_der().unwrap();
        verifier
            .verify_client_cert(&chain[0], &chain[1..], UnixTime::now())
            .is_ok()
    }

    #[test]
    fn server_certificate_names_loopback_and_serves_servers_only() {
        let set = CertificateSet::generate().unwrap();
        for name in ["localhost", "127.0.0.1", "::1"] {
            verify_server_at(&set, name, now()).unwrap();
        }
        assert!(verify_server_at(&set, "example.com", now()).is_err());
        assert!(verify_client(&set, &set.client_identity()));
        // Extended key usage keeps each certificate to its role.
        assert!(!verify_client(&set, &set.server_identity()));
        let client_as_server = CertificateSet {
            server_cert_pem: set.client_cert_pem.clone(),
            ..set.clone()
        };
        assert!(verify_server_at(&client_as_server, "localhost", now()).is_err());
    }

    #[test]
    fn certificates_are_backdated_a_day_and_last_ten_years() {
        let set = CertificateSet::generate().unwrap();
        let hour = Duration::from_secs(3600);
        verify_server_at(&set, "localhost", now() - BACKDATE + hour).unwrap();
        verify_server_at(&set, "localhost", now() + VALIDITY - BACKDATE - hour).unwrap();
        assert!(matches!(
            verify_server_at(&set, "localhost", now() - BACKDATE - hour),
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidYetContext { .. }
            ))
        ));
        assert!(matches!(
            verify_server_at(&set, "localhost", now() + VALIDITY),
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ExpiredContext { .. }
            ))
        ));
    }

    #[test]
    fn every_key_is_p256_pkcs8() {
        let set = CertificateSet::generate().unwrap();
        for key_pem in [&set.ca_key_pem, &set.server_key_pem, &set.client_key_pem] {
            assert!(key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
            let key = KeyPair::from_pem(key_pem).unwrap();
            assert_eq!(key.algorithm(), &PKCS_ECDSA_P256_SHA256);
        }
    }

    #[test]
    fn debug_hides_keys() {
        let set = CertificateSet::generate().unwrap();
        assert!(!format!("{set:?}").contains("PRIVATE KEY"));
    }

    #[test]
    fn write_to_writes_six_files_keys_private() {
        let dir = tempfile::tempdir().unwrap();
        let set = CertificateSet::generate().unwrap();
        let paths = set.write_to(dir.path()).unwrap();
        let names: Vec<_> = paths
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            names,
            [
                "ca.pem",
                "ca.key",
                "server.pem",
                "server.key",
                "client.pem",
                "client.key"
            ]
        );
        assert_eq!(fs::read_to_string(&paths[2]).unwrap(), set.server_cert_pem);
        assert_eq!(fs::read_to_string(&paths[3]).unwrap(), set.server_key_pem);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for path in &paths {
                let mode = fs::metadata(path).unwrap().permissions().mode() & 0o777;
                if path.extension().unwrap() == "key" {
                    assert_eq!(mode, 0o600, "{}", path.display());
                }
            }
            // A key file that existed with looser permissions is tightened.
            fs::set_permissions(&paths[1], fs::Permissions::from_mode(0o644)).unwrap();
            set.write_to(dir.path()).unwrap();
            let mode = fs::metadata(&paths[1]).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let identity = PemIdentity::from_files(&paths[4], &paths[5]).unwrap();
        assert_eq!(identity, set.client_identity());
    }
}
