//! Keepalive under packet loss: does the stack tell a lossy path from a dead peer?
//!
//! A UDP keepalive ping is an empty CON retransmitted per RFC 7252: 1 + MAX_RETRANSMIT
//! transmissions, each answered by an RST. A ping of a live peer goes unanswered only when every
//! transmission or its RST is lost, so with a loss rate `l` each way
//!
//! ```text
//!     q = (1 - (1 - l)^2) ^ (1 + MAX_RETRANSMIT)       l = 20 %, MAX_RETRANSMIT 4:
//!       = 0.36^5 = 0.605 % per ping
//! ```
//!
//! `KeepaliveConfig::max_unanswered` (`m`, default 1) is how many unanswered pings in a row fail
//! the session; below it the next ping goes out at once. A ping cycle — from the idle ping to its
//! pong or the failure, follow-up pings included — of a live peer therefore fails with `q^m`:
//!
//! ```text
//!     m = 1 (default): 0.605 % per cycle, 6.05 expected in 1,000 cycles, P(none) = 0.23 %
//!     m = 3:           0.36^15 = 2.2e-7 per cycle, P(any in 1,000 cycles) = 2.2e-4
//! ```
//!
//! With the defaults 20 % loss *does* fail a live peer over 1,000 cycles (what the parameters
//! imply); `max_unanswered = 3` makes that negligible without touching the transmission
//! parameters, at the price of detecting a dead peer up to three times later. What the stack must
//! get right, and what these tests assert, is that a ping is given up exactly when the path ate
//! every transmission of it or its answer — never when an answer got through (a *spurious*
//! failure) and never later than the parameters allow — and that the measured rates match.
//!
//! - `relay_with_20_percent_loss_*`: real sockets through a loopback relay that drops 20 % of
//!   the datagrams each way (seeded), with the RFC 7252 schedule scaled down (ACK_TIMEOUT 20 ms,
//!   random factor 1.5, MAX_RETRANSMIT 4, interval 10 ms), 20 sessions at once, 1,000 ping
//!   cycles: every ping given up is checked against the relay's log.
//! - `simulated_*`: the sans-IO `DatagramSession` on both ends of a seeded lossy channel in
//!   virtual time, with the real default parameters (ACK_TIMEOUT 2 s, ...), over 300,000 ping
//!   cycles (m = 1) and 1,000,000 (m = 3).
//! - `*_total_loss_*`: 100 % loss is detected within `m` times [ACK_TIMEOUT *
//!   (2^(MAX_RETRANSMIT+1) - 1), that * ACK_RANDOM_FACTOR] of the first ping (62 s to 93 s with
//!   the defaults, 186 s to 279 s with m = 3; 620 ms to 930 ms and 1.86 s to 2.79 s scaled down).
//!
//! Run with `--nocapture` to see the measured rates and detection times.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use coap_keepalive::proto::datagram::DatagramSession;
use coap_keepalive::proto::rng::Rng;
use coap_keepalive::proto::wire::udp;
use coap_keepalive::proto::ProtocolEvent;
use coap_keepalive::Context;
use coap_keepalive::NackReason;
use coap_keepalive::Session;
use coap_keepalive::SessionEvent;
use coap_keepalive::{KeepaliveConfig, TransmissionParams};

/// Loss each way in the lossy tests.
const LOSS: f64 = 0.2;

/// Probability that one ping of a live peer goes unanswered: every one of its
/// `1 + max_retransmit` transmissions, or its answer, lost.
fn analytic_unanswered_rate(loss_up: f64, loss_down: f64, max_retransmit: u32) -> f64 {
    let exchange_lost = 1.0 - (1.0 - loss_up) * (1.0 - loss_down);
    exchange_lost.powi(max_retransmit as i32 + 1)
}

/// Probability that one ping cycle of a live peer fails: `max_unanswered` pings in a row
/// unanswered.
fn analytic_failure_rate(
    loss_up: f64,
    loss_down: f64,
    max_retransmit: u32,
    max_unanswered: u32,
) -> f64 {
    analytic_unanswered_rate(loss_up, loss_down, max_retransmit).powi(max_unanswered as i32)
}

/// ACK_TIMEOUT * (2^(MAX_RETRANSMIT+1) - 1): the earliest a ping can be given up.
fn min_give_up(params: &TransmissionParams) -> Duration {
    params.ack_timeout * ((1u32 << (params.max_retransmit + 1)) - 1)
}

/// The timing of the real-socket tests: the RFC 7252 schedule divided by 100.
fn scaled_params() -> TransmissionParams {
    TransmissionParams::default()
        .with_ack_timeout(Duration::from_millis(20))
        .with_ack_random_factor(1.5)
        .with_max_retransmit(4)
}

/// The keepalive of the lossy and dead paths: `params`, `interval`, `max_unanswered`.
fn keepalive(
    params: TransmissionParams,
    interval: Duration,
    max_unanswered: u32,
) -> KeepaliveConfig {
    let config = KeepaliveConfig::default()
        .with_interval(Some(interval))
        .with_transmission(params)
        .with_max_unanswered(max_unanswered);
    config.validate().expect("valid keepalive config");
    config
}

// ---------------------------------------------------------------------------------------------
// The relay

/// One ping as the relay saw it: its transmissions from the client and the server's answers.
#[derive(Debug, Clone)]
struct PingRecord {
    client_port: u16,
    first_seen: Instant,
    transmissions: u32,
    answers_forwarded: u32,
}

#[derive(Debug, Default)]
struct RelayLog {
    pings: Vec<PingRecord>,
    by_id: HashMap<(u16, u16), usize>,
    dropped_up: u64,
    dropped_down: u64,
    forwarded_up: u64,
    forwarded_down: u64,
}

impl RelayLog {
    /// A datagram from the client: counts a ping transmission.
    fn client_sent(&mut self, port: u16, bytes: &[u8]) {
        if let Ok(udp::Datagram::Ping { message_id }) = udp::classify(bytes) {
            let pings = &mut self.pings;
            let index = *self.by_id.entry((port, message_id)).or_insert_with(|| {
                pings.push(PingRecord {
                    client_port: port,
                    first_seen: Instant::now(),
                    transmissions: 0,
                    answers_forwarded: 0,
                });
                pings.len() - 1
            });
            self.pings[index].transmissions += 1;
        }
    }

    /// A datagram from the server to the client, forwarded or not.
    fn server_sent(&mut self, port: u16, bytes: &[u8], forwarded: bool) {
        if let Ok(udp::Datagram::Reset { message_id }) = udp::classify(bytes) {
            if let Some(&index) = self.by_id.get(&(port, message_id)) {
                self.pings[index].answers_forwarded += u32::from(forwarded);
            }
        }
    }

    /// The pings of one client, in order.
    fn of(&self, port: u16) -> Vec<&PingRecord> {
        self.pings
            .iter()
            .filter(|p| p.client_port == port)
            .collect()
    }
}

/// A loopback relay between clients and `server`, dropping a fraction of the datagrams in each
/// direction. Each client gets its own socket towards the server (so its own server session).
/// Drop decisions come from seeded generators: the same traffic is dropped the same way.
struct Relay {
    addr: SocketAddr,
    log: Arc<Mutex<RelayLog>>,
}

impl Relay {
    async fn start(server: SocketAddr, loss_up: f64, loss_down: f64, seed: u64) -> Relay {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind relay"));
        let addr = front.local_addr().unwrap();
        let log = Arc::new(Mutex::new(RelayLog::default()));
        tokio::spawn(Relay::run(
            front,
            server,
            loss_up,
            loss_down,
            seed,
            log.clone(),
        ));
        Relay { addr, log }
    }

    async fn run(
        front: Arc<UdpSocket>,
        server: SocketAddr,
        loss_up: f64,
        loss_down: f64,
        seed: u64,
        log: Arc<Mutex<RelayLog>>,
    ) {
        let mut up = Rng::seeded(seed);
        let mut backs: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
        let mut buf = vec![0u8; 65_536];
        loop {
            let Ok((n, client)) = front.recv_from(&mut buf).await else {
                return;
            };
            let back = match backs.get(&client) {
                Some(back) => back.clone(),
                None => {
                    let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
                    back.connect(server).await.unwrap();
                    let down = Rng::seeded(seed ^ (u64::from(client.port()) << 17));
                    tokio::spawn(Relay::run_down(
                        back.clone(),
                        front.clone(),
                        client,
                        loss_down,
                        down,
                        log.clone(),
                    ));
                    backs.insert(client, back.clone());
                    back
                }
            };
            let drop = up.next_f64() < loss_up;
            {
                let mut log = log.lock().unwrap();
                log.client_sent(client.port(), &buf[..n]);
                if drop {
                    log.dropped_up += 1;
                } else {
                    log.forwarded_up += 1;
                }
            }
            if !drop {
                let _ = back.send(&buf[..n]).await;
            }
        }
    }

    async fn run_down(
        back: Arc<UdpSocket>,
        front: Arc<UdpSocket>,
        client: SocketAddr,
        loss: f64,
        mut rng: Rng,
        log: Arc<Mutex<RelayLog>>,
    ) {
        let mut buf = vec![0u8; 65_536];
        while let Ok(n) = back.recv(&mut buf).await {
            let drop = rng.next_f64() < loss;
            {
                let mut log = log.lock().unwrap();
                log.server_sent(client.port(), &buf[..n], !drop);
                if drop {
                    log.dropped_down += 1;
                } else {
                    log.forwarded_down += 1;
                }
            }
            if !drop {
                let _ = front.send_to(&buf[..n], client).await;
            }
        }
    }
}

/// A server answering pings on a loopback UDP port (keepalive off: it only answers).
async fn server() -> (Context, SocketAddr) {
    let ctx = Context::new();
    let endpoint = ctx
        .listen_udp(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("listen");
    (ctx, endpoint.local_addr)
}

/// What a client context's handlers saw.
#[derive(Debug, Default)]
struct Counters {
    pongs: AtomicU64,
    unanswered: AtomicU64,
}

/// A client context keeping its sessions alive with `config`; its nacks (local port, reason,
/// when) go to the returned channel, its pongs and unanswered pings are counted.
fn client(
    config: KeepaliveConfig,
    seed: u64,
) -> (
    Context,
    mpsc::UnboundedReceiver<(u16, NackReason, Instant)>,
    Arc<Counters>,
) {
    let ctx = Context::builder().seed(seed).build().unwrap();
    ctx.set_keepalive_config(config)
        .expect("valid keepalive config");
    let (tx, rx) = mpsc::unbounded_channel();
    ctx.register_nack_handler(move |session, reason| {
        let _ = tx.send((session.local_addr().port(), reason, Instant::now()));
    });
    let counters = Arc::new(Counters::default());
    let pongs = counters.clone();
    ctx.register_pong_handler(move |_, _| {
        pongs.pongs.fetch_add(1, Ordering::Relaxed);
    });
    let unanswered = counters.clone();
    ctx.register_event_handler(move |_, event| {
        if let SessionEvent::PingUnanswered { .. } = event {
            unanswered.unanswered.fetch_add(1, Ordering::Relaxed);
        }
    });
    (ctx, rx, counters)
}

// ---------------------------------------------------------------------------------------------
// (a) real sockets, 20 % loss each way, scaled-down timing

/// Ping cycles each relay run completes.
const RELAY_CYCLES: u64 = 1_000;
/// Sessions pinging at once through the relay, so that the cycles run in parallel.
const RELAY_SESSIONS: usize = 20;
/// Idle interval of the relay runs.
const RELAY_INTERVAL: Duration = Duration::from_millis(10);

/// What a relay run measured, judged against the relay's log.
#[derive(Debug)]
struct RelayReport {
    cycles: u64,
    failures: u64,
    unanswered: u64,
    /// Failures although an answer to one of the session's last `max_unanswered` pings got
    /// through, or one of them was given up before its full schedule.
    spurious: u64,
    /// Runs of `max_unanswered` unanswered pings after which the session went on pinging.
    missed: u64,
    /// Unanswered pings followed by another before their full schedule was sent.
    short: u64,
}

/// `RELAY_SESSIONS` sessions keeping a server alive through a relay that drops `LOSS` of the
/// datagrams each way, until `RELAY_CYCLES` ping cycles ended (a failed session is replaced).
async fn relay_with_loss(max_unanswered: u32, seed: u64) -> RelayReport {
    /// Wall-clock limit; the run is judged on the cycles it completed.
    const LIMIT: Duration = Duration::from_secs(30);
    let params = scaled_params();
    let config = keepalive(params, RELAY_INTERVAL, max_unanswered);
    let (_server, server_addr) = server().await;
    let relay = Relay::start(server_addr, LOSS, LOSS, seed).await;
    let (client, mut nacks, counters) = client(config, seed);
    let mut sessions: HashMap<u16, Session> = HashMap::new();
    for _ in 0..RELAY_SESSIONS {
        let session = client.connect_udp(relay.addr).await.expect("connect");
        sessions.insert(session.local_addr().port(), session);
    }
    let started = Instant::now();
    let mut failed: Vec<u16> = Vec::new();
    while counters.pongs.load(Ordering::Relaxed) + (failed.len() as u64) < RELAY_CYCLES
        && started.elapsed() < LIMIT
    {
        match tokio::time::timeout(Duration::from_millis(50), nacks.recv()).await {
            Ok(Some((port, reason, _))) => {
                assert_eq!(reason, NackReason::TooManyRetries);
                assert!(
                    sessions.remove(&port).is_some(),
                    "nack of an unknown session"
                );
                failed.push(port);
                let session = client.connect_udp(relay.addr).await.expect("reconnect");
                sessions.insert(session.local_addr().port(), session);
            }
            Ok(None) => panic!("nack channel closed"),
            Err(_) => {}
        }
    }
    let elapsed = started.elapsed();
    client.shutdown().await;
    let pongs = counters.pongs.load(Ordering::Relaxed);
    let unanswered = counters.unanswered.load(Ordering::Relaxed);

    let log = relay.log.lock().unwrap();
    let full = 1 + params.max_retransmit;
    let m = max_unanswered as usize;
    let (mut spurious, mut missed, mut short) = (0, 0, 0);
    let mut ports: Vec<u16> = log.pings.iter().map(|p| p.client_port).collect();
    ports.sort_unstable();
    ports.dedup();
    for port in ports {
        let pings = log.of(port);
        // A session moves on to its next ping only after an answer got through or after the
        // full schedule of an unanswered ping, and only while fewer than `max_unanswered` went
        // unanswered in a row. Its last ping may still have been out at the end.
        let mut run = 0;
        for ping in &pings[..pings.len() - 1] {
            if ping.answers_forwarded > 0 {
                run = 0;
                continue;
            }
            run += 1;
            if ping.transmissions != full {
                short += 1;
                eprintln!("unanswered ping given up early: {ping:?}");
            }
            if run >= m {
                missed += 1;
                eprintln!("{run} unanswered pings in a row did not fail port {port}");
            }
        }
        if failed.contains(&port) {
            let tail = &pings[pings.len().saturating_sub(m)..];
            if tail.len() != m
                || tail
                    .iter()
                    .any(|p| p.answers_forwarded > 0 || p.transmissions != full)
            {
                spurious += 1;
                eprintln!("spurious failure: {tail:?}");
            }
        }
    }
    let cycles = pongs + failed.len() as u64;
    let failures = failed.len() as u64;
    let analytic = analytic_failure_rate(LOSS, LOSS, params.max_retransmit, max_unanswered);
    let pings = pongs + unanswered + failures;
    eprintln!(
        "real sockets, {:.0} % loss each way (dropped {} of {} up, {} of {} down), \
         ACK_TIMEOUT 20 ms x1.5, MAX_RETRANSMIT 4, max_unanswered {max_unanswered}, interval \
         {RELAY_INTERVAL:?}, {RELAY_SESSIONS} sessions: {cycles} ping cycles in {elapsed:.1?}, \
         {pongs} pongs, {unanswered} pings unanswered without failing ({:.2} % of {pings} \
         pings; analytic 0.36^5 = {:.3} %), {failures} TooManyRetries = {:.2} % per cycle \
         (analytic {:.2e}); {spurious} spurious",
        LOSS * 100.0,
        log.dropped_up,
        log.dropped_up + log.forwarded_up,
        log.dropped_down,
        log.dropped_down + log.forwarded_down,
        100.0 * (unanswered + failures) as f64 / pings.max(1) as f64,
        100.0 * analytic_unanswered_rate(LOSS, LOSS, params.max_retransmit),
        100.0 * failures as f64 / cycles.max(1) as f64,
        analytic,
    );
    assert!(
        cycles >= RELAY_CYCLES,
        "only {cycles} cycles in {elapsed:?}"
    );
    RelayReport {
        cycles,
        failures,
        unanswered,
        spurious,
        missed,
        short,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_with_20_percent_loss_fails_only_when_every_exchange_of_a_ping_was_lost() {
    let report = relay_with_loss(1, 0x1055).await;
    assert_eq!(
        report.spurious, 0,
        "TooManyRetries although an answer got through"
    );
    assert_eq!(
        report.missed, 0,
        "a ping whose every exchange was lost did not fail its session"
    );
    assert_eq!(report.short, 0);
    assert_eq!(report.unanswered, 0, "max_unanswered 1 fails at once");
    // Far beyond what loss explains (mean 6.05 in 1,000 cycles): P(≥ 20) < 1e-5.
    assert!(report.failures < 20, "{} failures", report.failures);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_with_20_percent_loss_and_max_unanswered_3_has_no_false_failure_in_1000_cycles() {
    let report = relay_with_loss(3, 0x1056).await;
    assert!(report.cycles >= 1_000);
    // P(any failure in 1,000 cycles) = 1,000 * 0.36^15 = 2.2e-4.
    assert_eq!(report.failures, 0, "a live peer failed");
    assert_eq!(report.spurious, 0);
    assert_eq!(
        report.missed, 0,
        "three unanswered pings in a row did not fail the session"
    );
    assert_eq!(
        report.short, 0,
        "a follow-up ping before the full schedule of the previous one"
    );
}

// ---------------------------------------------------------------------------------------------
// (b) virtual time, the real default parameters

/// Where a datagram in flight goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum To {
    Client,
    Server,
}

/// A datagram in the simulated channel: arrival, sequence number (ties), destination, bytes.
type InFlight = (Instant, u64, To, Vec<u8>);

/// The client's outstanding ping, as the simulation saw it.
#[derive(Debug, Clone, Copy)]
struct SimPing {
    message_id: u16,
    first_sent: Instant,
    transmissions: u32,
    answers_delivered: u32,
}

/// Outcome of a simulated run.
#[derive(Debug, Default)]
struct SimReport {
    /// Ping cycles ended: each with a pong or a failure (follow-up pings belong to their cycle).
    cycles: u64,
    pongs: u64,
    /// Pings sent (not counting retransmissions), follow-ups included.
    pings: u64,
    /// Pings given up without failing the session (`PingUnanswered`).
    unanswered: u64,
    failures: u64,
    /// Pings given up (unanswered or failed) although an answer reached the client, or before
    /// their full schedule.
    spurious: u64,
    /// `streaks[k]`: cycles in which at least `k + 1` pings in a row went unanswered; the last
    /// entry counts the failures.
    streaks: Vec<u64>,
    /// Index (in cycles) of every failure.
    failure_cycles: Vec<u64>,
    /// Time from the first transmission of the first unanswered ping of a failed cycle to its
    /// `TooManyRetries`.
    detection: Vec<Duration>,
    /// Pings that ended with neither a pong nor a give-up (dropped because other traffic
    /// proved the peer alive).
    quiet: u64,
}

impl SimReport {
    /// Judges one ping given up: spurious unless the channel ate all of it.
    fn given_up(&mut self, ping: &SimPing, full: u32) {
        if ping.answers_delivered > 0 || ping.transmissions != full {
            self.spurious += 1;
        }
    }
}

/// Our client (keepalive `config`) and our server, each a sans-IO `DatagramSession`, joined by a
/// channel that drops `loss_up` / `loss_down` of the datagrams and delays the rest by 1 to 50 ms,
/// in virtual time, until `cycles` ping cycles completed. A client that fails is replaced by a new
/// session (a reconnect), as an application would.
fn simulate(
    config: KeepaliveConfig,
    loss_up: f64,
    loss_down: f64,
    cycles: u64,
    seed: u64,
) -> SimReport {
    let t0 = Instant::now();
    let full = 1 + config.transmission.max_retransmit;
    let mut seeds = Rng::seeded(seed);
    let mut channel = Rng::seeded(seeds.next_u64());
    let mut client = DatagramSession::new(config, seeds.fork(), t0);
    let mut server = DatagramSession::new(KeepaliveConfig::default(), seeds.fork(), t0);
    let mut in_flight: BinaryHeap<Reverse<InFlight>> = BinaryHeap::new();
    let mut sequence = 0u64;
    let mut ping: Option<SimPing> = None;
    // Unanswered pings in a row in this cycle, and the first transmission of the first of them.
    let mut streak = 0u32;
    let mut streak_start: Option<Instant> = None;
    let mut report = SimReport {
        streaks: vec![0; config.max_unanswered as usize],
        ..SimReport::default()
    };
    let mut now = t0;
    while report.cycles < cycles {
        // Client events first: an unanswered ping is reported before the follow-up goes out.
        while let Some(event) = client.poll_event() {
            match event {
                ProtocolEvent::Pong { .. } => {
                    report.cycles += 1;
                    report.pongs += 1;
                    ping = None;
                    (streak, streak_start) = (0, None);
                }
                ProtocolEvent::PingUnanswered { count } => {
                    let given_up = ping.take().expect("unanswered without a ping");
                    report.given_up(&given_up, full);
                    report.unanswered += 1;
                    streak_start.get_or_insert(given_up.first_sent);
                    streak += 1;
                    assert_eq!(count, streak, "the machine's count");
                    report.streaks[streak as usize - 1] += 1;
                }
                ProtocolEvent::Failed(reason) => {
                    assert_eq!(reason, NackReason::TooManyRetries);
                    let given_up = ping.take().expect("failed without a ping");
                    report.given_up(&given_up, full);
                    streak += 1;
                    assert_eq!(streak, config.max_unanswered, "failed early or late");
                    report.streaks[streak as usize - 1] += 1;
                    let start = streak_start.unwrap_or(given_up.first_sent);
                    report.detection.push(now - start);
                    report.failure_cycles.push(report.cycles);
                    report.cycles += 1;
                    report.failures += 1;
                    (streak, streak_start) = (0, None);
                    client = DatagramSession::new(config, seeds.fork(), now);
                }
                // Counted from the transmits below.
                ProtocolEvent::PingSent(_) => {}
                other => panic!("unexpected client event {other:?}"),
            }
        }
        // Client output: pings into the channel.
        while let Some(bytes) = client.poll_transmit() {
            if let Ok(udp::Datagram::Ping { message_id }) = udp::classify(&bytes) {
                match &mut ping {
                    Some(p) if p.message_id == message_id => p.transmissions += 1,
                    previous => {
                        if previous.is_some() {
                            report.quiet += 1;
                            report.cycles += 1;
                        }
                        report.pings += 1;
                        *previous = Some(SimPing {
                            message_id,
                            first_sent: now,
                            transmissions: 1,
                            answers_delivered: 0,
                        });
                    }
                }
            }
            if channel.next_f64() >= loss_up {
                let delay = Duration::from_millis(1 + channel.next_u64() % 50);
                sequence += 1;
                in_flight.push(Reverse((now + delay, sequence, To::Server, bytes)));
            }
        }
        // Server output: the RSTs answering pings.
        while let Some(event) = server.poll_event() {
            if let ProtocolEvent::PeerPing(ping) = event {
                server.answer_ping(&ping);
                let answer = server.poll_transmit().expect("the ping's RST");
                if channel.next_f64() >= loss_down {
                    let delay = Duration::from_millis(1 + channel.next_u64() % 50);
                    sequence += 1;
                    in_flight.push(Reverse((now + delay, sequence, To::Client, answer)));
                }
            }
        }
        assert_eq!(
            server.poll_transmit(),
            None,
            "the server sends only answers"
        );
        // The next thing to happen.
        let next = [
            client.poll_timeout(),
            in_flight.peek().map(|Reverse((at, ..))| *at),
        ]
        .into_iter()
        .flatten()
        .min()
        .expect("the client always has a deadline");
        now = now.max(next);
        if let Some(Reverse((at, ..))) = in_flight.peek() {
            if *at <= now {
                let Reverse((_, _, to, bytes)) = in_flight.pop().unwrap();
                match to {
                    To::Server => server.handle_datagram(now, &bytes),
                    To::Client => {
                        if let (Ok(udp::Datagram::Reset { message_id }), Some(p)) =
                            (udp::classify(&bytes), ping.as_mut())
                        {
                            if message_id == p.message_id {
                                p.answers_delivered += 1;
                            }
                        }
                        client.handle_datagram(now, &bytes);
                    }
                }
                continue;
            }
        }
        client.handle_timeout(now);
    }
    report
}

/// Within `n` standard deviations of a binomial count with `trials` trials of probability `p`
/// (σ taken as at least 1, so that a small expected count allows a few).
fn consistent(count: u64, trials: u64, p: f64, n: f64) -> bool {
    let mean = trials as f64 * p;
    let sigma = (mean * (1.0 - p)).sqrt().max(1.0);
    (count as f64 - mean).abs() <= n * sigma
}

#[test]
fn simulated_20_percent_loss_with_default_parameters_fails_at_the_analytic_rate_and_never_spuriously(
) {
    /// Cycles simulated: enough for a rate known to about ±4 % (≈ 1,800 expected failures).
    const CYCLES: u64 = 300_000;
    let params = TransmissionParams::default();
    assert_eq!(params.ack_timeout, Duration::from_secs(2));
    assert_eq!(params.max_retransmit, 4);
    let config = keepalive(params, Duration::from_secs(30), 1);
    assert_eq!(config, KeepaliveConfig::default().with_interval_secs(30));
    let report = simulate(config, LOSS, LOSS, CYCLES, 0x5EED);
    let p = analytic_failure_rate(LOSS, LOSS, params.max_retransmit, 1);
    let measured = report.failures as f64 / report.cycles as f64;
    let sigma = (p * (1.0 - p) / report.cycles as f64).sqrt();

    // The issue's window: the first 1,000 cycles, and every 1,000-cycle window.
    let in_first_1000 = report.failure_cycles.iter().filter(|&&c| c < 1_000).count();
    let windows = report.cycles / 1_000;
    let mut failed_windows = report
        .failure_cycles
        .iter()
        .map(|c| c / 1_000)
        .filter(|w| *w < windows)
        .collect::<Vec<_>>();
    failed_windows.dedup();
    let p_window = 1.0 - (1.0 - p).powi(1_000);
    let min = report.detection.iter().min().copied().unwrap_or_default();
    let max = report.detection.iter().max().copied().unwrap_or_default();
    eprintln!(
        "virtual time, {:.0} % loss each way, RFC 7252 defaults (ACK_TIMEOUT 2 s, x1.5, \
         MAX_RETRANSMIT 4), max_unanswered 1: {} ping cycles, {} pongs, {} TooManyRetries = \
         {:.3} % per cycle (analytic 0.36^5 = {:.3} %, σ {:.3} %); {} spurious; {} in the \
         first 1,000 cycles (expected {:.2}); {} of {} windows of 1,000 cycles had a failure \
         (analytic {:.2} %); detection {:.1?}..{:.1?} after the first transmission",
        LOSS * 100.0,
        report.cycles,
        report.pongs,
        report.failures,
        measured * 100.0,
        p * 100.0,
        sigma * 100.0,
        report.spurious,
        in_first_1000,
        p * 1_000.0,
        failed_windows.len(),
        windows,
        p_window * 100.0,
        min,
        max,
    );
    assert_eq!(
        report.spurious, 0,
        "a failure although an answer got through"
    );
    assert_eq!(
        report.quiet, 0,
        "every ping ends in a pong or a failure here"
    );
    assert_eq!(report.unanswered, 0, "max_unanswered 1 fails at once");
    assert_eq!(report.pings, report.cycles, "one ping per cycle");
    assert!(
        (measured - p).abs() < 5.0 * sigma,
        "measured {measured} vs analytic {p} (σ {sigma})"
    );
    // Every failure is a real exhaustion of the schedule, within its RFC 7252 bounds.
    let lower = min_give_up(&params);
    let upper = params.max_transmit_wait();
    assert!(report.detection.iter().all(|d| *d >= lower && *d <= upper));
}

#[test]
fn simulated_20_percent_loss_with_max_unanswered_3_fails_at_the_cube_of_the_ping_loss_rate() {
    /// Cycles simulated: 0.22 false failures expected, 3,000 cycles with an unanswered ping and
    /// 18 with two in a row, enough to check each step of `q^k`.
    const CYCLES: u64 = 500_000;
    const M: u32 = 3;
    let params = TransmissionParams::default();
    let report = simulate(
        keepalive(params, Duration::from_secs(30), M),
        LOSS,
        LOSS,
        CYCLES,
        0x5EED,
    );
    let q = analytic_unanswered_rate(LOSS, LOSS, params.max_retransmit);
    let p = analytic_failure_rate(LOSS, LOSS, params.max_retransmit, M);
    let given_up = report.unanswered + report.failures;
    let q_measured = given_up as f64 / report.pings as f64;
    let in_first_1000 = report.failure_cycles.iter().filter(|&&c| c < 1_000).count();
    let mut failed_windows: Vec<u64> = report.failure_cycles.iter().map(|c| c / 1_000).collect();
    failed_windows.dedup();
    eprintln!(
        "virtual time, {:.0} % loss each way, RFC 7252 defaults, max_unanswered {M}: {} ping \
         cycles, {} pings, {} pongs; pings unanswered {given_up} = {:.3} % (analytic 0.36^5 = \
         {:.3} %); cycles with ≥ 1 / ≥ 2 unanswered pings in a row {} / {} (expected {:.0} / \
         {:.1}); {} TooManyRetries = {:.1e} per cycle (analytic 0.36^15 = {:.2e}, {:.2} \
         expected; measured q^3 = {:.2e}) at cycles {:?}, {} in the first 1,000 cycles, {} of \
         {} windows of 1,000 cycles with one; {} spurious; detection {:.1?}",
        LOSS * 100.0,
        report.cycles,
        report.pings,
        report.pongs,
        100.0 * q_measured,
        100.0 * q,
        report.streaks[0],
        report.streaks[1],
        report.cycles as f64 * q,
        report.cycles as f64 * q * q,
        report.failures,
        report.failures as f64 / report.cycles as f64,
        p,
        report.cycles as f64 * p,
        q_measured.powi(M as i32),
        report.failure_cycles,
        in_first_1000,
        failed_windows.len(),
        report.cycles / 1_000,
        report.spurious,
        report.detection,
    );
    assert_eq!(report.spurious, 0, "a ping given up although answered");
    assert_eq!(report.quiet, 0);
    assert_eq!(
        in_first_1000, 0,
        "a false failure in the first 1,000 cycles"
    );
    // Each ping, follow-ups included, goes unanswered with the same q: the steps of q^k.
    assert!(consistent(given_up, report.pings, q, 5.0), "{given_up}");
    assert!(consistent(report.streaks[0], report.cycles, q, 5.0));
    assert!(consistent(report.streaks[1], report.cycles, q * q, 5.0));
    // 0.22 expected: P(≥ 5) = 4e-6.
    assert!(report.failures <= 4, "{} failures", report.failures);
    let lower = min_give_up(&params) * M;
    let upper = params.max_transmit_wait() * M;
    assert!(report.detection.iter().all(|d| *d >= lower && *d <= upper));
}

// ---------------------------------------------------------------------------------------------
// (c) 100 % loss: detection within the bound the parameters imply

/// Runs 200 seeds of a dead path with the default transmission parameters and `max_unanswered`
/// `m`; asserts each `TooManyRetries` falls within `m` times the one-ping bound and returns the
/// detection times (from the first transmission of the first ping).
fn simulated_total_loss(m: u32) -> (Vec<Duration>, Duration, Duration) {
    let params = TransmissionParams::default();
    let lower = min_give_up(&params) * m;
    let upper = params.max_transmit_wait() * m;
    let mut times = Vec::new();
    for seed in 0..200 {
        let report = simulate(
            keepalive(params, Duration::from_secs(30), m),
            1.0,
            0.0,
            1,
            seed,
        );
        assert_eq!((report.failures, report.pongs), (1, 0));
        assert_eq!(
            (report.pings, report.unanswered),
            (u64::from(m), u64::from(m - 1))
        );
        let detection = report.detection[0];
        assert!(
            detection >= lower && detection <= upper,
            "seed {seed}: {detection:?} outside [{lower:?}, {upper:?}]"
        );
        times.push(detection);
    }
    let mean = times.iter().sum::<Duration>() / times.len() as u32;
    eprintln!(
        "virtual time, 100 % loss, RFC 7252 defaults, max_unanswered {m}: TooManyRetries \
         {:.2?}..{:.2?} (mean {mean:.2?}) after the first transmission over 200 seeds; bound \
         [{lower:?}, {upper:?}]",
        times.iter().min().unwrap(),
        times.iter().max().unwrap(),
    );
    (times, lower, upper)
}

#[test]
fn simulated_total_loss_is_detected_within_max_transmit_wait_with_default_parameters() {
    let params = TransmissionParams::default();
    let (_, lower, upper) = simulated_total_loss(1);
    assert_eq!(
        (lower, upper),
        (Duration::from_secs(62), Duration::from_secs(93))
    );
    assert_eq!(upper, params.max_transmit_wait());
    assert_eq!(lower.mul_f64(params.ack_random_factor), upper);
}

#[test]
fn simulated_total_loss_with_max_unanswered_3_is_detected_within_three_exchange_bounds() {
    let (_, lower, upper) = simulated_total_loss(3);
    assert_eq!(
        (lower, upper),
        (Duration::from_secs(186), Duration::from_secs(279))
    );
}

/// Five sessions pinging at once through a relay that drops everything, with `max_unanswered`
/// `m`: each fails with `TooManyRetries` after exactly `m` fully retransmitted pings, within `m`
/// times the scaled one-ping bound.
async fn relay_total_loss(m: u32, seed: u64) {
    /// Sessions pinging at once through the black hole.
    const SESSIONS: usize = 5;
    /// Timer and scheduling latency allowed on top of the upper bound per ping (five timers in
    /// a row).
    const SLACK: Duration = Duration::from_millis(100);
    let params = scaled_params();
    let lower = min_give_up(&params) * m;
    let upper = params.max_transmit_wait() * m;
    let (_server, server_addr) = server().await;
    let relay = Relay::start(server_addr, 1.0, 1.0, seed).await;
    let (client, mut nacks, counters) =
        client(keepalive(params, Duration::from_millis(30), m), seed);
    let mut sessions = Vec::new();
    for _ in 0..SESSIONS {
        sessions.push(client.connect_udp(relay.addr).await.expect("connect"));
    }
    let mut detections = Vec::new();
    for _ in 0..SESSIONS {
        let (port, reason, at) = tokio::time::timeout(Duration::from_secs(10), nacks.recv())
            .await
            .expect("TooManyRetries within 10 s")
            .expect("nack channel open");
        assert_eq!(reason, NackReason::TooManyRetries);
        assert!(sessions.iter().any(|s| s.local_addr().port() == port));
        let log = relay.log.lock().unwrap();
        let pings = log.of(port);
        assert_eq!(
            pings.len(),
            m as usize,
            "{m} pings, each retransmitted, then the nack"
        );
        assert!(pings
            .iter()
            .all(|p| p.transmissions == 1 + params.max_retransmit));
        detections.push(at - pings[0].first_seen);
    }
    client.shutdown().await;
    assert_eq!(counters.pongs.load(Ordering::Relaxed), 0);
    assert_eq!(
        counters.unanswered.load(Ordering::Relaxed),
        SESSIONS as u64 * u64::from(m - 1)
    );
    eprintln!(
        "real sockets, 100 % loss, ACK_TIMEOUT 20 ms x1.5, MAX_RETRANSMIT 4, max_unanswered \
         {m}: TooManyRetries after {detections:.1?} (from the first transmission seen by the \
         relay); bound [{lower:?}, {upper:?}]"
    );
    for detection in detections {
        // The relay sees the first transmission a few microseconds after it was sent.
        assert!(
            detection + Duration::from_millis(2) >= lower,
            "{detection:?} < {lower:?}"
        );
        assert!(
            detection <= upper + SLACK * m,
            "{detection:?} > {upper:?} + {:?}",
            SLACK * m
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_with_total_loss_reports_too_many_retries_within_the_scaled_bound() {
    let params = scaled_params();
    assert_eq!(
        (min_give_up(&params), params.max_transmit_wait()),
        (Duration::from_millis(620), Duration::from_millis(930))
    );
    relay_total_loss(1, 0xDEAD).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_with_total_loss_and_max_unanswered_3_fails_within_three_scaled_bounds() {
    relay_total_loss(3, 0xDEAF).await;
}
