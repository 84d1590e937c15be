//! Our client against libcoap's `coap-server-notls` (Debian libcoap3-bin 4.3.1) over UDP and
//! TCP: its RSTs and tokenless Pongs answer our pings, and a stopped server is declared dead
//! within the RFC 7252 bound.
//!
//! Each test starts its own server on its own port and kills it when done (also on panic).

use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use coap_keepalive::proto::keepalive::Stats;
use coap_keepalive::Context;
use coap_keepalive::NackReason;
use coap_keepalive::{KeepaliveConfig, TransmissionParams};
use coap_keepalive::{Session, SessionState};

mod support;

use support::libcoap::{Build, LibcoapServer};
use support::{ms, next};

/// The most any test here may take (server start-up included).
const TEST_LIMIT: Duration = Duration::from_secs(10);
/// Our keepalive interval: libcoap answers at most one ping per 250 ms per session.
const INTERVAL: Duration = Duration::from_millis(400);

async fn bounded<F: std::future::Future>(body: F) -> F::Output {
    support::bounded(TEST_LIMIT, body).await
}

/// Pong handler channel: (session, rtt, counters, arrival).
type PongRx = mpsc::UnboundedReceiver<(Session, Duration, Stats, Instant)>;

fn pongs(ctx: &Context) -> PongRx {
    let (tx, rx) = mpsc::unbounded_channel();
    ctx.register_pong_handler(move |session, rtt| {
        let _ = tx.send((session.clone(), rtt, session.stats(), Instant::now()));
    });
    rx
}

fn nacks(ctx: &Context) -> mpsc::UnboundedReceiver<(NackReason, Stats, Instant)> {
    let (tx, rx) = mpsc::unbounded_channel();
    ctx.register_nack_handler(move |session, reason| {
        let _ = tx.send((reason, session.stats(), Instant::now()));
    });
    rx
}

/// Waits for three pongs on `session`, each well within the interval.
async fn three_pongs(rx: &mut PongRx, session: &Session) {
    for i in 1..=3u64 {
        let (from, rtt, stats, _) = next(rx, INTERVAL * 3, "pong").await;
        assert_eq!(from.id(), session.id());
        assert!(rtt > Duration::ZERO && rtt < INTERVAL, "rtt {rtt:?}");
        assert_eq!(stats.pongs, i);
    }
}

#[tokio::test]
async fn udp_keepalive_is_answered_by_libcoap() {
    bounded(async {
        let server = LibcoapServer::start(Build::Notls, &[]).await;
        let client = Context::new();
        client.set_keepalive_interval(Some(INTERVAL));
        let mut pong_rx = pongs(&client);
        let mut nack_rx = nacks(&client);
        let session = client.connect_udp(server.addr()).await.unwrap();

        three_pongs(&mut pong_rx, &session).await;
        let stats = session.stats();
        assert_eq!(stats.retransmissions, 0, "libcoap missed a ping: {stats:?}");
        assert!(nack_rx.try_recv().is_err());
        assert_eq!(session.state(), SessionState::Established);
    })
    .await
}

#[tokio::test]
async fn tcp_keepalive_is_answered_by_libcoaps_tokenless_pong() {
    bounded(async {
        let server = LibcoapServer::start(Build::Notls, &[]).await;
        let client = Context::new();
        client.set_keepalive_interval(Some(INTERVAL));
        let mut pong_rx = pongs(&client);
        let mut nack_rx = nacks(&client);
        let session = client.connect_tcp(server.addr()).await.unwrap();

        three_pongs(&mut pong_rx, &session).await;
        assert!(nack_rx.try_recv().is_err());
        assert_eq!(session.state(), SessionState::Established);
        assert_eq!(client.sessions().len(), 1);
    })
    .await
}

#[tokio::test]
async fn udp_stopped_libcoap_gives_too_many_retries() {
    bounded(async {
        let mut server = LibcoapServer::start(Build::Notls, &[]).await;
        let client = Context::new();
        let params = TransmissionParams::default()
            .with_ack_timeout(ms(100))
            .with_ack_random_factor(1.0)
            .with_max_retransmit(2);
        client
            .set_keepalive_config(
                KeepaliveConfig::default()
                    .with_interval(Some(INTERVAL))
                    .with_transmission(params),
            )
            .unwrap();
        let mut pong_rx = pongs(&client);
        let mut nack_rx = nacks(&client);
        let session = client.connect_udp(server.addr()).await.unwrap();

        // One pong shows the server answers; then it goes silent before the next ping is due.
        let (_, _, _, answered) = next(&mut pong_rx, INTERVAL * 3, "pong").await;
        server.process().freeze();

        // The next ping goes out one interval after that pong and is given up 100 + 200 + 400 ms
        // after it went out.
        let give_up = INTERVAL + params.max_transmit_wait();
        assert_eq!(give_up, ms(400 + 700));
        let (reason, stats, at) = next(&mut nack_rx, give_up * 2, "nack").await;
        assert_eq!(reason, NackReason::TooManyRetries);
        let after = at - answered;
        assert!(
            after + ms(5) >= give_up && after < give_up + ms(400),
            "nack {after:?} after the last pong, expected {give_up:?}"
        );
        assert_eq!(stats.pings_sent, 2, "{stats:?}");
        assert_eq!(stats.retransmissions, 2, "{stats:?}");
        assert_eq!(stats.pongs, 1, "{stats:?}");

        assert_eq!(
            session.closed().await,
            SessionState::Failed(NackReason::TooManyRetries)
        );
        assert!(client.sessions().is_empty(), "failed session left in table");
        assert!(pong_rx.try_recv().is_err());

        server.process().thaw();
    })
    .await
}
