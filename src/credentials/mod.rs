//! Credentials for the secured transports: what a DTLS or TLS endpoint presents
//! ([`ServerCredentials`]), what a client presents and trusts ([`ClientCredentials`]), and their
//! parts ([`PskCredentials`], [`PemIdentity`], [`read_pem`]).
//!
//! Everything here uses ECDSA P-256 keys and the ring crypto provider only: libcoap's DTLS
//! certificate mode negotiates ECDHE-ECDSA with P-256, webrtc-dtls signs with nothing else, and a
//! second rustls provider in the process would make rustls refuse to pick a default.
//!
//! One job per file:
//! - `mod.rs` (this one): the public credential types, PEM reading and checking.
//! - `psk.rs`: [`ServerPsk`], a DTLS server's PSK identities (a lookup from identity to key,
//!   the identity hint) and the `identity:key` file format.
//! - `test_certs.rs`: `CertificateSet`, a test CA with a server and a client certificate made
//!   in memory (rcgen). Only with the `test-certs` feature, on by default.
//! - `rustls.rs`: the rustls server and client configurations built from credentials (ALPN
//!   `coap`, the insecure-mode verifier), crate-private; and
//!   [`ServerCredentials::from_rustls_config`] / [`ClientCredentials::from_rustls_config`], the
//!   one public way to hand the TLS transport a rustls configuration of one's own.
//! - `dtls.rs`: the webrtc-dtls configurations built from credentials (cipher suites, PSK
//!   identity and hint, P-256 keys), crate-private.
//!
//! No rustls or webrtc-dtls type appears in a public signature but those of the two
//! `from_rustls_config` constructors.

use std::fmt;
use std::fs;
use std::path::Path;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::proto::error::{Error, Result};

pub(crate) mod dtls;
mod psk;
pub(crate) mod rustls;
#[cfg(feature = "test-certs")]
mod test_certs;

pub use self::psk::{PskLookup, ServerPsk, DTLS_PSK_IDENTITY_HINT};
pub use self::rustls::{RustlsClientConfig, RustlsServerConfig, COAP_ALPN};
#[cfg(feature = "test-certs")]
pub use self::test_certs::CertificateSet;

/// A pre-shared key and the identity it is known by (DTLS-PSK, RFC 4279).
#[derive(Clone, PartialEq, Eq)]
pub struct PskCredentials {
    /// The PSK identity a client sends (libcoap's `-u`). A server given these credentials
    /// accepts any identity ([`ServerPsk`] tells identities apart).
    pub identity: Vec<u8>,
    /// The key itself (libcoap's `-k`).
    pub key: Vec<u8>,
}

impl PskCredentials {
    /// Credentials from an identity and a key given as text, as on libcoap's command line.
    pub fn new(identity: impl Into<Vec<u8>>, key: impl Into<Vec<u8>>) -> PskCredentials {
        PskCredentials {
            identity: identity.into(),
            key: key.into(),
        }
    }
}

impl fmt::Debug for PskCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PskCredentials")
            .field("identity", &String::from_utf8_lossy(&self.identity))
            .field("key", &"<redacted>")
            .finish()
    }
}

/// A certificate chain (end entity first) and its private key, in PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct PemIdentity {
    /// One or more `CERTIFICATE` blocks, the end-entity certificate first.
    pub cert_chain_pem: String,
    /// The private key: `PRIVATE KEY` (PKCS#8) or `EC PRIVATE KEY` (SEC1). DTLS needs an
    /// ECDSA P-256 key; TLS also takes RSA and Ed25519.
    pub key_pem: String,
}

impl PemIdentity {
    /// Reads and checks a certificate chain file and a key file; errors name the file at fault.
    pub fn from_files(cert: &Path, key: &Path) -> Result<PemIdentity> {
        let identity = PemIdentity {
            cert_chain_pem: read_pem(cert)?,
            key_pem: read_pem(key)?,
        };
        identity
            .cert_chain_der()
            .map_err(|e| Error::Certificate(format!("{}: {}", cert.display(), inner(&e))))?;
        identity
            .private_key_der()
            .map_err(|e| Error::Certificate(format!("{}: {}", key.display(), inner(&e))))?;
        Ok(identity)
    }

    /// The certificate chain in DER, end entity first.
    pub(crate) fn cert_chain_der(&self) -> Result<Vec<CertificateDer<'static>>> {
        parse_certificates(&self.cert_chain_pem, "certificate chain")
    }

    /// The private key in DER.
    pub(crate) fn private_key_der(&self) -> Result<PrivateKeyDer<'static>> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| Error::Certificate(format!("no usable private key: {e}")))
    }
}

impl fmt::Debug for PemIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PemIdentity")
            .field("cert_chain_pem", &self.cert_chain_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// What a secured endpoint (`Context::listen_dtls`, `Context::listen_tls`) presents to its
/// clients.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerCredentials {
    /// DTLS with a pre-shared key; any client identity is accepted, as libcoap's `-k` does.
    /// TLS has no PSK mode here (rustls has no PSK cipher suites).
    Psk(PskCredentials),
    /// DTLS with a key per client identity, found by [`ServerPsk`]'s lookup; an unknown
    /// identity is refused. TLS has no PSK mode here.
    PskIdentities(ServerPsk),
    /// DTLS serving PSK clients and certificate clients on one endpoint, as libcoap's
    /// `coap-server -k KEY -c CERT -j KEY` does: each client's ClientHello chooses, by the
    /// first cipher suite in its list (the client's preference) that one of the two serves.
    /// TLS uses the certificate alone.
    PskAndCertificate {
        /// The PSK identities and their keys.
        psk: ServerPsk,
        /// The server's certificate chain and key (ECDSA P-256).
        identity: PemIdentity,
        /// With a CA, certificate clients must present a certificate it signed; PSK clients
        /// are not asked for one.
        client_ca_pem: Option<String>,
    },
    /// A certificate and its key (ECDSA P-256 for DTLS).
    Certificate {
        /// The server's certificate chain and key.
        identity: PemIdentity,
        /// With a CA, clients must present a certificate it signed (mutual TLS / DTLS);
        /// without, no client certificate is asked for.
        client_ca_pem: Option<String>,
    },
    /// A rustls configuration of the application's own, for TLS only; made by
    /// [`ServerCredentials::from_rustls_config`].
    Rustls(RustlsServerConfig),
}

/// What a client presents to, and how it verifies, a secured server (`Context::connect_dtls`,
/// `Context::connect_tls`, `Context::connect_with`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ClientCredentials {
    /// No credentials: enough for `coap://` and `coap+tcp://`; a secured scheme refuses to
    /// connect (there is no fallback to plaintext).
    #[default]
    None,
    /// DTLS with a pre-shared key (TLS has no PSK mode here).
    Psk(PskCredentials),
    /// Certificate mode.
    Certificate {
        /// The CA the server's certificate must chain to; required unless `insecure`.
        ca_pem: Option<String>,
        /// Our certificate and key, presented when the server asks for one (ECDSA P-256 for
        /// DTLS).
        identity: Option<PemIdentity>,
        /// Accept any server certificate (handshake signatures are still checked). Off by
        /// default; a warning is logged when used.
        insecure: bool,
    },
    /// A rustls configuration of the application's own, for TLS only; made by
    /// [`ClientCredentials::from_rustls_config`].
    Rustls(RustlsClientConfig),
}

/// Reads a PEM file; the error names the file and says whether it could not be read or holds
/// no PEM block.
pub fn read_pem(path: &Path) -> Result<String> {
    let text = fs::read_to_string(path)
        .map_err(|e| Error::Certificate(format!("cannot read {}: {e}", path.display())))?;
    if !text.contains("-----BEGIN ") {
        return Err(Error::Certificate(format!(
            "{} holds no PEM block",
            path.display()
        )));
    }
    Ok(text)
}

/// The error for a secured connection attempted without credentials.
fn no_client_credentials(scheme: &str) -> Error {
    Error::Config(format!(
        "{scheme} needs credentials: a PSK, or a CA certificate to verify the server (or insecure mode)"
    ))
}

/// Every `CERTIFICATE` block in `pem`; at least one.
fn parse_certificates(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Certificate(format!("cannot parse {what}: {e}")))?;
    if certs.is_empty() {
        return Err(Error::Certificate(format!(
            "no CERTIFICATE block in the {what}"
        )));
    }
    Ok(certs)
}

/// The message of a crate error, without the "certificate error:" prefix.
fn inner(error: &Error) -> String {
    match error {
        Error::Certificate(message) => message.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use webrtc_dtls::config::ClientAuthType;

    use super::*;

    #[test]
    fn pem_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let set = CertificateSet::generate().unwrap();
        let paths = set.write_to(dir.path()).unwrap();
        let (cert, key) = (&paths[2], &paths[3]);

        let missing = dir.path().join("missing.pem");
        let error = read_pem(&missing).unwrap_err();
        assert!(matches!(error, Error::Certificate(_)));
        assert!(error.to_string().contains("missing.pem"), "{error}");

        let not_pem = dir.path().join("not.pem");
        fs::write(&not_pem, "hello").unwrap();
        let error = read_pem(&not_pem).unwrap_err();
        assert!(
            error.to_string().contains("not.pem holds no PEM block"),
            "{error}"
        );

        // Swapped: the certificate file holds a key, the key file a certificate.
        let error = PemIdentity::from_files(key, cert).unwrap_err();
        assert!(
            error.to_string().contains(&key.display().to_string()),
            "{error}"
        );
        let error = PemIdentity::from_files(cert, cert).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("server.pem: no usable private key"),
            "{error}"
        );
    }

    #[test]
    fn psk_and_identity_debug_hide_keys() {
        let psk = PskCredentials::new("id", "secret");
        assert!(!format!("{psk:?}").contains("secret"));
        let set = CertificateSet::generate().unwrap();
        let identity = set.server_identity();
        assert!(!format!("{identity:?}").contains("PRIVATE KEY"));
    }

    #[test]
    fn credentials_refuse_what_cannot_work() {
        let psk = PskCredentials::new("id", "secret");
        let error = ServerCredentials::Psk(psk.clone())
            .tls_config()
            .unwrap_err();
        assert!(matches!(error, Error::Config(_)), "{error}");
        assert!(error.to_string().contains("rustls has no PSK"), "{error}");
        let error = ClientCredentials::Psk(psk.clone())
            .tls_config()
            .unwrap_err();
        assert!(error.to_string().contains("rustls has no PSK"), "{error}");
        for error in [
            ClientCredentials::None.tls_config().unwrap_err(),
            ClientCredentials::None
                .dtls_config("localhost")
                .err()
                .unwrap(),
        ] {
            assert!(matches!(error, Error::Config(_)), "{error}");
            assert!(error.to_string().contains("needs credentials"), "{error}");
        }
        assert_eq!(ClientCredentials::default(), ClientCredentials::None);

        let client = ClientCredentials::Psk(psk.clone())
            .dtls_config("localhost")
            .unwrap();
        assert_eq!(client.psk_identity_hint.as_deref(), Some(&b"id"[..]));
        let server = ServerCredentials::Psk(psk).dtls_configs().unwrap();
        assert!(server.psk.is_some() && server.certificate.is_none());

        let set = CertificateSet::generate().unwrap();
        let server = ServerCredentials::Certificate {
            identity: set.server_identity(),
            client_ca_pem: Some(set.ca_cert_pem.clone()),
        };
        server.tls_config().unwrap();
        let dtls = server.dtls_configs().unwrap().certificate.unwrap();
        assert!(dtls.client_auth == ClientAuthType::RequireAndVerifyClientCert);
        let both = ServerCredentials::PskAndCertificate {
            psk: ServerPsk::from_pairs([("id", "key")]),
            identity: set.server_identity(),
            client_ca_pem: None,
        };
        both.tls_config().unwrap();
        let configs = both.dtls_configs().unwrap();
        assert!(configs.psk.is_some() && configs.certificate.is_some());
        let client = ClientCredentials::Certificate {
            ca_pem: Some(set.ca_cert_pem.clone()),
            identity: Some(set.client_identity()),
            insecure: false,
        };
        client.tls_config().unwrap();
        assert_eq!(
            client.dtls_config("127.0.0.1").unwrap().certificates.len(),
            1
        );
    }

    #[test]
    fn rustls_configs_serve_tls_as_given_and_refuse_dtls() {
        let set = CertificateSet::generate().unwrap();
        let certificate = ServerCredentials::Certificate {
            identity: set.server_identity(),
            client_ca_pem: None,
        };
        let config = certificate.tls_config().unwrap();
        let server = ServerCredentials::from_rustls_config(config.clone());
        assert!(std::sync::Arc::ptr_eq(
            &server.tls_config().unwrap(),
            &config
        ));
        assert_eq!(server, server.clone());
        // Equal is the same configuration, not an equal one.
        let rebuilt = certificate.tls_config().unwrap();
        assert_ne!(server, ServerCredentials::from_rustls_config(rebuilt));
        let error = server.dtls_configs().err().unwrap();
        assert!(matches!(error, Error::Config(_)), "{error}");
        assert!(error.to_string().contains("TLS only"), "{error}");

        let config = ClientCredentials::Certificate {
            ca_pem: Some(set.ca_cert_pem.clone()),
            identity: None,
            insecure: false,
        }
        .tls_config()
        .unwrap();
        let client = ClientCredentials::from_rustls_config(config.clone());
        assert!(std::sync::Arc::ptr_eq(
            &client.tls_config().unwrap(),
            &config
        ));
        let error = client.dtls_config("localhost").err().unwrap();
        assert!(matches!(error, Error::Config(_)), "{error}");
        assert!(error.to_string().contains("TLS only"), "{error}");
    }
}
