//! Bounds that keep a server alive under hostile input: a full UDP session table, a TCP peer
//! that never sends its CSM, a slow-loris peer that never finishes a message, and DTLS
//! handshakes left half-done by the hundred. And nothing lost over DTLS and TLS: a request in
//! flight on a session that fails or is shut down ends with a typed error, never silently
//! (`requests.rs` shows the same over UDP and TCP).

use std::net::SocketAddr;
use std::time::Duration;

use coap_keepalive::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::timeout;

mod support;

const LIMIT: Duration = Duration::from_secs(10);

fn loopback() -> SocketAddr {
    ([127, 0, 0, 1], 0).into()
}

async fn ping(socket: &UdpSocket, server: SocketAddr, mid: u16) -> Option<Vec<u8>> {
    let m = mid.to_be_bytes();
    socket
        .send_to(&[0x40, 0x00, m[0], m[1]], server)
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    match timeout(Duration::from_millis(300), socket.recv(&mut buf)).await {
        Ok(Ok(n)) => Some(buf[..n].to_vec()),
        _ => None,
    }
}

#[tokio::test]
async fn udp_session_table_is_bounded_and_established_sessions_survive_a_flood() {
    let ctx = Context::builder().max_sessions(50).build().unwrap();
    let server = ctx.listen_udp(loopback()).await.unwrap().local_addr;

    // An established peer: heard from twice.
    let regular = UdpSocket::bind(loopback()).await.unwrap();
    assert!(ping(&regular, server, 1).await.is_some());
    assert!(ping(&regular, server, 2).await.is_some());

    // A flood from 300 source ports, one datagram each.
    let mut flood = Vec::new();
    for i in 0..300u16 {
        let socket = UdpSocket::bind(loopback()).await.unwrap();
        let m = i.to_be_bytes();
        socket
            .send_to(&[0x40, 0x00, m[0], m[1]], server)
            .await
            .unwrap();
        flood.push(socket);
    }
    // Let the server drain its queue.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        ctx.sessions().len() <= 50,
        "table bounded: {} sessions",
        ctx.sessions().len()
    );
    // The established session is still there and still answered.
    assert_eq!(
        ping(&regular, server, 3).await,
        Some(vec![0x70, 0x00, 0x00, 0x03])
    );
    assert!(ctx
        .sessions()
        .iter()
        .any(|s| s.peer() == regular.local_addr().unwrap()));
}

fn short_input_timeout() -> Context {
    Context::builder()
        .input_timeout(Duration::from_millis(300))
        .build()
        .unwrap()
}

/// The codes of the frames in `bytes`.
fn frame_codes(bytes: &[u8]) -> Vec<u8> {
    let mut decoder = coap_keepalive::proto::wire::tcp::FrameDecoder::new(1 << 20);
    decoder.push(bytes);
    std::iter::from_fn(|| decoder.next_frame().ok().flatten())
        .map(|f| f.code)
        .collect()
}

/// Reads until the server closes the connection, returning everything it sent.
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    timeout(LIMIT, stream.read_to_end(&mut all))
        .await
        .expect("the server closes the connection")
        .unwrap();
    all
}

#[tokio::test]
async fn tcp_peer_that_never_sends_its_csm_is_aborted_and_closed() {
    let ctx = short_input_timeout();
    let server = ctx.listen_tcp(loopback()).await.unwrap().local_addr;
    let mut stream = TcpStream::connect(server).await.unwrap();
    let started = std::time::Instant::now();
    let all = read_to_close(&mut stream).await;
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert_eq!(frame_codes(&all), vec![0xe1, 0xe5], "our CSM, then Abort");
    assert!(ctx.sessions().is_empty());
}

#[tokio::test]
async fn tcp_slow_loris_is_aborted_after_the_input_timeout() {
    let ctx = short_input_timeout();
    let server = ctx.listen_tcp(loopback()).await.unwrap().local_addr;
    let mut stream = TcpStream::connect(server).await.unwrap();
    stream.write_all(&[0x00, 0xe1]).await.unwrap();
    // start a 13-byte message and trickle it, never finishing
    let trickle = async {
        for byte in [0xd0u8, 0x00, 0x01, 0x02] {
            if stream.write_all(&[byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    trickle.await;
    let all = read_to_close(&mut stream).await;
    assert_eq!(frame_codes(&all), vec![0xe1, 0xe5], "our CSM, then Abort");
    timeout(LIMIT, async {
        while !ctx.sessions().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the session leaves the table");
}

// ---- DTLS handshakes in progress are bounded ----
// (The listener's own bound, `DtlsListener::peer_count`, is tested in `transport/dtls_conn.rs`.)

mod dtls_handshakes {
    use std::net::SocketAddr;
    use std::time::Duration;

    use crate::support::configs::dtls_psk_client_config;
    use crate::support::dtls;
    use coap_keepalive::{Context, NackReason, PskCredentials, ServerCredentials};
    use tokio::net::UdpSocket;
    use tokio::time::timeout;

    use super::{loopback, LIMIT};

    /// Server handshakes one DTLS endpoint of a context runs at once
    /// (`MAX_HANDSHAKES_IN_PROGRESS` in `transport/dtls.rs`).
    const CONTEXT_BOUND: usize = 256;

    fn psk() -> PskCredentials {
        PskCredentials::new("bounded", "secret")
    }

    /// A real ClientHello (webrtc-dtls's first flight, no cookie yet), caught on a socket that
    /// never answers it.
    async fn client_hello() -> Vec<u8> {
        let catcher = UdpSocket::bind(loopback()).await.unwrap();
        let target = catcher.local_addr().unwrap();
        let client = tokio::spawn(dtls::connect(
            target,
            dtls_psk_client_config(&psk()),
            Duration::from_millis(500),
        ));
        let mut buf = vec![0u8; 2048];
        let (n, _) = timeout(LIMIT, catcher.recv_from(&mut buf))
            .await
            .expect("a ClientHello")
            .unwrap();
        client.abort();
        buf.truncate(n);
        assert_eq!(
            (buf[0], buf[13]),
            (22, 1),
            "a handshake record, ClientHello"
        );
        buf
    }

    /// `n` peers, each on its own port, send the ClientHello and then nothing more: each
    /// handshake the server starts is left half-done until its deadline.
    async fn half_done_handshakes(server: SocketAddr, hello: &[u8], n: usize) -> Vec<UdpSocket> {
        let mut peers = Vec::with_capacity(n);
        for _ in 0..n {
            let socket = UdpSocket::bind(loopback()).await.unwrap();
            socket.send_to(hello, server).await.unwrap();
            peers.push(socket);
        }
        peers
    }

    /// How many of `peers` got an answer (the server's HelloVerifyRequest) within `wait`.
    async fn answered(peers: &[UdpSocket], wait: Duration) -> usize {
        let mut count = 0;
        let deadline = tokio::time::Instant::now() + wait;
        for socket in peers {
            let mut buf = [0u8; 2048];
            if timeout(
                deadline.saturating_duration_since(tokio::time::Instant::now()),
                socket.recv(&mut buf),
            )
            .await
            .is_ok_and(|r| r.is_ok())
            {
                count += 1;
            }
        }
        count
    }

    async fn rst_to_ping(conn: &webrtc_dtls::conn::DTLSConn) -> Vec<u8> {
        dtls::send(conn, &[0x40, 0x00, 0x0b, 0x0b]).await;
        let mut buf = [0u8; 64];
        let n = timeout(LIMIT, dtls::recv(conn, &mut buf))
            .await
            .expect("an answer")
            .expect("not closed");
        buf[..n].to_vec()
    }

    /// Against a context's DTLS endpoint: 400 peers that stop after their ClientHello start at
    /// most the bound of handshakes (each answered by a HelloVerifyRequest), those time out as
    /// `TlsFailed`, and a good client connects and is answered meanwhile.
    #[tokio::test]
    async fn context_bounds_handshakes_and_serves_a_good_client() {
        let hello = client_hello().await;
        let ctx = Context::builder()
            .connect_timeout(Duration::from_millis(1_000))
            .build()
            .unwrap();
        let (tx, mut nacks) = tokio::sync::mpsc::unbounded_channel();
        ctx.register_nack_handler(move |_, reason| {
            let _ = tx.send(reason);
        });
        let server = ctx
            .listen_dtls(loopback(), ServerCredentials::Psk(psk()))
            .await
            .unwrap()
            .local_addr;

        let peers = half_done_handshakes(server, &hello, CONTEXT_BOUND + 144).await;
        let good = tokio::spawn(dtls::connect(
            server,
            dtls_psk_client_config(&psk()),
            Duration::from_secs(5),
        ));
        let started = answered(&peers, Duration::from_millis(900)).await;
        assert!(
            (CONTEXT_BOUND / 2..=CONTEXT_BOUND).contains(&started),
            "{started} handshakes started, bound {CONTEXT_BOUND}"
        );

        let client = timeout(LIMIT, good)
            .await
            .unwrap()
            .unwrap()
            .expect("the good client connects");
        assert_eq!(rst_to_ping(&client).await, vec![0x70, 0x00, 0x0b, 0x0b]);

        // Every started handshake ends as a TlsFailed nack, and leaves nothing behind.
        let mut failed = 0;
        while let Ok(Some(reason)) = timeout(Duration::from_millis(1_500), nacks.recv()).await {
            assert_eq!(reason, NackReason::TlsFailed);
            failed += 1;
        }
        assert!(
            failed >= started && failed <= CONTEXT_BOUND + 1,
            "{failed} failed handshakes, {started} started"
        );
        assert_eq!(ctx.sessions().len(), 1, "only the good client's session");
        client.close().await.unwrap();
        drop(peers);
    }
}

// ---- nothing lost over DTLS and TLS ----

mod nothing_lost {
    use std::net::SocketAddr;
    use std::time::{Duration, Instant};

    use coap_keepalive::credentials::CertificateSet;
    use coap_keepalive::PingDecision;
    use coap_keepalive::{
        ClientCredentials, Context, Error, Method, NackReason, PskCredentials, Resource, Response,
        ServerCredentials, Session, Transport,
    };
    use coap_keepalive::{KeepaliveConfig, TransmissionParams};
    use tokio::time::timeout;

    use super::{loopback, LIMIT};

    /// A DTLS (PSK) or TLS server with `/slow` (answered after 150 ms) and `/never`
    /// (acknowledged, never answered), and a client session to it.
    struct Pair {
        server: Context,
        client: Context,
        session: Session,
    }

    async fn pair(transport: Transport, client_keepalive: Option<KeepaliveConfig>) -> Pair {
        let server = Context::new();
        server.add_resource(Resource::new("/slow").method_deferred(
            Method::Get,
            |_, _, responder| {
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(150)).await;
                    responder.respond(Response::content_text("worth the wait"));
                });
            },
        ));
        server.add_resource(Resource::new("/never").method_deferred(
            Method::Get,
            |_, _, responder| {
                // Held well past every test's end, then dropped unanswered.
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(15)).await;
                    drop(responder);
                });
            },
        ));
        let client = Context::new();
        if let Some(config) = client_keepalive {
            client.set_keepalive_config(config).unwrap();
        }
        let session = match transport {
            Transport::Dtls => {
                let psk = PskCredentials::new("client", "secret");
                let addr: SocketAddr = server
                    .listen_dtls(loopback(), ServerCredentials::Psk(psk.clone()))
                    .await
                    .unwrap()
                    .local_addr;
                client
                    .connect_dtls(addr, &ClientCredentials::Psk(psk))
                    .await
                    .unwrap()
            }
            _ => {
                let certs = CertificateSet::generate().unwrap();
                let credentials = ServerCredentials::Certificate {
                    identity: certs.server_identity(),
                    client_ca_pem: None,
                };
                let addr = server
                    .listen_tls(loopback(), credentials)
                    .await
                    .unwrap()
                    .local_addr;
                let verify = ClientCredentials::Certificate {
                    ca_pem: Some(certs.ca_cert_pem.clone()),
                    identity: None,
                    insecure: false,
                };
                client
                    .connect_tls(addr, "localhost", &verify)
                    .await
                    .unwrap()
            }
        };
        Pair {
            server,
            client,
            session,
        }
    }

    /// Starts `GET path` on the session and gives it time to reach the server.
    async fn in_flight(
        session: &Session,
        path: &'static str,
    ) -> tokio::task::JoinHandle<coap_keepalive::Result<Response>> {
        let session = session.clone();
        let request = tokio::spawn(async move { session.get(path).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        request
    }

    async fn shutdown_lets_a_request_in_flight_finish(transport: Transport) {
        let pair = pair(transport, None).await;
        let slow = in_flight(&pair.session, "/slow").await;
        timeout(LIMIT, pair.client.shutdown_within(Duration::from_secs(2)))
            .await
            .unwrap();
        let response = timeout(LIMIT, slow).await.unwrap().unwrap();
        assert_eq!(response.unwrap().payload_str(), "worth the wait");
        assert!(pair.client.sessions().is_empty());
        pair.server.shutdown().await;
    }

    #[tokio::test]
    async fn dtls_shutdown_lets_a_request_in_flight_finish() {
        shutdown_lets_a_request_in_flight_finish(Transport::Dtls).await
    }

    #[tokio::test]
    async fn tls_shutdown_lets_a_request_in_flight_finish() {
        shutdown_lets_a_request_in_flight_finish(Transport::Tls).await
    }

    async fn shutdown_deadline_fails_an_unanswered_request_with_closed(transport: Transport) {
        let pair = pair(transport, None).await;
        let never = in_flight(&pair.session, "/never").await;
        let started = Instant::now();
        pair.client
            .shutdown_within(Duration::from_millis(300))
            .await;
        let outcome = timeout(LIMIT, never).await.unwrap().unwrap();
        assert!(matches!(outcome, Err(Error::Closed)), "{outcome:?}");
        assert!(started.elapsed() < Duration::from_secs(1), "bounded");
        assert!(pair.client.sessions().is_empty());
        pair.server.shutdown().await;
    }

    #[tokio::test]
    async fn dtls_shutdown_deadline_fails_an_unanswered_request_with_closed() {
        shutdown_deadline_fails_an_unanswered_request_with_closed(Transport::Dtls).await
    }

    #[tokio::test]
    async fn tls_shutdown_deadline_fails_an_unanswered_request_with_closed() {
        shutdown_deadline_fails_an_unanswered_request_with_closed(Transport::Tls).await
    }

    /// The server shuts down (DTLS close_notify; TLS Release) with our request unanswered.
    async fn server_going_away_ends_a_request_in_flight(transport: Transport) {
        let pair = pair(transport, None).await;
        let never = in_flight(&pair.session, "/never").await;
        pair.server
            .shutdown_within(Duration::from_millis(200))
            .await;
        let outcome = timeout(LIMIT, never).await.unwrap().unwrap();
        assert!(
            matches!(
                outcome,
                Err(Error::Closed) | Err(Error::SessionFailed(NackReason::NotDeliverable))
            ),
            "{outcome:?}"
        );
        timeout(LIMIT, pair.session.closed()).await.unwrap();
        assert!(pair.client.sessions().is_empty());
        let late = timeout(LIMIT, pair.session.get("/slow")).await.unwrap();
        assert!(late.is_err(), "a request on the ended session: {late:?}");
    }

    #[tokio::test]
    async fn dtls_server_going_away_ends_a_request_in_flight() {
        server_going_away_ends_a_request_in_flight(Transport::Dtls).await
    }

    #[tokio::test]
    async fn tls_server_going_away_ends_a_request_in_flight() {
        server_going_away_ends_a_request_in_flight(Transport::Tls).await
    }

    /// The request was acknowledged (DTLS) or is simply outstanding (TLS) when the server falls
    /// silent: the keepalive fails the session, and the request ends with that failure.
    async fn failed_session_fails_its_request_in_flight(transport: Transport) {
        let keepalive = KeepaliveConfig::default()
            .with_interval(Some(Duration::from_millis(100)))
            .with_transmission(
                TransmissionParams::default()
                    .with_ack_timeout(Duration::from_millis(50))
                    .with_ack_random_factor(1.0)
                    .with_max_retransmit(2),
            )
            .with_pong_timeout(Duration::from_millis(100));
        let pair = pair(transport, Some(keepalive)).await;
        pair.server
            .register_ping_handler(|_, _| PingDecision::Suppress);
        let never = in_flight(&pair.session, "/never").await;
        let outcome = timeout(LIMIT, never).await.unwrap().unwrap();
        assert!(
            matches!(
                outcome,
                Err(Error::SessionFailed(NackReason::TooManyRetries))
            ),
            "{outcome:?}"
        );
        assert!(pair.client.sessions().is_empty());
        pair.server.shutdown().await;
    }

    #[tokio::test]
    async fn dtls_failed_session_fails_its_request_in_flight() {
        failed_session_fails_its_request_in_flight(Transport::Dtls).await
    }

    #[tokio::test]
    async fn tls_failed_session_fails_its_request_in_flight() {
        failed_session_fails_its_request_in_flight(Transport::Tls).await
    }
}

// ---- DTLS, TCP and TLS endpoints hold at most max_sessions ----

mod session_limit {
    use std::time::Duration;

    use coap_keepalive::credentials::CertificateSet;
    use coap_keepalive::{
        ClientCredentials, Context, PskCredentials, ServerCredentials, Session, Transport,
    };
    use tokio::sync::mpsc;
    use tokio::time::timeout;

    use super::{loopback, LIMIT};

    const MAX: usize = 3;

    /// A server endpoint holding at most [`MAX`] sessions, and a client to it.
    struct Endpoint {
        server: Context,
        client: Context,
        transport: Transport,
        addr: std::net::SocketAddr,
        credentials: ClientCredentials,
    }

    impl Endpoint {
        async fn start(transport: Transport) -> Endpoint {
            let server = Context::builder()
                .max_sessions(MAX)
                .connect_timeout(Duration::from_secs(2))
                .build()
                .unwrap();
            let certs = CertificateSet::generate().unwrap();
            let psk = PskCredentials::new("limited", "secret");
            let (endpoint, credentials) = match transport {
                Transport::Dtls => (
                    server
                        .listen_dtls(loopback(), ServerCredentials::Psk(psk.clone()))
                        .await,
                    ClientCredentials::Psk(psk),
                ),
                Transport::Tcp => (server.listen_tcp(loopback()).await, ClientCredentials::None),
                _ => (
                    server
                        .listen_tls(
                            loopback(),
                            ServerCredentials::Certificate {
                                identity: certs.server_identity(),
                                client_ca_pem: None,
                            },
                        )
                        .await,
                    ClientCredentials::Certificate {
                        ca_pem: Some(certs.ca_cert_pem.clone()),
                        identity: None,
                        insecure: false,
                    },
                ),
            };
            Endpoint {
                server,
                client: Context::builder()
                    .connect_timeout(Duration::from_secs(2))
                    .build()
                    .unwrap(),
                transport,
                addr: endpoint.unwrap().local_addr,
                credentials,
            }
        }

        async fn connect(&self) -> coap_keepalive::Result<Session> {
            match self.transport {
                Transport::Dtls => self.client.connect_dtls(self.addr, &self.credentials).await,
                Transport::Tcp => self.client.connect_tcp(self.addr).await,
                _ => {
                    self.client
                        .connect_tls(self.addr, "localhost", &self.credentials)
                        .await
                }
            }
        }

        async fn wait_for_server_sessions(&self, n: usize) {
            timeout(LIMIT, async {
                while self.server.sessions().len() != n {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await
            .unwrap_or_else(|_| {
                panic!("{} server sessions, not {n}", self.server.sessions().len())
            });
        }
    }

    /// Pings from `session` and waits for the pong.
    async fn pong(session: &Session, pongs: &mut mpsc::UnboundedReceiver<u64>) {
        while pongs.try_recv().is_ok() {}
        session.ping();
        loop {
            let id = timeout(Duration::from_secs(2), pongs.recv())
                .await
                .expect("a pong")
                .unwrap();
            if id == session.id().0 {
                return;
            }
        }
    }

    async fn endpoint_refuses_peers_beyond_max_sessions(transport: Transport) {
        let endpoint = Endpoint::start(transport).await;
        let (tx, mut pongs) = mpsc::unbounded_channel();
        endpoint.client.register_pong_handler(move |session, _| {
            let _ = tx.send(session.id().0);
        });
        let mut sessions = Vec::new();
        for _ in 0..MAX {
            sessions.push(endpoint.connect().await.expect("within the limit"));
        }
        endpoint.wait_for_server_sessions(MAX).await;

        // One more: refused (the connect fails, or the session is closed at once).
        match endpoint.connect().await {
            Err(_) => {}
            Ok(extra) => {
                timeout(Duration::from_secs(2), extra.closed())
                    .await
                    .expect("the session beyond the limit is closed");
            }
        }
        assert!(endpoint.server.sessions().len() <= MAX);
        for session in &sessions {
            pong(session, &mut pongs).await;
        }

        // A place frees up: a newcomer gets it.
        let first = sessions.remove(0);
        first.close();
        timeout(LIMIT, first.closed()).await.unwrap();
        endpoint.wait_for_server_sessions(MAX - 1).await;
        let newcomer = endpoint.connect().await.expect("room again");
        pong(&newcomer, &mut pongs).await;
        endpoint.wait_for_server_sessions(MAX).await;
    }

    #[tokio::test]
    async fn dtls_endpoint_holds_at_most_max_sessions() {
        endpoint_refuses_peers_beyond_max_sessions(Transport::Dtls).await
    }

    #[tokio::test]
    async fn tcp_endpoint_holds_at_most_max_sessions() {
        endpoint_refuses_peers_beyond_max_sessions(Transport::Tcp).await
    }

    #[tokio::test]
    async fn tls_endpoint_holds_at_most_max_sessions() {
        endpoint_refuses_peers_beyond_max_sessions(Transport::Tls).await
    }
}

/// One task serves every connection of a TCP listener: a peer that floods its connection with
/// pings (and reads the pongs) gets a few reads per turn and then waits behind the others, so
/// another connection's pings are still answered while the flood goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_tcp_connection_does_not_starve_the_others() {
    let ctx = Context::builder().build().unwrap();
    let server = ctx.listen_tcp(loopback()).await.unwrap().local_addr;
    let (mut from_server, mut to_server) = TcpStream::connect(server).await.unwrap().into_split();
    let drain = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        while matches!(from_server.read(&mut buf).await, Ok(n) if n > 0) {}
    });
    let flood = tokio::spawn(async move {
        to_server.write_all(&[0x00, 0xe1]).await.unwrap();
        // 8 192 pings (00 e2) a write, as fast as the server takes them.
        let pings = [0x00u8, 0xe2].repeat(8192);
        while to_server.write_all(&pings).await.is_ok() {}
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!flood.is_finished(), "the flood stopped");

    let mut quiet = support::RawStream::tcp(server, LIMIT).await;
    quiet.exchange_csms().await;
    for _ in 0..3 {
        let sent = std::time::Instant::now();
        quiet.send(&[0x00, 0xe2]).await;
        assert_eq!(quiet.frame().await.code, 0xe3);
        // A driver that served the flooder until its socket ran dry would never answer.
        let rtt = sent.elapsed();
        assert!(
            rtt < Duration::from_secs(2),
            "pong after {rtt:?} beside the flood"
        );
    }
    assert!(!flood.is_finished(), "the flood stopped");
    flood.abort();
    drain.abort();
    ctx.shutdown().await;
}
