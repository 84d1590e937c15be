//! The webrtc-dtls configurations of the DTLS transport, built from [`ServerCredentials`] and
//! [`ClientCredentials`].
//!
//! They set their cipher suites explicitly (webrtc-dtls offers no PSK suite by default) and put
//! the client's PSK identity in `psk_identity_hint`, which is where webrtc-dtls takes it from.
//!
//! webrtc-dtls refuses a configuration holding both a PSK and a certificate
//! (`ErrPskAndCertificate`), so a server endpoint has up to two ([`DtlsServerConfigs`]) and the
//! DTLS listener picks one per client from its ClientHello's cipher suites.

use std::sync::Arc;

use rustls::SignatureScheme;
use rustls_pki_types::{PrivateKeyDer, ServerName};
use webrtc_dtls::cipher_suite::CipherSuiteId;
use webrtc_dtls::config::{ClientAuthType, Config as DtlsConfig};
use webrtc_dtls::crypto::{Certificate as DtlsCertificate, CryptoPrivateKey, CryptoPrivateKeyKind};

use super::rustls::root_store;
use super::{
    no_client_credentials, ClientCredentials, PemIdentity, PskCredentials, ServerCredentials,
    ServerPsk,
};
use crate::proto::error::{Error, Result};

/// A root certificate whose private key was destroyed when it was made: it can verify nothing.
/// webrtc-dtls builds a server-certificate verifier from `roots_cas` in every `DTLSConn::new`,
/// client or server, PSK or not, and when the store is empty it generates a fresh self-signed
/// certificate (a P-256 key pair) to build it from, once per connection. The configurations
/// that never verify a server certificate (a server's; a PSK client's, whose suites carry none)
/// get this one instead: no key generation per handshake, and a smaller verifier per connection.
const UNVERIFIABLE_ROOT_PEM: &str = include_str!("../../certs/unverifiable-root.pem");

/// [`UNVERIFIABLE_ROOT_PEM`] as a store, parsed once.
fn unverifiable_roots() -> rustls::RootCertStore {
    static ROOTS: std::sync::OnceLock<rustls::RootCertStore> = std::sync::OnceLock::new();
    ROOTS
        .get_or_init(|| {
            root_store(UNVERIFIABLE_ROOT_PEM).unwrap_or_else(|_| rustls::RootCertStore::empty())
        })
        .clone()
}

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

impl ServerCredentials {
    /// The webrtc-dtls server configurations; an [`Error::Config`] for a rustls configuration.
    pub(crate) fn dtls_configs(&self) -> Result<DtlsServerConfigs> {
        let psk = |keys: ServerPsk| Some(PskServer::new(keys));
        match self {
            ServerCredentials::Psk(credentials) => Ok(DtlsServerConfigs {
                psk: psk(ServerPsk::from(credentials.clone())),
                certificate: None,
            }),
            ServerCredentials::PskIdentities(keys) => Ok(DtlsServerConfigs {
                psk: psk(keys.clone()),
                certificate: None,
            }),
            ServerCredentials::Certificate {
                identity,
                client_ca_pem,
            } => Ok(DtlsServerConfigs {
                psk: None,
                certificate: Some(dtls_cert_server_config(identity, client_ca_pem.as_deref())?),
            }),
            ServerCredentials::PskAndCertificate {
                psk: keys,
                identity,
                client_ca_pem,
            } => Ok(DtlsServerConfigs {
                psk: psk(keys.clone()),
                certificate: Some(dtls_cert_server_config(identity, client_ca_pem.as_deref())?),
            }),
            ServerCredentials::Rustls(_) => Err(rustls_config_for_dtls()),
        }
    }
}

/// The configurations of one DTLS server endpoint: for PSK clients, for certificate clients,
/// or both (never neither).
#[derive(Clone)]
pub(crate) struct DtlsServerConfigs {
    /// PSK mode.
    pub(crate) psk: Option<PskServer>,
    /// Certificate mode.
    pub(crate) certificate: Option<DtlsConfig>,
}

impl DtlsServerConfigs {
    /// The PSK configuration alone, for tests: any identity gets `psk.key`.
    #[cfg(test)]
    pub(crate) fn psk_only(psk: &PskCredentials) -> DtlsServerConfigs {
        DtlsServerConfigs {
            psk: Some(PskServer::new(ServerPsk::from(psk.clone()))),
            certificate: None,
        }
    }

    /// The certificate configuration alone.
    #[cfg(test)]
    pub(crate) fn certificate_only(config: DtlsConfig) -> DtlsServerConfigs {
        DtlsServerConfigs {
            psk: None,
            certificate: Some(config),
        }
    }
}

/// The PSK mode of a server endpoint: its keys, and the rest of its configuration.
#[derive(Clone)]
pub(crate) struct PskServer {
    keys: ServerPsk,
    base: DtlsConfig,
}

/// What one PSK handshake's key lookup found, for the diagnosis of a failed handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum IdentityLookup {
    /// The client's identity is known; its key was used.
    Known(Vec<u8>),
    /// The client's identity is not known; the handshake was refused.
    Unknown(Vec<u8>),
}

impl PskServer {
    fn new(keys: ServerPsk) -> PskServer {
        // An empty hint is none: no ServerKeyExchange (RFC 4279 §2).
        let hint = keys.identity_hint();
        let base = DtlsConfig {
            psk_identity_hint: (!hint.is_empty()).then(|| hint.to_vec()),
            cipher_suites: DTLS_PSK_CIPHER_SUITES.to_vec(),
            roots_cas: unverifiable_roots(),
            ..DtlsConfig::default()
        };
        PskServer { keys, base }
    }

    /// True when this mode serves the cipher suite numbered `suite`.
    pub(crate) fn serves(&self, suite: u16) -> bool {
        serves(&self.base, suite)
    }

    /// The configuration of one handshake: `seen` is told what the lookup of the client's
    /// identity found. The key itself is never logged.
    pub(crate) fn config(
        &self,
        seen: impl Fn(IdentityLookup) + Send + Sync + 'static,
    ) -> DtlsConfig {
        let keys = self.keys.clone();
        DtlsConfig {
            psk: Some(Arc::new(move |identity: &[u8]| {
                let shown = String::from_utf8_lossy(identity);
                match keys.key_for(identity) {
                    Some(key) => {
                        tracing::debug!(identity = %shown, "DTLS-PSK client identity known");
                        seen(IdentityLookup::Known(identity.to_vec()));
                        Ok(key)
                    }
                    None => {
                        tracing::debug!(identity = %shown, "DTLS-PSK client identity unknown");
                        seen(IdentityLookup::Unknown(identity.to_vec()));
                        Err(webrtc_dtls::Error::Other(format!(
                            "unknown PSK identity {shown:?}"
                        )))
                    }
                }
            })),
            ..self.base.clone()
        }
    }
}

/// True when `config` offers the cipher suite numbered `suite`.
pub(crate) fn serves(config: &DtlsConfig, suite: u16) -> bool {
    config.cipher_suites.iter().any(|id| *id as u16 == suite)
}

impl ClientCredentials {
    /// The webrtc-dtls client configuration; the server's certificate must name `server_name`
    /// (a DNS name or an IP literal). An [`Error::Config`] for no credentials or a rustls
    /// configuration.
    pub(crate) fn dtls_config(&self, server_name: &str) -> Result<DtlsConfig> {
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
            ClientCredentials::Rustls(_) => Err(rustls_config_for_dtls()),
        }
    }
}

/// The error for rustls credentials given to DTLS.
fn rustls_config_for_dtls() -> Error {
    Error::Config(
        "a rustls configuration serves TLS only (DTLS is webrtc-dtls): give DTLS a PSK or a \
         certificate"
            .into(),
    )
}

/// A webrtc-dtls server configuration for DTLS-PSK: any client identity gets `psk.key`, and the
/// server sends the identity hint `CoAP`, as libcoap does.
#[cfg(test)]
pub(crate) fn dtls_psk_server_config(psk: &PskCredentials) -> DtlsConfig {
    PskServer::new(ServerPsk::from(psk.clone())).config(|_| {})
}

/// A webrtc-dtls client configuration for DTLS-PSK: sends `psk.identity` and uses `psk.key`
/// whatever identity hint the server sends.
pub(crate) fn dtls_psk_client_config(psk: &PskCredentials) -> DtlsConfig {
    let key = psk.key.clone();
    DtlsConfig {
        psk: Some(Arc::new(move |hint: &[u8]| {
            tracing::debug!(hint = %String::from_utf8_lossy(hint), "DTLS-PSK server hint");
            Ok(key.clone())
        })),
        // webrtc-dtls sends a client's `psk_identity_hint` as its PSK identity.
        psk_identity_hint: Some(psk.identity.clone()),
        cipher_suites: DTLS_PSK_CIPHER_SUITES.to_vec(),
        roots_cas: unverifiable_roots(),
        ..DtlsConfig::default()
    }
}

/// A webrtc-dtls server configuration presenting `identity` (ECDSA P-256 key). With
/// `client_ca_pem`, clients must present a certificate that CA signed.
pub(crate) fn dtls_cert_server_config(
    identity: &PemIdentity,
    client_ca_pem: Option<&str>,
) -> Result<DtlsConfig> {
    let mut config = DtlsConfig {
        certificates: vec![dtls_certificate(identity)?],
        cipher_suites: DTLS_CERT_CIPHER_SUITES.to_vec(),
        roots_cas: unverifiable_roots(),
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
pub(crate) fn dtls_cert_client_config(
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

#[cfg(test)]
mod tests {
    use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256};

    use super::*;
    use crate::credentials::CertificateSet;

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
            dtls_cert_client_config(None, None, false, "localhost"),
            Err(Error::Config(_))
        ));
        dtls_cert_client_config(None, None, true, "localhost").unwrap();
        let set = CertificateSet::generate().unwrap();
        assert!(matches!(
            dtls_cert_client_config(Some(&set.ca_cert_pem), None, false, "not a name!"),
            Err(Error::Config(_))
        ));
    }

    #[test]
    fn psk_configs_offer_the_psk_suites() {
        let psk = PskCredentials::new("id", "secret");
        let client = dtls_psk_client_config(&psk);
        assert_eq!(client.cipher_suites, DTLS_PSK_CIPHER_SUITES);
        assert_eq!(client.psk_identity_hint.as_deref(), Some(&b"id"[..]));
        assert_eq!((client.psk.unwrap())(b"CoAP").unwrap(), b"secret");
        let server = dtls_psk_server_config(&psk);
        assert_eq!(server.psk_identity_hint.as_deref(), Some(&b"CoAP"[..]));
        assert_eq!((server.psk.unwrap())(b"anyone").unwrap(), b"secret");

        let keys = ServerPsk::from_pairs([("a", "ka")]).with_identity_hint("hint");
        let server = PskServer::new(keys);
        assert!(server.serves(0xc0a8) && !server.serves(0xc0ae));
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let config = server.config(move |found| log.lock().unwrap().push(found));
        assert_eq!(config.psk_identity_hint.as_deref(), Some(&b"hint"[..]));
        let lookup = config.psk.unwrap();
        assert_eq!(lookup(b"a").unwrap(), b"ka");
        assert!(lookup(b"b").is_err());
        assert_eq!(
            *seen.lock().unwrap(),
            [
                IdentityLookup::Known(b"a".to_vec()),
                IdentityLookup::Unknown(b"b".to_vec())
            ]
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
