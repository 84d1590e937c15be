//! Handshakes against libcoap 4.3.1's command-line tools (Debian's libcoap3-bin), both ways:
//! our DTLS and TLS clients against `coap-server-openssl` / `coap-server-gnutls`, and
//! `coap-client-openssl` / `coap-client-gnutls` against our DTLS listener and TLS acceptor.
//!
//! They run the handshake layer (`dtls_conn`, `tls_conn`) with the configurations the crate
//! ships (`credentials::dtls`, `credentials::rustls`), so that each failure case against libcoap
//! is one of the product's. Here rather than in `tests/` because both are crate-private.
//!
//! The libcoap processes come from `tests/support/libcoap.rs`, shared with the integration
//! tests: a missing libcoap binary fails the test with how to install it. Every test uses its
//! own loopback ports, waits for readiness by polling (never a fixed sleep), and kills its
//! children however it ends.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use webrtc_dtls::cipher_suite::CipherSuiteId;
use webrtc_dtls::config::Config;
use webrtc_dtls::conn::DTLSConn;

use crate::credentials::dtls::DtlsServerConfigs;
use crate::credentials::{
    dtls, rustls as tls, CertificateSet, PemIdentity, PskCredentials, ServerCredentials, ServerPsk,
};
use crate::proto::error::Error;
use crate::transport::dtls_conn::{dtls_connect, dtls_recv, dtls_send, DtlsAccept, DtlsListener};
use crate::transport::tls_conn::{tls_accept, tls_connect};

#[allow(dead_code)] // shared with the integration tests, which use all of it
#[path = "../../tests/support/libcoap.rs"]
mod libcoap;

use libcoap::{Build, LibcoapProcess, LibcoapServer};

/// A fresh [`CertificateSet`] written to a temporary directory, for libcoap's `-c`, `-j`, `-C`
/// and `-R` (as `tests/support`'s `Pki`).
struct Pki {
    dir: tempfile::TempDir,
    set: CertificateSet,
}

impl Pki {
    fn generate() -> Pki {
        let dir = tempfile::tempdir().expect("temporary directory");
        let set = CertificateSet::generate().expect("generate certificates");
        set.write_to(dir.path()).expect("write certificates");
        Pki { dir, set }
    }

    /// The path of one of the files (`"ca.pem"`, `"client.key"`, ...), as an argument.
    fn path(&self, name: &str) -> String {
        let path = self.dir.path().join(name);
        assert!(path.exists(), "{} was not written", path.display());
        path.to_str().expect("UTF-8 temporary path").to_owned()
    }
}

// ---- The crate's own configurations ----

fn dtls_psk_client_config(psk: &PskCredentials) -> Config {
    dtls::dtls_psk_client_config(psk)
}

fn certificate_only(config: Config) -> DtlsServerConfigs {
    DtlsServerConfigs::certificate_only(config)
}

/// Verifying the server against `ca_pem` and `server_name`, presenting `identity` if asked.
fn dtls_cert_client_config(
    ca_pem: &str,
    identity: Option<&PemIdentity>,
    server_name: &str,
) -> Config {
    dtls::dtls_cert_client_config(Some(ca_pem), identity, false, server_name).unwrap()
}

fn dtls_cert_server_config(identity: &PemIdentity, client_ca_pem: Option<&str>) -> Config {
    dtls::dtls_cert_server_config(identity, client_ca_pem).unwrap()
}

fn tls_client_config(ca_pem: &str) -> Arc<rustls::ClientConfig> {
    tls::tls_client_config(Some(ca_pem), None, false).unwrap()
}

/// Any server certificate accepted (handshake signatures still checked).
fn tls_client_config_insecure() -> Arc<rustls::ClientConfig> {
    tls::tls_client_config(None, None, true).unwrap()
}

fn tls_server_config(
    identity: &PemIdentity,
    client_ca_pem: Option<&str>,
) -> Arc<rustls::ServerConfig> {
    tls::tls_server_config(identity, client_ca_pem).unwrap()
}

/// An empty Confirmable message (a CoAP ping) with Message ID 0x1234.
const PING: [u8; 4] = [0x40, 0x00, 0x12, 0x34];
/// The Reset libcoap answers it with.
const RST: [u8; 4] = [0x70, 0x00, 0x12, 0x34];
/// RFC 8323 signalling: an empty CSM, then a Ping.
const TCP_CSM_AND_PING: [u8; 4] = [0x00, 0xe1, 0x00, 0xe2];
/// libcoap's CSM (Max-Message-Size 8388864, Block-Wise-Transfer) and its Pong (Custody set,
/// no token).
const LIBCOAP_CSM: [u8; 7] = [0x50, 0xe1, 0x23, 0x80, 0x01, 0x00, 0x20];
const LIBCOAP_PONG: [u8; 3] = [0x10, 0xe3, 0x20];

/// Deadline of one handshake once the peer is up.
const HANDSHAKE: Duration = Duration::from_secs(5);
fn loopback(port: u16) -> SocketAddr {
    (Ipv4Addr::LOCALHOST, port).into()
}

fn psk(identity: &str, key: &str) -> PskCredentials {
    PskCredentials::new(identity, key)
}

/// Sends a CoAP ping over DTLS and expects libcoap's Reset.
async fn ping_expect_rst(conn: &DTLSConn, server: &LibcoapServer) {
    dtls_send(conn, &PING).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(HANDSHAKE, dtls_recv(conn, &mut buf))
        .await
        .unwrap_or_else(|_| panic!("no answer to the ping\n{}", server.report()))
        .unwrap()
        .unwrap();
    assert_eq!(buf[..n], RST);
}

// ---- Our DTLS-PSK client against coap-server -k -------------------------------------------

async fn dtls_psk_client_against(build: Build) {
    let server = LibcoapServer::start(build, &["-k", "secret"]).await;
    let server_program = build.server();
    let peer = server.secure_addr();

    let conn = dtls_connect(
        peer,
        dtls_psk_client_config(&psk("id", "secret")),
        HANDSHAKE,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", server.report()));
    // libcoap's default identity hint.
    assert_eq!(conn.connection_state().await.identity_hint, b"CoAP");
    ping_expect_rst(&conn, &server).await;
    conn.close().await.unwrap();

    // Each of our PSK suites on its own.
    for suite in [
        CipherSuiteId::Tls_Psk_With_Aes_128_Ccm_8,
        CipherSuiteId::Tls_Psk_With_Aes_128_Ccm,
        CipherSuiteId::Tls_Psk_With_Aes_128_Gcm_Sha256,
    ] {
        let mut config = dtls_psk_client_config(&psk("id", "secret"));
        config.cipher_suites = vec![suite];
        let conn = dtls_connect(peer, config, HANDSHAKE)
            .await
            .unwrap_or_else(|e| panic!("{suite} with {server_program}: {e}"));
        ping_expect_rst(&conn, &server).await;
        conn.close().await.unwrap();
    }

    // A wrong key fails within the deadline.
    let error =
        match dtls_connect(peer, dtls_psk_client_config(&psk("id", "wrong")), HANDSHAKE).await {
            Ok(_) => panic!("handshake with a wrong key succeeded"),
            Err(e) => e,
        };
    assert!(matches!(error, Error::Tls(_)), "{error}");
}

#[tokio::test]
async fn dtls_psk_client_against_coap_server_openssl() {
    dtls_psk_client_against(Build::Openssl).await;
}

#[tokio::test]
async fn dtls_psk_client_against_coap_server_gnutls() {
    dtls_psk_client_against(Build::Gnutls).await;
}

// ---- Our DTLS certificate client against coap-server -c -j [-C] ---------------------------

async fn dtls_cert_client_against(build: Build) {
    let pki = Pki::generate();
    let set = &pki.set;
    let (cert, key) = (pki.path("server.pem"), pki.path("server.key"));
    let server = LibcoapServer::start(build, &["-c", &cert, "-j", &key]).await;
    let server_program = build.server();
    let peer = server.secure_addr();

    let config = dtls_cert_client_config(&set.ca_cert_pem, None, "127.0.0.1");
    let conn = dtls_connect(peer, config.clone(), HANDSHAKE)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", server.report()));
    ping_expect_rst(&conn, &server).await;
    conn.close().await.unwrap();

    // Each AEAD suite on its own (libcoap's OpenSSL build refuses AES_256_CBC_SHA, which we
    // offer last).
    for suite in [
        CipherSuiteId::Tls_Ecdhe_Ecdsa_With_Aes_128_Ccm_8,
        CipherSuiteId::Tls_Ecdhe_Ecdsa_With_Aes_128_Gcm_Sha256,
        CipherSuiteId::Tls_Ecdhe_Ecdsa_With_Aes_128_Ccm,
    ] {
        let mut config = config.clone();
        config.cipher_suites = vec![suite];
        let conn = dtls_connect(peer, config, HANDSHAKE)
            .await
            .unwrap_or_else(|e| panic!("{suite} with {server_program}: {e}"));
        ping_expect_rst(&conn, &server).await;
        conn.close().await.unwrap();
    }

    // The server's certificate does not chain to another CA.
    let other = CertificateSet::generate().unwrap();
    let config = dtls_cert_client_config(&other.ca_cert_pem, None, "127.0.0.1");
    match dtls_connect(peer, config, HANDSHAKE).await {
        Ok(_) => panic!("untrusted server certificate accepted"),
        Err(e) => assert!(e.to_string().contains("invalid peer certificate"), "{e}"),
    }
}

#[tokio::test]
async fn dtls_cert_client_against_coap_server_openssl() {
    dtls_cert_client_against(Build::Openssl).await;
}

#[tokio::test]
async fn dtls_cert_client_against_coap_server_gnutls() {
    dtls_cert_client_against(Build::Gnutls).await;
}

async fn dtls_mutual_cert_client_against(build: Build) {
    let pki = Pki::generate();
    let set = &pki.set;
    let (cert, key, ca) = (
        pki.path("server.pem"),
        pki.path("server.key"),
        pki.path("ca.pem"),
    );
    let server = LibcoapServer::start(build, &["-c", &cert, "-j", &key, "-C", &ca]).await;
    let peer = server.secure_addr();

    let config =
        dtls_cert_client_config(&set.ca_cert_pem, Some(&set.client_identity()), "127.0.0.1");
    let conn = dtls_connect(peer, config, HANDSHAKE)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", server.report()));
    ping_expect_rst(&conn, &server).await;
    conn.close().await.unwrap();

    // Without a client certificate the server refuses.
    let config = dtls_cert_client_config(&set.ca_cert_pem, None, "127.0.0.1");
    let outcome = async {
        let conn = dtls_connect(peer, config, HANDSHAKE).await?;
        // Should the alert come only after the handshake, the first read sees it.
        dtls_send(&conn, &PING).await?;
        let mut buf = [0u8; 64];
        match tokio::time::timeout(Duration::from_secs(2), dtls_recv(&conn, &mut buf)).await {
            Ok(Ok(Some(_))) => Ok(()),
            Ok(Ok(None)) => Err(Error::Tls("closed".into())),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Tls("no answer".into())),
        }
    };
    assert!(
        outcome.await.is_err(),
        "served without a client certificate"
    );
}

#[tokio::test]
async fn dtls_mutual_cert_client_against_coap_server_openssl() {
    dtls_mutual_cert_client_against(Build::Openssl).await;
}

#[tokio::test]
async fn dtls_mutual_cert_client_against_coap_server_gnutls() {
    dtls_mutual_cert_client_against(Build::Gnutls).await;
}

// ---- Our TLS client against coap-server's coaps+tcp -------------------------------------

/// Sends a CSM and a Ping and expects libcoap's CSM and Pong.
async fn tls_csm_ping_against(
    server: &LibcoapServer,
    peer: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> Option<Vec<u8>> {
    let mut tls = tls_connect(peer, "127.0.0.1", config, HANDSHAKE)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", server.report()));
    let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    tls.write_all(&TCP_CSM_AND_PING).await.unwrap();
    let expected = [&LIBCOAP_CSM[..], &LIBCOAP_PONG[..]].concat();
    let mut received = vec![0u8; expected.len()];
    tokio::time::timeout(HANDSHAKE, tls.read_exact(&mut received))
        .await
        .unwrap_or_else(|_| panic!("no CSM and Pong\n{}", server.report()))
        .unwrap();
    assert_eq!(received, expected);
    let _ = tls.shutdown().await;
    alpn
}

async fn tls_client_against(build: Build, expected_alpn: Option<&[u8]>) {
    let pki = Pki::generate();
    let set = &pki.set;
    let (cert, key) = (pki.path("server.pem"), pki.path("server.key"));
    let server = LibcoapServer::start(build, &["-c", &cert, "-j", &key]).await;
    let peer = server.secure_addr();

    let config = tls_client_config(&set.ca_cert_pem);
    let alpn = tls_csm_ping_against(&server, peer, config).await;
    assert_eq!(alpn.as_deref(), expected_alpn);

    // Insecure mode, and a client offering no ALPN.
    tls_csm_ping_against(&server, peer, tls_client_config_insecure()).await;
    let mut no_alpn = (*tls_client_config(&set.ca_cert_pem)).clone();
    no_alpn.alpn_protocols.clear();
    tls_csm_ping_against(&server, peer, Arc::new(no_alpn)).await;

    // Another CA: rejected.
    let other = CertificateSet::generate().unwrap();
    let config = tls_client_config(&other.ca_cert_pem);
    let error = match tls_connect(peer, "127.0.0.1", config, HANDSHAKE).await {
        Ok(_) => panic!("untrusted server certificate accepted"),
        Err(e) => e,
    };
    assert!(
        error.to_string().contains("invalid peer certificate"),
        "{error}"
    );
}

#[tokio::test]
async fn tls_client_against_coap_server_openssl() {
    tls_client_against(Build::Openssl, Some(b"coap")).await;
}

#[tokio::test]
async fn tls_client_against_coap_server_gnutls() {
    tls_client_against(Build::Gnutls, None).await;
}

// ---- coap-client against our DTLS listener ---------------------------------------------

/// Runs `client_program` with `args` (then `-m get coaps://…`) against a DTLS listener with
/// `config`; returns the outcome of the handshake and the client.
async fn coap_client_against_dtls_listener(
    client_program: &str,
    configs: DtlsServerConfigs,
    args: &[&str],
) -> (DtlsAccept, LibcoapProcess) {
    let listener = DtlsListener::bind(loopback(0), configs, HANDSHAKE, 4)
        .await
        .unwrap();
    let uri = format!("coaps://127.0.0.1:{}/", listener.local_addr().port());
    let mut all_args = vec!["-B", "10"];
    all_args.extend_from_slice(args);
    all_args.extend_from_slice(&["-m", "get", &uri]);
    let client = LibcoapProcess::spawn(client_program, &all_args);
    let accepted = tokio::time::timeout(Duration::from_secs(10), listener.accept())
        .await
        .unwrap_or_else(|_| panic!("no handshake from {client_program}\n{}", client.report()))
        .unwrap();
    (accepted, client)
}

/// Expects an established session over which the client's GET arrives.
async fn expect_get(accepted: DtlsAccept, client: &LibcoapProcess) {
    let conn = match accepted {
        DtlsAccept::Established(conn, _) => conn,
        other => panic!("{other:?}\n{}", client.report()),
    };
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(HANDSHAKE, dtls_recv(&conn, &mut buf))
        .await
        .unwrap_or_else(|_| panic!("no request\n{}", client.report()))
        .unwrap()
        .unwrap();
    assert!(n >= 4, "short request");
    assert_eq!(buf[0] & 0xf0, 0x40, "not a CON request: {:02x?}", &buf[..n]);
    assert_eq!(buf[1], 0x01, "not a GET: {:02x?}", &buf[..n]);
    conn.close().await.unwrap();
}

/// coap-client `-k secret -u id` against a DTLS-PSK listener sending identity hint `hint`.
async fn coap_client_against_dtls_psk_listener(client_program: &str, hint: Option<&[u8]>) {
    let identities = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&identities);
    // An empty hint is none: no ServerKeyExchange (RFC 4279 §2).
    let keys = ServerPsk::from_fn(move |identity| {
        seen.lock().unwrap().push(identity.to_vec());
        Some(b"secret".to_vec())
    })
    .with_identity_hint(hint.unwrap_or_default());
    let config = ServerCredentials::PskIdentities(keys)
        .dtls_configs()
        .unwrap();
    let args = ["-k", "secret", "-u", "id"];
    let (accepted, client) = coap_client_against_dtls_listener(client_program, config, &args).await;
    assert!(
        matches!(accepted, DtlsAccept::Established(..)),
        "{accepted:?}"
    );
    assert_eq!(identities.lock().unwrap().as_slice(), [b"id".to_vec()]);
    expect_get(accepted, &client).await;
}

#[tokio::test]
async fn coap_client_openssl_against_dtls_psk_listener() {
    coap_client_against_dtls_psk_listener("coap-client-openssl", Some(b"CoAP")).await;
}

#[tokio::test]
async fn coap_client_gnutls_against_dtls_psk_listener() {
    coap_client_against_dtls_psk_listener("coap-client-gnutls", Some(b"CoAP")).await;
}

#[tokio::test]
async fn coap_client_openssl_against_dtls_psk_listener_without_hint() {
    coap_client_against_dtls_psk_listener("coap-client-openssl", None).await;
}

#[tokio::test]
async fn coap_client_gnutls_against_dtls_psk_listener_without_hint() {
    coap_client_against_dtls_psk_listener("coap-client-gnutls", None).await;
}

/// coap-client in certificate mode against our DTLS certificate listener: verifying our
/// server certificate, presenting its own when required, and refused without one.
async fn coap_client_against_dtls_cert_listener(client_program: &str) {
    let pki = Pki::generate();
    let set = &pki.set;
    let (cert, key, ca) = (
        pki.path("client.pem"),
        pki.path("client.key"),
        pki.path("ca.pem"),
    );

    let config = certificate_only(dtls_cert_server_config(&set.server_identity(), None));
    let (accepted, client) =
        coap_client_against_dtls_listener(client_program, config, &["-R", &ca]).await;
    expect_get(accepted, &client).await;
    drop(client);

    let config = certificate_only(dtls_cert_server_config(
        &set.server_identity(),
        Some(&set.ca_cert_pem),
    ));
    let args = ["-c", &cert, "-j", &key, "-R", &ca];
    let (accepted, client) = coap_client_against_dtls_listener(client_program, config, &args).await;
    expect_get(accepted, &client).await;
    drop(client);

    let config = certificate_only(dtls_cert_server_config(
        &set.server_identity(),
        Some(&set.ca_cert_pem),
    ));
    let (accepted, client) =
        coap_client_against_dtls_listener(client_program, config, &["-R", &ca]).await;
    match accepted {
        DtlsAccept::Failed { error, .. } => {
            assert!(matches!(error, Error::Tls(_)), "{error}");
        }
        other => panic!(
            "served without a client certificate: {other:?}\n{}",
            client.report()
        ),
    }
}

#[tokio::test]
async fn coap_client_openssl_against_dtls_cert_listener() {
    coap_client_against_dtls_cert_listener("coap-client-openssl").await;
}

#[tokio::test]
async fn coap_client_gnutls_against_dtls_cert_listener() {
    coap_client_against_dtls_cert_listener("coap-client-gnutls").await;
}

// ---- coap-client against our TLS acceptor -----------------------------------------------

/// Accepts one TLS connection from `client_program` (extra `args` before the URI; `CA`,
/// `CERT` and `KEY` stand for the generated files) and returns the handshake's outcome with the
/// ALPN protocol agreed.
async fn coap_client_against_tls_acceptor(
    client_program: &str,
    args: &[&str],
    require_client_cert: bool,
) -> (Result<Option<Vec<u8>>, Error>, LibcoapProcess) {
    let pki = Pki::generate();
    let set = &pki.set;
    let client_ca = require_client_cert.then_some(set.ca_cert_pem.as_str());
    let config = tls_server_config(&set.server_identity(), client_ca);
    let listener = TcpListener::bind(loopback(0)).await.unwrap();
    let uri = format!(
        "coaps+tcp://127.0.0.1:{}/",
        listener.local_addr().unwrap().port()
    );
    let files = [
        ("CA", pki.path("ca.pem")),
        ("CERT", pki.path("client.pem")),
        ("KEY", pki.path("client.key")),
    ];
    let mut all_args: Vec<&str> = vec!["-B", "10", "-m", "get"];
    all_args.extend(args.iter().map(|arg| {
        files
            .iter()
            .find(|(name, _)| name == arg)
            .map_or(*arg, |(_, file)| file.as_str())
    }));
    all_args.push(&uri);
    let client = LibcoapProcess::spawn(client_program, &all_args);
    let (tcp, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
        .await
        .unwrap_or_else(|_| panic!("no connection from {client_program}\n{}", client.report()))
        .unwrap();
    let outcome = tls_accept(&config, tcp, HANDSHAKE)
        .await
        .map(|tls| tls.alpn_protocol().map(<[u8]>::to_vec));
    // The directory goes with this function: the client has read its files by now.
    (outcome, client)
}

#[tokio::test]
async fn coap_client_openssl_against_tls_acceptor() {
    let program = "coap-client-openssl";
    let (alpn, client) = coap_client_against_tls_acceptor(program, &["-R", "CA"], false).await;
    let alpn = alpn.unwrap_or_else(|e| panic!("{e}\n{}", client.report()));
    assert_eq!(alpn.as_deref(), Some(&b"coap"[..]));
    let (alpn, client) = coap_client_against_tls_acceptor(program, &[], false).await;
    alpn.unwrap_or_else(|e| panic!("{e}\n{}", client.report()));
    let args = ["-c", "CERT", "-j", "KEY", "-R", "CA"];
    let (alpn, client) = coap_client_against_tls_acceptor(program, &args, true).await;
    alpn.unwrap_or_else(|e| panic!("{e}\n{}", client.report()));
    let (alpn, _client) = coap_client_against_tls_acceptor(program, &["-R", "CA"], true).await;
    assert!(matches!(alpn, Err(Error::Tls(_))), "{alpn:?}");
}

#[tokio::test]
async fn coap_client_gnutls_against_tls_acceptor() {
    let program = "coap-client-gnutls";
    let (alpn, client) = coap_client_against_tls_acceptor(program, &["-R", "CA"], false).await;
    let alpn = alpn.unwrap_or_else(|e| panic!("{e}\n{}", client.report()));
    assert_eq!(alpn.as_deref(), Some(&b"coap"[..]));
    let (alpn, client) = coap_client_against_tls_acceptor(program, &[], false).await;
    alpn.unwrap_or_else(|e| panic!("{e}\n{}", client.report()));
    let args = ["-c", "CERT", "-j", "KEY", "-R", "CA"];
    let (alpn, client) = coap_client_against_tls_acceptor(program, &args, true).await;
    alpn.unwrap_or_else(|e| panic!("{e}\n{}", client.report()));
    let (alpn, _client) = coap_client_against_tls_acceptor(program, &["-R", "CA"], true).await;
    assert!(matches!(alpn, Err(Error::Tls(_))), "{alpn:?}");
}
