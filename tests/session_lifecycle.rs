//! Who gets a session, how it ends, and what it counts, over real loopback sockets:
//!
//! - only a peer that sent a well-formed CoAP message gets a UDP session (RFC 7252 §4.2, §4.3):
//!   junk opens none and gets nothing, a rejected CON gets its RST and still opens none;
//! - an ICMP port unreachable fails a client session at once with its own reason, unless the
//!   soft policy (RFC 8085 §5.2) keeps it retransmitting, and never harms a server's socket;
//! - a TCP / TLS peer that closes (with or without 7.04 Release) while nothing of ours is
//!   outstanding ended the session normally; with a ping of ours outstanding it is a nack;
//! - statistics are live: a ping counts the moment it is asked for, a retransmission the moment
//!   it is sent, and the context's smoothed RTT aggregates every session.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use coap_keepalive::proto::wire::signal::PING;
use coap_keepalive::{ClientCredentials, Context, Error, NackReason, ServerCredentials, Transport};
use coap_keepalive::{IcmpPolicy, KeepaliveConfig, TransmissionParams};
use coap_keepalive::{PingDecision, SessionEvent};
use coap_keepalive::{Role, SessionState};

mod support;

use support::{
    bounded, drain, listen, listen_stream, loopback, ms, nacks, next, RawDatagram, RawStream,
};

/// The most any test here may take; each takes well under a second when all is well.
const TEST_LIMIT: Duration = Duration::from_secs(10);
/// How long to wait for an answer that should come.
const ANSWER_LIMIT: Duration = Duration::from_secs(2);

/// Polls `condition` every few milliseconds until it holds, at most `limit`.
async fn eventually(limit: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "{what} not within {limit:?}");
        tokio::time::sleep(ms(2)).await;
    }
}

/// Registers an event handler on `ctx` that reports every event with its session's id and role.
fn events(ctx: &Context) -> mpsc::UnboundedReceiver<(u64, Role, SessionEvent)> {
    let (tx, rx) = mpsc::unbounded_channel();
    ctx.register_event_handler(move |session, event| {
        let _ = tx.send((session.id().0, session.role(), event));
    });
    rx
}

// ---- only CoAP opens a UDP session ----

/// A UDP server that pings its clients after 30 idle milliseconds, with its events.
async fn pinging_udp_server() -> (
    Context,
    SocketAddr,
    mpsc::UnboundedReceiver<(u64, Role, SessionEvent)>,
) {
    let ctx = Context::new();
    let config = KeepaliveConfig::default()
        .with_interval(Some(ms(30)))
        .with_transmission(TransmissionParams::default().with_ack_timeout(ms(20)));
    ctx.set_keepalive_config(config).unwrap();
    let events = events(&ctx);
    let addr = listen(&ctx, Transport::Udp, None).await;
    (ctx, addr, events)
}

/// The first bytes of a DTLS 1.2 ClientHello record (content type 22, version fe fd).
const DTLS_CLIENT_HELLO: [u8; 25] = [
    0x16, 0xfe, 0xfd, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0c, 0x01, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
];

#[tokio::test]
async fn udp_junk_opens_no_session_and_gets_nothing() {
    bounded(TEST_LIMIT, async {
        let (ctx, addr, mut events) = pinging_udp_server().await;
        let peer = RawDatagram::udp(addr, ANSWER_LIMIT).await;
        // "hello world" reads as a version-1 ACK with a truncated token; the DTLS record has
        // version 0; neither is a CoAP message.
        peer.send(b"hello world").await;
        peer.send(&DTLS_CLIENT_HELLO).await;
        // Long enough for several pings and retransmissions, had a session been opened.
        peer.assert_quiet("junk").await;
        assert!(ctx.sessions().is_empty(), "{:?}", ctx.sessions());
        assert!(drain(&mut events).is_empty());
        assert_eq!(ctx.stats().pings_sent, 0);

        // A ping from the same port is CoAP: it is answered and opens the session.
        peer.assert_next_answer_is_rst_to_ping(0x0101).await;
        assert_eq!(ctx.sessions().len(), 1);
    })
    .await
}

#[tokio::test]
async fn udp_con_with_a_format_error_gets_rst_and_no_session() {
    bounded(TEST_LIMIT, async {
        let (ctx, addr, mut events) = pinging_udp_server().await;
        let peer = RawDatagram::udp(addr, ANSWER_LIMIT).await;
        // A CON GET whose option byte has the reserved delta 15; a CON whose option value runs
        // past the end; a CON 2.05 response that answers nothing of the server's; an empty
        // NON, which RFC 7252 §4.1 forbids (answered as libcoap's pings are, but no message).
        for datagram in [
            &[0x40, 0x01, 0x12, 0x34, 0xf0][..],
            &[0x40, 0x01, 0x12, 0x35, 0xb5, 0x61][..],
            &[0x40, 0x45, 0x12, 0x36][..],
            &[0x50, 0x00, 0x12, 0x37][..],
        ] {
            peer.send(datagram).await;
            assert_eq!(
                peer.recv().await,
                vec![0x70, 0x00, datagram[2], datagram[3]],
                "answer to {datagram:02x?}"
            );
        }
        peer.assert_quiet("the RSTs").await;
        assert!(ctx.sessions().is_empty(), "{:?}", ctx.sessions());
        assert!(drain(&mut events).is_empty());
    })
    .await
}

#[tokio::test]
async fn udp_ack_rst_and_rejected_non_from_a_stranger_open_no_session() {
    bounded(TEST_LIMIT, async {
        let (ctx, addr, mut events) = pinging_udp_server().await;
        let peer = RawDatagram::udp(addr, ANSWER_LIMIT).await;
        // An RST (say, answering an RST of ours to a junk CON), an empty ACK, and a NON with a
        // format error: never answered, and none is reason to keep a session.
        peer.send(&[0x70, 0x00, 0x12, 0x34]).await;
        peer.send(&[0x60, 0x00, 0x12, 0x35]).await;
        peer.send(&[0x50, 0x01, 0x12, 0x36, 0xf0]).await;
        peer.assert_quiet("an RST, an ACK and a bad NON").await;
        assert!(ctx.sessions().is_empty(), "{:?}", ctx.sessions());
        assert!(drain(&mut events).is_empty());
    })
    .await
}

/// Two of our own endpoints: a junk CON from one gets an RST from the other, and that RST
/// opens no session on the first either.
#[tokio::test]
async fn udp_rst_answering_junk_opens_no_session_on_either_side() {
    bounded(TEST_LIMIT, async {
        let (a, a_addr, _) = pinging_udp_server().await;
        let (b, b_addr, _) = pinging_udp_server().await;
        // Send from a's own port: a raw socket cannot share it, so bounce through b's answer.
        let raw = UdpSocket::bind(loopback()).await.unwrap();
        raw.send_to(&[0x40, 0x01, 0x55, 0x01, 0xf0], b_addr)
            .await
            .unwrap();
        let mut buf = [0u8; 16];
        let (n, _) = tokio::time::timeout(ANSWER_LIMIT, raw.recv_from(&mut buf))
            .await
            .expect("RST")
            .unwrap();
        assert_eq!(&buf[..n], &[0x70, 0x00, 0x55, 0x01]);
        // The same RST delivered to a.
        raw.send_to(&buf[..n], a_addr).await.unwrap();
        tokio::time::sleep(support::QUIET).await;
        assert!(a.sessions().is_empty() && b.sessions().is_empty());
    })
    .await
}

// ---- ICMP errors ----

/// A UDP port on loopback that nobody listens on (bound, then closed). On 127.0.0.99, which
/// no other test binds, so that no parallel test can take the port over meanwhile.
async fn closed_udp_port() -> SocketAddr {
    let socket = UdpSocket::bind(SocketAddr::from(([127, 0, 0, 99], 0)))
        .await
        .unwrap();
    socket.local_addr().unwrap()
}

fn icmp_config(policy: IcmpPolicy) -> KeepaliveConfig {
    KeepaliveConfig::default()
        .with_transmission(
            TransmissionParams::default()
                .with_ack_timeout(ms(300))
                .with_ack_random_factor(1.0)
                .with_max_retransmit(2),
        )
        .with_icmp_policy(policy)
}

#[tokio::test]
async fn udp_ping_to_a_closed_port_fails_at_once_with_an_icmp_error() {
    bounded(TEST_LIMIT, async {
        let port = closed_udp_port().await;
        let ctx = Context::new();
        ctx.set_keepalive_config(icmp_config(IcmpPolicy::Fail))
            .unwrap();
        let session = ctx
            .connect(&format!("coap://{port}"))
            .await
            .expect("connect");
        let start = Instant::now();
        let error = session.ping().await.expect_err("port unreachable");
        let elapsed = start.elapsed();
        assert!(
            matches!(error, Error::SessionFailed(NackReason::IcmpError)),
            "{error}"
        );
        assert_eq!(
            error.to_string(),
            "session failed: destination unreachable (ICMP)"
        );
        assert!(
            elapsed < ms(300),
            "nack after {elapsed:?}, ACK_TIMEOUT 300 ms"
        );
        assert_eq!(
            session.closed().await,
            SessionState::Failed(NackReason::IcmpError)
        );
        let stats = session.stats();
        assert_eq!((stats.pings_sent, stats.retransmissions), (1, 0));
        assert!(ctx.sessions().is_empty());
    })
    .await
}

#[tokio::test]
async fn udp_soft_icmp_policy_keeps_retransmitting() {
    bounded(TEST_LIMIT, async {
        let port = closed_udp_port().await;
        let ctx = Context::new();
        ctx.set_keepalive_config(icmp_config(IcmpPolicy::Soft))
            .unwrap();
        let mut nacks = nacks(&ctx);
        let session = ctx.connect_udp(port).await.expect("connect");
        let start = Instant::now();
        session.ping();
        // 300 + 600 + 1200 ms: the whole schedule, each transmission refused by the kernel.
        let nack = next(&mut nacks, Duration::from_secs(4), "nack").await;
        assert_eq!(nack.reason, NackReason::TooManyRetries);
        assert!(nack.at - start >= ms(2100), "{:?}", nack.at - start);
        assert_eq!(session.stats().retransmissions, 2);
    })
    .await
}

/// A server's socket serves many peers: an ICMP error for one of them (whose port closed while
/// the server pings it) neither kills the endpoint nor fails anyone else.
#[tokio::test]
async fn udp_server_survives_a_client_port_that_closed() {
    bounded(TEST_LIMIT, async {
        let (ctx, addr, _) = pinging_udp_server().await;
        let mut nacks = nacks(&ctx);
        let gone = RawDatagram::udp(addr, ANSWER_LIMIT).await;
        gone.assert_next_answer_is_rst_to_ping(0x0001).await;
        drop(gone);
        // A library client answers the server's pings by itself.
        let client = Context::new();
        let live = client.connect_udp(addr).await.unwrap();
        live.ping().await.expect("live client's pong");
        // The gone one fails on its retransmission schedule (20 + 40 + 80 + 160 + 320 ms),
        // while the live one is pinged every 30 ms and answers.
        let nack = next(&mut nacks, Duration::from_secs(3), "nack").await;
        assert_eq!(nack.session.role(), Role::Server);
        assert_ne!(nack.session.peer().port(), live.local_addr().port());
        assert_eq!(ctx.sessions().len(), 1);
        let server_side = ctx.sessions().pop().unwrap();
        assert!(server_side.stats().pongs >= 5, "{:?}", server_side.stats());
        live.ping().await.expect("live client's pong");
        assert_eq!(live.stats().pongs, 2);
        assert!(drain(&mut nacks).is_empty());
    })
    .await
}

// ---- honest ends of stream sessions ----

/// A library stream server pinging its clients after `interval`, with its nacks and events.
struct StreamServer {
    ctx: Context,
    transport: Transport,
    addr: SocketAddr,
    ca_pem: String,
    nacks: mpsc::UnboundedReceiver<support::Nack>,
    events: mpsc::UnboundedReceiver<(u64, Role, SessionEvent)>,
}

impl StreamServer {
    async fn start(transport: Transport, interval: Option<Duration>) -> StreamServer {
        let ctx = Context::new();
        ctx.set_keepalive_interval(interval);
        let nacks = nacks(&ctx);
        let events = events(&ctx);
        let (addr, ca_pem) = listen_stream(&ctx, transport).await;
        StreamServer {
            ctx,
            transport,
            addr,
            ca_pem,
            nacks,
            events,
        }
    }

    /// A raw client whose CSM exchange is done, and the server's session for it.
    async fn established(&self) -> (RawStream, coap_keepalive::Session) {
        let mut raw =
            RawStream::connect(self.transport, self.addr, &self.ca_pem, ANSWER_LIMIT).await;
        raw.exchange_csms().await;
        let mut session = None;
        eventually(ANSWER_LIMIT, "server session established", || {
            session = self
                .ctx
                .sessions()
                .into_iter()
                .find(|s| s.state() == SessionState::Established);
            session.is_some()
        })
        .await;
        (raw, session.unwrap())
    }
}

/// How a raw client leaves.
#[derive(Debug, Clone, Copy)]
enum Leave {
    /// Drops the connection (TCP FIN; over TLS without close_notify).
    Drop,
    /// Shuts its side down (FIN; over TLS after a close_notify).
    Shutdown,
    /// Sends 7.04 Release, then shuts down.
    Release,
}

async fn leave(mut raw: RawStream, how: Leave) {
    match how {
        Leave::Drop => drop(raw),
        Leave::Shutdown => raw.shutdown().await,
        Leave::Release => {
            raw.send(&[0x00, 0xe4]).await;
            raw.shutdown().await;
        }
    }
}

async fn peer_leaving_with_nothing_outstanding_closes(transport: Transport, how: Leave) {
    let mut server = StreamServer::start(transport, None).await;
    let (raw, session) = server.established().await;
    leave(raw, how).await;
    let ended = tokio::time::timeout(ANSWER_LIMIT, session.closed())
        .await
        .expect("session ended");
    assert_eq!(ended, SessionState::Closed, "{transport} {how:?}");
    let events: Vec<_> = drain(&mut server.events)
        .into_iter()
        .filter(|(id, _, _)| *id == session.id().0)
        .map(|(_, _, event)| event)
        .collect();
    assert_eq!(
        events,
        vec![SessionEvent::Established, SessionEvent::Closed],
        "{transport} {how:?}"
    );
    tokio::time::sleep(ms(50)).await;
    assert!(drain(&mut server.nacks).is_empty(), "{transport} {how:?}");
    assert!(server.ctx.sessions().is_empty());
    let counts = server.ctx.session_counts();
    assert_eq!(
        (counts.opened, counts.live, counts.closed, counts.failed),
        (1, 0, 1, 0)
    );
    assert_eq!(server.ctx.stats().failures, 0);
}

async fn peer_leaving_with_a_ping_outstanding_is_not_deliverable(transport: Transport, how: Leave) {
    let mut server = StreamServer::start(transport, Some(ms(50))).await;
    let (mut raw, session) = server.established().await;
    // The server pings after 50 idle ms; the client reads the ping and leaves unanswering.
    assert_eq!(raw.frame().await.code, PING);
    leave(raw, how).await;
    let nack = next(&mut server.nacks, ANSWER_LIMIT, "nack").await;
    assert_eq!(
        nack.reason,
        NackReason::NotDeliverable,
        "{transport} {how:?}"
    );
    assert_eq!(nack.session.id(), session.id());
    assert_eq!(
        session.closed().await,
        SessionState::Failed(NackReason::NotDeliverable)
    );
    let counts = server.ctx.session_counts();
    assert_eq!(
        (counts.opened, counts.live, counts.closed, counts.failed),
        (1, 0, 0, 1)
    );
    assert_eq!(server.ctx.stats().failures, 1);
}

#[tokio::test]
async fn tcp_peer_closing_with_nothing_outstanding_is_a_normal_end() {
    bounded(TEST_LIMIT, async {
        for how in [Leave::Drop, Leave::Shutdown, Leave::Release] {
            peer_leaving_with_nothing_outstanding_closes(Transport::Tcp, how).await;
        }
    })
    .await
}

#[tokio::test]
async fn tls_peer_closing_with_nothing_outstanding_is_a_normal_end() {
    bounded(TEST_LIMIT, async {
        for how in [Leave::Drop, Leave::Shutdown, Leave::Release] {
            peer_leaving_with_nothing_outstanding_closes(Transport::Tls, how).await;
        }
    })
    .await
}

#[tokio::test]
async fn tcp_peer_closing_with_a_ping_outstanding_is_not_deliverable() {
    bounded(TEST_LIMIT, async {
        for how in [Leave::Drop, Leave::Release] {
            peer_leaving_with_a_ping_outstanding_is_not_deliverable(Transport::Tcp, how).await;
        }
    })
    .await
}

#[tokio::test]
async fn tls_peer_closing_with_a_ping_outstanding_is_not_deliverable() {
    bounded(TEST_LIMIT, async {
        for how in [Leave::Drop, Leave::Release] {
            peer_leaving_with_a_ping_outstanding_is_not_deliverable(Transport::Tls, how).await;
        }
    })
    .await
}

/// RFC 8323 §5.5: after the peer's Release we may wait for the answers to what of ours is out.
/// A Pong that follows the Release ends the session normally, no nack; the ping was answered.
async fn release_then_answer_ends_normally(transport: Transport) {
    let mut server = StreamServer::start(transport, Some(ms(50))).await;
    let (mut raw, session) = server.established().await;
    let ping = raw.frame().await;
    assert_eq!(ping.code, PING);
    raw.send(&[0x00, 0xe4]).await;
    let mut pong = vec![ping.token.len() as u8, 0xe3];
    pong.extend_from_slice(&ping.token);
    raw.send(&pong).await;
    let ended = tokio::time::timeout(ANSWER_LIMIT, session.closed())
        .await
        .expect("session ended");
    assert_eq!(ended, SessionState::Closed, "{transport}");
    assert!(drain(&mut server.nacks).is_empty(), "{transport}: no nack");
    assert_eq!(session.stats().pongs, 1);
    let counts = server.ctx.session_counts();
    assert_eq!((counts.closed, counts.failed), (1, 0), "{transport}");
    drop(raw);
}

#[tokio::test]
async fn tcp_and_tls_release_then_the_pong_is_a_normal_end() {
    bounded(TEST_LIMIT, async {
        for transport in [Transport::Tcp, Transport::Tls] {
            release_then_answer_ends_normally(transport).await;
        }
    })
    .await
}

/// Over DTLS the peer's close_notify is judged the same way: with a ping of ours outstanding
/// it is a nack, with nothing outstanding a normal end.
#[tokio::test]
async fn dtls_peer_closing_is_judged_by_what_is_outstanding() {
    bounded(TEST_LIMIT, async {
        let psk = coap_keepalive::PskCredentials::new("lifecycle", "secret");
        let server = Context::new();
        server.set_keepalive_interval(Some(ms(100)));
        let mut server_nacks = nacks(&server);
        let mut server_events = events(&server);
        let addr = listen(
            &server,
            Transport::Dtls,
            Some(ServerCredentials::Psk(psk.clone())),
        )
        .await;

        // Nothing outstanding: a ping of ours answered, then the close.
        let quiet = RawDatagram::dtls_psk(addr, &psk, ANSWER_LIMIT).await;
        quiet.assert_next_answer_is_rst_to_ping(0x0001).await;
        quiet.close().await;
        eventually(ANSWER_LIMIT, "closed", || server.sessions().is_empty()).await;
        let ends: Vec<_> = drain(&mut server_events)
            .into_iter()
            .map(|(_, _, event)| event)
            .filter(|event| *event != SessionEvent::Established)
            .collect();
        assert_eq!(ends, vec![SessionEvent::Closed]);
        assert!(drain(&mut server_nacks).is_empty());

        // The server's ping unanswered when the peer leaves.
        let leaving = RawDatagram::dtls_psk(addr, &psk, ANSWER_LIMIT).await;
        let ping = leaving.recv().await;
        assert_eq!(&ping[..2], &[0x40, 0x00]);
        leaving.close().await;
        let nack = next(&mut server_nacks, ANSWER_LIMIT, "nack").await;
        assert_eq!(nack.reason, NackReason::NotDeliverable);
        let counts = server.session_counts();
        assert_eq!((counts.opened, counts.closed, counts.failed), (2, 1, 1));
    })
    .await
}

// ---- live statistics ----

async fn a_ping_counts_the_moment_it_is_asked_for(transport: Transport) {
    let server = Context::new();
    let addr = listen(&server, transport, None).await;
    let client = Context::new();
    let session = support::connect(&client, transport, addr, &ClientCredentials::None)
        .await
        .expect("connect");
    session.ping();
    // No waiting: the handle already counts the ping its driver is about to send.
    assert!(session.stats().pings_sent >= 1, "{:?}", session.stats());
    assert!(client.stats().pings_sent >= 1, "{:?}", client.stats());
    // A second one asked for at once merges into it (one ping out at a time).
    session.ping();
    assert_eq!(session.stats().pings_sent, 1, "{:?}", session.stats());
    // ... and goes on counting it once it was sent and answered.
    eventually(ANSWER_LIMIT, "pong counted", || session.stats().pongs == 1).await;
    assert_eq!(session.stats().pings_sent, 1);
    assert_eq!(client.stats().pings_sent, 1);
    // The server counted the ping it received without any event of its own to refresh it.
    eventually(ANSWER_LIMIT, "ping counted by the server", || {
        server.stats().pings_received == 1
    })
    .await;
}

#[tokio::test]
async fn udp_a_ping_counts_the_moment_it_is_asked_for() {
    bounded(
        TEST_LIMIT,
        a_ping_counts_the_moment_it_is_asked_for(Transport::Udp),
    )
    .await
}

#[tokio::test]
async fn tcp_a_ping_counts_the_moment_it_is_asked_for() {
    bounded(
        TEST_LIMIT,
        a_ping_counts_the_moment_it_is_asked_for(Transport::Tcp),
    )
    .await
}

#[tokio::test]
async fn udp_retransmissions_count_while_the_ping_is_out() {
    bounded(TEST_LIMIT, async {
        // A peer that reads and never answers.
        let silent = UdpSocket::bind(loopback()).await.unwrap();
        let ctx = Context::new();
        let config = KeepaliveConfig::default().with_transmission(
            TransmissionParams::default()
                .with_ack_timeout(ms(40))
                .with_ack_random_factor(1.0)
                .with_max_retransmit(4),
        );
        ctx.set_keepalive_config(config).unwrap();
        let session = ctx.connect_udp(silent.local_addr().unwrap()).await.unwrap();
        session.ping();
        let mut buf = [0u8; 16];
        for transmission in 0..3 {
            let n = tokio::time::timeout(ANSWER_LIMIT, silent.recv(&mut buf))
                .await
                .expect("a transmission")
                .unwrap();
            assert_eq!(&buf[..2], &[0x40, 0x00]);
            let _ = n;
            // Counted by the time the datagram is out, no event needed.
            eventually(ms(500), "retransmission counted", || {
                session.stats().retransmissions >= transmission
            })
            .await;
        }
        let stats = session.stats();
        assert_eq!((stats.pings_sent, stats.pongs), (1, 0));
        assert!(stats.retransmissions >= 2, "{stats:?}");
        assert_eq!(ctx.stats().retransmissions, stats.retransmissions);
    })
    .await
}

/// Two servers, one answering pings 40 ms late: the client context's smoothed RTT lies between
/// its two sessions', weighted by their pongs, not the first session's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_smoothed_rtt_aggregates_every_session() {
    bounded(TEST_LIMIT, async {
        let fast = Context::new();
        let fast_addr = listen(&fast, Transport::Tcp, None).await;
        let slow = Context::new();
        slow.register_ping_handler(|_, _| {
            // Runs on the server's connection task: holds the Pong back.
            std::thread::sleep(ms(40));
            PingDecision::Answer
        });
        let slow_addr = listen(&slow, Transport::Tcp, None).await;

        let client = Context::new();
        let first = client.connect_tcp(fast_addr).await.unwrap();
        let second = client.connect_tcp(slow_addr).await.unwrap();
        for (session, pongs) in [(&first, 1), (&second, 1), (&second, 2)] {
            session.ping();
            eventually(ANSWER_LIMIT, "pong", || session.stats().pongs == pongs).await;
        }
        let (a, b) = (first.stats(), second.stats());
        let (sa, sb) = (a.rtt.smoothed.unwrap(), b.rtt.smoothed.unwrap());
        assert!(sb > sa + ms(30), "{sa:?} {sb:?}");
        let total = client.stats();
        let expected = (sa + sb * 2) / 3;
        let smoothed = total.rtt.smoothed.unwrap();
        let diff = smoothed.abs_diff(expected);
        assert!(
            diff < Duration::from_micros(2),
            "{smoothed:?} vs {expected:?}"
        );
        assert_eq!(total.rtt.min, a.rtt.min);
        assert_eq!(total.rtt.max, b.rtt.max);
        assert_eq!(total.rtt.last, b.rtt.last);
        assert_eq!(total.pongs, 3);
    })
    .await
}
