//! Pulling instead of registering callbacks: `Context::events()` (in order, to several receivers,
//! lag reported), `Session::ping().await` with its RTT or its failure, and `Observation` as a
//! `Stream`. Real loopback sockets, millisecond settings.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_core::Stream;

use coap_keepalive::{
    ClientCredentials, Context, Error, Event, EventKind, Events, Lagged, NackReason, PingDecision,
    Resource, Response, Session, SessionState, Transport,
};
use coap_keepalive::{KeepaliveConfig, TransmissionParams};

mod support;

use support::{bounded, listen, loopback, ms, RawStream};

/// The most any test here may take; each finishes in well under a second when all is well.
const TEST_LIMIT: Duration = Duration::from_secs(5);

/// Quick retransmissions (10, 20, 40 ms: given up after 70 ms) and a 100 ms pong timeout.
fn quick() -> KeepaliveConfig {
    KeepaliveConfig::default()
        .with_transmission(
            TransmissionParams::default()
                .with_ack_timeout(ms(10))
                .with_ack_random_factor(1.0)
                .with_max_retransmit(2),
        )
        .with_pong_timeout(ms(100))
}

fn quick_context() -> Context {
    let ctx = Context::new();
    ctx.set_keepalive_config(quick()).unwrap();
    ctx
}

async fn connect(ctx: &Context, transport: Transport, server: std::net::SocketAddr) -> Session {
    support::connect(ctx, transport, server, &ClientCredentials::None)
        .await
        .expect("connect")
}

/// The next event of `events` within a second.
async fn next_event(events: &mut Events) -> Event {
    tokio::time::timeout(Duration::from_secs(1), events.recv())
        .await
        .expect("no event within 1 s")
        .expect("events ended")
        .expect("lagged")
}

/// The next events of `events` until (and with) the first terminal one of `session`, as kinds.
async fn kinds_until_end(events: &mut Events, session: &Session) -> Vec<EventKind> {
    let mut kinds = Vec::new();
    loop {
        let event = next_event(events).await;
        if event.session.id() != session.id() {
            continue;
        }
        let end = event.kind.is_terminal();
        kinds.push(event.kind);
        if end {
            return kinds;
        }
    }
}

/// Kinds with the RTT zeroed, to compare sequences.
fn shape(kinds: &[EventKind]) -> Vec<EventKind> {
    kinds
        .iter()
        .map(|kind| match kind {
            EventKind::Pong { .. } => EventKind::Pong {
                rtt: Duration::ZERO,
            },
            EventKind::PingReceived { answered, .. } => EventKind::PingReceived {
                ping: coap_keepalive::PeerPing::Datagram { message_id: 0 },
                answered: *answered,
            },
            other => other.clone(),
        })
        .collect()
}

// ---- events in order ----

async fn events_in_order(transport: Transport) {
    let server = Context::new();
    let mut server_events = server.events();
    let addr = listen(&server, transport, None).await;
    let client = Context::new();
    let mut events = client.events();
    let session = connect(&client, transport, addr).await;

    let rtt = session.ping().await.expect("pong");
    assert!(
        rtt > Duration::ZERO && rtt < Duration::from_secs(1),
        "{rtt:?}"
    );
    session.close();
    let kinds = kinds_until_end(&mut events, &session).await;
    assert_eq!(
        shape(&kinds),
        [
            EventKind::Established,
            EventKind::PingSent {
                retransmission: false
            },
            EventKind::Pong {
                rtt: Duration::ZERO
            },
            EventKind::Closed,
        ]
    );
    assert_eq!(kinds[2], EventKind::Pong { rtt });
    assert_eq!(session.state(), SessionState::Closed);
    assert!(
        client.sessions().is_empty(),
        "a closed session left the table"
    );

    // The server saw the session established and the ping, answered.
    let established = next_event(&mut server_events).await;
    assert_eq!(established.kind, EventKind::Established);
    let ping = next_event(&mut server_events).await;
    assert!(
        matches!(ping.kind, EventKind::PingReceived { answered: true, .. }),
        "{ping}"
    );
    assert_eq!(ping.session.id(), established.session.id());
    if transport == Transport::Tcp {
        // The client's Release ends the server's session too.
        let closed = next_event(&mut server_events).await;
        assert_eq!(closed.kind, EventKind::Closed);
    }
    client.shutdown().await;
    server.shutdown().await;
}

#[tokio::test]
async fn udp_events_come_in_order() {
    bounded(TEST_LIMIT, events_in_order(Transport::Udp)).await;
}

#[tokio::test]
async fn tcp_events_come_in_order() {
    bounded(TEST_LIMIT, events_in_order(Transport::Tcp)).await;
}

/// A server that answers no ping: the client's ping is retransmitted, then the session fails,
/// and both `events()` and `ping().await` say why.
async fn silent_peer_fails(transport: Transport) {
    let server = Context::new();
    server.register_ping_handler(|_, _| PingDecision::Suppress);
    let mut server_events = server.events();
    let addr = listen(&server, transport, None).await;
    let client = quick_context();
    let mut events = client.events();
    let session = connect(&client, transport, addr).await;

    let error = session
        .ping()
        .await
        .expect_err("no pong from a silent peer");
    assert!(
        matches!(error, Error::SessionFailed(NackReason::TooManyRetries)),
        "{error}"
    );
    assert!(error.is_timeout());
    let kinds = kinds_until_end(&mut events, &session).await;
    let sent = EventKind::PingSent {
        retransmission: false,
    };
    let resent = EventKind::PingSent {
        retransmission: true,
    };
    let failed = EventKind::Failed(NackReason::TooManyRetries);
    match transport {
        Transport::Udp => assert_eq!(
            kinds,
            [EventKind::Established, sent, resent.clone(), resent, failed]
        ),
        _ => assert_eq!(
            kinds,
            [
                EventKind::Established,
                sent,
                EventKind::PingUnanswered { count: 1 },
                failed
            ]
        ),
    }
    assert_eq!(
        session.state(),
        SessionState::Failed(NackReason::TooManyRetries)
    );
    // A ping of a session that ended fails at once, with the same reason.
    let again = session.ping().await.expect_err("the session failed");
    assert!(matches!(
        again,
        Error::SessionFailed(NackReason::TooManyRetries)
    ));

    // The server saw the pings and did not answer them.
    assert_eq!(
        next_event(&mut server_events).await.kind,
        EventKind::Established
    );
    let ping = next_event(&mut server_events).await;
    assert!(
        matches!(
            ping.kind,
            EventKind::PingReceived {
                answered: false,
                ..
            }
        ),
        "{ping}"
    );
    client.shutdown().await;
    server.shutdown().await;
}

#[tokio::test]
async fn udp_ping_of_a_silent_peer_fails_with_too_many_retries() {
    bounded(TEST_LIMIT, silent_peer_fails(Transport::Udp)).await;
}

#[tokio::test]
async fn tcp_ping_of_a_silent_peer_fails_with_too_many_retries() {
    bounded(TEST_LIMIT, silent_peer_fails(Transport::Tcp)).await;
}

#[tokio::test]
async fn tcp_ping_of_a_raw_peer_that_never_pongs_fails() {
    bounded(TEST_LIMIT, async {
        let listener = tokio::net::TcpListener::bind(loopback()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let peer = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let mut raw = RawStream::new(Box::new(stream), ms(1000));
            raw.exchange_csms().await;
            // Reads the ping and says nothing.
            let ping = raw.frame().await;
            assert_eq!(ping.code, coap_keepalive::proto::wire::signal::PING);
            raw
        });
        let client = quick_context();
        let session = client.connect_tcp(addr).await.unwrap();
        let error = session.ping().await.expect_err("no pong");
        assert!(matches!(
            error,
            Error::SessionFailed(NackReason::TooManyRetries)
        ));
        drop(peer.await.unwrap());
        client.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn udp_ping_to_a_closed_port_fails_with_the_icmp_reason() {
    bounded(TEST_LIMIT, async {
        let closed = std::net::UdpSocket::bind(loopback()).unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let client = quick_context();
        let mut events = client.events();
        let session = client.connect_udp(addr).await.unwrap();
        let error = session.ping().await.expect_err("port unreachable");
        assert!(
            matches!(error, Error::SessionFailed(NackReason::IcmpError)),
            "{error}"
        );
        let kinds = kinds_until_end(&mut events, &session).await;
        assert_eq!(
            kinds.last(),
            Some(&EventKind::Failed(NackReason::IcmpError))
        );
        client.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_ping_asked_for_while_one_is_out_resolves_with_its_pong() {
    bounded(TEST_LIMIT, async {
        let server = Context::new();
        let addr = listen(&server, Transport::Udp, None).await;
        let client = Context::new();
        let session = connect(&client, Transport::Udp, addr).await;
        let first = session.ping();
        let second = session.ping(); // merged into the first
        let (a, b) = tokio::join!(first, second);
        assert_eq!(a.unwrap(), b.unwrap(), "one ping, one pong, one RTT");
        assert_eq!(session.stats().pings_sent, 1);
        assert_eq!(session.stats().pongs, 1);
        client.shutdown().await;
        server.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_ping_not_awaited_still_goes_out() {
    bounded(TEST_LIMIT, async {
        let server = Context::new();
        let addr = listen(&server, Transport::Tcp, None).await;
        let client = Context::new();
        let mut events = client.events();
        let session = connect(&client, Transport::Tcp, addr).await;
        session.ping(); // fire and forget
        assert_eq!(session.stats().pings_sent, 1, "counted when ping() returns");
        loop {
            if let EventKind::Pong { .. } = next_event(&mut events).await.kind {
                break;
            }
        }
        client.shutdown().await;
        // Once the session ended, a ping fails at once.
        assert!(matches!(session.ping().await, Err(Error::Closed)));
        server.shutdown().await;
    })
    .await;
}

// ---- several receivers, lag, the end ----

#[tokio::test]
async fn two_receivers_and_the_callbacks_see_the_same_sequence() {
    bounded(TEST_LIMIT, async {
        let server = Context::new();
        let addr = listen(&server, Transport::Tcp, None).await;
        let client = Context::new();
        let called = Arc::new(Mutex::new(Vec::new()));
        let seen = called.clone();
        client.register_event_handler(move |_, event| {
            seen.lock().unwrap().push(EventKind::from(event))
        });
        let seen = called.clone();
        client.register_pong_handler(move |_, rtt| {
            seen.lock().unwrap().push(EventKind::Pong { rtt })
        });
        let mut first = client.events();
        let mut second = client.events();
        let session = connect(&client, Transport::Tcp, addr).await;
        for _ in 0..3 {
            session.ping().await.unwrap();
        }
        session.close();
        let a = kinds_until_end(&mut first, &session).await;
        let b = kinds_until_end(&mut second, &session).await;
        assert_eq!(a.len(), 8, "{a:?}");
        assert_eq!(a, b);
        assert_eq!(*called.lock().unwrap(), a);
        client.shutdown().await;
        server.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_receiver_that_falls_behind_is_told_how_many_it_lost() {
    bounded(Duration::from_secs(20), async {
        let server = Context::new();
        let addr = listen(&server, Transport::Udp, None).await;
        let client = Context::new();
        let mut lagging = client.events();
        let session = connect(&client, Transport::Udp, addr).await;
        // Two events a ping (sent, pong) and the establishment: past the capacity.
        let pings = coap_keepalive::EVENTS_CAPACITY / 2 + 8;
        for _ in 0..pings {
            session.ping().await.unwrap();
        }
        let total = 1 + 2 * pings as u64;
        let Some(Err(Lagged(lost))) = lagging.recv().await else {
            panic!("the first item of a lagging receiver says it lagged");
        };
        assert_eq!(lost, total - coap_keepalive::EVENTS_CAPACITY as u64);
        // Then it goes on with the oldest event still held, to the newest.
        let mut rest = 0;
        while let Some(item) = lagging.try_recv() {
            item.expect("no second lag");
            rest += 1;
        }
        assert_eq!(rest, coap_keepalive::EVENTS_CAPACITY);
        client.shutdown().await;
        server.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn events_end_after_shutdown_and_work_as_a_stream() {
    bounded(TEST_LIMIT, async {
        let server = Context::new();
        let addr = listen(&server, Transport::Tcp, None).await;
        let client = Context::new();
        let mut events = client.events();
        let _session = connect(&client, Transport::Tcp, addr).await;
        client.shutdown().await;
        let mut kinds = Vec::new();
        while let Some(item) = poll_fn(|cx| Pin::new(&mut events).poll_next(cx)).await {
            kinds.push(item.unwrap().kind);
        }
        assert_eq!(kinds, [EventKind::Established, EventKind::Closed]);
        // A receiver asked for after the shutdown ends at once.
        assert!(client.events().recv().await.is_none());
        server.shutdown().await;
    })
    .await;
}

// ---- observation as a stream ----

#[tokio::test]
async fn an_observation_is_a_stream_of_notifications() {
    bounded(TEST_LIMIT, async {
        let server = Context::new();
        let count = Arc::new(Mutex::new(0));
        let counter = count.clone();
        server.add_resource(Resource::new("/n").observable().get(move |_, _| {
            let mut n = counter.lock().unwrap();
            *n += 1;
            Response::content_text(n.to_string())
        }));
        let addr = listen(&server, Transport::Udp, None).await;
        let client = Context::new();
        let session = connect(&client, Transport::Udp, addr).await;
        let mut observation = session.observe("/n").await.unwrap();
        assert_eq!(observation.first().payload_str(), "1");
        let mut got = Vec::new();
        for _ in 0..2 {
            server.notify("/n");
            let next = poll_fn(|cx| Pin::new(&mut observation).poll_next(cx)).await;
            got.push(next.expect("a notification").payload_str().to_string());
        }
        assert_eq!(got, ["2", "3"]);
        // The inherent `next` reads the same stream.
        server.notify("/n");
        assert_eq!(observation.next().await.unwrap().payload_str(), "4");
        // The stream ends with the session.
        session.close();
        assert!(poll_fn(|cx| Pin::new(&mut observation).poll_next(cx))
            .await
            .is_none());
        client.shutdown().await;
        server.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn an_unanswered_ping_that_does_not_fail_the_session_times_out() {
    bounded(TEST_LIMIT, async {
        let server = Context::new();
        server.register_ping_handler(|_, _| PingDecision::Suppress);
        let addr = listen(&server, Transport::Udp, None).await;
        let client = Context::new();
        // Keepalive off, two unanswered pings to fail: after the first, nothing is out.
        client
            .set_keepalive_config(quick().with_max_unanswered(2))
            .unwrap();
        let session = connect(&client, Transport::Udp, addr).await;
        let error = session.ping().await.expect_err("unanswered");
        assert!(matches!(error, Error::Timeout(_)), "{error}");
        assert!(error.is_timeout());
        assert_eq!(session.state(), SessionState::Established);
        // The second one fails the session.
        let error = session.ping().await.expect_err("unanswered");
        assert!(matches!(
            error,
            Error::SessionFailed(NackReason::TooManyRetries)
        ));
        client.shutdown().await;
        server.shutdown().await;
    })
    .await;
}
