//! Our client against our server over DTLS (PSK and certificates) and TLS (server certificate
//! and mutual), on loopback with millisecond keepalive settings: pings answered both ways, a
//! silenced server, a clean close, and every bad-credential case ending in `TlsFailed` for the
//! handler and an error from connect, within the handshake timeout.
//!
//! Every scenario is written once, as a function taking the [`Mode`], and run for each.
//! Certificates are fresh for each test, written to a temporary directory and read back as an
//! application would.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;

use coap_keepalive::Context;
use coap_keepalive::{ClientCredentials, PskCredentials, ServerCredentials};
use coap_keepalive::{Error, NackReason};
use coap_keepalive::{KeepaliveConfig, TransmissionParams};
use coap_keepalive::{PingDecision, SessionEvent};
use coap_keepalive::{Role, SessionState, Transport};

mod support;

use support::{bounded, connect, loopback, ms, nacks, next, pongs, Nack, Pki, Pong};

/// The most any test here may take; each finishes in about a second when all is well.
const TEST_LIMIT: Duration = Duration::from_secs(10);
/// The handshake (connect) timeout of the contexts that are expected to connect.
const HANDSHAKE: Duration = Duration::from_secs(3);

fn context(handshake: Duration) -> Context {
    Context::builder()
        .connect_timeout(handshake)
        .build()
        .unwrap()
}

/// The four ways of securing a session tested here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    DtlsPsk,
    DtlsCertificate,
    Tls,
    MutualTls,
}

impl Mode {
    fn transport(self) -> Transport {
        match self {
            Mode::DtlsPsk | Mode::DtlsCertificate => Transport::Dtls,
            Mode::Tls | Mode::MutualTls => Transport::Tls,
        }
    }
}

/// Matching server and client credentials of `mode`.
fn credentials(mode: Mode, pki: &Pki) -> (ServerCredentials, ClientCredentials) {
    match mode {
        Mode::DtlsPsk => {
            let psk = PskCredentials::new("client-1", "secret");
            (
                ServerCredentials::Psk(psk.clone()),
                ClientCredentials::Psk(psk),
            )
        }
        Mode::DtlsCertificate | Mode::Tls => {
            (pki.server_credentials(false), pki.client_credentials(false))
        }
        Mode::MutualTls => (pki.server_credentials(true), pki.client_credentials(true)),
    }
}

/// Starts a DTLS or TLS endpoint of `ctx` on loopback.
async fn listen(ctx: &Context, transport: Transport, credentials: ServerCredentials) -> SocketAddr {
    support::listen(ctx, transport, Some(credentials)).await
}

fn events(ctx: &Context) -> mpsc::UnboundedReceiver<(Role, SessionEvent)> {
    let (tx, rx) = mpsc::unbounded_channel();
    ctx.register_event_handler(move |session, event| {
        let _ = tx.send((session.role(), event));
    });
    rx
}

// ---- pings answered, both ways ----

async fn pings_are_answered_both_ways(mode: Mode) {
    let pki = Pki::generate();
    let (server_credentials, client_credentials) = credentials(mode, &pki);
    let transport = mode.transport();

    let server = context(HANDSHAKE);
    server.set_keepalive_interval(Some(ms(150)));
    let mut server_pongs = pongs(&server);
    let mut server_nacks = nacks(&server);
    let addr = listen(&server, transport, server_credentials).await;

    let client = context(HANDSHAKE);
    client.set_keepalive_interval(Some(ms(50)));
    let mut client_pongs = pongs(&client);
    let mut client_nacks = nacks(&client);
    let session = connect(&client, transport, addr, &client_credentials)
        .await
        .expect("connect");
    assert_eq!(session.state(), SessionState::Established);
    assert_eq!(session.transport(), transport);
    assert_eq!(session.role(), Role::Client);

    for _ in 0..3 {
        let Pong { role, rtt, .. } =
            next(&mut client_pongs, Duration::from_secs(2), "client pong").await;
        assert_eq!(role, Role::Client);
        assert!(
            rtt > Duration::ZERO && rtt < ms(200),
            "{mode:?} rtt {rtt:?}"
        );
    }
    let stats = session.stats();
    assert!(stats.pongs >= 3 && stats.failures == 0, "{stats:?}");
    assert!(stats.rtt.min.is_some() && stats.rtt.smoothed.is_some());

    // The server pings its client too, once the client stops pinging.
    session.set_keepalive(0);
    let Pong { role, rtt, .. } =
        next(&mut server_pongs, Duration::from_secs(2), "server pong").await;
    assert_eq!(role, Role::Server);
    assert!(rtt < ms(200), "{mode:?} server rtt {rtt:?}");
    let theirs = server.sessions();
    assert_eq!(theirs.len(), 1);
    assert_eq!(theirs[0].transport(), transport);
    assert_eq!(theirs[0].role(), Role::Server);
    assert_eq!(theirs[0].peer().port(), session.local_addr().port());

    assert!(client_nacks.try_recv().is_err());
    assert!(server_nacks.try_recv().is_err());
    client.shutdown().await;
    server.shutdown().await;
}

#[tokio::test]
async fn dtls_psk_pings_are_answered() {
    bounded(TEST_LIMIT, pings_are_answered_both_ways(Mode::DtlsPsk)).await
}

#[tokio::test]
async fn dtls_certificate_pings_are_answered() {
    bounded(
        TEST_LIMIT,
        pings_are_answered_both_ways(Mode::DtlsCertificate),
    )
    .await
}

#[tokio::test]
async fn tls_pings_are_answered() {
    bounded(TEST_LIMIT, pings_are_answered_both_ways(Mode::Tls)).await
}

#[tokio::test]
async fn mutual_tls_pings_are_answered() {
    bounded(TEST_LIMIT, pings_are_answered_both_ways(Mode::MutualTls)).await
}

// ---- a silenced server ----

async fn silenced_server_fails_the_session(mode: Mode) {
    let pki = Pki::generate();
    let (server_credentials, client_credentials) = credentials(mode, &pki);
    let transport = mode.transport();

    let server = context(HANDSHAKE);
    server.register_ping_handler(|_, _| PingDecision::Suppress);
    let addr = listen(&server, transport, server_credentials).await;

    let client = context(HANDSHAKE);
    client
        .set_keepalive_config(
            KeepaliveConfig::default()
                .with_interval(Some(ms(100)))
                .with_transmission(
                    TransmissionParams::default()
                        .with_ack_timeout(ms(50))
                        .with_ack_random_factor(1.0)
                        .with_max_retransmit(2),
                )
                .with_pong_timeout(ms(100)),
        )
        .unwrap();
    let mut client_nacks = nacks(&client);
    let mut client_pongs = pongs(&client);
    let start = Instant::now();
    let session = connect(&client, transport, addr, &client_credentials)
        .await
        .expect("connect");

    let Nack {
        session: nacked,
        reason,
        at,
    } = next(&mut client_nacks, Duration::from_secs(3), "nack").await;
    assert_eq!(reason, NackReason::TooManyRetries);
    assert_eq!(nacked.id(), session.id());
    // UDP rules: ping at 100, retransmissions 50 and 100 later, given up 200 after the last.
    // TCP rules: ping at 100, no Pong by 200 (one unanswered ping is enough by default).
    let earliest = match transport {
        Transport::Dtls => ms(450),
        _ => ms(200),
    };
    let elapsed = at - start;
    assert!(
        elapsed >= earliest && elapsed < earliest + Duration::from_secs(1),
        "{mode:?} nack after {elapsed:?}"
    );
    assert_eq!(
        tokio::time::timeout(ms(500), session.closed())
            .await
            .unwrap(),
        SessionState::Failed(NackReason::TooManyRetries)
    );
    assert!(client.sessions().is_empty());
    assert!(client_pongs.try_recv().is_err());
    assert_eq!(session.stats().failures, 1);
    // Failed, after it was established.
    assert!(session.was_established());
    client.shutdown().await;
    server.shutdown().await;
}

#[tokio::test]
async fn dtls_psk_silenced_server() {
    bounded(TEST_LIMIT, silenced_server_fails_the_session(Mode::DtlsPsk)).await
}

#[tokio::test]
async fn dtls_certificate_silenced_server() {
    bounded(
        TEST_LIMIT,
        silenced_server_fails_the_session(Mode::DtlsCertificate),
    )
    .await
}

#[tokio::test]
async fn tls_silenced_server() {
    bounded(TEST_LIMIT, silenced_server_fails_the_session(Mode::Tls)).await
}

#[tokio::test]
async fn mutual_tls_silenced_server() {
    bounded(
        TEST_LIMIT,
        silenced_server_fails_the_session(Mode::MutualTls),
    )
    .await
}

// ---- clean close ----

/// The client closes: over DTLS a close_notify, over TLS a 7.04 Release. The server sees a
/// closed session, not a failed one, and forgets it.
async fn client_close_is_clean(mode: Mode) {
    let pki = Pki::generate();
    let (server_credentials, client_credentials) = credentials(mode, &pki);
    let transport = mode.transport();
    let server = context(HANDSHAKE);
    let mut server_events = events(&server);
    let mut server_nacks = nacks(&server);
    let addr = listen(&server, transport, server_credentials).await;
    let client = context(HANDSHAKE);
    let session = connect(&client, transport, addr, &client_credentials)
        .await
        .expect("connect");
    let (role, event) = next(&mut server_events, Duration::from_secs(2), "event").await;
    assert_eq!((role, event), (Role::Server, SessionEvent::Established));

    session.close();
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(2), session.closed())
            .await
            .unwrap(),
        SessionState::Closed
    );
    let (role, event) = next(&mut server_events, Duration::from_secs(2), "event").await;
    assert_eq!((role, event), (Role::Server, SessionEvent::Closed));
    assert!(server.sessions().is_empty());
    assert!(server_nacks.try_recv().is_err());
    server.shutdown().await;
}

#[tokio::test]
async fn dtls_close_notify_is_a_clean_close() {
    bounded(TEST_LIMIT, client_close_is_clean(Mode::DtlsPsk)).await
}

#[tokio::test]
async fn tls_release_is_a_clean_close() {
    bounded(TEST_LIMIT, client_close_is_clean(Mode::Tls)).await
}

// ---- bad credentials ----

/// Connects with credentials the server rejects (or that reject the server): connect fails with
/// a TLS error naming `cause`, and both sides' nack handlers see `TlsFailed`, within the
/// handshake timeout.
async fn rejected(
    transport: Transport,
    server_credentials: ServerCredentials,
    client_credentials: ClientCredentials,
    cause: &str,
) {
    let server = context(HANDSHAKE);
    let mut server_nacks = nacks(&server);
    let addr = listen(&server, transport, server_credentials).await;
    let client = context(HANDSHAKE);
    let mut client_nacks = nacks(&client);

    let start = Instant::now();
    let error = connect(&client, transport, addr, &client_credentials)
        .await
        .expect_err("connect with bad credentials succeeded");
    assert!(start.elapsed() < HANDSHAKE, "took {:?}", start.elapsed());
    assert!(matches!(error, Error::Tls(_)), "{error}");
    assert!(error.to_string().contains(cause), "{error}");

    let Nack {
        session, reason, ..
    } = next(&mut client_nacks, ms(100), "client nack").await;
    assert_eq!(reason, NackReason::TlsFailed);
    assert_eq!(
        (session.transport(), session.role()),
        (transport, Role::Client)
    );
    assert_eq!(session.peer(), addr);
    assert_eq!(session.state(), SessionState::Failed(NackReason::TlsFailed));
    assert!(!session.was_established());
    assert!(client.sessions().is_empty());
    assert_eq!(client.stats().failures, 1);

    let Nack {
        session, reason, ..
    } = next(&mut server_nacks, HANDSHAKE, "server nack").await;
    assert_eq!(reason, NackReason::TlsFailed);
    assert_eq!(
        (session.transport(), session.role()),
        (transport, Role::Server)
    );
    assert!(!session.was_established());
    assert!(server.sessions().is_empty());
    server.shutdown().await;
}

#[tokio::test]
async fn dtls_wrong_psk_fails() {
    bounded(
        TEST_LIMIT,
        rejected(
            Transport::Dtls,
            ServerCredentials::Psk(PskCredentials::new("client-1", "secret")),
            ClientCredentials::Psk(PskCredentials::new("client-1", "wrong")),
            "handshake with",
        ),
    )
    .await
}

async fn untrusted_server(transport: Transport) {
    let pki = Pki::generate();
    let other = Pki::generate();
    let (server_credentials, _) = credentials(Mode::Tls, &pki);
    let (_, client_credentials) = credentials(Mode::Tls, &other);
    rejected(
        transport,
        server_credentials,
        client_credentials,
        "invalid peer certificate",
    )
    .await
}

#[tokio::test]
async fn dtls_untrusted_server_certificate_fails() {
    bounded(TEST_LIMIT, untrusted_server(Transport::Dtls)).await
}

#[tokio::test]
async fn tls_untrusted_server_certificate_fails() {
    bounded(TEST_LIMIT, untrusted_server(Transport::Tls)).await
}

async fn missing_client_certificate(transport: Transport, cause: &str) {
    let pki = Pki::generate();
    let (server_credentials, _) = credentials(Mode::MutualTls, &pki);
    let (_, client_credentials) = credentials(Mode::Tls, &pki);
    rejected(transport, server_credentials, client_credentials, cause).await
}

#[tokio::test]
async fn dtls_missing_client_certificate_fails() {
    bounded(
        TEST_LIMIT,
        missing_client_certificate(Transport::Dtls, "handshake with"),
    )
    .await
}

#[tokio::test]
async fn tls_missing_client_certificate_fails() {
    // TLS 1.3: the handshake completes on the client, the server's alert follows.
    bounded(
        TEST_LIMIT,
        missing_client_certificate(Transport::Tls, "CertificateRequired"),
    )
    .await
}

#[tokio::test]
async fn tls_client_certificate_from_another_ca_fails() {
    bounded(TEST_LIMIT, async {
        let pki = Pki::generate();
        let other = Pki::generate();
        let (server_credentials, _) = credentials(Mode::MutualTls, &pki);
        let client_credentials = ClientCredentials::Certificate {
            ca_pem: Some(pki.ca_pem()),
            identity: Some(other.identity("client")),
            insecure: false,
        };
        rejected(
            Transport::Tls,
            server_credentials,
            client_credentials,
            "rejected the session after the handshake",
        )
        .await
    })
    .await
}

// ---- handshake timeouts ----

async fn client_handshake_times_out(transport: Transport, silent: SocketAddr) {
    let client = context(ms(300));
    let mut client_nacks = nacks(&client);
    let start = Instant::now();
    let credentials = ClientCredentials::Certificate {
        ca_pem: None,
        identity: None,
        insecure: true,
    };
    let error = connect(&client, transport, silent, &credentials)
        .await
        .expect_err("handshake with a silent peer succeeded");
    let elapsed = start.elapsed();
    assert!(
        elapsed >= ms(300) && elapsed < ms(800),
        "gave up after {elapsed:?}"
    );
    assert!(matches!(error, Error::Tls(_)), "{error}");
    assert!(
        error.to_string().contains("timed out after 300ms"),
        "{error}"
    );
    let Nack {
        session, reason, ..
    } = next(&mut client_nacks, ms(100), "nack").await;
    assert_eq!(reason, NackReason::TlsFailed);
    assert_eq!(session.role(), Role::Client);
    assert!(client.sessions().is_empty());
}

#[tokio::test]
async fn dtls_handshake_times_out_against_a_silent_socket() {
    bounded(TEST_LIMIT, async {
        let silent = UdpSocket::bind(loopback()).await.unwrap();
        client_handshake_times_out(Transport::Dtls, silent.local_addr().unwrap()).await
    })
    .await
}

#[tokio::test]
async fn tls_handshake_times_out_against_a_listener_that_never_answers() {
    bounded(TEST_LIMIT, async {
        // The kernel completes the TCP handshake; nobody ever reads.
        let silent = TcpListener::bind(loopback()).await.unwrap();
        client_handshake_times_out(Transport::Tls, silent.local_addr().unwrap()).await
    })
    .await
}

/// A client that connects and says nothing costs the server one handshake deadline and a nack,
/// and never keeps others from connecting.
async fn server_handshake_times_out(mode: Mode) {
    let pki = Pki::generate();
    let (server_credentials, client_credentials) = credentials(mode, &pki);
    let transport = mode.transport();
    let server = context(ms(300));
    let mut server_nacks = nacks(&server);
    let addr = listen(&server, transport, server_credentials).await;

    let start = Instant::now();
    // A DTLS peer is taken for a client once it sends a ClientHello: send the start of one.
    let silent_udp = UdpSocket::bind(loopback()).await.unwrap();
    let mut silent_tcp = None;
    match transport {
        Transport::Dtls => {
            // A whole ClientHello (PSK_WITH_AES_128_CCM_8, an empty extensions block): the
            // server answers it, then waits for the rest, which never comes.
            let mut body = vec![0xfe, 0xfd];
            body.extend([0x42; 32]);
            body.extend([0, 0, 0, 2, 0xc0, 0xa8, 1, 0, 0, 0]);
            let len = body.len() as u8;
            let mut hello = vec![0x16, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, len + 12];
            hello.extend([1, 0, 0, len, 0, 0, 0, 0, 0, 0, 0, len]);
            hello.extend(body);
            silent_udp.send_to(&hello, addr).await.unwrap();
        }
        _ => silent_tcp = Some(TcpStream::connect(addr).await.unwrap()),
    }

    // Meanwhile a real client gets in.
    let client = context(HANDSHAKE);
    let session = connect(&client, transport, addr, &client_credentials)
        .await
        .expect("connect while another handshake hangs");
    assert!(start.elapsed() < ms(300), "blocked by the silent peer");

    let Nack {
        session: failed,
        reason,
        at,
    } = next(&mut server_nacks, Duration::from_secs(2), "nack").await;
    assert_eq!(reason, NackReason::TlsFailed);
    assert_eq!(failed.role(), Role::Server);
    let elapsed = at - start;
    assert!(
        elapsed >= ms(300) && elapsed < ms(800),
        "server gave up after {elapsed:?}"
    );
    // Only the real client's session is left.
    let left = server.sessions();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].peer().port(), session.local_addr().port());
    drop(silent_tcp);
    client.shutdown().await;
    server.shutdown().await;
}

#[tokio::test]
async fn dtls_server_handshake_times_out_without_blocking_others() {
    bounded(TEST_LIMIT, server_handshake_times_out(Mode::DtlsPsk)).await
}

#[tokio::test]
async fn tls_server_handshake_times_out_without_blocking_others() {
    bounded(TEST_LIMIT, server_handshake_times_out(Mode::Tls)).await
}

// ---- configuration errors and connect_with ----

#[tokio::test]
async fn tls_with_a_psk_is_a_configuration_error() {
    bounded(TEST_LIMIT, async {
        let ctx = context(HANDSHAKE);
        let mut nack_rx = nacks(&ctx);
        let psk = PskCredentials::new("id", "secret");
        let error = ctx
            .listen_tls(loopback(), ServerCredentials::Psk(psk.clone()))
            .await
            .unwrap_err();
        assert!(matches!(error, Error::Config(_)), "{error}");
        assert!(error.to_string().contains("rustls has no PSK"), "{error}");
        let error = ctx
            .connect_tls(
                "127.0.0.1:9".parse().unwrap(),
                "localhost",
                &ClientCredentials::Psk(psk),
            )
            .await
            .unwrap_err();
        assert!(error.to_string().contains("rustls has no PSK"), "{error}");
        assert!(
            nack_rx.try_recv().is_err(),
            "a mistake in the call is no nack"
        );
    })
    .await
}

#[tokio::test]
async fn secured_schemes_need_credentials() {
    bounded(TEST_LIMIT, async {
        let ctx = context(HANDSHAKE);
        let mut nack_rx = nacks(&ctx);
        for uri in ["coaps://127.0.0.1:9", "coaps+tcp://127.0.0.1:9"] {
            let error = ctx
                .connect_with(uri, &ClientCredentials::None)
                .await
                .unwrap_err();
            assert!(matches!(error, Error::Config(_)), "{uri}: {error}");
            assert!(error.to_string().contains("needs credentials"), "{error}");
            // The plain `connect` never falls back to plaintext either.
            assert!(matches!(
                ctx.connect(uri).await.unwrap_err(),
                Error::Config(_)
            ));
        }
        // Certificate mode without a CA and without `insecure` cannot verify the server.
        let no_ca = ClientCredentials::Certificate {
            ca_pem: None,
            identity: None,
            insecure: false,
        };
        for uri in ["coaps://127.0.0.1:9", "coaps+tcp://127.0.0.1:9"] {
            let error = ctx.connect_with(uri, &no_ca).await.unwrap_err();
            assert!(matches!(error, Error::Config(_)), "{uri}: {error}");
        }
        assert!(nack_rx.try_recv().is_err());
    })
    .await
}

#[tokio::test]
async fn connect_with_serves_every_scheme() {
    bounded(TEST_LIMIT, async {
        let pki = Pki::generate();
        let psk = PskCredentials::new("id", "secret");
        let server = context(HANDSHAKE);
        let udp = server.listen_udp(loopback()).await.unwrap();
        let tcp = server.listen_tcp(loopback()).await.unwrap();
        let dtls = listen(
            &server,
            Transport::Dtls,
            ServerCredentials::Psk(psk.clone()),
        )
        .await;
        let (tls_credentials, certificate) = credentials(Mode::Tls, &pki);
        let tls = listen(&server, Transport::Tls, tls_credentials).await;

        let client = context(HANDSHAKE);
        let cases = [
            (
                format!("coap://{}", udp.local_addr),
                ClientCredentials::None,
            ),
            (
                format!("coap+tcp://{}", tcp.local_addr),
                certificate.clone(),
            ),
            (format!("coaps://{dtls}"), ClientCredentials::Psk(psk)),
            // The URI's host is what the server's certificate must name (an IP SAN here).
            (format!("coaps+tcp://{tls}"), certificate),
        ];
        let mut transports = Vec::new();
        for (uri, credentials) in &cases {
            let session = client
                .connect_with(uri, credentials)
                .await
                .unwrap_or_else(|e| panic!("{uri}: {e}"));
            assert_eq!(session.state(), SessionState::Established, "{uri}");
            transports.push(session.transport());
        }
        assert_eq!(
            transports,
            [
                Transport::Udp,
                Transport::Tcp,
                Transport::Dtls,
                Transport::Tls
            ]
        );
        client.shutdown().await;
        server.shutdown().await;
    })
    .await
}
