//! Our client against our server over UDP and TCP, on loopback with millisecond keepalive
//! settings: pings answered, a silenced peer, server-side keepalive, per-session overrides,
//! graceful shutdown and a peer that closes its socket.
//!
//! Every scenario is written once, as a function taking the transport, and run for both.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use coap_keepalive::ClientCredentials;
use coap_keepalive::Context;
use coap_keepalive::NackReason;
use coap_keepalive::PingDecision;
use coap_keepalive::{KeepaliveConfig, TransmissionParams};
use coap_keepalive::{Role, Session, SessionState, Transport};

mod support;

use support::{bounded, drain, listen, loopback, ms, nacks, next, pongs};

/// The most any test here may take; each finishes in well under a second when all is well.
const TEST_LIMIT: Duration = Duration::from_secs(5);

/// Polls `condition` every few milliseconds until it holds, at most `limit`.
async fn eventually(limit: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "{what} not within {limit:?}");
        tokio::time::sleep(ms(2)).await;
    }
}

/// A plain UDP or TCP session of `ctx` to `server`.
async fn connect(ctx: &Context, transport: Transport, server: SocketAddr) -> Session {
    support::connect(ctx, transport, server, &ClientCredentials::None)
        .await
        .expect("connect")
}

/// Registers a ping handler that answers (or not) and reports the pinging peer's port and the
/// instant of each ping.
fn pings(ctx: &Context, decision: PingDecision) -> mpsc::UnboundedReceiver<(u16, Instant)> {
    let (tx, rx) = mpsc::unbounded_channel();
    ctx.register_ping_handler(move |session, _ping| {
        let _ = tx.send((session.peer().port(), Instant::now()));
        decision
    });
    rx
}
// ---- pings answered ----

async fn pings_are_answered(transport: Transport) {
    let server = Context::new();
    let pings_seen = Arc::new(AtomicU64::new(0));
    let counter = pings_seen.clone();
    server.register_ping_handler(move |_, _| {
        counter.fetch_add(1, Ordering::SeqCst);
        PingDecision::Answer
    });
    let addr = listen(&server, transport, None).await;

    let client = Context::new();
    client.set_keepalive_interval(Some(ms(100)));
    let mut pong_rx = pongs(&client);
    let mut nack_rx = nacks(&client);
    let session = connect(&client, transport, addr).await;

    let mut got = Vec::new();
    let started = Instant::now();
    while got.len() < 3 {
        let limit = Duration::from_secs(1).saturating_sub(started.elapsed());
        got.push(next(&mut pong_rx, limit, "pong").await);
    }
    for (i, pong) in got.iter().enumerate() {
        assert_eq!(pong.session, session.id());
        assert_eq!(pong.role, Role::Client);
        assert!(
            pong.rtt > Duration::ZERO && pong.rtt < ms(100),
            "{transport} rtt {:?}",
            pong.rtt
        );
        // The handler sees the counters that include its own pong.
        assert_eq!(pong.stats.pongs, i as u64 + 1);
        assert_eq!(pong.stats.rtt.last, Some(pong.rtt));
        assert!(pong.stats.pings_sent >= pong.stats.pongs);
    }

    let stats = session.stats();
    assert!(stats.pongs >= 3, "{stats:?}");
    assert!(stats.pings_sent >= stats.pongs, "{stats:?}");
    assert_eq!(stats.failures, 0);
    let (min, max) = (stats.rtt.min.unwrap(), stats.rtt.max.unwrap());
    for pong in &got {
        assert!(min <= pong.rtt && pong.rtt <= max, "{stats:?} vs {pong:?}");
    }
    assert!(stats.rtt.smoothed.is_some());
    assert!(pings_seen.load(Ordering::SeqCst) >= 3);

    let ours = client.sessions();
    assert_eq!(ours.len(), 1);
    assert_eq!(ours[0].id(), session.id());
    assert_eq!(ours[0].transport(), transport);
    assert_eq!(ours[0].role(), Role::Client);
    assert_eq!(ours[0].state(), SessionState::Established);

    let theirs = server.sessions();
    assert_eq!(theirs.len(), 1);
    assert_eq!(theirs[0].transport(), transport);
    assert_eq!(theirs[0].role(), Role::Server);
    assert_eq!(theirs[0].peer().port(), session.local_addr().port());
    assert!(theirs[0].stats().pings_received >= 3);

    assert!(drain(&mut nack_rx).is_empty());
}

#[tokio::test]
async fn udp_pings_are_answered() {
    bounded(TEST_LIMIT, pings_are_answered(Transport::Udp)).await
}

#[tokio::test]
async fn tcp_pings_are_answered() {
    bounded(TEST_LIMIT, pings_are_answered(Transport::Tcp)).await
}

// ---- silenced peer ----

async fn silenced_peer_fails_the_session(transport: Transport, config: KeepaliveConfig) {
    let server = Context::new();
    let mut server_pings = pings(&server, PingDecision::Suppress);
    let addr = listen(&server, transport, None).await;

    let client = Context::new();
    client.set_keepalive_config(config).unwrap();
    let mut nack_rx = nacks(&client);
    let mut pong_rx = pongs(&client);

    // Every instant of the session's life comes after this one.
    let start = Instant::now();
    let session = connect(&client, transport, addr).await;
    let nack = next(&mut nack_rx, Duration::from_secs(2), "nack").await;
    let elapsed = nack.at - start;

    assert_eq!(nack.reason, NackReason::TooManyRetries);
    assert_eq!(nack.session.id(), session.id());
    let (earliest, expected_pings) = match transport {
        // Ping at 100, retransmissions after 50 and 100 more, given up 200 after the last.
        Transport::Udp => (ms(100 + 50 + 100 + 200), 3),
        // Ping at 100, no Pong by 200: second ping, no Pong by 300: failed.
        _ => (ms(100 + 100 + 100), 2),
    };
    assert!(
        elapsed >= earliest && elapsed < earliest + ms(400),
        "{transport} nack after {elapsed:?}, expected {earliest:?} and a little"
    );

    assert_eq!(
        tokio::time::timeout(ms(500), session.closed())
            .await
            .expect("session ended"),
        SessionState::Failed(NackReason::TooManyRetries)
    );
    assert!(
        client.sessions().is_empty(),
        "a failed session left the table"
    );

    let stats = session.stats();
    assert_eq!(stats.failures, 1);
    assert_eq!(stats.pongs, 0);
    match transport {
        Transport::Udp => {
            assert_eq!(stats.pings_sent, 1);
            assert_eq!(stats.retransmissions, 2);
        }
        _ => assert_eq!(stats.pings_sent, 2),
    }
    assert_eq!(drain(&mut server_pings).len(), expected_pings);
    assert!(drain(&mut pong_rx).is_empty());
    assert!(drain(&mut nack_rx).is_empty(), "one nack per failure");
}

#[tokio::test]
async fn udp_silenced_peer_gives_too_many_retries() {
    let config = KeepaliveConfig::default()
        .with_interval(Some(ms(100)))
        .with_transmission(
            TransmissionParams::default()
                .with_ack_timeout(ms(50))
                .with_ack_random_factor(1.0)
                .with_max_retransmit(2),
        );
    bounded(
        TEST_LIMIT,
        silenced_peer_fails_the_session(Transport::Udp, config),
    )
    .await
}

#[tokio::test]
async fn tcp_silenced_peer_gives_too_many_retries() {
    let config = KeepaliveConfig::default()
        .with_interval(Some(ms(100)))
        .with_pong_timeout(ms(100))
        .with_max_unanswered(2);
    bounded(
        TEST_LIMIT,
        silenced_peer_fails_the_session(Transport::Tcp, config),
    )
    .await
}

// ---- server-side keepalive ----

async fn server_pings_its_client(transport: Transport) {
    let server = Context::new();
    server.set_keepalive_interval(Some(ms(100)));
    let mut server_pongs = pongs(&server);
    let mut server_nacks = nacks(&server);
    let addr = listen(&server, transport, None).await;

    let client = Context::new();
    let mut client_pings = pings(&client, PingDecision::Answer);
    let session = connect(&client, transport, addr).await;
    if transport == Transport::Udp {
        // A UDP server learns of a client only from its first datagram.
        session.ping();
    }

    for _ in 0..3 {
        let pong = next(&mut server_pongs, Duration::from_secs(1), "server pong").await;
        assert_eq!(pong.role, Role::Server);
        assert!(pong.rtt < ms(100));
    }
    let server_sessions = server.sessions();
    assert_eq!(server_sessions.len(), 1);
    assert_eq!(server_sessions[0].transport(), transport);
    assert!(server_sessions[0].stats().pings_sent >= 3);

    let answered = drain(&mut client_pings);
    assert!(answered.len() >= 3, "client answered {answered:?}");
    assert!(answered.iter().all(|(port, _)| *port == addr.port()));
    assert!(session.stats().pings_received >= 3);
    // The client's keepalive is off: at most the one ping made by hand.
    assert!(session.stats().pings_sent <= 1);
    assert!(drain(&mut server_nacks).is_empty());
}

#[tokio::test]
async fn udp_server_pings_its_client() {
    bounded(TEST_LIMIT, server_pings_its_client(Transport::Udp)).await
}

#[tokio::test]
async fn tcp_server_pings_its_client() {
    bounded(TEST_LIMIT, server_pings_its_client(Transport::Tcp)).await
}

// ---- per-session overrides ----

async fn session_override_stops_pings(transport: Transport) {
    let server = Context::new();
    let mut server_pings = pings(&server, PingDecision::Answer);
    let addr = listen(&server, transport, None).await;

    let client = Context::new();
    client.set_keepalive_interval(Some(ms(100)));
    let mut pong_rx = pongs(&client);
    let quiet = connect(&client, transport, addr).await;
    quiet.set_keepalive(0);
    let chatty = connect(&client, transport, addr).await;

    let mut chatty_pongs = 0;
    while chatty_pongs < 3 {
        let pong = next(&mut pong_rx, Duration::from_secs(1), "pong").await;
        assert_eq!(pong.session, chatty.id(), "the quiet session got a pong");
        chatty_pongs += 1;
    }
    // By now the quiet session would have pinged three times.
    let quiet_port = quiet.local_addr().port();
    let from_quiet = drain(&mut server_pings)
        .into_iter()
        .filter(|(port, _)| *port == quiet_port)
        .count();
    assert_eq!(from_quiet, 0, "{transport}: the overridden session pinged");
    assert_eq!(quiet.stats().pings_sent, 0);

    // A later context-wide change leaves the override alone.
    client.set_keepalive_interval(Some(ms(50)));
    tokio::time::sleep(ms(120)).await;
    let from_quiet = drain(&mut server_pings)
        .into_iter()
        .filter(|(port, _)| *port == quiet_port)
        .count();
    assert_eq!(
        from_quiet, 0,
        "{transport}: the context overrode the session"
    );
}

#[tokio::test]
async fn udp_session_override_stops_pings() {
    bounded(TEST_LIMIT, session_override_stops_pings(Transport::Udp)).await
}

#[tokio::test]
async fn tcp_session_override_stops_pings() {
    bounded(TEST_LIMIT, session_override_stops_pings(Transport::Tcp)).await
}

/// A context-wide change reaches a live session that has no override, and leaves the
/// override of another session alone, also when the context later replaces its whole
/// configuration.
async fn context_changes_reach_live_sessions_but_not_their_overrides(transport: Transport) {
    const OWN: Duration = Duration::from_millis(250);
    const CONTEXT: Duration = Duration::from_millis(40);
    let server = Context::new();
    let mut server_pings = pings(&server, PingDecision::Answer);
    let addr = listen(&server, transport, None).await;

    let client = Context::new(); // keepalive off
    let follows = connect(&client, transport, addr).await;
    let own = connect(&client, transport, addr).await;
    own.set_keepalive_interval(Some(OWN));
    tokio::time::sleep(ms(100)).await;
    let port = |session: &Session| session.local_addr().port();
    let before = drain(&mut server_pings);
    assert!(
        before.iter().all(|(p, _)| *p != port(&follows)),
        "{transport}: keepalive is off, yet the session pinged"
    );

    // The live session without an override takes the new interval at once, whether the
    // interval alone or the whole configuration changes; the other keeps its own through both.
    client.set_keepalive_interval(Some(ms(80)));
    let config = client
        .keepalive_config()
        .with_interval(Some(CONTEXT))
        .with_max_unanswered(2);
    client.set_keepalive_config(config).unwrap();
    assert_eq!(client.keepalive_config().interval, Some(CONTEXT));
    tokio::time::sleep(ms(450)).await;
    let after = drain(&mut server_pings);
    let from = |session: &Session| {
        after
            .iter()
            .filter(|(p, _)| *p == port(session))
            .map(|(_, at)| *at)
            .collect::<Vec<_>>()
    };
    let (followed, kept) = (from(&follows), from(&own));
    assert!(
        followed.len() >= 4,
        "{transport}: the context's 40 ms interval did not reach the live session: {} pings",
        followed.len()
    );
    assert!(
        (1..=2).contains(&kept.len()),
        "{transport}: the session's own 250 ms interval did not survive: {} pings",
        kept.len()
    );
    for gap in kept.windows(2).map(|w| w[1] - w[0]) {
        assert!(
            gap >= ms(200),
            "{transport}: pings {gap:?} apart, not {OWN:?}"
        );
    }
    assert_eq!(follows.state(), SessionState::Established);
    assert_eq!(own.state(), SessionState::Established);
}

#[tokio::test]
async fn udp_context_changes_reach_live_sessions_but_not_their_overrides() {
    bounded(
        TEST_LIMIT,
        context_changes_reach_live_sessions_but_not_their_overrides(Transport::Udp),
    )
    .await
}

#[tokio::test]
async fn tcp_context_changes_reach_live_sessions_but_not_their_overrides() {
    bounded(
        TEST_LIMIT,
        context_changes_reach_live_sessions_but_not_their_overrides(Transport::Tcp),
    )
    .await
}

/// A session's own pong timeout and `max_unanswered` fail it early against a silent peer,
/// while its sibling on the same context fails on the context's (more patient) settings; a
/// context-wide change made in between leaves the overrides alone.
async fn failure_overrides_apply_to_their_session_only(transport: Transport) {
    let server = Context::new();
    let _server_pings = pings(&server, PingDecision::Suppress); // looks dead
    let addr = listen(&server, transport, None).await;

    // A ping is unanswered after 20 ms (UDP: no retransmission) or 50 ms (TCP); 8 in a row
    // fail a session: about 210 ms (UDP) or 450 ms (TCP) after connecting.
    let client = Context::builder()
        .keepalive(ms(50))
        .ack_timeout(ms(20))
        .ack_random_factor(1.0)
        .max_retransmit(0)
        .pong_timeout(ms(50))
        .max_unanswered(8)
        .build()
        .unwrap();
    let mut nack_rx = nacks(&client);
    let patient = connect(&client, transport, addr).await;
    let quick = connect(&client, transport, addr).await;
    quick.set_pong_timeout(ms(20)).unwrap();
    quick.set_max_unanswered(1).unwrap();
    assert!(quick.set_max_unanswered(0).is_err());
    assert!(quick.set_pong_timeout(Duration::ZERO).is_err());
    let started = Instant::now();
    client.set_keepalive_interval(Some(ms(40)));

    let first = next(&mut nack_rx, Duration::from_secs(1), "nack").await;
    assert_eq!(
        first.session.id(),
        quick.id(),
        "{transport}: the quick session fails first"
    );
    assert_eq!(first.reason, NackReason::TooManyRetries);
    assert!(
        first.at - started < ms(150),
        "{transport}: the overrides did not apply: failed after {:?}",
        first.at - started
    );
    assert_eq!(patient.state(), SessionState::Established);
    let second = next(&mut nack_rx, Duration::from_secs(2), "nack").await;
    assert_eq!(second.session.id(), patient.id());
    assert_eq!(second.reason, NackReason::TooManyRetries);
    assert!(
        second.at - first.at >= ms(60),
        "{transport}: the patient session failed {:?} after the quick one",
        second.at - first.at
    );
}

#[tokio::test]
async fn udp_failure_overrides_apply_to_their_session_only() {
    bounded(
        TEST_LIMIT,
        failure_overrides_apply_to_their_session_only(Transport::Udp),
    )
    .await
}

#[tokio::test]
async fn tcp_failure_overrides_apply_to_their_session_only() {
    bounded(
        TEST_LIMIT,
        failure_overrides_apply_to_their_session_only(Transport::Tcp),
    )
    .await
}

async fn mark_active_postpones_the_ping(transport: Transport) {
    const INTERVAL: Duration = Duration::from_millis(200);
    let server = Context::new();
    let mut server_pings = pings(&server, PingDecision::Answer);
    let addr = listen(&server, transport, None).await;

    let client = Context::new();
    client.set_keepalive_interval(Some(INTERVAL));
    let session = connect(&client, transport, addr).await;

    // Twice the interval of evidence of life from elsewhere: no ping is due meanwhile.
    let mut marked = Instant::now();
    for _ in 0..8 {
        tokio::time::sleep(ms(50)).await;
        marked = Instant::now();
        session.mark_active();
    }
    assert!(
        drain(&mut server_pings).is_empty(),
        "{transport}: pinged although marked active"
    );
    assert_eq!(session.stats().pings_sent, 0);

    // Then the ping comes one interval after the last mark.
    let (_, pinged) = next(&mut server_pings, Duration::from_secs(1), "ping").await;
    let after = pinged - marked;
    assert!(
        after >= INTERVAL && after < INTERVAL + ms(150),
        "{transport}: ping {after:?} after the last mark_active"
    );
}

#[tokio::test]
async fn udp_mark_active_postpones_the_ping() {
    bounded(TEST_LIMIT, mark_active_postpones_the_ping(Transport::Udp)).await
}

#[tokio::test]
async fn tcp_mark_active_postpones_the_ping() {
    bounded(TEST_LIMIT, mark_active_postpones_the_ping(Transport::Tcp)).await
}

// ---- graceful shutdown and closed connections (TCP) ----

#[tokio::test]
async fn tcp_graceful_shutdown_releases_the_server_session() {
    bounded(TEST_LIMIT, async {
        let server = Context::new();
        let mut server_nacks = nacks(&server);
        let mut server_events = server.events();
        let addr = listen(&server, Transport::Tcp, None).await;

        let client = Context::new();
        client.set_keepalive_interval(Some(ms(100)));
        let mut client_nacks = nacks(&client);
        let session = connect(&client, Transport::Tcp, addr).await;
        let server_session = server.sessions().pop().expect("server session");
        assert_eq!(server_session.role(), Role::Server);

        client.shutdown_within(Duration::from_secs(1)).await;
        assert_eq!(session.closed().await, SessionState::Closed);
        assert!(client.sessions().is_empty());

        // The Release reaches the server, which closes its session without a nack.
        let ended = tokio::time::timeout(Duration::from_secs(1), server_session.closed())
            .await
            .expect("server session ended");
        assert_eq!(ended, SessionState::Closed);
        assert!(server.sessions().is_empty(), "server session left in table");
        // Its events went out before `closed()` woke: established first, closed last (a
        // ping of the client's may come between on a slow machine).
        let events: Vec<_> = std::iter::from_fn(|| server_events.try_recv())
            .map(|item| item.expect("no lag"))
            .filter(|event| event.session.id() == server_session.id())
            .map(|event| event.kind)
            .collect();
        assert_eq!(
            events.first(),
            Some(&coap_keepalive::EventKind::Established),
            "{events:?}"
        );
        assert_eq!(
            events.last(),
            Some(&coap_keepalive::EventKind::Closed),
            "{events:?}"
        );
        // Nothing trails the close: the EOF after the Release is not a failure.
        tokio::time::sleep(ms(50)).await;
        assert!(drain(&mut server_nacks).is_empty());
        assert!(drain(&mut client_nacks).is_empty());
    })
    .await
}

/// The CSM a raw peer sends: empty, all defaults.
const EMPTY_CSM: [u8; 2] = [0x00, 0xe1];

// Two worker threads: `closed()` must not wake before the session left the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_server_closing_its_socket_ends_the_session_normally() {
    bounded(TEST_LIMIT, async {
        let listener = TcpListener::bind(loopback()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let peer = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            stream.write_all(&EMPTY_CSM).await.unwrap();
            // Read the client's CSM so that closing sends a FIN, not a reset.
            let mut buf = [0u8; 64];
            let _ = stream.read(&mut buf).await.unwrap();
            stream
        });

        let client = Context::new();
        let mut client_nacks = nacks(&client);
        let session = connect(&client, Transport::Tcp, addr).await;
        drop(peer.await.unwrap());

        // Nothing of ours was outstanding: the peer ended the session, nobody failed.
        let ended = tokio::time::timeout(Duration::from_secs(1), session.closed())
            .await
            .expect("session ended");
        assert_eq!(ended, SessionState::Closed);
        assert!(client.sessions().is_empty());
        tokio::time::sleep(ms(50)).await;
        assert!(drain(&mut client_nacks).is_empty());
    })
    .await
}

// Two worker threads: `closed()` must not wake before the session left the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_client_closing_its_socket_ends_the_session_normally() {
    bounded(TEST_LIMIT, async {
        let server = Context::new();
        let mut server_nacks = nacks(&server);
        let addr = listen(&server, Transport::Tcp, None).await;

        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(&EMPTY_CSM).await.unwrap();
        let mut buf = [0u8; 64];
        assert!(stream.read(&mut buf).await.unwrap() > 0, "server CSM");
        eventually(Duration::from_secs(1), "server session established", || {
            server
                .sessions()
                .iter()
                .any(|s| s.state() == SessionState::Established)
        })
        .await;
        let server_session = server.sessions().pop().expect("server session");
        drop(stream);

        // Nothing of the server's was outstanding: a normal end, not a nack.
        let ended = tokio::time::timeout(Duration::from_secs(1), server_session.closed())
            .await
            .expect("session ended");
        assert_eq!(ended, SessionState::Closed);
        assert!(server.sessions().is_empty());
        tokio::time::sleep(ms(50)).await;
        assert!(drain(&mut server_nacks).is_empty());
    })
    .await
}

// ---- our address on a wildcard listener ----

/// A TCP listener on a wildcard address: each connection's session reports the address the
/// connection arrived at, not the listener's, and sessions at two addresses keep theirs.
#[tokio::test]
async fn a_wildcard_listener_reports_each_connections_own_address() {
    bounded(TEST_LIMIT, async {
        let server = Context::new();
        let endpoint = server
            .listen_tcp(SocketAddr::from(([0, 0, 0, 0], 0)))
            .await
            .expect("listen");
        let port = endpoint.local_addr.port();
        assert!(endpoint.local_addr.ip().is_unspecified());
        let client = Context::new();
        // Two addresses of this host that reach the wildcard listener.
        let targets = [[127, 0, 0, 1], [127, 0, 0, 2]].map(|ip| SocketAddr::from((ip, port)));
        let mut clients = Vec::new();
        for target in targets {
            clients.push(connect(&client, Transport::Tcp, target).await);
            eventually(ms(2000), "the server session", || {
                server.sessions().len() == clients.len()
            })
            .await;
        }
        for (session, target) in clients.iter().zip(targets) {
            let theirs = server.sessions();
            let theirs = theirs
                .iter()
                .find(|s| s.peer() == session.local_addr())
                .expect("the server's session of this client");
            assert_eq!(theirs.local_addr(), target, "{theirs}");
            assert_eq!(session.peer(), target);
        }
    })
    .await
}
