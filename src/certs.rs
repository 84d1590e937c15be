//! Credentials for the secured transports: test certificate generation, PEM loading, and the
//! rustls and webrtc-dtls configurations built from them.
//!
//! Everything here uses ECDSA P-256 keys and the ring crypto provider only: libcoap's DTLS
//! certificate mode negotiates ECDHE-ECDSA with P-256, webrtc-dtls signs with nothing else, and a
//! second rustls provider in the process would make rustls refuse to pick a default.
//!
//! The DTLS configurations set their cipher suites explicitly (webrtc-dtls offers no PSK suite by
//! default) and put the client's PSK identity in `psk_identity_hint`, which is where webrtc-dtls
//! takes it from.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use webrtc_dtls::cipher_suite::CipherSuiteId;
use webrtc_dtls::config::{ClientAuthType, Config as DtlsConfig};
use webrtc_dtls::crypto::{Certificate as DtlsCertificate, CryptoPrivateKey, CryptoPrivateKeyKind};

use crate::proto::error::{Error, Result};

/// The ALPN protocol name of CoAP over TLS (RFC 8323 §8.2).
pub const COAP_ALPN: &[u8] = b"coap";

/// The PSK identity hint a DTLS server sends, the same as libcoap's `coap-server -k`.
pub const DTLS_PSK_IDENTITY_HINT: &[u8] = b"CoAP";

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

/// PSK suites offered in DTLS-PSK mode, in order of preference. CCM_8 is the suite RFC 7252
/// §9.1.3.1 makes mandatory; libcoap's OpenSSL and GnuTLS builds choose it.
const DTLS_PSK_CIPHER_SUITES: [CipherSuiteId; 3] = [
    CipherSuiteId::Tls_Psk_With_Aes_128_Ccm_8,
    CipherSuiteId::Tls_Psk_With_Aes_128_Ccm,
    CipherSuiteId::Tls_Psk_With_Aes_128_Gcm_Sha256,
];

/// ECDHE-ECDSA suites offered in DTLS certificate mode, in order of preference. CCM_8 is the
/// suite RFC 7252 §9.1.3.3 makes mandatory.
const DTLS_CERT_CIPHER_SUITES: [CipherSuiteId; 4] = [
    CipherSuiteId::Tls_Ecdhe_Ecdsa_With_Aes_128_Ccm_8,
    CipherSuiteId::Tls_Ecdhe_Ecdsa_With_Aes_128_Gcm_Sha256,
    CipherSuiteId::Tls_Ecdhe_Ecdsa_With_Aes_128_Ccm,
    CipherSuiteId::Tls_Ecdhe_Ecdsa_With_Aes_256_Cbc_Sha,
];

/// A freshly generated CA with a server and a client certificate it signed, all in PEM.
///
/// Meant for tests and for trying the secured transports out: the server certificate names
/// `localhost`, `127.0.0.1` and `::1`.
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

/// A pre-shared key and the identity it is known by (DTLS-PSK, RFC 4279).
#[derive(Clone, PartialEq, Eq)]
pub struct PskCredentials {
    /// The PSK identity a client sends (libcoap's `-u`). A server accepts any identity.
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
    pub fn cert_chain_der(&self) -> Result<Vec<CertificateDer<'static>>> {
        parse_certificates(&self.cert_chain_pem, "certificate chain")
    }

    /// The private key in DER.
    pub fn private_key_der(&self) -> Result<PrivateKeyDer<'static>> {
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
    /// A certificate and its key (ECDSA P-256 for DTLS).
    Certificate {
        /// The server's certificate chain and key.
        identity: PemIdentity,
        /// With a CA, clients must present a certificate it signed (mutual TLS / DTLS);
        /// without, no client certificate is asked for.
        client_ca_pem: Option<String>,
    },
}

impl ServerCredentials {
    /// The webrtc-dtls server configuration.
    pub fn dtls_config(&self) -> Result<DtlsConfig> {
        match self {
            ServerCredentials::Psk(psk) => Ok(dtls_psk_server_config(psk)),
            ServerCredentials::Certificate {
                identity,
                client_ca_pem,
            } => dtls_cert_server_config(identity, client_ca_pem.as_deref()),
        }
    }

    /// The rustls server configuration; an [`Error::Config`] for a PSK.
    pub fn tls_config(&self) -> Result<Arc<rustls::ServerConfig>> {
        match self {
            ServerCredentials::Psk(_) => Err(tls_psk_unsupported()),
            ServerCredentials::Certificate {
                identity,
                client_ca_pem,
            } => tls_server_config(identity, client_ca_pem.as_deref()),
        }
    }
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
}

impl ClientCredentials {
    /// The webrtc-dtls client configuration; the server's certificate must name `server_name`
    /// (a DNS name or an IP literal).
    pub fn dtls_config(&self, server_name: &str) -> Result<DtlsConfig> {
        match self {
            ClientCredentials::None => Err(no_client_credentials("coaps://")),
            ClientCredentials::Psk(psk) => Ok(dtls_psk_client_config(psk)),
            ClientCredentials::Certificate {
                ca_pem,
                identity,
                insecure,
            } => dtls_cert_client_config(
                ca_pem.as_deref(),
                identity.as_ref(),
                *insecure,
                server_name,
            ),
        }
    }

    /// The rustls client configuration; an [`Error::Config`] for a PSK or no credentials.
    pub fn tls_config(&self) -> Result<Arc<rustls::ClientConfig>> {
        match self {
            ClientCredentials::None => Err(no_client_credentials("coaps+tcp://")),
            ClientCredentials::Psk(_) => Err(tls_psk_unsupported()),
            ClientCredentials::Certificate {
                ca_pem,
                identity,
                insecure,
            } => tls_client_config(ca_pem.as_deref(), identity.as_ref(), *insecure),
        }
    }
}

/// The error for TLS asked to use a PSK.
fn tls_psk_unsupported() -> Error {
    Error::Config(
        "TLS with a PSK is not supported (rustls has no PSK cipher suites); use certificates"
            .into(),
    )
}

/// The error for a secured connection attempted without credentials.
fn no_client_credentials(scheme: &str) -> Error {
    Error::Config(format!(
        "{scheme} needs credentials: a PSK, or a CA certificate to verify the server (or insecure mode)"
    ))
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

/// The ring crypto provider, which every configuration here is built on.
fn ring_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A rustls server configuration presenting `identity` and offering ALPN `coap` (clients that
/// offer no ALPN are served too). With `client_ca_pem`, clients must present a certificate that
/// CA signed.
pub fn tls_server_config(
    identity: &PemIdentity,
    client_ca_pem: Option<&str>,
) -> Result<Arc<rustls::ServerConfig>> {
    let provider = ring_provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(tls_config_error)?;
    let builder = match client_ca_pem {
        Some(ca_pem) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(
                Arc::new(root_store(ca_pem)?),
                provider,
            )
            .build()
            .map_err(|e| Error::Certificate(format!("client CA: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(identity.cert_chain_der()?, identity.private_key_der()?)
        .map_err(|e| Error::Certificate(format!("server certificate or key: {e}")))?;
    config.alpn_protocols = vec![COAP_ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// A rustls client configuration offering ALPN `coap`.
///
/// The server's certificate is verified against `ca_pem`, which is then required, unless
/// `insecure` is set: then any certificate is accepted (handshake signatures are still checked)
/// and a warning is logged. `identity` is presented when the server asks for a certificate.
pub fn tls_client_config(
    ca_pem: Option<&str>,
    identity: Option<&PemIdentity>,
    insecure: bool,
) -> Result<Arc<rustls::ClientConfig>> {
    let provider = ring_provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(tls_config_error)?;
    let builder = if insecure {
        tracing::warn!("TLS server certificate verification is off (insecure mode)");
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert {
                algorithms: provider.signature_verification_algorithms,
            }))
    } else {
        let ca_pem = ca_pem.ok_or_else(|| {
            Error::Config(
                "a CA certificate is needed to verify the TLS server (or turn verification off)"
                    .into(),
            )
        })?;
        builder.with_root_certificates(root_store(ca_pem)?)
    };
    let mut config = match identity {
        Some(identity) => builder
            .with_client_auth_cert(identity.cert_chain_der()?, identity.private_key_der()?)
            .map_err(|e| Error::Certificate(format!("client certificate or key: {e}")))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![COAP_ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// A webrtc-dtls server configuration for DTLS-PSK: any client identity gets `psk.key`, and the
/// server sends the identity hint `CoAP`, as libcoap does.
pub fn dtls_psk_server_config(psk: &PskCredentials) -> DtlsConfig {
    let key = psk.key.clone();
    DtlsConfig {
        psk: Some(Arc::new(move |identity: &[u8]| {
            tracing::debug!(
                identity = %String::from_utf8_lossy(identity),
                "DTLS-PSK client identity"
            );
            Ok(key.clone())
        })),
        psk_identity_hint: Some(DTLS_PSK_IDENTITY_HINT.to_vec()),
        cipher_suites: DTLS_PSK_CIPHER_SUITES.to_vec(),
        ..DtlsConfig::default()
    }
}

/// A webrtc-dtls client configuration for DTLS-PSK: sends `psk.identity` and uses `psk.key`
/// whatever identity hint the server sends.
pub fn dtls_psk_client_config(psk: &PskCredentials) -> DtlsConfig {
    let key = psk.key.clone();
    DtlsConfig {
        psk: Some(Arc::new(move |hint: &[u8]| {
            tracing::debug!(hint = %String::from_utf8_lossy(hint), "DTLS-PSK server hint");
            Ok(key.clone())
        })),
        // webrtc-dtls sends a client's `psk_identity_hint` as its PSK identity.
        psk_identity_hint: Some(psk.identity.clone()),
        cipher_suites: DTLS_PSK_CIPHER_SUITES.to_vec(),
        ..DtlsConfig::default()
    }
}

/// A webrtc-dtls server configuration presenting `identity` (ECDSA P-256 key). With
/// `client_ca_pem`, clients must present a certificate that CA signed.
pub fn dtls_cert_server_config(
    identity: &PemIdentity,
    client_ca_pem: Option<&str>,
) -> Result<DtlsConfig> {
    let mut config = DtlsConfig {
        certificates: vec![dtls_certificate(identity)?],
        cipher_suites: DTLS_CERT_CIPHER_SUITES.to_vec(),
        ..DtlsConfig::default()
    };
    if let Some(ca_pem) = client_ca_pem {
        config.client_cas = root_store(ca_pem)?;
        config.client_auth = ClientAuthType::RequireAndVerifyClientCert;
    }
    Ok(config)
}

/// A webrtc-dtls client configuration in certificate mode.
///
/// The server's certificate is verified against `ca_pem` (then required) and must name
/// `server_name` (a DNS name or an IP literal), unless `insecure` is set: then any certificate
/// is accepted and a warning is logged. `identity` (ECDSA P-256 key) is presented when the server
/// asks for a certificate.
pub fn dtls_cert_client_config(
    ca_pem: Option<&str>,
    identity: Option<&PemIdentity>,
    insecure: bool,
    server_name: &str,
) -> Result<DtlsConfig> {
    let mut config = DtlsConfig {
        cipher_suites: DTLS_CERT_CIPHER_SUITES.to_vec(),
        server_name: server_name.to_owned(),
        ..DtlsConfig::default()
    };
    if insecure {
        tracing::warn!("DTLS server certificate verification is off (insecure mode)");
        config.insecure_skip_verify = true;
    } else {
        let ca_pem = ca_pem.ok_or_else(|| {
            Error::Config(
                "a CA certificate is needed to verify the DTLS server (or turn verification off)"
                    .into(),
            )
        })?;
        // webrtc-dtls builds rustls's WebPKI verifier from this store and checks the name with
        // rustls's `ServerName`, so IP literals are matched against IP SANs.
        ServerName::try_from(server_name)
            .map_err(|e| Error::Config(format!("invalid server name {server_name:?}: {e}")))?;
        config.roots_cas = root_store(ca_pem)?;
    }
    if let Some(identity) = identity {
        config.certificates = vec![dtls_certificate(identity)?];
    }
    Ok(config)
}

/// Converts an identity into webrtc-dtls's certificate type.
fn dtls_certificate(identity: &PemIdentity) -> Result<DtlsCertificate> {
    Ok(DtlsCertificate {
        certificate: identity.cert_chain_der()?,
        private_key: dtls_private_key(&identity.private_key_der()?)?,
    })
}

/// Builds webrtc-dtls's private key from a P-256 key in PKCS#8 or SEC1 DER.
///
/// webrtc-dtls only builds keys from an rcgen 0.13 `KeyPair` (a type this crate cannot name) or
/// from ring's `EcdsaKeyPair` (ring is not a dependency of this crate). Its `Clone` impl, however,
/// rebuilds the ring key pair from `serialized_der` (ring key pairs cannot be cloned), so a key of
/// the right kind with our DER put in its place, once cloned, is our key. The DER is first
/// checked with exactly the ring call that `Clone` makes, through rustls's ring provider, since
/// that `Clone` panics on a key ring rejects.
fn dtls_private_key(key: &PrivateKeyDer<'_>) -> Result<CryptoPrivateKey> {
    let pkcs8 = match key {
        PrivateKeyDer::Pkcs8(pkcs8) => pkcs8.secret_pkcs8_der().to_vec(),
        PrivateKeyDer::Sec1(sec1) => p256_sec1_to_pkcs8(sec1.secret_sec1_der()),
        _ => {
            return Err(Error::Certificate(
                "DTLS needs an ECDSA P-256 private key (this one is RSA)".into(),
            ))
        }
    };
    let signing_key =
        rustls::crypto::ring::sign::any_ecdsa_type(&PrivateKeyDer::Pkcs8(pkcs8.clone().into()))
            .map_err(|_| Error::Certificate("DTLS needs an ECDSA P-256 private key".into()))?;
    if signing_key
        .choose_scheme(&[SignatureScheme::ECDSA_NISTP256_SHA256])
        .is_none()
    {
        return Err(Error::Certificate(
            "DTLS needs an ECDSA P-256 private key (this one is on another curve)".into(),
        ));
    }

    // webrtc-dtls generates P-256 keys by default.
    let template = DtlsCertificate::generate_self_signed(vec!["coap-keepalive".to_owned()])
        .map_err(|e| Error::Certificate(format!("cannot prepare a DTLS key: {e}")))?
        .private_key;
    if !matches!(template.kind, CryptoPrivateKeyKind::Ecdsa256(_)) {
        return Err(Error::Certificate(
            "cannot prepare a DTLS key: unexpected key type".into(),
        ));
    }
    let key = CryptoPrivateKey {
        kind: template.kind,
        serialized_der: pkcs8,
    };
    Ok(key.clone())
}

/// Wraps a SEC1 `ECPrivateKey` of a P-256 key in a PKCS#8 `PrivateKeyInfo` (RFC 5915 §3,
/// RFC 5208 §5).
fn p256_sec1_to_pkcs8(sec1: &[u8]) -> Vec<u8> {
    // version 0, AlgorithmIdentifier { id-ecPublicKey, prime256v1 }
    const PREFIX: [u8; 24] = [
        0x02, 0x01, 0x00, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06,
        0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
    ];
    let mut body = PREFIX.to_vec();
    body.extend(der_tlv(0x04, sec1));
    der_tlv(0x30, &body)
}

/// One DER tag-length-value.
fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// A root store holding every certificate in `ca_pem`.
fn root_store(ca_pem: &str) -> Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    for cert in parse_certificates(ca_pem, "CA certificate")? {
        store
            .add(cert)
            .map_err(|e| Error::Certificate(format!("unusable CA certificate: {e}")))?;
    }
    Ok(store)
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

/// A server certificate verifier that accepts any certificate but still checks that the
/// handshake was signed by the key in it.
#[derive(Debug)]
struct AcceptAnyServerCert {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
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

/// The message of a crate error, without the "certificate error:" prefix.
fn inner(error: &Error) -> String {
    match error {
        Error::Certificate(message) => message.clone(),
        other => other.to_string(),
    }
}

/// Maps an rcgen error.
fn certificate_error(error: rcgen::Error) -> Error {
    Error::Certificate(format!("cannot generate a certificate: {error}"))
}

/// Maps an error of a rustls configuration builder.
fn tls_config_error(error: rustls::Error) -> Error {
    Error::Certificate(format!("cannot build the TLS configuration: {error}"))
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
    use rustls::client::WebPkiServerVerifier;

    use super::*;

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
        assert!(!format!("{set:?}").contains("PRIVATE KEY"));
    }

    /// The `ECPrivateKey` inside a P-256 PKCS#8 document as ring writes it.
    fn sec1_of(pkcs8: &[u8]) -> Vec<u8> {
        // SEQUENCE (long form, one length byte), then the fixed prefix, then an OCTET STRING.
        assert_eq!(pkcs8[..2], [0x30, 0x81]);
        let rest = &pkcs8[3..];
        let octets = &rest[24..];
        assert_eq!(octets[0], 0x04);
        let len = octets[1] as usize;
        octets[2..2 + len].to_vec()
    }

    #[test]
    fn dtls_keys_from_pkcs8_and_sec1() {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let pkcs8 = key.serialize_der();
        let sec1 = sec1_of(&pkcs8);
        assert_eq!(p256_sec1_to_pkcs8(&sec1), pkcs8);

        let from_pkcs8 = dtls_private_key(&PrivateKeyDer::Pkcs8(pkcs8.clone().into())).unwrap();
        assert!(matches!(from_pkcs8.kind, CryptoPrivateKeyKind::Ecdsa256(_)));
        assert_eq!(from_pkcs8.serialized_der, pkcs8);
        let from_sec1 = dtls_private_key(&PrivateKeyDer::Sec1(sec1.into())).unwrap();
        assert_eq!(from_sec1.serialized_der, pkcs8);

        // A SEC1 PEM file reads too.
        let sec1_pem = format!(
            "-----BEGIN EC PRIVATE KEY-----\n{}\n-----END EC PRIVATE KEY-----\n",
            base64(&sec1_of(&pkcs8))
        );
        let set = CertificateSet::generate().unwrap();
        let identity = PemIdentity {
            cert_chain_pem: set.server_cert_pem,
            key_pem: sec1_pem,
        };
        dtls_certificate(&identity).unwrap();
    }

    #[test]
    fn dtls_rejects_keys_other_than_p256() {
        for alg in [&rcgen::PKCS_ECDSA_P384_SHA384, &rcgen::PKCS_ED25519] {
            let key = KeyPair::generate_for(alg).unwrap();
            let error =
                dtls_private_key(&PrivateKeyDer::Pkcs8(key.serialize_der().into())).unwrap_err();
            assert!(error.to_string().contains("P-256"), "{error}");
        }
    }

    #[test]
    fn verification_needs_a_ca_unless_insecure() {
        assert!(matches!(
            tls_client_config(None, None, false),
            Err(Error::Config(_))
        ));
        assert!(matches!(
            dtls_cert_client_config(None, None, false, "localhost"),
            Err(Error::Config(_))
        ));
        tls_client_config(None, None, true).unwrap();
        dtls_cert_client_config(None, None, true, "localhost").unwrap();
        let set = CertificateSet::generate().unwrap();
        assert!(matches!(
            dtls_cert_client_config(Some(&set.ca_cert_pem), None, false, "not a name!"),
            Err(Error::Config(_))
        ));
        assert!(matches!(
            tls_client_config(Some("no certificate here"), None, false),
            Err(Error::Certificate(_))
        ));
    }

    #[test]
    fn configs_offer_coap_alpn_and_the_psk_suites() {
        let set = CertificateSet::generate().unwrap();
        let server = tls_server_config(&set.server_identity(), None).unwrap();
        assert_eq!(server.alpn_protocols, [b"coap".to_vec()]);
        let client = tls_client_config(Some(&set.ca_cert_pem), None, false).unwrap();
        assert_eq!(client.alpn_protocols, [b"coap".to_vec()]);

        let psk = PskCredentials::new("id", "secret");
        let client = dtls_psk_client_config(&psk);
        assert_eq!(client.cipher_suites, DTLS_PSK_CIPHER_SUITES);
        assert_eq!(client.psk_identity_hint.as_deref(), Some(&b"id"[..]));
        assert_eq!((client.psk.unwrap())(b"CoAP").unwrap(), b"secret");
        let server = dtls_psk_server_config(&psk);
        assert_eq!(server.psk_identity_hint.as_deref(), Some(&b"CoAP"[..]));
        assert_eq!((server.psk.unwrap())(b"anyone").unwrap(), b"secret");
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
        let server = ServerCredentials::Psk(psk).dtls_config().unwrap();
        assert_eq!(
            server.psk_identity_hint.as_deref(),
            Some(DTLS_PSK_IDENTITY_HINT)
        );

        let set = CertificateSet::generate().unwrap();
        let server = ServerCredentials::Certificate {
            identity: set.server_identity(),
            client_ca_pem: Some(set.ca_cert_pem.clone()),
        };
        server.tls_config().unwrap();
        let dtls = server.dtls_config().unwrap();
        assert!(dtls.client_auth == ClientAuthType::RequireAndVerifyClientCert);
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

    /// Standard base64 with padding, for building PEM in tests.
    fn base64(data: &[u8]) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in data.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}
