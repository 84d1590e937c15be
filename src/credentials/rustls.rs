//! The rustls configurations of the TLS transport, built from [`ServerCredentials`] and
//! [`ClientCredentials`], and the advanced constructors that take a rustls configuration whole.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::{
    no_client_credentials, parse_certificates, ClientCredentials, PemIdentity, ServerCredentials,
};
use crate::proto::error::{Error, Result};

/// The ALPN protocol name of CoAP over TLS (RFC 8323 §8.2). The configurations built from
/// credentials offer it; one given to `from_rustls_config` should too.
pub const COAP_ALPN: &[u8] = b"coap";

/// A rustls server configuration held by [`ServerCredentials::Rustls`]; opaque, made by
/// [`ServerCredentials::from_rustls_config`]. Two are equal when they are the same `Arc`.
#[derive(Clone)]
pub struct RustlsServerConfig(Arc<rustls::ServerConfig>);

/// A rustls client configuration held by [`ClientCredentials::Rustls`]; opaque, made by
/// [`ClientCredentials::from_rustls_config`]. Two are equal when they are the same `Arc`.
#[derive(Clone)]
pub struct RustlsClientConfig(Arc<rustls::ClientConfig>);

impl ServerCredentials {
    /// Advanced: a TLS endpoint that uses `config` as it is, for what the other variants cannot
    /// express (other keys, session resumption, a verifier of one's own). Nothing is added to
    /// it: offer [`COAP_ALPN`] in it, as the built configurations do. A DTLS endpoint refuses
    /// these credentials with an [`Error::Config`] (DTLS is webrtc-dtls, not rustls).
    pub fn from_rustls_config(config: Arc<rustls::ServerConfig>) -> ServerCredentials {
        ServerCredentials::Rustls(RustlsServerConfig(config))
    }

    /// The rustls server configuration; an [`Error::Config`] for a PSK.
    pub(crate) fn tls_config(&self) -> Result<Arc<rustls::ServerConfig>> {
        match self {
            ServerCredentials::Psk(_) | ServerCredentials::PskIdentities(_) => {
                Err(tls_psk_unsupported())
            }
            ServerCredentials::Certificate {
                identity,
                client_ca_pem,
            }
            | ServerCredentials::PskAndCertificate {
                identity,
                client_ca_pem,
                ..
            } => tls_server_config(identity, client_ca_pem.as_deref()),
            ServerCredentials::Rustls(RustlsServerConfig(config)) => Ok(Arc::clone(config)),
        }
    }
}

impl ClientCredentials {
    /// Advanced: a TLS client that uses `config` as it is, for what the other variants cannot
    /// express (a verifier or roots of one's own, session resumption). Nothing is added to it:
    /// offer [`COAP_ALPN`] in it, as the built configurations do. The server is named by the
    /// URI's host. A `coaps://` (DTLS) connection refuses these credentials with an
    /// [`Error::Config`] (DTLS is webrtc-dtls, not rustls).
    pub fn from_rustls_config(config: Arc<rustls::ClientConfig>) -> ClientCredentials {
        ClientCredentials::Rustls(RustlsClientConfig(config))
    }

    /// The rustls client configuration; an [`Error::Config`] for a PSK or no credentials.
    pub(crate) fn tls_config(&self) -> Result<Arc<rustls::ClientConfig>> {
        match self {
            ClientCredentials::None => Err(no_client_credentials("coaps+tcp://")),
            ClientCredentials::Psk(_) => Err(tls_psk_unsupported()),
            ClientCredentials::Certificate {
                ca_pem,
                identity,
                insecure,
            } => tls_client_config(ca_pem.as_deref(), identity.as_ref(), *insecure),
            ClientCredentials::Rustls(RustlsClientConfig(config)) => Ok(Arc::clone(config)),
        }
    }
}

impl fmt::Debug for RustlsServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RustlsServerConfig")
            .field(&format_args!("{:p}", Arc::as_ptr(&self.0)))
            .finish()
    }
}

impl PartialEq for RustlsServerConfig {
    fn eq(&self, other: &RustlsServerConfig) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for RustlsServerConfig {}

impl fmt::Debug for RustlsClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RustlsClientConfig")
            .field(&format_args!("{:p}", Arc::as_ptr(&self.0)))
            .finish()
    }
}

impl PartialEq for RustlsClientConfig {
    fn eq(&self, other: &RustlsClientConfig) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for RustlsClientConfig {}

/// The error for TLS asked to use a PSK.
fn tls_psk_unsupported() -> Error {
    Error::Config(
        "TLS with a PSK is not supported (rustls has no PSK cipher suites); use certificates"
            .into(),
    )
}

/// The ring crypto provider, which every configuration here is built on.
pub(crate) fn ring_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A rustls server configuration presenting `identity` and offering ALPN `coap` (clients that
/// offer no ALPN are served too). With `client_ca_pem`, clients must present a certificate that
/// CA signed.
pub(crate) fn tls_server_config(
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
pub(crate) fn tls_client_config(
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

/// A root store holding every certificate in `ca_pem`. webrtc-dtls verifies with rustls's
/// WebPKI verifier too, so its configurations take this store.
pub(crate) fn root_store(ca_pem: &str) -> Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    for cert in parse_certificates(ca_pem, "CA certificate")? {
        store
            .add(cert)
            .map_err(|e| Error::Certificate(format!("unusable CA certificate: {e}")))?;
    }
    Ok(store)
}

/// Maps an error of a rustls configuration builder.
fn tls_config_error(error: rustls::Error) -> Error {
    Error::Certificate(format!("cannot build the TLS configuration: {error}"))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::CertificateSet;

    #[test]
    fn verification_needs_a_ca_unless_insecure() {
        assert!(matches!(
            tls_client_config(None, None, false),
            Err(Error::Config(_))
        ));
        tls_client_config(None, None, true).unwrap();
        assert!(matches!(
            tls_client_config(Some("no certificate here"), None, false),
            Err(Error::Certificate(_))
        ));
    }

    /// Configurations given whole serve a TLS endpoint and client as they are; DTLS refuses
    /// them before binding anything.
    #[tokio::test]
    async fn rustls_configs_given_whole_carry_a_tls_session() {
        let set = CertificateSet::generate().unwrap();
        let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let server = crate::Context::new();
        let config = tls_server_config(&set.server_identity(), None).unwrap();
        let credentials = ServerCredentials::from_rustls_config(config);
        let error = server
            .listen_dtls(loopback, credentials.clone())
            .await
            .unwrap_err();
        assert!(matches!(error, Error::Config(_)), "{error}");
        let endpoint = server.listen_tls(loopback, credentials).await.unwrap();

        let client = crate::Context::new();
        let config = tls_client_config(Some(&set.ca_cert_pem), None, false).unwrap();
        let credentials = ClientCredentials::from_rustls_config(config);
        let uri = format!("coaps+tcp://{}", endpoint.local_addr);
        let session = client.connect_with(&uri, &credentials).await.unwrap();
        session.ping().await.unwrap();
        let uri = format!("coaps://{}", endpoint.local_addr);
        let error = client.connect_with(&uri, &credentials).await.unwrap_err();
        assert!(error.to_string().contains("TLS only"), "{error}");
        client.shutdown().await;
        server.shutdown().await;
    }

    #[test]
    fn configs_offer_coap_alpn() {
        let set = CertificateSet::generate().unwrap();
        let server = tls_server_config(&set.server_identity(), None).unwrap();
        assert_eq!(server.alpn_protocols, [b"coap".to_vec()]);
        let client = tls_client_config(Some(&set.ca_cert_pem), None, false).unwrap();
        assert_eq!(client.alpn_protocols, [b"coap".to_vec()]);
    }
}
