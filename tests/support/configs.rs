//! The rustls and webrtc-dtls configurations of the raw peers ([`super::RawDatagram`] inside
//! DTLS, [`super::RawStream`] over TLS), built here with those crates directly: the library's
//! own builders are private, and no rustls or webrtc-dtls type crosses its public API.
//!
//! They choose what the library's clients choose (ALPN `coap`, the PSK suites in the same
//! order, the ring provider); the raw peers only need a session in which to send exact bytes.
//! The library's builders themselves meet libcoap in the crate's own
//! `transport::libcoap_handshake_tests`, and through the public API in `interop.rs`.

use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use webrtc_dtls::cipher_suite::CipherSuiteId;
use webrtc_dtls::config::Config as DtlsConfig;

use coap_keepalive::PskCredentials;

/// The library's PSK suites, in its order.
const DTLS_PSK_CIPHER_SUITES: [CipherSuiteId; 3] = [
    CipherSuiteId::Tls_Psk_With_Aes_128_Ccm_8,
    CipherSuiteId::Tls_Psk_With_Aes_128_Ccm,
    CipherSuiteId::Tls_Psk_With_Aes_128_Gcm_Sha256,
];

/// A TLS client verifying the server against `ca_pem`, offering ALPN `coap`.
pub fn tls_client_config(ca_pem: &str) -> Arc<ClientConfig> {
    // ring only, as the library: a second provider would leave rustls without a default.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(root_store(ca_pem))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"coap".to_vec()];
    Arc::new(config)
}

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

fn root_store(ca_pem: &str) -> RootCertStore {
    let mut store = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        store.add(cert.expect("a CA certificate")).unwrap();
    }
    assert!(!store.is_empty(), "no CA certificate in {ca_pem:?}");
    store
}
