//! Our client against libcoap's `coap-server-notls` (Debian libcoap3-bin 4.3.1) over UDP and
//! TCP: its RSTs and tokenless Pongs answer our pings, and a stopped server is declared dead
//! within the RFC 7252 bound.
//!
//! Each test starts its own server on its own port and kills it when done (also on panic).

use std::future::Future;
use std::net::{SocketAddr, TcpListener as StdTcpListener, UdpSocket as StdUdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::sync::mpsc;

use coap_keepalive::config::{KeepaliveConfig, TransmissionParams};
use coap_keepalive::context::Context;
use coap_keepalive::error::NackReason;
use coap_keepalive::keepalive::Stats;
use coap_keepalive::session::{Session, SessionState};

const SERVER_BIN: &str = "coap-server-notls";
/// The most any test here may take (server start-up included).
const TEST_LIMIT: Duration = Duration::from_secs(10);
/// Our keepalive interval: libcoap answers at most one ping per 250 ms per session.
const INTERVAL: Duration = Duration::from_millis(400);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

async fn bounded<F: Future>(body: F) -> F::Output {
    tokio::time::timeout(TEST_LIMIT, body)
        .await
        .expect("test exceeded its time limit")
}

/// A port free for both UDP and TCP on loopback a moment ago.
fn free_port() -> u16 {
    loop {
        let udp = StdUdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let port = udp.local_addr().unwrap().port();
        if StdTcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A running `coap-server-notls`, stopped and killed on drop.
struct LibcoapServer {
    child: Child,
    addr: SocketAddr,
}

impl LibcoapServer {
    /// Starts the server on a free port and waits until its TCP port accepts connections.
    async fn start() -> LibcoapServer {
        for _attempt in 0..5 {
            let port = free_port();
            let child = Command::new(SERVER_BIN)
                .args(["-A", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
            let child = match child {
                Ok(child) => child,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                    panic!("{SERVER_BIN} not found: install libcoap3-bin (scripts/test does this)")
                }
                Err(error) => panic!("cannot start {SERVER_BIN}: {error}"),
            };
            let mut server = LibcoapServer {
                child,
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
            };
            if server.wait_ready().await {
                return server;
            }
            // The port was taken in the meantime: drop (kill) and try another.
        }
        panic!("{SERVER_BIN} did not start on any of 5 ports");
    }

    /// Polls the TCP port; false if the server exited first.
    async fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            if self.child.try_wait().expect("try_wait").is_some() {
                return false;
            }
            if TcpStream::connect(self.addr).await.is_ok() {
                return true;
            }
            assert!(
                Instant::now() < deadline,
                "{SERVER_BIN} not listening on {} after 3 s",
                self.addr
            );
            tokio::time::sleep(ms(10)).await;
        }
    }

    /// Sends `signal` (e.g. "-STOP") with the kill command.
    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} failed");
    }
}

impl Drop for LibcoapServer {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = Command::new("kill")
                .args(["-CONT", &self.child.id().to_string()])
                .status();
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
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

async fn next<T>(rx: &mut mpsc::UnboundedReceiver<T>, limit: Duration, what: &str) -> T {
    tokio::time::timeout(limit, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("no {what} within {limit:?}"))
        .unwrap_or_else(|| panic!("{what} channel closed"))
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
        let server = LibcoapServer::start().await;
        let client = Context::new();
        client.set_keepalive_interval(Some(INTERVAL));
        let mut pong_rx = pongs(&client);
        let mut nack_rx = nacks(&client);
        let session = client.connect_udp(server.addr).await.unwrap();

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
        let server = LibcoapServer::start().await;
        let client = Context::new();
        client.set_keepalive_interval(Some(INTERVAL));
        let mut pong_rx = pongs(&client);
        let mut nack_rx = nacks(&client);
        let session = client.connect_tcp(server.addr).await.unwrap();

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
        let server = LibcoapServer::start().await;
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
        let session = client.connect_udp(server.addr).await.unwrap();

        // One pong shows the server answers; then it goes silent before the next ping is due.
        let (_, _, _, answered) = next(&mut pong_rx, INTERVAL * 3, "pong").await;
        server.signal("-STOP");

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

        server.signal("-CONT");
    })
    .await
}
