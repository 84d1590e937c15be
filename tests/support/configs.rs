//! rustls and webrtc-dtls configurations for the raw peers ([`super::RawDatagram`],
//! [`super::RawStream`], the handshakes of `libcoap_handshake`), built here with those crates
//! directly: the library's own builders are private, and no rustls or webrtc-dtls type crosses
//! its public API.
//!
//! They choose what the library's builders choose (ALPN `coap`, the same cipher suites in the
//! same order, libcoap's identity hint `CoAP`, the ring provider), so a handshake with one of
//! them stands for one with the library's. The library's own configurations meet libcoap
//! through the public API in `interop.rs`.

use std::sync::Arc;

use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use webrtc_dtls::cipher_suite::CipherSuiteId;
use webrtc_dtls::config::{ClientAuthType, Config as DtlsConfig};
use webrtc_dtls::crypto::{Certificate as DtlsCertificate, CryptoPrivateKey, CryptoPrivateKeyKind};

use coap_keepalive::{PemIdentity, PskCredentials};

/// The library's PSK suites, in its order.
const DTLS_PSK_CIPHER_SUITES: [CipherSuiteId; 3] = [
    CipherSuiteId::Tls_Psk_With_Aes_128_Ccm_8,
    CipherSuiteId::Tls_Psk_With_Aes_128_Ccm,
    CipherSuiteId::Tls_Psk_With_Aes_128_Gcm_Sha256,
];

/// The library's ECDHE-ECDSA suites, in its order.
const DTLS_CERT_CIPHER_SUITES: [CipherSuiteId; 4] = [
    CipherSuiteId::Tls_Ecdhe_Ecdsa_With_Aes_128_Ccm_8,
    CipherSuiteId::Tls_Ecdhe_Ecdsa_With_Aes_128_Gcm_Sha256,
    CipherSuiteId::Tls_Ecdhe_Ecdsa_With_Aes_128_Ccm,
    CipherSuiteId::Tls_Ecdhe_Ecdsa_With_Aes_256_Cbc_Sha,
];

// ---- TLS ----

/// A TLS client verifying the server against `ca_pem`, offering ALPN `coap`.
pub fn tls_client_config(ca_pem: &str) -> Arc<ClientConfig> {
    let config = tls_client_builder()
        .with_root_certificates(root_store(ca_pem))
        .with_no_client_auth();
    with_coap_alpn_client(config)
}

/// A TLS client accepting any server certificate (handshake signatures still checked), as the
/// library's insecure mode does, offering ALPN `coap`.
pub fn tls_client_config_insecure() -> Arc<ClientConfig> {
    let algorithms = ring_provider().signature_verification_algorithms;
    let config = tls_client_builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert { algorithms }))
        .with_no_client_auth();
    with_coap_alpn_client(config)
}

/// A TLS server presenting `identity`, offering ALPN `coap`; with `client_ca_pem`, clients
/// must present a certificate that CA signed.
pub fn tls_server_config(identity: &PemIdentity, client_ca_pem: Option<&str>) -> Arc<ServerConfig> {
    let provider = ring_provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca_pem {
        Some(ca_pem) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(root_store(ca_pem)), provider)
                    .build()
                    .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(cert_chain(identity), private_key(identity))
        .expect("server certificate and key");
    config.alpn_protocols = vec![b"coap".to_vec()];
    Arc::new(config)
}

fn tls_client_builder() -> rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier> {
    ClientConfig::builder_with_provider(ring_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
}

fn with_coap_alpn_client(mut config: ClientConfig) -> Arc<ClientConfig> {
    config.alpn_protocols = vec![b"coap".to_vec()];
    Arc::new(config)
}

/// ring only, as the library: a second provider would leave rustls without a default.
fn ring_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts any server certificate but checks that the handshake was signed by its key.
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
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

// ---- DTLS ----

/// A DTLS-PSK client sending `psk.identity` and using `psk.key` whatever the server's hint.
pub fn dtls_psk_client_config(psk: &PskCredentials) -> DtlsConfig {
    let key = psk.key.clone();
    DtlsConfig {
        psk: Some(Arc::new(move |_hint: &[u8]| Ok(key.clone()))),
        // webrtc-dtls sends a client's `psk_identity_hint` as its PSK identity.
        psk_identity_hint: Some(psk.identity.clone()),
        cipher_suites: DTLS_PSK_CIPHER_SUITES.to_vec(),
        ..DtlsConfig::default()
    }
}

/// A DTLS-PSK server giving any client identity `psk.key`, sending libcoap's hint `CoAP`.
pub fn dtls_psk_server_config(psk: &PskCredentials) -> DtlsConfig {
    let key = psk.key.clone();
    DtlsConfig {
        psk: Some(Arc::new(move |_identity: &[u8]| Ok(key.clone()))),
        psk_identity_hint: Some(b"CoAP".to_vec()),
        cipher_suites: DTLS_PSK_CIPHER_SUITES.to_vec(),
        ..DtlsConfig::default()
    }
}

/// A DTLS certificate-mode client verifying the server against `ca_pem` and `server_name`,
/// presenting `identity` when asked.
pub fn dtls_cert_client_config(
    ca_pem: &str,
    identity: Option<&PemIdentity>,
    server_name: &str,
) -> DtlsConfig {
    DtlsConfig {
        cipher_suites: DTLS_CERT_CIPHER_SUITES.to_vec(),
        server_name: server_name.to_owned(),
        roots_cas: root_store(ca_pem),
        certificates: identity.map(dtls_certificate).into_iter().collect(),
        ..DtlsConfig::default()
    }
}

/// A DTLS certificate-mode server presenting `identity`; with `client_ca_pem`, clients must
/// present a certificate that CA signed.
pub fn dtls_cert_server_config(identity: &PemIdentity, client_ca_pem: Option<&str>) -> DtlsConfig {
    let mut config = DtlsConfig {
        certificates: vec![dtls_certificate(identity)],
        cipher_suites: DTLS_CERT_CIPHER_SUITES.to_vec(),
        ..DtlsConfig::default()
    };
    if let Some(ca_pem) = client_ca_pem {
        config.client_cas = root_store(ca_pem);
        config.client_auth = ClientAuthType::RequireAndVerifyClientCert;
    }
    config
}

/// webrtc-dtls's certificate for `identity`, whose key must be P-256 in PKCS#8 (as
/// `CertificateSet` writes them); the key pair is ring's, which webrtc-dtls signs with.
fn dtls_certificate(identity: &PemIdentity) -> DtlsCertificate {
    let pkcs8 = PrivatePkcs8KeyDer::from_pem_slice(identity.key_pem.as_bytes())
        .expect("a PKCS#8 private key")
        .secret_pkcs8_der()
        .to_vec();
    let key_pair = EcdsaKeyPair::from_pkcs8(
        &ECDSA_P256_SHA256_ASN1_SIGNING,
        &pkcs8,
        &SystemRandom::new(),
    )
    .expect("an ECDSA P-256 key");
    DtlsCertificate {
        certificate: cert_chain(identity),
        private_key: CryptoPrivateKey {
            kind: CryptoPrivateKeyKind::Ecdsa256(key_pair),
            serialized_der: pkcs8,
        },
    }
}

// ---- PEM ----

fn root_store(ca_pem: &str) -> RootCertStore {
    let mut store = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        store.add(cert.expect("a CA certificate")).unwrap();
    }
    assert!(!store.is_empty(), "no CA certificate in {ca_pem:?}");
    store
}

fn cert_chain(identity: &PemIdentity) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(identity.cert_chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("a certificate chain")
}

fn private_key(identity: &PemIdentity) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes()).expect("a private key")
}
